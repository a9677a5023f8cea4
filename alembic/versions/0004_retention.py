"""log_horizon, and an index of the tasks expiry looks at

log_horizon holds one row: the largest event_id retention has purged, so that a watch resuming
from below it is refused (OUT_OF_RANGE) instead of silently missing what was purged.
ix_tasks_open_expires_at indexes expires_at of live, unended tasks only: expiry's periodic scan
then costs what is due, however many ended tasks keep an expires_at.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic.util import CommandError

from alembic import op
from resinkit_grpc.store.types import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = "'COMPLETED', 'FAILED', 'CANCELLED'"
OPEN = {
    "sqlite_where": sa.text(f"active = 1 AND status NOT IN ({ENDED})"),
    "postgresql_where": sa.text(f"active AND status NOT IN ({ENDED})"),
}


def upgrade() -> None:
    horizon = op.create_table(
        "log_horizon",
        sa.Column("singleton", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "purged_through_event_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("purged_at", UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("singleton = 1", name=op.f("ck_log_horizon_singleton")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_log_horizon")),
    )
    op.bulk_insert(horizon, [{"singleton": 1, "purged_through_event_id": 0}])
    if op.get_context().dialect.name == "postgresql":
        # On a live table: without CONCURRENTLY the build would block every write meanwhile.
        with op.get_context().autocommit_block():
            # An attempt that gave way (lock_timeout) leaves an invalid index behind; the boot
            # migration then tries again from here.
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_tasks_open_expires_at")
            op.create_index(
                "ix_tasks_open_expires_at",
                "tasks",
                ["expires_at"],
                postgresql_concurrently=True,
                **OPEN,
            )
    else:
        op.create_index("ix_tasks_open_expires_at", "tasks", ["expires_at"], **OPEN)


def downgrade() -> None:
    purged = (
        op.get_bind().execute(sa.text("SELECT purged_through_event_id FROM log_horizon")).scalar()
    )
    if purged:
        # Upgrading again would start from a horizon of 0: watches resuming below it would
        # skip the purged events without a word.
        raise CommandError(
            f"events up to event_id {purged} have been purged; below this revision watches "
            "could no longer tell, so the downgrade is refused"
        )
    op.drop_index("ix_tasks_open_expires_at", table_name="tasks")
    op.drop_table("log_horizon")
