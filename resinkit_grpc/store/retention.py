"""Retention: tasks that ended (COMPLETED, FAILED, CANCELLED) or were soft-deleted, and have
not changed since before a cutoff, are purged whole with their events, a bounded batch per
write transaction. Each batch raises the log horizon (log_horizon) in the same transaction to
the largest event_id it removed, so that a watch resuming from below it learns that its
history is incomplete (see watch/watches.py) instead of silently missing events.

A task is purged with every event it has, never in part: each stored task's history is
complete. Kept request ids (mutation_requests) are left to their own, shorter retention: a
retry within it still gets its first outcome back, as AIP-155 asks.

Batches are safe side by side, from any number of replicas and `resinkit-grpc purge` runs:
each decides what it deletes inside its write transaction, after the write serialization
every writer takes (SQLite's write lock; the event-append lock on PostgreSQL), so two never
purge the same task and none deletes a task that changed after it was found."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from resinkit_grpc.rules import TERMINAL_STATUSES
from resinkit_grpc.store import deliveries, name_index
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.models import LogHorizon, Task, TaskEvent

tasks = cast(Table, Task.__table__)
events = cast(Table, TaskEvent.__table__)
horizon = cast(Table, LogHorizon.__table__)

# How many events one batch may delete, per task it may purge: a batch of tasks with long
# histories stops early, so that no batch holds the write lock much longer than another.
EVENTS_PER_TASK_BUDGET = 10


def _purgeable(before: datetime) -> list[ColumnElement[bool]]:
    ended = tasks.c.status.in_(sorted(s.value for s in TERMINAL_STATUSES))
    return [
        tasks.c.updated_at < before,
        or_(ended, tasks.c.active == false()),
        # A task whose webhook deliveries are still being tried waits for them to end.
        ~deliveries.pending_for(tasks.c.task_id),
    ]


@dataclass(frozen=True)
class PurgedBatch:
    tasks: int
    events: int
    # (updated_at, task_id) of the last task purged: the next batch of the same run starts
    # after it. None when the batch found nothing: the run is over.
    last: tuple[datetime, str] | None
    # The log horizon after this batch.
    purged_through: int


def purge_batch(
    connection: Connection,
    before: datetime,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> PurgedBatch:
    """Purges at most `limit` tasks that ended or were deleted and have not changed since
    before `before`, oldest change first (after `after`, the previous batch's last), with
    their events; and no more tasks than keep the events deleted within
    EVENTS_PER_TASK_BUDGET x `limit` (one task always goes, however long its history)."""
    conditions = _purgeable(before)
    if after is not None:
        conditions.append(tuple_(tasks.c.updated_at, tasks.c.task_id) > tuple_(*after))
    event_count = (
        select(func.count())
        .select_from(events)
        .where(events.c.task_id == tasks.c.task_id)
        .scalar_subquery()
    )
    found = connection.execute(
        select(tasks.c.task_id, tasks.c.updated_at, event_count.label("events"))
        .where(*conditions)
        .order_by(tasks.c.updated_at, tasks.c.task_id)
        .limit(limit)
    ).all()
    budget = EVENTS_PER_TASK_BUDGET * limit
    chosen: list[Any] = []
    spent = 0
    for row in found:
        if chosen and spent + row.events > budget:
            break
        chosen.append(row)
        spent += row.events
    if not chosen:
        return PurgedBatch(0, 0, None, purged_through(connection))
    ids = [row.task_id for row in chosen]
    deliveries.purge_of_tasks(connection, ids)
    name_index.forget(connection, ids)
    # The ids from the DELETE itself: PostgreSQL plans max(event_id) WHERE task_id IN (...) as
    # a walk down the primary key from the newest event, which for old tasks reads the whole
    # log (measured: seconds per batch at 300,000 events).
    removed = (
        connection.execute(
            delete(events).where(events.c.task_id.in_(ids)).returning(events.c.event_id)
        )
        .scalars()
        .all()
    )
    connection.execute(delete(tasks).where(tasks.c.task_id.in_(ids)))
    through = raise_horizon(connection, max(removed, default=0))
    last = chosen[-1]
    return PurgedBatch(len(ids), len(removed), (last.updated_at, last.task_id), through)


def count_purgeable(connection: Connection, before: datetime) -> tuple[int, int]:
    """How many tasks, and events of theirs, a purge with this cutoff would remove now."""
    conditions = _purgeable(before)
    task_count = connection.execute(
        select(func.count()).select_from(tasks).where(*conditions)
    ).scalar_one()
    event_count = connection.execute(
        select(func.count())
        .select_from(events.join(tasks, tasks.c.task_id == events.c.task_id))
        .where(*conditions)
    ).scalar_one()
    return int(task_count), int(event_count)


def purged_through(connection: Connection) -> int:
    """The log horizon: the largest event_id retention has removed (0: none). Every event
    above it is still stored."""
    return int(
        connection.execute(
            select(func.coalesce(func.max(horizon.c.purged_through_event_id), 0))
        ).scalar_one()
    )


def raise_horizon(connection: Connection, event_id: int) -> int:
    """Moves the horizon up to `event_id` (never down); returns it."""
    moved = connection.execute(
        update(horizon)
        .where(horizon.c.singleton == 1, horizon.c.purged_through_event_id < event_id)
        .values(purged_through_event_id=event_id, purged_at=utcnow())
    ).rowcount
    if not moved and not connection.execute(select(horizon.c.singleton)).first():
        # A database made without the migrations (create_all): the row is not there yet.
        connection.execute(
            insert(horizon).values(
                singleton=1, purged_through_event_id=event_id, purged_at=utcnow()
            )
        )
    return purged_through(connection)
