"""PostgreSQL: finer statistics of lower(task_name), so that name_contains is planned right

The planner estimates how many names contain a pattern from the statistics ANALYZE keeps of
the trigram index's expression. At the default target (100) a pattern a thousand names of a
million contain was estimated at ten times that, and a page ordered by updated_at then walked
that order's index testing every name: 28 ms for the first page and 235 ms for the sixth (the
`name+status+updated asc` shape of scripts/bench). At 1000 the estimate is within a tenth and
the page starts from the trigram index's matches: 10 ms, the sixth page 9 ms; names common
enough still walk the order (1 name in 5: 0.4 ms). On a populated table ANALYZE takes the new
target in at once (it blocks no read or write); a new one takes it in at autovacuum's first
ANALYZE. SQLite keeps no statistics: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Column 1 of the index is its expression, lower(task_name) (migration 0006).
INDEX = "ix_tasks_task_name_trgm"
TARGET = 1000
ANALYZE_FROM = 10_000


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {INDEX} ALTER COLUMN 1 SET STATISTICS {TARGET}")
    # Not on a new or small table: ANALYZE of an empty one records it as empty, and until
    # autovacuum analyzes it again the planner checks each event's foreign key by scanning
    # every task (a fresh database's first minute ran at a third of its write rate). A small
    # table is analyzed by autovacuum soon enough anyway.
    populated = op.get_bind().exec_driver_sql(
        f"SELECT count(*) FROM (SELECT 1 FROM tasks LIMIT {ANALYZE_FROM}) AS sample"
    )
    if populated.scalar_one() >= ANALYZE_FROM:
        op.execute("ANALYZE tasks")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {INDEX} ALTER COLUMN 1 SET STATISTICS -1")
