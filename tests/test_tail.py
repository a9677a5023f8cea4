"""The event tail on a real database, without gRPC: while nobody listens, commits do not wake it;
a first subscriber hears at once of events committed in the meantime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from resinkit_grpc.config import Settings
from resinkit_grpc.store import migrations, tasks
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.subscription import EventFilter, Subscription
from resinkit_grpc.watch.tail import FALLBACK_POLL_SECONDS, EventTail


def test_a_first_subscriber_hears_of_what_committed_while_nobody_listened(
    new_database_url: Callable[[], str],
) -> None:
    database = Database(Settings(database_url=new_database_url()))
    migrations.migrate(database.writer_engine)

    async def scenario() -> list[str]:
        tail = EventTail(database)
        await tail.start()
        try:
            # A watcher's replay ends here; then a task is created before it subscribes.
            replayed_to = tail.position
            await database.write(
                tasks.create_task,
                tasks.NewTask(task_id="unheard", task_type="tail-test", created_by="test"),
            )
            await asyncio.sleep(0.05)  # the commit's wake-up has come and gone
            subscription = Subscription(EventFilter(), replayed_to, 100, None)
            tail.subscribe(subscription, replayed_to)
            # Well within the fallback timer, which would find the event anyway.
            async with asyncio.timeout(FALLBACK_POLL_SECONDS / 2):
                while not subscription.pending:
                    await subscription.wakeup.wait()
                    subscription.wakeup.clear()
            return [event.task_id for event in subscription.pending]
        finally:
            await tail.stop()

    try:
        assert asyncio.run(scenario()) == ["unheard"]
    finally:
        database.close()


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
        tail = EventTail(database)
        wake = tail._wake = CountingEvent()
        await tail.start()
        try:
            await asyncio.sleep(0.1)  # PostgreSQL: LISTEN's own first wake-up
            before = wake.sets
            for n in range(3):
                await create(f"quiet-{n}")
            await asyncio.sleep(0.1)  # own commits, and 20 data_version polls or a NOTIFY
            unheard = wake.sets - before
            subscription = Subscription(EventFilter(), tail.position, 100, None)
            tail.subscribe(subscription, tail.position)
            await create("heard")
            async with asyncio.timeout(FALLBACK_POLL_SECONDS / 2):
                while not subscription.pending:
                    await subscription.wakeup.wait()
                    subscription.wakeup.clear()
            await asyncio.sleep(0.05)
            return unheard, wake.sets - before, [e.task_id for e in subscription.pending]
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
