"""Batch operations (BatchCreateTasks, BatchGetTasks): many tasks in one transaction, with one
statement per kind of row instead of one per task.

A batch create is one operation of the group writer: all of it commits or none of it, and an
item that fails names its index (ResinkitError.index)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import BindParameter, Connection, bindparam, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from resinkit_grpc.errors import (
    ConcurrentCreate,
    InvalidArgument,
    ResinkitError,
    TaskAlreadyExists,
    TasksNotFound,
)
from resinkit_grpc.rules import EventType, TaskStatus
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.events import append_events
from resinkit_grpc.store.filter_indexes import add_tags
from resinkit_grpc.store.prepared import Prepared
from resinkit_grpc.store.size_cut import stored_length
from resinkit_grpc.store.tasks import (
    BASIC_COLUMNS,
    FULL_COLUMNS,
    LARGE_COLUMNS,
    NewTask,
    TaskRecord,
    create_task,
    new_record,
    tasks,
)

T = TypeVar("T")

_IDS: BindParameter[str] = bindparam("task_ids", expanding=True)
_REQUEST_IDS: BindParameter[str] = bindparam("request_ids", expanding=True)
SELECT_TAKEN = select(tasks.c.task_id).where(tasks.c.task_id.in_(_IDS))
SELECT_BY_REQUEST_IDS = select(*FULL_COLUMNS).where(tasks.c.request_id.in_(_REQUEST_IDS))
SELECT_FULL = select(*FULL_COLUMNS).where(tasks.c.task_id.in_(_IDS))
SELECT_BASIC = select(*BASIC_COLUMNS).where(tasks.c.task_id.in_(_IDS))
# What a FULL batch would fetch, before fetching it: a batch of large tasks is refused without
# reading them all into memory.
_STORED = sum(
    (
        stored_length(tasks.c[name])
        for name in ("task_name", "description", "tags", *sorted(LARGE_COLUMNS))
    ),
    literal(0),
)
SELECT_STORED_SIZE = select(func.coalesce(func.sum(_STORED), 0)).where(tasks.c.task_id.in_(_IDS))
INSERT_SQLITE = Prepared(sqlite.insert(tasks).on_conflict_do_nothing())
INSERT_POSTGRESQL = Prepared(
    postgresql.insert(tasks).on_conflict_do_nothing().returning(tasks.c.task_id)
)
# Past this many stored bytes a FULL batch cannot fit a response, whatever the encoding.
MAX_STORED_BYTES = 8 * 1024 * 1024


def at_index(error: ResinkitError, index: int) -> ResinkitError:
    """`error`, marked as the failure of the batch's item `index`."""
    error.index = index
    return error


def create_tasks(connection: Connection, news: list[NewTask]) -> list[TaskRecord]:
    """Several callers' CreateTasks in one pass (the writer runs those queued together this
    way, see GroupWriter.submit_item): for each, what create_task would have returned, in
    order; or an error when any of them would not simply succeed (a taken task_id, a request_id
    used twice among them), and the writer then runs each alone."""
    if len(news) == 1:
        return [create_task(connection, news[0])]
    return batch_create_tasks(connection, news, list, name_failures=False)


