"""Watches.stream on a real database, without gRPC: the seams an adversarial review attacked
(closing at the replay's last page, bursts larger than a buffer, a replay chasing a moving
tail), each stated as the promise it breaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection

from resinkit_grpc.config import Settings
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import events, migrations, tasks
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import Ended, EndReason, EventFilter, Item, LogEvent, Passed
from resinkit_grpc.watch.watches import Watches, WatchRequest


@pytest.fixture
def make(new_database_url: Callable[[], str]) -> Iterator[Callable[..., Database]]:
    opened: list[Database] = []

    def database(**settings: Any) -> Database:
        made = Database(Settings(database_url=new_database_url(), **settings))
        migrations.migrate(made.writer_engine)
        opened.append(made)
        return made

    yield database
    for database in opened:
        database.close()


async def create(database: Database, task_id: str) -> None:
    await database.write(
        tasks.create_task, tasks.NewTask(task_id=task_id, task_type="w", created_by="t")
    )


async def until_ended(stream: AsyncGenerator[list[Item], None]) -> list[Item]:
    got: list[Item] = []
    async with asyncio.timeout(10):
        async for items in stream:
            got += items
            if isinstance(items[-1], Ended):
                return got
    raise AssertionError(f"the stream stopped without an ending: {got}")


def test_closing_while_a_stream_sends_its_last_replay_page_ends_it_resumably(
    make: Callable[..., Database],
) -> None:
    database = make(heartbeat_interval=0.2)

    async def scenario() -> tuple[list[Item], int]:
        watches = Watches(database, database.settings)
        await watches.start()
        await create(database, "closing-1")
        stream = watches.stream(WatchRequest(EventFilter(), after_event_id=0))
        async with contextlib.aclosing(stream):
            first = await anext(stream)  # suspended at the yield of the replay's last page
            await watches.close()
            rest = await until_ended(stream)
        return first + rest, watches.active

    items, active = asyncio.run(scenario())
    assert [type(item) for item in items] == [LogEvent, Ended]
    assert items[-1] == Ended(EndReason.SHUTTING_DOWN, 1)
    assert active == 0


@pytest.mark.parametrize(
    ("bound", "burst_size"),
    [({"watch_buffer": 20}, 600), ({"watch_buffer_bytes": 64 * 1024}, 600), ({}, 2500)],
)
def test_a_stream_that_keeps_up_is_not_cut_off_by_one_burst(
    make: Callable[..., Database], bound: dict[str, int], burst_size: int
) -> None:
    """One commit of many events (a group commit, or another process's transaction) reaches
    the tail in batches of up to 1,000: a stream with nothing queued takes a batch whole, and
    takes each before the tail offers the next."""
    database = make(**bound)

    def burst(connection: Connection) -> None:
        for n in range(burst_size):
            tasks.create_task(
                connection, tasks.NewTask(task_id=f"burst-{n}", task_type="w", created_by="t")
            )

    async def scenario() -> list[Item]:
        watches = Watches(database, database.settings)
        await watches.start()
        stream = watches.stream(WatchRequest(EventFilter()))
        got: list[Item] = []
        async with contextlib.aclosing(stream):
            got += await anext(stream)
            await database.write(burst)
            async with asyncio.timeout(10):
                while sum(isinstance(item, LogEvent) for item in got) < burst_size:
                    got += await anext(stream)
        await watches.close()
        return got

    got = asyncio.run(scenario())
    assert not [item for item in got if isinstance(item, Ended)]
    assert [item.task_id for item in got if isinstance(item, LogEvent)] == [
        f"burst-{n}" for n in range(burst_size)
    ]


def test_an_until_terminal_burst_larger_than_the_buffer_is_delivered_before_it_ends(
    make: Callable[..., Database],
) -> None:
    database = make(watch_buffer=10)

    def burst(connection: Connection) -> None:
        for priority in range(1, 31):
            tasks.update_task(connection, "burst-task", {"priority": priority}, None)
        tasks.update_task_status(
            connection, tasks.StatusChange("burst-task", TaskStatus.FAILED, {})
        )

    async def scenario() -> tuple[int, list[Item]]:
        watches = Watches(database, database.settings)
        await watches.start()
        await create(database, "burst-task")
        request = WatchRequest(EventFilter(frozenset({"burst-task"})), until_terminal="burst-task")
        stream = watches.stream(request)
        async with contextlib.aclosing(stream):
            live = await anext(stream)
            assert isinstance(live[-1], Passed)
            await database.write(burst)
            got = await until_ended(stream)
        await watches.close()
        return live[-1].position, got

    start, got = asyncio.run(scenario())
    ids = [item.event_id for item in got if isinstance(item, LogEvent)]
    assert ids == list(range(start + 1, start + 32))
    assert got[-1] == Ended(EndReason.FINISHED, start + 31)


def test_a_replay_joins_the_live_feed_promptly_while_writes_never_stop(
    make: Callable[..., Database],
) -> None:
    """The tail keeps moving while a stream replays; the stream joins at the tail's position and
    reads the gap itself instead of chasing it page after page."""
    database = make(heartbeat_interval=5)

    async def scenario() -> tuple[list[Item], int, list[int]]:
        watches = Watches(database, database.settings)
        await watches.start()
        listener = watches.stream(WatchRequest(EventFilter()))  # keeps the tail reading
        await anext(listener)
        drain = asyncio.create_task(_drain(listener))
        stop = asyncio.Event()

        async def write() -> None:
            n = 0
            while not stop.is_set():
                await create(database, f"steady-{n}")
                n += 1
                await asyncio.sleep(0.002)

        writer = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        reads = 0
        read = database.read

        async def counting(operation: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += operation is events.read_replay_page
            return await read(operation, *args, **kwargs)

        database.read = counting  # type: ignore[method-assign]
        stream = watches.stream(WatchRequest(EventFilter(), after_event_id=0))
        got: list[Item] = []
        async with contextlib.aclosing(stream), asyncio.timeout(5):
            async for items in stream:
                await asyncio.sleep(0.01)  # a client on a real network
                got += items
                if any(isinstance(item, Passed) for item in items):
                    break
        stop.set()
        await writer
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await listener.aclose()
        table = [row["event_id"] for row in database.run_read(_all_events)]
        await watches.close()
        return got, reads, table

    got, reads, table = asyncio.run(scenario())
    assert reads <= 4, reads  # the replay, and the gap the tail opened meanwhile
    mark = next(item for item in got if isinstance(item, Passed))
    sent = [item.event_id for item in got if isinstance(item, LogEvent)]
    assert [event_id for event_id in sent if event_id <= mark.position] == [
        event_id for event_id in table if event_id <= mark.position
    ]


async def _drain(stream: AsyncGenerator[list[Item], None]) -> None:
    async for _ in stream:
        pass


def _all_events(connection: Connection) -> list[dict[str, Any]]:
    return events.read_log(connection, after_event_id=0, limit=10**6, max_bytes=10**12).rows
