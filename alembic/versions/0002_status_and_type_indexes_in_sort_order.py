"""status and task_type indexes end in the default sort order (created_at, task_id)

A ListTasks page filtered on one status or one type then walks the index in order and stops
after a page, instead of reading and sorting every matching task.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_ONLY = {"sqlite_where": sa.text("active = 1"), "postgresql_where": sa.text("active")}


def upgrade() -> None:
    for column in ("status", "task_type"):
        op.drop_index(f"ix_tasks_{column}", table_name="tasks")
        op.create_index(
            f"ix_tasks_{column}", "tasks", [column, "created_at", "task_id"], **ACTIVE_ONLY
        )


def downgrade() -> None:
    for column in ("status", "task_type"):
        op.drop_index(f"ix_tasks_{column}", table_name="tasks")
        op.create_index(f"ix_tasks_{column}", "tasks", [column], **ACTIVE_ONLY)
