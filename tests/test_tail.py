"""The event tail on a real database, without gRPC: while nobody listens, commits do not wake it;
a first subscriber hears at once of events committed in the meantime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Connection, text

from resinkit_grpc.config import Settings
from resinkit_grpc.store import migrations, tasks
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import EventFilter, LogEvent
from resinkit_grpc.watch.subscription import Subscription
from resinkit_grpc.watch.tail import FALLBACK_POLL_SECONDS, EventTail


def test_a_first_subscriber_hears_of_what_committed_while_nobody_listened(
    new_database_url: Callable[[], str],
) -> None:
    database = Database(Settings(database_url=new_database_url()))
    migrations.migrate(database.writer_engine)

    async def scenario() -> list[str]:
        tail = EventTail(database, batch_bytes=1 << 20)
        await tail.start()
        try:
            # A watcher's replay ends here; then a task is created before it subscribes.
            replayed_to = tail.position
            await database.write(
                tasks.create_task,
                tasks.NewTask(task_id="unheard", task_type="tail-test", created_by="test"),
            )
            await asyncio.sleep(0.05)  # the commit's wake-up has come and gone
            subscription = new_subscription(replayed_to)
            tail.subscribe(subscription, replayed_to)
            # Well within the fallback timer, which would find the event anyway.
            async with asyncio.timeout(FALLBACK_POLL_SECONDS / 2):
                items = await subscription.next_items(FALLBACK_POLL_SECONDS)
            return [item.task_id for item in items if isinstance(item, LogEvent)]
        finally:
            await tail.stop()

    try:
        assert asyncio.run(scenario()) == ["unheard"]
    finally:
        database.close()


def new_subscription(cursor: int) -> Subscription:
    return Subscription(EventFilter(), cursor, max_events=100, max_bytes=1 << 20)


class CountingEvent(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def test_commits_wake_the_tail_only_while_somebody_listens(
    new_database_url: Callable[[], str],
) -> None:
    database = Database(Settings(database_url=new_database_url()))
    migrations.migrate(database.writer_engine)

    async def create(task_id: str) -> None:
        await database.write(
            tasks.create_task,
            tasks.NewTask(task_id=task_id, task_type="tail-test", created_by="test"),
        )

    async def scenario() -> tuple[int, int, list[str]]:
        tail = EventTail(database, batch_bytes=1 << 20)
        wake = tail._wake = CountingEvent()
        await tail.start()
        try:
            await asyncio.sleep(0.1)  # PostgreSQL: LISTEN's own first wake-up
            before = wake.sets
            for n in range(3):
                await create(f"quiet-{n}")
            await asyncio.sleep(0.1)  # own commits, and 20 data_version polls or a NOTIFY
            unheard = wake.sets - before
            subscription = new_subscription(tail.position)
            tail.subscribe(subscription, tail.position)
            await create("heard")
            delivered: list[str] = []
            async with asyncio.timeout(FALLBACK_POLL_SECONDS / 2):
                while "heard" not in delivered:
                    items = await subscription.next_items(FALLBACK_POLL_SECONDS)
                    delivered += [item.task_id for item in items if isinstance(item, LogEvent)]
            await asyncio.sleep(0.05)
            return unheard, wake.sets - before, delivered
        finally:
            await tail.stop()

    try:
        unheard, heard, delivered = asyncio.run(scenario())
    finally:
        database.close()
    assert unheard == 0
    # subscribe() itself, then the commit (from the writer, and the poll or NOTIFY).
    assert heard >= 2
    assert delivered[-1] == "heard"


def test_a_commit_watcher_that_fails_is_restarted_and_delivery_stays_prompt(
    new_database_url: Callable[[], str],
) -> None:
    """Commits of another process reach the tail through the commit watcher (data_version poll
    or LISTEN); when it fails, the tail starts it again instead of falling back to its 1 s
    timer for good."""
    url = new_database_url()
    database = Database(Settings(database_url=url))
    migrations.migrate(database.writer_engine)
    elsewhere = Database(Settings(database_url=url))  # another writer: no in-process wake-up

    async def scenario() -> tuple[int, list[float]]:
        tail = EventTail(database, batch_bytes=1 << 20)
        watch_once = "_poll_data_version" if database.dialect == "sqlite" else "_listen_for_notify"
        real = getattr(tail, watch_once)
        calls = 0

        def fails_the_first_time(loop: asyncio.AbstractEventLoop) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("injected failure")
            real(loop)

        setattr(tail, watch_once, fails_the_first_time)
        await tail.start()
        delays = []
        try:
            subscription = new_subscription(tail.position)
            tail.subscribe(subscription, tail.position)
            await restarted(tail)
            await asyncio.sleep(0.3)  # PostgreSQL: LISTEN is in place again
            for n in range(5):
                await asyncio.sleep(0.05 + 0.07 * n)  # not in step with the fallback timer
                started = time.monotonic()
                await elsewhere.write(
                    tasks.create_task,
                    tasks.NewTask(task_id=f"elsewhere-{n}", task_type="tail-test", created_by="t"),
                )
                items = await subscription.next_items(FALLBACK_POLL_SECONDS * 3)
                assert [i.task_id for i in items if isinstance(i, LogEvent)] == [f"elsewhere-{n}"]
                delays.append(time.monotonic() - started)
        finally:
            await tail.stop()
        return calls, delays

    try:
        calls, delays = asyncio.run(scenario())
    finally:
        database.close()
        elsewhere.close()
    assert calls == 2
    # The fallback timer alone would take up to 1 s; the restarted watcher takes milliseconds.
    assert max(delays) < FALLBACK_POLL_SECONDS / 4, delays


def test_a_dropped_listen_connection_is_replaced(new_database_url: Callable[[], str]) -> None:
    """PostgreSQL: the LISTEN connection killed by the server is a real failure of the commit
    watcher; the tail connects again and hears the next commit of another process at once."""
    url = new_database_url()
    database = Database(Settings(database_url=url))
    if database.dialect != "postgresql":
        database.close()
        pytest.skip("LISTEN is PostgreSQL's")
    migrations.migrate(database.writer_engine)
    elsewhere = Database(Settings(database_url=url))

    async def scenario() -> float:
        tail = EventTail(database, batch_bytes=1 << 20)
        await tail.start()
        try:
            subscription = new_subscription(tail.position)
            tail.subscribe(subscription, tail.position)
            await asyncio.sleep(0.3)
            killed = await elsewhere.write(_terminate_listeners)
            assert killed == 1
            await restarted(tail)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await elsewhere.write(
                tasks.create_task,
                tasks.NewTask(task_id="after-kill", task_type="tail-test", created_by="t"),
            )
            items = await subscription.next_items(FALLBACK_POLL_SECONDS * 3)
            assert [i.task_id for i in items if isinstance(i, LogEvent)] == ["after-kill"]
            return time.monotonic() - started
        finally:
            await tail.stop()

    try:
        delay = asyncio.run(scenario())
    finally:
        database.close()
        elsewhere.close()
    assert delay < FALLBACK_POLL_SECONDS / 4


async def restarted(tail: EventTail) -> None:
    """Until the tail has restarted its commit watcher (a counter set on that thread)."""
    async with asyncio.timeout(5):
        while tail.commit_watch_restarts < 1:  # noqa: ASYNC110 (set on another thread)
            await asyncio.sleep(0.01)


def _terminate_listeners(connection: Connection) -> int:
    return len(
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        ).all()
    )
