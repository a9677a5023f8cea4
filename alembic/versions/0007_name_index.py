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

from alembic import op
from resinkit_grpc.store import name_index

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for ddl in name_index.CREATE:
        op.execute(ddl)
    name_index.rebuild(op.get_bind())


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for ddl in name_index.DROP:
        op.execute(ddl)
