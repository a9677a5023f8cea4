"""The event log: appending events inside a task operation's transaction, and reading them back
in `event_id` order (history pages and the watch tail alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, exists, func, insert, select, text

from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.rules import EventType, TaskStatus
from resinkit_grpc.store.models import Task, TaskEvent
from resinkit_grpc.store.prepared import Prepared

events = cast(Table, TaskEvent.__table__)
tasks = cast(Table, Task.__table__)

# Shared by every replica: serializes event appends (see append_event).
EVENT_APPEND_LOCK_KEY = 0x7265_736B_6576_74  # "reskevt"
APPEND_LOCK = text(f"SELECT pg_advisory_xact_lock({EVENT_APPEND_LOCK_KEY})")
NOTIFY_CHANNEL = "resinkit_task_events"
NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")
_APPENDS_LOCKED_BY = "resinkit_appends_locked_by"

EVENT_FIELDS = (
    "task_id",
    "event_type",
    "event_data",
    "previous_status",
    "new_status",
    "timestamp",
    "actor",
)
INSERT = Prepared(insert(events).values({name: bindparam(name) for name in EVENT_FIELDS}))

# Events carry their task's type (immutable) so watchers can filter on it.
EVENT_COLUMNS = (*events.c, tasks.c.task_type)


def append_event(
    connection: Connection,
    task_id: str,
    event_type: EventType,
    timestamp: datetime,
    *,
    event_data: Mapping[str, Any] | None = None,
    previous_status: TaskStatus | None = None,
    new_status: TaskStatus | None = None,
    actor: str | None = None,
) -> None:
    """Appends one event; called last in every task operation.

    Event ids must become visible in id order, or a watcher tailing `event_id > last` would
    skip an id that commits late. SQLite has one writer at a time, so that holds already. On
    PostgreSQL, ids come from a sequence at INSERT time while visibility comes at COMMIT, so
    appends are serialized across every replica by a transaction-scoped advisory lock (see
    serialize_appends): the next writer obtains the lock, and so its ids, only after this
    transaction has committed and become visible, because PostgreSQL makes a commit visible
    before it releases the transaction's locks. Readers therefore always see a prefix of the id
    order (ids of rolled-back transactions are permanent, harmless holes).
    """
    serialize_appends(connection)
    INSERT.execute(
        connection,
        {
            "task_id": task_id,
            "event_type": event_type.value,
            "event_data": None if event_data is None else dict(event_data),
            "previous_status": None if previous_status is None else previous_status.value,
            "new_status": None if new_status is None else new_status.value,
            "timestamp": timestamp,
            "actor": actor,
        },
    )


def serialize_appends(connection: Connection) -> None:
    """On PostgreSQL, holds the event-append lock until the transaction ends, and has NOTIFY
    wake every replica's tail when it commits (a wake-up only, never the source of events).

    The group writer calls this first thing in each transaction, before any row lock: a
    transaction holding the append lock then never waits for a row lock held by one waiting
    for the append lock, so replicas cannot deadlock. Taking it again in the same transaction
    is free."""
    if connection.dialect.name != "postgresql":
        return
    transaction = connection.get_transaction()
    if connection.info.get(_APPENDS_LOCKED_BY) is transaction:
        return
    connection.execute(APPEND_LOCK)
    connection.execute(NOTIFY)
    connection.info[_APPENDS_LOCKED_BY] = transaction


def read_events(
    connection: Connection,
    *,
    after_event_id: int,
    limit: int,
    up_to_event_id: int | None = None,
    task_ids: Sequence[str] = (),
    task_types: Sequence[str] = (),
    event_types: Sequence[str] = (),
) -> list[Row[Any]]:
    """Events with after_event_id < event_id <= up_to_event_id matching every non-empty filter,
    in event_id order."""
    statement = (
        select(*EVENT_COLUMNS)
        .join(tasks, tasks.c.task_id == events.c.task_id)
        .where(events.c.event_id > after_event_id)
        .order_by(events.c.event_id)
        .limit(limit)
    )
    if up_to_event_id is not None:
        statement = statement.where(events.c.event_id <= up_to_event_id)
    if task_ids:
        statement = statement.where(events.c.task_id.in_(task_ids))
    if task_types:
        statement = statement.where(tasks.c.task_type.in_(task_types))
    if event_types:
        statement = statement.where(events.c.event_type.in_(event_types))
    return list(connection.execute(statement))


def list_task_events(
    connection: Connection,
    task_id: str | None,
    event_types: Sequence[str],
    *,
    after_event_id: int,
    limit: int,
) -> list[Row[Any]]:
    """A task's history (every task's when task_id is None); an unknown task is NOT_FOUND."""
    if (
        task_id is not None
        and not connection.execute(select(exists().where(tasks.c.task_id == task_id))).scalar_one()
    ):
        raise TaskNotFound(task_id)
    return read_events(
        connection,
        after_event_id=after_event_id,
        limit=limit,
        task_ids=(task_id,) if task_id else (),
        event_types=event_types,
    )


def last_event_id(connection: Connection) -> int:
    return int(
        connection.execute(select(func.coalesce(func.max(events.c.event_id), 0))).scalar_one()
    )


@dataclass(frozen=True)
class ReplayPage:
    """One page of a watch's replay."""

    events: list[Row[Any]]
    # Every matching event with an id up to here is in `events` or an earlier page; never
    # beyond the end of the log.
    scanned_to: int
    # The status of the task named by `status_of`, in the same snapshot (None if unknown).
    task_status: str | None


def read_replay_page(
    connection: Connection,
    *,
    after_event_id: int,
    limit: int,
    task_ids: Sequence[str],
    task_types: Sequence[str],
    event_types: Sequence[str],
    status_of: str | None,
) -> ReplayPage:
    """Matching events after `after_event_id`, and how far the page covers the log.

    Correct because the visible events always form a prefix of the id order (see append_event):
    nothing at or below `upper` can still appear after it was read."""
    # The status first: on PostgreSQL (READ COMMITTED) every statement sees a newer moment,
    # and a terminal status read first guarantees its event is at or below `upper`.
    status = None
    if status_of is not None:
        status = connection.execute(
            select(tasks.c.status).where(tasks.c.task_id == status_of)
        ).scalar_one_or_none()
    upper = last_event_id(connection)
    rows = read_events(
        connection,
        after_event_id=after_event_id,
        up_to_event_id=upper,
        limit=limit,
        task_ids=task_ids,
        task_types=task_types,
        event_types=event_types,
    )
    scanned_to = rows[-1].event_id if len(rows) == limit else upper
    return ReplayPage(rows, scanned_to, status)
