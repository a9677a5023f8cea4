"""mutation_requests: the outcome of every mutation made under a request_id (AIP-155)

A retry with the same request_id gets the first call's outcome back instead of acting again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from resinkit_grpc.store.types import JSONString, UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mutation_requests",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("outcome", JSONString(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_mutation_requests")),
    )
    op.create_index(
        "ix_mutation_requests_created_at", "mutation_requests", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_mutation_requests_created_at", table_name="mutation_requests")
    op.drop_table("mutation_requests")
