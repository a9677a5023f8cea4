"""What indexes the ListTasks filters a B-tree on `tasks` cannot serve, per dialect (migration
0006 builds them; alembic's model comparison leaves them out, see SIDE_OBJECTS).

SQLite: `task_tags`, one row per (tag, task) of every task, in the same transaction as the
task: written by the creating operation (add_tags: a trigger on INSERT cost about 27 µs per
task, a third of a batch create's cost), and kept by triggers on `tasks` through every later
change (UpdateTask, retention's purge, a hand-written UPDATE or DELETE). A task inserted into
`tasks` by something else than this service must have its tags inserted as well (see
SQLITE_BACKFILL). Exact tag match reads it by tag instead of opening every task's JSON.

PostgreSQL: a GIN index on `tags` (jsonb_ops serves `?|` and `?&`), and a trigram index
(pg_trgm) on lower(task_name), which serves name_contains' `LIKE '%...%'` for patterns of 3
characters or more (shorter ones scan, as before)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Index, MetaData, PrimaryKeyConstraint, Table, Text
from sqlalchemy.dialects import sqlite

from resinkit_grpc.store import name_index
from resinkit_grpc.store.prepared import Prepared

side_metadata = MetaData()

task_tags = Table(
    "task_tags",
    side_metadata,
    Column("tag", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    PrimaryKeyConstraint("tag", "task_id", name="pk_task_tags"),
    Index("ix_task_tags_task_id", "task_id"),
    sqlite_with_rowid=False,
)

# Triggers keep task_tags equal to what every task's `tags` (a JSON array of strings) holds.
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

INSERT_TAGS = Prepared(sqlite.insert(task_tags).on_conflict_do_nothing())


def add_tags(connection: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    """The task_tags rows of tasks just inserted (SQLite; PostgreSQL indexes tags itself)."""
    if connection.dialect.name != "sqlite":
        return
    rows = [
        {"tag": tag, "task_id": record["task_id"]}
        for record in records
        for tag in record["tags"] or ()
    ]
    if rows:
        INSERT_TAGS.execute_many(connection, rows)


NAME_TRIGRAM_INDEX = "ix_tasks_task_name_trgm"
POSTGRESQL_INDEXES = {
    "ix_tasks_tags_gin": "ON tasks USING gin (tags)",
    NAME_TRIGRAM_INDEX: "ON tasks USING gin (lower(task_name) gin_trgm_ops)",
}

# Not in the models' metadata: alembic's comparison must neither miss nor propose them.
SIDE_OBJECTS = frozenset(
    {"task_tags", "ix_task_tags_task_id", "pk_task_tags", *POSTGRESQL_INDEXES, *name_index.OBJECTS}
)


# SQLite keeps no statistics here (no ANALYZE), so it cannot tell a rare tag from a common one:
# driving a page from the matches of a common one reads and sorts every match, while walking
# the sort order's index and testing each task costs about page / density rows. Which is
# cheaper is asked of the data itself: at most DENSE_AT index entries are counted per condition.
DENSE_AT = 10_000
# Names: counting trigram matches costs more (about 1 ms per 1,000 at 1,000,000 names) and so
# does starting from them (a page from 1,111 matches: 4 ms, from 11,111: 37 ms).
NAME_DENSE_AT = 2_000
_COUNT = "SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {where} LIMIT {limit})"


def dense_conditions(
    connection: Connection,
    *,
    statuses: Sequence[str],
    task_types: Sequence[str],
    tags_any: Sequence[str],
    tags_all: Sequence[str],
    created_range: tuple[datetime | None, datetime | None] | None,
    name_pattern: str | None,
    active_only: bool,
) -> frozenset[str]:
    """The conditions (of those an index could drive) that at least DENSE_AT tasks meet: a
    page tests them while walking its sort order instead of starting from their matches.
    `created_range` is given only when the page is not ordered by created_at; `name_pattern`
    (folded) only when the name index can serve it (name_index.serves)."""
    dense = set()
    live = "active = 1 AND " if active_only else ""

    def many(source: str, where: str, values: Sequence[Any]) -> bool:
        marks = ", ".join("?" * len(values))
        sql = _COUNT.format(source=source, where=where.replace("{}", marks), limit=DENSE_AT)
        found = connection.exec_driver_sql(sql, tuple(values)).scalar_one()
        return int(found) >= DENSE_AT

    # One value is an index's equality prefix, in the sort order already: never dense.
    if len(statuses) > 1 and many("tasks", live + "status IN ({})", statuses):
        dense.add("statuses")
    if len(task_types) > 1 and many("tasks", live + "task_type IN ({})", task_types):
        dense.add("task_types")
    if tags_any and many("task_tags", "tag IN ({})", tags_any):
        dense.add("tags_any")
    if tags_all and all(many("task_tags", "tag IN ({})", [tag]) for tag in tags_all):
        dense.add("tags_all")
    if created_range is not None:
        kept = [
            (op, value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds"))
            for op, value in zip((">=", "<"), created_range, strict=True)
            if value is not None
        ]
        where = " AND ".join(f"created_at {op} ?" for op, _ in kept)
        if kept and many("tasks", where, [value for _, value in kept]):
            dense.add("created_range")
    if name_pattern and (
        name_index.indexed_count(connection, name_pattern, NAME_DENSE_AT) >= NAME_DENSE_AT
    ):
        dense.add("name_contains")
    return frozenset(dense)
