"""name_contains indexed on SQLite: an FTS5 trigram index of the folded names

`task_names` holds each task's name as name_contains folds it, `task_names_fts` its trigram
index, `task_names_state` the last event the index has taken in; the server keeps them up with
the event log (see store/name_index.py). Built here from every task there is. PostgreSQL's
trigram index on lower(task_name) came with 0006: nothing to do there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from typing import Any

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The objects as store/name_index.py defines them at this revision: written out here, so that
# a later change to that module cannot change what this migration does.
CREATE = (
    "CREATE TABLE task_names (key INTEGER PRIMARY KEY, task_id TEXT NOT NULL, name TEXT NOT NULL)",
    "CREATE UNIQUE INDEX ix_task_names_task_id ON task_names (task_id)",
    "CREATE VIRTUAL TABLE task_names_fts USING fts5(name, content='task_names', "
    "content_rowid='key', columnsize=0, tokenize='trigram case_sensitive 1')",
    "CREATE TABLE task_names_state (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), "
    "indexed_through INTEGER NOT NULL)",
)
DROP = (
    "DROP TABLE IF EXISTS task_names_state",
    "DROP TABLE IF EXISTS task_names_fts",
    "DROP TABLE IF EXISTS task_names",
)
# Every name, folded as name_contains folds it (Python's str.lower); the index built from them;
# and the log taken in up to its last event.
BUILD = (
    "INSERT INTO task_names (task_id, name) SELECT task_id, migration_0007_lower(task_name) "
    "FROM tasks WHERE task_name IS NOT NULL",
    "INSERT INTO task_names_fts (task_names_fts) VALUES ('rebuild')",
    "INSERT INTO task_names_state (singleton, indexed_through) "
    "SELECT 1, coalesce(max(event_id), 0) FROM task_events",
)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for ddl in CREATE:
        op.execute(ddl)
    driver = op.get_bind().connection.driver_connection
    driver.create_function("migration_0007_lower", 1, _lower, deterministic=True)
    for statement in BUILD:
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for ddl in DROP:
        op.execute(ddl)
