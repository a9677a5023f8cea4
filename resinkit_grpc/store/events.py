"""The event log: appending events inside a task operation's transaction, and reading them back
in `event_id` order (history pages and the watch tail alike)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Insert,
    Table,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
)

from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.notification_config import Webhook
from resinkit_grpc.rules import EventType, TaskStatus
from resinkit_grpc.store import deliveries
from resinkit_grpc.store.engine import unbegun
from resinkit_grpc.store.models import Task, TaskEvent
from resinkit_grpc.store.prepared import Prepared
from resinkit_grpc.store.retention import purged_through
from resinkit_grpc.store.size_cut import cut_by_size, stored_length

events = cast(Table, TaskEvent.__table__)
tasks = cast(Table, Task.__table__)

# Shared by every replica: serializes event appends (see append_event).
EVENT_APPEND_LOCK_KEY = 0x7265_736B_6576_74  # "reskevt"
NOTIFY_CHANNEL = "resinkit_task_events"
# The lock, and the NOTIFY its transaction sends when it commits, in one round trip: each one
# the writer saves while holding the lock shortens every replica's wait for it. pg_notify with
# an empty payload is what NOTIFY without one sends.
_APPEND_LOCK_SQL = (
    f"SELECT pg_advisory_xact_lock({EVENT_APPEND_LOCK_KEY}), pg_notify('{NOTIFY_CHANNEL}', '')"
)
APPEND_LOCK = text(_APPEND_LOCK_SQL)
# Where the driver begins no transaction by itself (the group writer's connection, in psycopg's
# autocommit mode): BEGIN and the lock in one round trip (the simple query protocol runs both).
BEGIN_WITH_APPEND_LOCK = "BEGIN; " + _APPEND_LOCK_SQL
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
LAST_ROWID = Prepared(select(func.last_insert_rowid().label("id")))
INSERT_RETURNING = (
    insert(events)
    .values({name: bindparam(name) for name in EVENT_FIELDS})
    .returning(events.c.event_id)
)

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
    task: Mapping[str, Any] | None = None,
) -> None:
    """Appends one event; called last in every task operation, with `task` as the operation
    leaves it: the webhooks of its notification_config that hear the event get their
    deliveries queued in this same transaction (see store/deliveries.py).

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
    row = _event_row(task_id, event_type, timestamp, event_data, previous_status, new_status, actor)
    hooks = [] if task is None else deliveries.hearing(task, row["event_type"], row["new_status"])
    _append(connection, row, task, hooks)


def with_event(change: Insert) -> Insert:
    """One statement: `change` (which RETURNs the task_id of the one row it wrote, or nothing),
    then its task's event, inserted only when `change` wrote its row; it RETURNs the event's
    id. For append_with (PostgreSQL): one round trip instead of two, while the lock is held.
    The event's values are bound as `event_<field>` (see EVENT_FIELDS), with their columns'
    types: a SELECT list gives the database nothing to infer them from."""
    written = change.cte("written")
    values = [
        bindparam(f"event_{name}", type_=events.c[name].type)
        for name in EVENT_FIELDS
        if name != "task_id"
    ]
    return (
        insert(events)
        .from_select(list(EVENT_FIELDS), select(written.c.task_id, *values))
        .returning(events.c.event_id)
    )


def append_with(
    connection: Connection,
    statement: Prepared,
    params: Mapping[str, Any],
    task_id: str,
    event_type: EventType,
    timestamp: datetime,
    *,
    event_data: Mapping[str, Any] | None = None,
    previous_status: TaskStatus | None = None,
    new_status: TaskStatus | None = None,
    actor: str | None = None,
    task: Mapping[str, Any] | None = None,
) -> bool:
    """Runs `statement` (see with_event) with `params`, appending the event as append_event
    does when its change wrote a row: returns whether it did (if not, nothing was written)."""
    serialize_appends(connection)
    row = _event_row(task_id, event_type, timestamp, event_data, previous_status, new_status, actor)
    values = dict(params)
    for name in EVENT_FIELDS:
        if name != "task_id":
            values[f"event_{name}"] = row[name]
    event_id = statement.returned(connection, values)
    if event_id is None:
        return False
    if task is not None:
        hooks = deliveries.hearing(task, row["event_type"], row["new_status"])
        if hooks:
            deliveries.enqueue(connection, task, hooks, event_id, row["timestamp"])
    return True


def _event_row(
    task_id: str,
    event_type: EventType,
    timestamp: datetime,
    event_data: Mapping[str, Any] | None,
    previous_status: TaskStatus | None,
    new_status: TaskStatus | None,
    actor: str | None,
) -> dict[str, Any]:
    """An event as stored (EVENT_FIELDS)."""
    return {
        "task_id": task_id,
        "event_type": event_type.value,
        "event_data": None if event_data is None else dict(event_data),
        "previous_status": None if previous_status is None else previous_status.value,
        "new_status": None if new_status is None else new_status.value,
        "timestamp": timestamp,
        "actor": actor,
    }