def batch_create_tasks(
    connection: Connection,
    news: Sequence[NewTask],
    reply: Callable[[list[TaskRecord]], T],
    *,
    name_failures: bool = True,
) -> T:
    """Creates every task of `news` with its CREATED event (in order), or none: the first item
    that fails raises, marked with its index (unless not `name_failures`: then some error, at
    less cost). An item whose request_id was used before returns the task it created and
    writes nothing. `reply` turns the tasks into the caller's answer inside the transaction,
    so that an answer it refuses (too large) writes nothing either."""
    done: dict[str, TaskRecord] = {}
    request_ids = [new.request_id for new in news if new.request_id is not None]
    if request_ids:
        found = connection.execute(SELECT_BY_REQUEST_IDS, {"request_ids": request_ids})
        done = {row.request_id: row._asdict() for row in found}
    now = utcnow()
    records: list[TaskRecord] = []
    fresh: list[tuple[int, TaskRecord]] = []
    for index, new in enumerate(news):
        first = None if new.request_id is None else done.get(new.request_id)
        if first is not None:
            records.append(first)
            continue
        expires_at = new.expires_at
        if new.timeout_seconds is not None:
            expires_at = now + timedelta(seconds=new.timeout_seconds)
        record = new_record(new, now, expires_at)
        records.append(record)
        fresh.append((index, record))
    if fresh:
        _insert(connection, fresh, name_failures)
        add_tags(connection, [record for _, record in fresh])
        append_events(
            connection,
            [
                {
                    "task_id": record["task_id"],
                    "event_type": EventType.CREATED.value,
                    "event_data": None,
                    "previous_status": None,
                    "new_status": TaskStatus.PENDING.value,
                    "timestamp": now,
                    "actor": news[index].actor or news[index].created_by,
                }
                for index, record in fresh
            ],
            [record for _, record in fresh],
        )
    return reply(records)


def _insert(
    connection: Connection, fresh: list[tuple[int, TaskRecord]], name_failures: bool
) -> None:
    """Inserts the new rows, or raises ALREADY_EXISTS naming the first item whose task_id is
    taken. Inside a savepoint: when a row does not go in, what did is undone first, so that
    what is found taken afterwards was taken before. Without `name_failures`, no savepoint
    (two statements fewer) and a ConcurrentCreate that names no item."""
    rows = [record for _, record in fresh]
    if name_failures:
        connection.exec_driver_sql("SAVEPOINT batch_insert")
    if connection.dialect.name == "sqlite":
        complete = INSERT_SQLITE.execute_many(connection, rows) == len(rows)
    else:
        complete = len(INSERT_POSTGRESQL.returned_many(connection, rows)) == len(rows)
    if complete:
        if name_failures:
            connection.exec_driver_sql("RELEASE SAVEPOINT batch_insert")
        return
    if not name_failures:
        raise ConcurrentCreate(
            "a task_id or request_id of these tasks is taken; nothing was created"
        )
    connection.exec_driver_sql("ROLLBACK TO SAVEPOINT batch_insert")
    connection.exec_driver_sql("RELEASE SAVEPOINT batch_insert")
    ids = [record["task_id"] for record in rows]
    taken = set(connection.execute(SELECT_TAKEN, {"task_ids": ids}).scalars())
    for index, record in fresh:
        if record["task_id"] in taken:
            raise at_index(TaskAlreadyExists(record["task_id"]), index)
    # Not a task_id, then a request_id: another replica's create took it meanwhile.
    raise ConcurrentCreate(
        "a concurrent call created a task with one of these request_ids meanwhile; nothing was "
        "created: retry (items whose request_id is taken then return their task)"
    )


def batch_get_tasks(
    connection: Connection,
    task_ids: Sequence[str],
    *,
    full: bool,
    allow_missing: bool,
) -> list[TaskRecord]:
    """The tasks in the order asked (an id asked twice comes twice); NOT_FOUND naming the
    missing ids unless `allow_missing`, which leaves them out."""
    wanted = list(dict.fromkeys(task_ids))
    if full:
        size = connection.execute(SELECT_STORED_SIZE, {"task_ids": wanted}).scalar_one()
        if size > MAX_STORED_BYTES:
            raise too_large("task_ids", "tasks", "ask for fewer, or for the BASIC view")
    statement = SELECT_FULL if full else SELECT_BASIC
    result = connection.execute(statement, {"task_ids": wanted})
    keys = tuple(result.keys())
    records = (dict(zip(keys, row, strict=True)) for row in result)
    found = {record["task_id"]: record for record in records}
    missing = [task_id for task_id in wanted if task_id not in found]
    if missing and not allow_missing:
        raise TasksNotFound(missing)
    return [found[task_id] for task_id in task_ids if task_id in found]


def too_large(field: str, what: str, advice: str) -> InvalidArgument:
    return InvalidArgument.one(
        field, f"the {what} would not fit in one response (3.5 MB); {advice}"
    )
