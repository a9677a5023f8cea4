"""Every ListTasks filter indexed: status, type and creator in every sort order; tags and names

Live tasks of one status, one type or one creator get an index ending in each sort order
(created_at, updated_at, priority; task_id breaking ties), so that a first page, and a page
1,000 deep, walk an index in order instead of sorting every match. Exact tags: on SQLite the
side table task_tags (kept by triggers, backfilled here), on PostgreSQL a GIN index on tags.
name_contains on PostgreSQL: a trigram index on lower(task_name) (pg_trgm). See
store/filter_indexes.py.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, filter column, sort column), as models.FILTER_INDEXES says at this revision.
FILTER_INDEXES = tuple(
    (f"ix_tasks_{column}_{sort}", column, sort)
    for column in ("status", "task_type", "created_by")
    for sort in ("created_at", "updated_at", "priority")
    if not (column != "created_by" and sort == "created_at")
)
ACTIVE_ONLY = {"sqlite_where": sa.text("active = 1"), "postgresql_where": sa.text("active")}

# The side objects as store/filter_indexes.py defines them at this revision: written out here,
# so that a later change to that module cannot change what this migration does.
POSTGRESQL_INDEXES = {
    "ix_tasks_tags_gin": "ON tasks USING gin (tags)",
    "ix_tasks_task_name_trgm": "ON tasks USING gin (lower(task_name) gin_trgm_ops)",
}
SQLITE_TASK_TAGS = (
    "CREATE TABLE task_tags (tag TEXT NOT NULL, task_id TEXT NOT NULL, "
    "CONSTRAINT pk_task_tags PRIMARY KEY (tag, task_id)) WITHOUT ROWID",
    "CREATE INDEX ix_task_tags_task_id ON task_tags (task_id)",
)
_ADD_TAGS = (
    "INSERT OR IGNORE INTO task_tags (tag, task_id) "
    "SELECT value, NEW.task_id FROM json_each(NEW.tags) WHERE type = 'text'"
)
SQLITE_TRIGGERS = {
    "tr_tasks_tags_update": (
        "CREATE TRIGGER tr_tasks_tags_update AFTER UPDATE OF tags ON tasks "
        "WHEN OLD.tags IS NOT NEW.tags BEGIN "
        "DELETE FROM task_tags WHERE task_id = OLD.task_id; "
        f"{_ADD_TAGS}; END"
    ),
    "tr_tasks_tags_delete": (
        "CREATE TRIGGER tr_tasks_tags_delete AFTER DELETE ON tasks "
        "WHEN OLD.tags IS NOT NULL BEGIN DELETE FROM task_tags WHERE task_id = OLD.task_id; END"
    ),
}
SQLITE_BACKFILL = (
    "INSERT OR IGNORE INTO task_tags (tag, task_id) "
    "SELECT each.value, tasks.task_id FROM tasks, json_each(tasks.tags) AS each "
    "WHERE tasks.tags IS NOT NULL AND each.type = 'text'"
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # On a live table: without CONCURRENTLY each build would block every write meanwhile.
        with op.get_context().autocommit_block():
            for name, column, sort in FILTER_INDEXES:
                # An attempt that gave way (lock_timeout) leaves an invalid index behind; the
                # boot migration then tries again from here.
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                op.create_index(
                    name,
                    "tasks",
                    [column, sort, "task_id"],
                    postgresql_concurrently=True,
                    **ACTIVE_ONLY,
                )
            for name, definition in POSTGRESQL_INDEXES.items():
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                op.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")
        return
    for name, column, sort in FILTER_INDEXES:
        op.create_index(name, "tasks", [column, sort, "task_id"], **ACTIVE_ONLY)
    for ddl in SQLITE_TASK_TAGS:
        op.execute(ddl)
    op.execute(SQLITE_BACKFILL)
    for ddl in SQLITE_TRIGGERS.values():
        op.execute(ddl)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for name in POSTGRESQL_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP INDEX IF EXISTS ix_task_tags_task_id")
        op.execute("DROP TABLE IF EXISTS task_tags")
    for name, _, _ in FILTER_INDEXES:
        op.drop_index(name, table_name="tasks")