def _append(
    connection: Connection,
    row: Mapping[str, Any],
    task: Mapping[str, Any] | None,
    hooks: Sequence[Webhook],
) -> None:
    """Inserts the event, and queues a delivery per webhook in `hooks` (those of `task` that
    hear it)."""
    if task is None or not hooks:
        INSERT.execute(connection, row)
        return
    # The event's id for its deliveries (a task without webhooks never pays for asking).
    if connection.dialect.name == "sqlite":
        INSERT.execute(connection, row)
        found = LAST_ROWID.first(connection, {})
        assert found is not None
        event_id = found["id"]
    else:
        event_id = connection.execute(INSERT_RETURNING, row).scalar_one()
    deliveries.enqueue(connection, task, hooks, event_id, row["timestamp"])


def append_events(
    connection: Connection,
    rows: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
) -> None:
    """Appends many events (EVENT_FIELDS each, values as stored), their ids in the order given,
    the event of rows[i] leaving the task tasks[i]; see append_event. One statement for all,
    unless a webhook hears one of them: then one by one, each with its deliveries."""
    serialize_appends(connection)
    heard = [
        deliveries.hearing(task, row["event_type"], row["new_status"])
        for row, task in zip(rows, tasks, strict=True)
    ]
    if any(heard):
        for row, task, hooks in zip(rows, tasks, heard, strict=True):
            _append(connection, row, task, hooks)
        return
    INSERT.execute_many(connection, rows)


def serialize_appends(connection: Connection) -> None:
    """On PostgreSQL, holds the event-append lock until the transaction ends, and has NOTIFY
    wake every replica's tail when it commits (a wake-up only, never the source of events).

    The group writer calls this first thing in each transaction, before any row lock: a
    transaction holding the append lock then never waits for a row lock held by one waiting
    for the append lock, so replicas cannot deadlock. Taking it again in the same transaction
    is free.

    On a connection whose driver begins no transaction by itself (psycopg in autocommit mode:
    the group writer's, see GroupWriter._connect) that has sent nothing yet, this also begins
    the transaction, in the same round trip."""
    if connection.dialect.name != "postgresql":
        return
    transaction = connection.get_transaction()
    if connection.info.get(_APPENDS_LOCKED_BY) is transaction:
        return
    raw = unbegun(connection)
    if raw is not None:
        raw.execute(BEGIN_WITH_APPEND_LOCK)
    else:
        connection.execute(APPEND_LOCK)
    connection.info[_APPENDS_LOCKED_BY] = transaction


def read_log(
    connection: Connection,
    *,
    after_event_id: int,
    limit: int,
    max_bytes: int,
    up_to_event_id: int | None = None,
    task_ids: Sequence[str] = (),
    task_types: Sequence[str] = (),
    event_types: Sequence[str] = (),
) -> LogPage:
    """Events with after_event_id < event_id <= up_to_event_id matching every non-empty filter,
    in event_id order: at most `limit` events, and no more of them than fit in
    `max_bytes` of stored event_data (the first always comes, however large). Each row carries
    `stored_size`, the stored size of its event_data (in characters of its JSON text), so that a
    stream's buffer can be bounded in bytes. The cut is made by the database, so a page of
    large events is never fetched whole."""
    statement = _log_page(
        bool(task_ids), bool(task_types), bool(event_types), up_to_event_id is not None
    )
    params: dict[str, Any] = {"after": after_event_id, "limit": limit, "max_bytes": max_bytes}
    if up_to_event_id is not None:
        params["up_to"] = up_to_event_id
    for name, values in (
        ("task_ids", task_ids),
        ("task_types", task_types),
        ("event_types", event_types),
    ):
        if values:
            params[name] = list(values)
    rows = statement.all(connection, params)
    complete = not rows or (len(rows) < limit and rows[0]["page_rows"] == len(rows))
    return LogPage(rows, complete)


def read_tail(
    connection: Connection, *, after_event_id: int, limit: int, max_bytes: int
) -> tuple[LogPage, int]:
    """The tail's read: read_log from its position, and the log horizon read after the rows
    (a purge that removed rows before they were read shows in it)."""
    page = read_log(connection, after_event_id=after_event_id, limit=limit, max_bytes=max_bytes)
    return page, purged_through(connection)


@dataclass(frozen=True)
class LogPage:
    rows: list[dict[str, Any]]
    # Whether every matching event of the range asked for is in `rows` (no limit cut it).
    complete: bool


@functools.lru_cache(maxsize=32)
def _log_page(task_ids: bool, task_types: bool, event_types: bool, bounded: bool) -> Prepared:
    """read_log's statement for one shape of filter, compiled once."""
    conditions = [events.c.event_id > bindparam("after")]
    if bounded:
        conditions.append(events.c.event_id <= bindparam("up_to"))
    if task_ids:
        conditions.append(events.c.task_id.in_(bindparam("task_ids", expanding=True)))
    if task_types:
        conditions.append(tasks.c.task_type.in_(bindparam("task_types", expanding=True)))
    if event_types:
        conditions.append(events.c.event_type.in_(bindparam("event_types", expanding=True)))
    page = (
        select(*EVENT_COLUMNS)
        .select_from(events.join(tasks, tasks.c.task_id == events.c.task_id))
        .where(*conditions)
        .order_by(events.c.event_id)
        .limit(bindparam("limit"))
    )
    return Prepared(
        cut_by_size(
            page,
            stored_length(events.c.event_data),
            [column.name for column in EVENT_COLUMNS],
            lambda table: (table.c.event_id,),
        )
    )


