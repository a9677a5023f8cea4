"""The group writer on a real database: operations queued together commit together, and one that
fails (after writing) is undone alone while its neighbours commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import TaskAlreadyExists, TaskNotFound
from resinkit_grpc.store import migrations, tasks
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.events import events as events_table


@pytest.fixture
def database(new_database_url: Callable[[], str]) -> Iterator[Database]:
    # No operation on the event loop: every write goes through the writer thread.
    database = Database(Settings(database_url=new_database_url(), loop_read_budget=0))
    migrations.migrate(database.writer_engine)
    yield database
    database.close()


def new_task(task_id: str) -> tasks.NewTask:
    return tasks.NewTask(task_id=task_id, task_type="writer-test", created_by="test")


def create_then_fail(connection: Connection, task_id: str) -> None:
    """Writes a task and its event, then fails: none of it may survive."""
    tasks.create_task(connection, new_task(task_id))
    raise TaskAlreadyExists(task_id)


def events_of(connection: Connection, task_id: str) -> int:
    query = select(func.count()).where(events_table.c.task_id == task_id)
    return int(connection.execute(query).scalar_one())


async def held_batch(database: Database) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keeps the writer busy with one operation until the returned event is set, so that what
    is submitted meanwhile queues up and runs as one batch."""
    started, release = threading.Event(), threading.Event()

    def hold(connection: Connection) -> None:
        started.set()
        release.wait(10)

    holding = asyncio.ensure_future(database.write(hold))
    assert await asyncio.to_thread(started.wait, 10), "the writer never ran the first operation"
    return release, holding


def test_one_failing_operation_in_a_batch_is_undone_alone(database: Database) -> None:
    async def scenario() -> list[Any]:
        release, holding = await held_batch(database)
        batch = [
            asyncio.ensure_future(database.write(tasks.create_task, new_task("before"))),
            asyncio.ensure_future(database.write(create_then_fail, "failed")),
            asyncio.ensure_future(database.write(tasks.create_task, new_task("after"))),
        ]
        await asyncio.sleep(0.05)  # all three are queued behind the held operation
        release.set()
        await holding
        return list(await asyncio.gather(*batch, return_exceptions=True))

    before, failed, after = asyncio.run(scenario())
    assert before["task_id"] == "before" and after["task_id"] == "after"
    assert isinstance(failed, TaskAlreadyExists)
    with database.reader_engine.connect() as connection:
        assert tasks.get_task(connection, "before")["status"] == "PENDING"
        assert tasks.get_task(connection, "after")["status"] == "PENDING"
        with pytest.raises(TaskNotFound):
            tasks.get_task(connection, "failed")
        assert [events_of(connection, t) for t in ("before", "failed", "after")] == [1, 0, 1]


def test_a_lone_failing_operation_leaves_nothing_behind(database: Database) -> None:
    async def scenario() -> None:
        with pytest.raises(TaskAlreadyExists):
            await database.write(create_then_fail, "alone")
        created = await database.write(tasks.create_task, new_task("next"))
        assert created["task_id"] == "next"

    asyncio.run(scenario())
    with database.reader_engine.connect() as connection:
        with pytest.raises(TaskNotFound):
            tasks.get_task(connection, "alone")
        assert events_of(connection, "alone") == 0
        assert events_of(connection, "next") == 1
