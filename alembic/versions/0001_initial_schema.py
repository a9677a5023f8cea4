"""initial schema: tasks, task_events, service_secrets

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from resinkit_grpc.store.types import JSONString, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "'PENDING', 'SUBMITTED', 'VALIDATING', 'PREPARING', 'BUILDING', 'RUNNING', 'COMPLETED', "
    "'FAILED', 'CANCELLING', 'CANCELLED'"
)
ACTIVE_ONLY = {"sqlite_where": sa.text("active = 1"), "postgresql_where": sa.text("active")}


def upgrade() -> None:
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_secrets")),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("task_name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("submitted_configs", JSONString(), nullable=False),
        sa.Column("error_info", JSONString(), nullable=True),
        sa.Column("result_summary", JSONString(), nullable=True),
        sa.Column("execution_details", JSONString(), nullable=True),
        sa.Column("progress_details", JSONString(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("notification_config", JSONString(), nullable=True),
        sa.Column("tags", JSONString(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_tasks_status")),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("request_id", name=op.f("uq_tasks_request_id")),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"], **ACTIVE_ONLY)
    op.create_index("ix_tasks_task_type", "tasks", ["task_type"], **ACTIVE_ONLY)
    op.create_index("ix_tasks_created_at", "tasks", ["created_at", "task_id"])
    op.create_index("ix_tasks_updated_at", "tasks", ["updated_at", "task_id"])
    op.create_index("ix_tasks_priority", "tasks", ["priority", "task_id"])
    op.create_index("ix_tasks_created_by", "tasks", ["created_by"])
    op.create_index("ix_tasks_expires_at", "tasks", ["expires_at"])

    op.create_table(
        "task_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_data", JSONString(), nullable=True),
        sa.Column("previous_status", sa.String(length=16), nullable=True),
        sa.Column("new_status", sa.String(length=16), nullable=True),
        sa.Column("timestamp", UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_task_events_task_id_tasks")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_task_events")),
        # Never reuse an event id, even after the largest one is purged (see models.py).
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id", "event_id"])
    op.create_index("ix_task_events_timestamp", "task_events", ["timestamp"])
    op.create_index("ix_task_events_event_type", "task_events", ["event_type"])


def downgrade() -> None:
    op.drop_table("task_events")
    op.drop_table("tasks")
    op.drop_table("service_secrets")
