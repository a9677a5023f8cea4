"""Every ListTasks filter has an index, on both backends (checked by EXPLAIN on small data:
speed at 1,000,000 tasks is measured by scripts/bench), migration 0006 builds them on a
populated database without changing a single ListTasks result (and 0007 its name index), and
SQLite's task_tags follows every write."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert, text

from resinkit_grpc.config import Settings
from resinkit_grpc.store import batches, filter_indexes
from resinkit_grpc.store import tasks as store
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.migrations import migrate
from resinkit_grpc.store.tasks import NewTask, SortOrder, TaskQuery, tasks
from tests.databases import Databases
from tests.listing import explained, listed, page_statement

BASE = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("Nightly load", "STRASSE", "straße", "İstanbul", "adhoc 100%_done", "ΩΩ job", None)
TAGS = ("team-1", "team-2", "env-prod", "ÉTÉ", "%", "rare")
FILTERS: dict[str, TaskQuery] = {
    "statuses": TaskQuery(statuses=("RUNNING",)),
    "statuses, two": TaskQuery(statuses=("PENDING", "RUNNING")),
    "task_types": TaskQuery(task_types=("flink_sql",)),
    "created_by": TaskQuery(created_by="user-3"),
    "name_contains": TaskQuery(name_contains="NIGHT"),
    "name_contains, unicode": TaskQuery(name_contains="straß"),
    "name_contains, short": TaskQuery(name_contains="%_"),
    "tags_any": TaskQuery(tags_any=("rare", "ÉTÉ")),
    "tags_all": TaskQuery(tags_all=("team-1", "env-prod")),
    "created range": TaskQuery(
        created_after=BASE + timedelta(minutes=40), created_before=BASE + timedelta(minutes=90)
    ),
    "combined": TaskQuery(task_types=("flink_sql",), tags_any=("team-2",), show_deleted=True),
}
ORDERS = [SortOrder(field, descending) for field in store.SORT_FIELDS for descending in (1, 0)]
# One value per filter column: each walks its own index in the sort order.
INDEXED = ("statuses", "task_types", "created_by")


def rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(20)
    made = []
    for i in range(count):
        created = BASE + timedelta(minutes=i % 150, microseconds=i)
        tags = rng.sample(TAGS, rng.randint(0, 3))
        made.append(
            {
                "task_id": f"t-{i:04d}",
                "task_type": rng.choice(("flink_sql", "flink_cdc")),
                "task_name": rng.choice(NAMES),
                "status": rng.choice(("PENDING", "RUNNING", "COMPLETED")),
                "priority": rng.randint(0, 3),
                "created_at": created,
                "updated_at": created + timedelta(seconds=rng.randint(0, 5000)),
                "submitted_configs": {},
                "created_by": f"user-{i % 5}",
                "tags": tags or None,
                "active": rng.random() > 0.1,
                "version": 1,
            }
        )
    return made


def expected(data: list[dict[str, Any]], query: TaskQuery, order: SortOrder) -> list[str]:
    """What ListTasks must return, worked out in Python."""

    def matches(row: dict[str, Any]) -> bool:
        tags = set(row["tags"] or ())
        name = (row["task_name"] or "").lower()
        return (
            (query.show_deleted or row["active"])
            and (not query.statuses or row["status"] in query.statuses)
            and (not query.task_types or row["task_type"] in query.task_types)
            and (query.created_by is None or row["created_by"] == query.created_by)
            and (not query.name_contains or query.name_contains.lower() in name)
            and (not query.tags_any or bool(tags & set(query.tags_any)))
            and set(query.tags_all) <= tags
            and (query.created_after is None or row["created_at"] >= query.created_after)
            and (query.created_before is None or row["created_at"] < query.created_before)
        )

    found = sorted(
        (row for row in data if matches(row)),
        key=lambda row: (row[order.field], row["task_id"]),
        reverse=order.descending,
    )
    return [row["task_id"] for row in found]


@pytest.fixture(scope="module")
def filled(backend: str, databases: Databases, module_dir: Path) -> Iterator[tuple[Engine, Any]]:
    """A database with tasks written at revision 0004, then migrated to head."""
    url = databases.new_url(backend, module_dir)
    engine, reader = create_engines(Settings(database_url=url))
    migrate(engine, target="0004")
    data = rows(300)
    with engine.begin() as connection:
        connection.execute(insert(tasks), data)
    migrate(engine)
    yield engine, data
    engine.dispose()
    reader.dispose()


@pytest.mark.parametrize("dense_at", [filter_indexes.DENSE_AT, 5])
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_the_migration_keeps_every_list_result_in_every_order(
    filled: tuple[Engine, Any], name: str, dense_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever way SQLite is told to find the matches (from them, or walking the order)."""
    engine, data = filled
    if engine.dialect.name != "sqlite" and dense_at != filter_indexes.DENSE_AT:
        pytest.skip("density probes are SQLite's")
    monkeypatch.setattr(
        filter_indexes, "NAME_DENSE_AT", min(dense_at, filter_indexes.NAME_DENSE_AT)
    )
    monkeypatch.setattr(filter_indexes, "DENSE_AT", dense_at)
    with engine.connect() as connection:
        for order in ORDERS:
            assert listed(connection, FILTERS[name], order) == expected(data, FILTERS[name], order)


