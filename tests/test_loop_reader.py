"""SQLite reads on the event loop, under a budget (store/loop_reader.py): a read past the budget
is interrupted and answered, whole, from a read thread; and reads of one kind that went past it
lately go straight to a read thread (Database.read_alike)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text

from resinkit_grpc.config import Settings
from resinkit_grpc.store import database as database_module
from resinkit_grpc.store import migrations
from resinkit_grpc.store.database import Database, _LongReads

# About 300,000 steps of SQLite's virtual machine per thousand rows counted: tens of
# milliseconds, far past a 2 ms budget.
SLOW = text(
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
    "SELECT count(*) FROM c"
)


def slow(connection: Connection) -> int:
    return int(connection.execute(SLOW).scalar_one())


def quick(connection: Connection) -> int:
    return int(connection.execute(text("SELECT 7")).scalar_one())


@pytest.fixture
def database(backend: str, new_database_url: Callable[[], str]) -> Iterator[Database]:
    if backend != "sqlite":
        pytest.skip("reads on the event loop are SQLite's")
    database = Database(Settings(database_url=new_database_url(), loop_read_budget=2.0))
    migrations.migrate(database.writer_engine)
    yield database
    database.close()


def on_loop(database: Database) -> list[bool]:
    """Records, for each read, whether it finished on the event loop."""
    reader = database._loop_reader
    assert reader is not None
    finished: list[bool] = []
    run = reader.run

    def counted(operation: Any) -> Any:
        try:
            result = run(operation)
        except BaseException:
            finished.append(False)
            raise
        finished.append(True)
        return result

    reader.run = counted  # type: ignore[method-assign]
    return finished


def test_a_read_past_the_budget_is_answered_whole_from_a_read_thread(database: Database) -> None:
    finished = on_loop(database)
    assert asyncio.run(database.read(slow)) == 300_000
    assert asyncio.run(database.read(quick)) == 7
    assert finished == [False, True]


def test_reads_of_a_kind_that_went_past_the_budget_go_straight_to_a_read_thread(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "PROBE_EVERY", 3)
    finished = on_loop(database)

    async def scenario() -> list[int]:
        return [
            await database.read_alike("a list", slow),  # tried on the loop, moved
            await database.read_alike("a list", slow),  # straight to a read thread
            await database.read_alike("a list", quick),  # its kind still: a thread
            await database.read_alike("another", quick),  # on the loop
            await database.read(quick),  # no kind: on the loop
            await database.read_alike("a list", quick),  # the third since: tries the loop
            await database.read_alike("a list", quick),  # it fitted: on the loop again
        ]

    assert asyncio.run(scenario()) == [300_000, 300_000, 7, 7, 7, 7, 7]
    assert finished == [False, True, True, True, True]


def test_a_kind_that_still_runs_long_stays_off_the_loop_between_tries(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "PROBE_EVERY", 2)
    finished = on_loop(database)

    async def scenario() -> None:
        for _ in range(5):
            assert await database.read_alike("a list", slow) == 300_000

    asyncio.run(scenario())
    # Tried at the first read, then every second one: each try ran past the budget again.
    assert finished == [False, False, False]


def test_a_kind_is_forgotten_after_a_while(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = on_loop(database)
    monkeypatch.setattr(database_module, "LONG_READ_SECONDS", 0.0)
    database._long_reads.long("a list")
    time.sleep(0.01)
    assert asyncio.run(database.read_alike("a list", quick)) == 7
    assert finished == [True]


def test_the_kinds_remembered_are_the_most_recent_few(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database_module, "LONG_READ_KINDS", 3)
    kinds = _LongReads()
    for kind in ("a", "b", "c", "a", "d"):
        kinds.long(kind)
    assert [kinds.holds(kind) for kind in ("a", "b", "c", "d", None)] == [
        True,
        False,
        True,
        True,
        False,
    ]