def list_task_events(
    connection: Connection,
    task_id: str | None,
    event_types: Sequence[str],
    *,
    after_event_id: int,
    limit: int,
    max_bytes: int = 2 * 1024 * 1024,
) -> LogPage:
    """A task's history (every task's when task_id is None), cut by count and stored bytes as
    read_log cuts it; an unknown task is NOT_FOUND."""
    if (
        task_id is not None
        and not connection.execute(select(exists().where(tasks.c.task_id == task_id))).scalar_one()
    ):
        raise TaskNotFound(task_id)
    return read_log(
        connection,
        after_event_id=after_event_id,
        limit=limit,
        max_bytes=max_bytes,
        task_ids=(task_id,) if task_id else (),
        event_types=event_types,
    )


def last_event_id(connection: Connection) -> int:
    """The log's position: its largest event_id; or the horizon, when retention has purged the
    newest events (their ids are never handed out again, so the log has passed them)."""
    stored = connection.execute(select(func.coalesce(func.max(events.c.event_id), 0))).scalar_one()
    return max(int(stored), purged_through(connection))


@dataclass(frozen=True)
class TaskState:
    status: str
    active: bool


@dataclass(frozen=True)
class ReplayPage:
    """One page of a watch's replay."""

    events: list[dict[str, Any]]
    # Every matching event with an id up to here is in `events` or an earlier page; never
    # beyond the end of the log.
    scanned_to: int
    # The state of the task named by `state_of`, in the same snapshot (None: no such task).
    task: TaskState | None
    # Whether the page reached `scanned_to` = the end of the log as this snapshot saw it.
    complete: bool
    # The log horizon, when retention may have purged events this page should have held
    # (see missing_since): the page must not be delivered. None: nothing is missing.
    purged_through: int | None = None


def read_replay_page(
    connection: Connection,
    *,
    after_event_id: int,
    up_to_event_id: int | None = None,
    limit: int,
    max_bytes: int,
    task_ids: Sequence[str],
    task_types: Sequence[str],
    event_types: Sequence[str],
    state_of: str | None,
) -> ReplayPage:
    """Matching events after `after_event_id` (see read_log), up to `up_to_event_id` or the
    end of the log, and how far the page covers it.

    Correct because the visible events always form a prefix of the id order (see append_event):
    nothing at or below `upper` can still appear after it was read."""
    # The task first: on PostgreSQL (READ COMMITTED) every statement sees a newer moment, and a
    # terminal or deleted state read first guarantees its event is at or below `upper`.
    task = None
    if state_of is not None:
        found = connection.execute(
            select(tasks.c.status, tasks.c.active).where(tasks.c.task_id == state_of)
        ).one_or_none()
        if found is not None:
            task = TaskState(found.status, bool(found.active))
    upper = last_event_id(connection)
    if up_to_event_id is not None:
        upper = min(upper, up_to_event_id)
    page = read_log(
        connection,
        after_event_id=after_event_id,
        up_to_event_id=upper,
        limit=limit,
        max_bytes=max_bytes,
        task_ids=task_ids,
        task_types=task_types,
        event_types=event_types,
    )
    # A page cut short (by count or by bytes) covers the log up to its last row only.
    scanned_to = upper if page.complete else page.rows[-1]["event_id"]
    # After the rows: on PostgreSQL a later statement sees a later moment, so a purge that
    # removed rows before they were read shows here.
    purged = missing_since(connection, after_event_id, task_ids)
    return ReplayPage(page.rows, scanned_to, task, page.complete, purged)


def missing_since(
    connection: Connection, after_event_id: int, task_ids: Sequence[str]
) -> int | None:
    """The log horizon if retention may have purged an event above `after_event_id` that a
    stream of these tasks (every task, when empty) would carry; else None.

    Nothing is missing when the horizon is at or below the position. Below it, a stream of
    named tasks still misses nothing when each of them exists and existed at the position
    already (its first event is at or below it): tasks are purged whole, and an earlier task
    of the same id has only events below the first of the present one."""
    horizon = purged_through(connection)
    if horizon <= after_event_id:
        return None
    if task_ids:
        first = dict(
            connection.execute(
                select(events.c.task_id, func.min(events.c.event_id))
                .where(events.c.task_id.in_(list(task_ids)))
                .group_by(events.c.task_id)
            ).all()
        )
        if all(first.get(task_id, after_event_id + 1) <= after_event_id for task_id in task_ids):
            return None
    return horizon