def plan(connection: Connection, query: TaskQuery, order: SortOrder, keyset: bool) -> str:
    """The database's plan for one ListTasks page, as one text."""
    after = (BASE + timedelta(minutes=75) if order.field != "priority" else 1, "t-0150")
    sql, params = page_statement(connection, query, order, after=after if keyset else None)
    rows = explained(connection, sql, params)
    return "\n".join(
        str(row[-1] if connection.dialect.name == "sqlite" else row[0]) for row in rows
    )


@pytest.mark.parametrize("name", INDEXED)
def test_one_status_type_or_creator_walks_its_index_in_every_order(
    filled: tuple[Engine, Any], name: str
) -> None:
    """No scan of the table and no sort, first page or deep, in each of the six orders."""
    engine, _ = filled
    column = {"statuses": "status", "task_types": "task_type"}.get(name, name)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # So small a table is cheaper to scan; what is checked is that the index serves.
            connection.execute(text("SET enable_seqscan = off"))
            connection.execute(text("SET enable_sort = off"))
        for order in ORDERS:
            wanted = (
                f"ix_tasks_{column}"
                if order.field == "created_at" and column != "created_by"
                else f"ix_tasks_{column}_{order.field}"
            )
            for keyset in (False, True):
                found = plan(connection, FILTERS[name], order, keyset)
                where = f"{name}, {order}, keyset={keyset}:\n{found}"
                assert wanted in found, where
                if connection.dialect.name == "sqlite":
                    assert "TEMP B-TREE" not in found, where
                    assert "SCAN tasks\n" not in found + "\n", where
                else:
                    assert "Sort" not in found and "Seq Scan" not in found, where


@pytest.mark.parametrize("name", ["tags_any", "tags_all", "name_contains"])
def test_tags_and_names_are_found_through_an_index(filled: tuple[Engine, Any], name: str) -> None:
    """Tags through task_tags (SQLite) or the GIN index (PostgreSQL); names through a trigram
    index: FTS5's on SQLite (store/name_index.py), pg_trgm's on PostgreSQL."""
    engine, _ = filled
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if not sqlite:
            connection.execute(text("SET enable_seqscan = off"))
            connection.execute(text("SET enable_indexscan = off"))  # the ordered scans
        for order in ORDERS:
            found = plan(connection, FILTERS[name], order, keyset=False)
            where = f"{name}, {order}:\n{found}"
            if sqlite and name == "name_contains":
                assert "task_names_fts VIRTUAL TABLE INDEX" in found, where
                assert "SCAN tasks\n" not in found + "\n", where
            elif sqlite:
                assert "task_tags USING PRIMARY KEY (tag=?)" in found, where
            elif name == "name_contains":
                assert "ix_tasks_task_name_trgm" in found, where
            else:
                assert "ix_tasks_tags_gin" in found, where


