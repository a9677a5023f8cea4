"""The group writer on a real database: operations queued together commit together, one that
fails (after writing) is undone alone while its neighbours commit, and nothing is reported
committed that did not commit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, event, func, select
from sqlalchemy.exc import DBAPIError

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import (
    DeadlineExceeded,
    StorageUnavailable,
    TaskAlreadyExists,
    TaskNotFound,
)
from resinkit_grpc.store import batches, migrations, tasks
from resinkit_grpc.store.database import Database, call_deadline
from resinkit_grpc.store.events import events as events_table
from resinkit_grpc.store.writer import GroupWriter, TransactionAborted


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


def test_a_create_of_a_taken_id_among_others_appends_no_event_and_fails_alone(
    database: Database,
) -> None:
    # On PostgreSQL the task and its event go in with one statement: a task that does not go
    # in must take its event with it, and its neighbours must keep theirs.
    async def scenario() -> list[Any]:
        await database.write(tasks.create_task, new_task("taken"))
        release, holding = await held_batch(database)
        batch = [
            asyncio.ensure_future(database.write(tasks.create_task, new_task(task_id)))
            for task_id in ("first", "taken", "second")
        ]
        await asyncio.sleep(0.05)  # all three are queued behind the held operation
        release.set()
        await holding
        return list(await asyncio.gather(*batch, return_exceptions=True))

    first, again, second = asyncio.run(scenario())
    assert (first["task_id"], second["task_id"]) == ("first", "second")
    assert isinstance(again, TaskAlreadyExists)
    with database.reader_engine.connect() as connection:
        assert [events_of(connection, t) for t in ("first", "taken", "second")] == [1, 1, 1]
        log = connection.execute(
            select(events_table.c.task_id, events_table.c.event_type).order_by(
                events_table.c.event_id
            )
        ).all()
    assert [tuple(row) for row in log] == [
        ("taken", "CREATED"),
        ("first", "CREATED"),
        ("second", "CREATED"),
    ]


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


def swallow_a_database_error(connection: Connection, task_id: str) -> str:
    """Writes a task, then breaks the transaction under itself and carries on as if nothing had
    happened: PostgreSQL aborts the transaction at the error; on SQLite, the ROLLBACK stands for
    one SQLite performs by itself (after a full disk, for one)."""
    tasks.create_task(connection, new_task(task_id))
    if connection.dialect.name == "postgresql":
        with contextlib.suppress(DBAPIError):
            connection.exec_driver_sql("SELECT 1/0")
    else:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.execute("ROLLBACK")
    return "carried on"


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in a batch"])
def test_a_transaction_broken_under_an_operation_is_never_reported_committed(
    database: Database, batched: bool
) -> None:
    async def scenario() -> list[Any]:
        release, holding = await held_batch(database)
        writes: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(database.write(swallow_a_database_error, "broken"))
        ]
        if batched:
            writes.append(asyncio.ensure_future(database.write(tasks.create_task, new_task("n"))))
        await asyncio.sleep(0.05)
        release.set()
        await holding
        return list(await asyncio.gather(*writes, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[0], TransactionAborted | StorageUnavailable), outcomes
    # A neighbour commits where the transaction can be saved (PostgreSQL rolls back to the broken
    # operation's savepoint) and fails with it where it cannot (SQLite's transaction is gone):
    # either way, what is reported committed is there, and nothing else.
    with database.reader_engine.connect() as connection:
        for task_id, outcome in zip(("broken", "n"), outcomes, strict=False):
            if isinstance(outcome, Exception):
                with pytest.raises(TaskNotFound):
                    tasks.get_task(connection, task_id)
            else:
                assert tasks.get_task(connection, task_id)["task_id"] == task_id
    created = asyncio.run(database.write(tasks.create_task, new_task("afterwards")))
    assert created["task_id"] == "afterwards", "the writer did not recover"


def stop_iteration(connection: Connection) -> None:
    next(iter(()))


def test_an_operation_raising_stop_iteration_leaves_no_caller_waiting(database: Database) -> None:
    async def scenario() -> list[Any]:
        release, holding = await held_batch(database)
        writes = [
            asyncio.ensure_future(database.write(stop_iteration)),
            asyncio.ensure_future(database.write(tasks.create_task, new_task("neighbour"))),
        ]
        await asyncio.sleep(0.05)
        release.set()
        await holding
        async with asyncio.timeout(10):
            return list(await asyncio.gather(*writes, return_exceptions=True))

    failed, neighbour = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and "StopIteration" in str(failed)
    assert neighbour["task_id"] == "neighbour"


def writer_for(database: Database, **options: Any) -> GroupWriter:
    return GroupWriter(database.writer_engine, lambda: None, prepare=lambda c: None, **options)


def test_a_write_whose_caller_has_gone_is_skipped(database: Database) -> None:
    ran: list[str] = []

    async def scenario() -> None:
        release, holding = await held_batch(database)
        abandoned = asyncio.ensure_future(database.write(lambda c: ran.append("abandoned")))
        kept = asyncio.ensure_future(database.write(lambda c: ran.append("kept")))
        await asyncio.sleep(0.05)
        abandoned.cancel()  # its deadline passed, say, while it waited
        await asyncio.sleep(0.05)
        release.set()
        await holding
        await kept
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned

    asyncio.run(scenario())
    assert ran == ["kept"]


def test_a_write_whose_deadline_passes_while_it_waits_is_never_run(database: Database) -> None:
    """Exact, even while the caller still waits (its cancellation not yet delivered): the
    deadline is checked on the writer thread itself when the batch begins."""
    ran: list[str] = []

    async def scenario() -> tuple[Any, Any]:
        release, holding = await held_batch(database)
        token = call_deadline.set(time.monotonic() + 0.05)
        late = asyncio.ensure_future(database.write(lambda c: ran.append("late")))
        call_deadline.reset(token)
        kept = asyncio.ensure_future(database.write(lambda c: ran.append("kept")))
        await asyncio.sleep(0.15)
        release.set()
        await holding
        return tuple(await asyncio.gather(late, kept, return_exceptions=True))

    late, kept = asyncio.run(scenario())
    assert isinstance(late, DeadlineExceeded) and kept is None
    assert ran == ["kept"]


def test_writes_beyond_the_queue_bound_are_refused_at_once(database: Database) -> None:
    writer = writer_for(database, max_queued=5)
    started, release = threading.Event(), threading.Event()

    def hold(connection: Connection) -> None:
        started.set()
        release.wait(10)

    async def scenario() -> list[str]:
        holding = writer.submit(hold)
        assert await asyncio.to_thread(started.wait, 10)
        futures = [writer.submit(lambda c: "done") for _ in range(8)]
        refused = [f for f in futures if f.done()]  # answered before the writer was free
        release.set()
        await holding
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert len(refused) == 3
        return [
            type(outcome).__name__ if isinstance(outcome, Exception) else outcome
            for outcome in outcomes
        ]

    try:
        outcomes = asyncio.run(scenario())
    finally:
        writer.close()
    assert outcomes == ["done"] * 5 + ["Overloaded"] * 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_every_write_is_answered_after_the_writer_thread_dies(database: Database) -> None:
    writer = writer_for(database)

    def die(connection: Connection) -> None:
        raise SystemExit("the writer thread dies")  # not an Exception: nothing catches it

    async def scenario() -> None:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(writer.submit(die), 10)
        later = writer.submit(lambda c: "never")
        async with asyncio.timeout(5):  # answered, not left waiting
            with pytest.raises(StorageUnavailable):
                await later

    asyncio.run(scenario())
    writer.close()


def test_a_write_after_close_is_answered(database: Database) -> None:
    writer = writer_for(database)
    writer.close()

    async def scenario() -> None:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(writer.submit(lambda c: "never"), 5)

    asyncio.run(scenario())


def test_a_commit_listener_that_fails_neither_loses_the_write_nor_stops_the_writer(
    database: Database,
) -> None:
    def explode() -> None:
        raise RuntimeError("listener bug")

    writer = GroupWriter(database.writer_engine, explode, prepare=lambda c: None)

    async def scenario() -> list[Any]:
        first = await asyncio.wait_for(
            writer.submit(lambda c: tasks.create_task(c, new_task("listener-1"))), 10
        )
        second = await asyncio.wait_for(
            writer.submit(lambda c: tasks.create_task(c, new_task("listener-2"))), 10
        )
        return [first["task_id"], second["task_id"]]

    try:
        assert asyncio.run(scenario()) == ["listener-1", "listener-2"]
    finally:
        writer.close()
    assert database.run_read(events_of, "listener-1") == 1


@pytest.mark.parametrize("where", ["commit", "statement"])
def test_a_failed_commit_is_reported_as_an_unknown_outcome(database: Database, where: str) -> None:
    """A connection lost at COMMIT may have committed: the caller is told the outcome is
    unknown. Lost before, nothing was written, and the caller is told that."""
    lost = DBAPIError("COMMIT", {}, Exception("connection lost"), connection_invalidated=True)

    def fail_commit(connection: Any) -> None:
        raise lost

    if where == "commit":
        event.listen(database.writer_engine, "commit", fail_commit)

    def work(connection: Connection) -> None:
        tasks.create_task(connection, new_task(f"unknown-{where}"))
        if where == "statement":
            raise lost

    async def scenario() -> StorageUnavailable:
        with pytest.raises(StorageUnavailable) as failed:
            await database.write(work)
        return failed.value

    try:
        error = asyncio.run(scenario())
    finally:
        if where == "commit":
            event.remove(database.writer_engine, "commit", fail_commit)
    assert error.outcome_unknown == (where == "commit")


# CreateTasks queued together run as one call of batches.create_tasks (GroupWriter.submit_item).
# Whatever the mix (taken ids, a request_id used before or twice in one batch, other operations
# between them, one failing), each caller must get what it would have got had the calls run one
# by one in their queue order, and the log must hold exactly the CREATED events of the tasks
# made, in that order.
_CREATE = st.tuples(
    st.just("create"),
    st.integers(0, 15),  # task_id among few, so that some are taken
    st.one_of(st.none(), st.none(), st.integers(0, 3)),  # request_id, likewise
)
_CALLS = st.lists(
    st.one_of(
        _CREATE,
        _CREATE,
        _CREATE,
        st.tuples(st.sampled_from(["fail", "other"]), st.integers(0, 5), st.none()),
    ),
    min_size=1,
    max_size=12,
)
_examples = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=_CALLS, created_before=st.sets(st.integers(0, 15), max_size=2))
def test_creates_run_together_answer_each_caller_as_if_they_ran_alone(
    database: Database, calls: list[tuple[str, int, int | None]], created_before: set[int]
) -> None:
    run = f"x{next(_examples)}-"  # this example's own ids, in the one database

    def new(task: int, request: int | None) -> tasks.NewTask:
        request_id = None if request is None else f"{run}r{request}"
        return new_task(f"{run}t{task}")._replace(request_id=request_id)

    # The model: the calls one by one.
    made: dict[str, str] = {f"{run}t{task}": "before" for task in created_before}
    by_request: dict[str, str] = {}
    expected: list[str | type[Exception]] = []
    created: list[str] = []
    for kind, task, request in calls:
        task_id = f"{run}t{task}" if kind == "create" else f"{run}{kind}{task}-{len(expected)}"
        request_id = None if request is None else f"{run}r{request}"
        if kind == "fail":
            expected.append(TaskAlreadyExists)
        elif request_id is not None and request_id in by_request:
            expected.append(by_request[request_id])
        elif task_id in made:
            expected.append(TaskAlreadyExists)
        else:
            made[task_id] = "now"
            created.append(task_id)
            if request_id is not None:
                by_request[request_id] = task_id
            expected.append(task_id)

    async def scenario() -> list[Any]:
        for task in sorted(created_before):
            await database.write(tasks.create_task, new(task, None))
        release, holding = await held_batch(database)
        writes = []
        for index, (kind, task, request) in enumerate(calls):
            if kind == "create":
                write = database.write_item(batches.create_tasks, new(task, request))
            elif kind == "fail":
                write = database.write(create_then_fail, f"{run}fail{task}-{index}")
            else:
                write = database.write(tasks.create_task, new_task(f"{run}other{task}-{index}"))
            writes.append(asyncio.ensure_future(write))
        await asyncio.sleep(0.02)  # all queued behind the held operation: one batch
        release.set()
        await holding
        return list(await asyncio.gather(*writes, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    for (kind, _, _), want, got in zip(calls, expected, outcomes, strict=True):
        if isinstance(want, type):
            assert isinstance(got, want), (kind, want, got)
        else:
            assert not isinstance(got, Exception), (kind, want, got)
            assert got["task_id"] == want, (kind, want, got["task_id"])
    with database.reader_engine.connect() as connection:
        log = connection.execute(
            select(events_table.c.task_id)
            .where(events_table.c.task_id.startswith(run, autoescape=True))
            .where(events_table.c.event_type == "CREATED")
            .order_by(events_table.c.event_id)
        ).scalars()
        assert list(log)[len(created_before) :] == created


def test_items_queued_together_run_as_one_call_in_queue_order(database: Database) -> None:
    """Items of one `together` that follow each other in a batch make one call of it; another
    operation between them splits the run, so nothing is reordered around it."""
    calls: list[list[str]] = []

    def counting(connection: Connection, news: list[tasks.NewTask]) -> list[Any]:
        calls.append([new.task_id for new in news])
        return batches.create_tasks(connection, news)

    async def scenario() -> list[Any]:
        release, holding = await held_batch(database)
        writes = [
            database.write_item(counting, new_task("c1")),
            database.write_item(counting, new_task("c2")),
            database.write_item(counting, new_task("c3")),
            database.write(tasks.create_task, new_task("between")),
            database.write_item(counting, new_task("c4")),
            database.write_item(counting, new_task("c5")),
        ]
        queued = [asyncio.ensure_future(write) for write in writes]
        await asyncio.sleep(0.05)
        release.set()
        await holding
        return list(await asyncio.gather(*queued))

    answers = asyncio.run(scenario())
    assert [answer["task_id"] for answer in answers] == ["c1", "c2", "c3", "between", "c4", "c5"]
    assert calls == [["c1", "c2", "c3"], ["c4", "c5"]]
    with database.reader_engine.connect() as connection:
        log = connection.execute(
            select(events_table.c.task_id).order_by(events_table.c.event_id)
        ).scalars()
        assert list(log) == ["c1", "c2", "c3", "between", "c4", "c5"]


def commit_under_the_writer(connection: Connection, task_id: str) -> str:
    """Ends the writer's transaction under it (a stray COMMIT) and writes on: on PostgreSQL the
    writer's connection is in psycopg's autocommit mode, so what follows commits on its own."""
    tasks.create_task(connection, new_task(f"{task_id}-before"))
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute("COMMIT")
    tasks.create_task(connection, new_task(f"{task_id}-after"))
    return "carried on"


def test_an_operation_that_ends_the_transaction_under_it_is_never_reported_committed(
    database: Database,
) -> None:
    """From a review: the check before COMMIT looked only for PostgreSQL's aborted state, and a
    transaction that had ended (so that the rest ran statement by statement) passed it."""
    with pytest.raises((TransactionAborted, StorageUnavailable)):
        asyncio.run(database.write(commit_under_the_writer, "stray"))
    created = asyncio.run(database.write(tasks.create_task, new_task("after-stray")))
    assert created["task_id"] == "after-stray", "the writer did not recover"