@pytest.mark.parametrize("name", ["statuses, two", "tags_any", "tags_all", "created range"])
def test_common_values_are_tested_while_walking_the_order_on_sqlite(
    filled: tuple[Engine, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When many tasks match, SQLite walks the sort order's index and tests each task (no sort
    of every match); when few do, it starts from them (see the test above)."""
    engine, _ = filled
    if engine.dialect.name != "sqlite":
        pytest.skip("density probes are SQLite's; PostgreSQL's planner has statistics")
    monkeypatch.setattr(filter_indexes, "DENSE_AT", 5)
    with engine.connect() as connection:
        for order in ORDERS:
            if name == "created range" and order.field == "created_at":
                continue  # the range is on the order's own index
            found = plan(connection, FILTERS[name], order, keyset=True)
            where = f"{name}, {order}:\n{found}"
            assert "TEMP B-TREE" not in found, where
            assert f"ix_tasks_{order.field}" in found, where


def test_task_tags_follow_every_write(filled: tuple[Engine, Any]) -> None:
    """Create (one, a batch), update, clear and purge: task_tags always says what every task's
    tags say."""
    engine, _ = filled
    if engine.dialect.name != "sqlite":
        pytest.skip("task_tags is SQLite's (PostgreSQL indexes tags itself)")

    def check(connection: Connection) -> None:
        derived = connection.execute(
            text(
                "SELECT DISTINCT each.value, tasks.task_id "
                "FROM tasks, json_each(tasks.tags) AS each ORDER BY 1, 2"
            )
        ).all()
        kept = connection.execute(text("SELECT tag, task_id FROM task_tags ORDER BY 1, 2")).all()
        assert kept == derived

    with engine.begin() as connection:
        check(connection)  # the backfill
        store.create_task(connection, NewTask("made-1", "flink_sql", "me", tags=["a", "a", "b"]))
        batches.batch_create_tasks(
            connection,
            [NewTask(f"made-{n}", "flink_sql", "me", tags=["b", f"n{n}"]) for n in (2, 3)],
            lambda records: records,
        )
        check(connection)
        connection.execute(
            text("UPDATE tasks SET tags = :tags WHERE task_id IN ('t-0001', 't-0002')"),
            {"tags": '["fresh", "fresh", "team-1"]'},
        )
        connection.execute(text("UPDATE tasks SET tags = NULL WHERE task_id = 't-0003'"))
        connection.execute(text("UPDATE tasks SET priority = 9 WHERE task_id = 't-0004'"))
        connection.execute(text("DELETE FROM task_events WHERE task_id = 't-0005'"))
        connection.execute(text("DELETE FROM tasks WHERE task_id = 't-0005'"))
        check(connection)
        connection.rollback()


def test_a_rebuild_of_tasks_that_drops_the_triggers_is_repaired_by_the_next_migration(
    new_database_url: Any,
) -> None:
    """Batch mode rebuilds a table by copying it, and SQLite drops its triggers with it."""
    url = new_database_url()
    if not url.startswith("sqlite"):
        pytest.skip("task_tags and its triggers are SQLite's")
    engine, reader = create_engines(Settings(database_url=url))
    try:
        migrate(engine)
        with engine.begin() as connection:
            store.create_task(connection, NewTask("kept", "flink_sql", "me", tags=["x"]))
            for name in filter_indexes.SQLITE_TRIGGERS:
                connection.execute(text(f"DROP TRIGGER {name}"))
            connection.execute(text("UPDATE tasks SET tags = '[\"y\"]'"))  # unseen
        migrate(engine)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT tag FROM task_tags")).scalars().all() == ["y"]
            connection.execute(text("UPDATE tasks SET tags = '[\"z\"]'"))
            assert connection.execute(text("SELECT tag FROM task_tags")).scalars().all() == ["z"]
    finally:
        engine.dispose()
        reader.dispose()
