"""Webhook deliveries: the outbox rows each event's webhooks get in the event's own transaction
(`enqueue`, called by events.append_event), and the operations the delivery workers and the
API run on them. Nothing here speaks HTTP (see notify/).

A delivery is PENDING until it is DELIVERED (a 2xx), DEAD (its last attempt failed), or
DISABLED (its webhook answered 410 Gone for this task). A worker claims an attempt of a due
delivery by leasing it under a claim token; only the holder of the claim may settle it, so two
workers never both make the same attempt, and a worker that dies mid-attempt leaves a lease
that runs out, after which the attempt is made again (at least once, never lost).

Per task and URL, deliveries go out in event order: one is due only when no earlier delivery of
the same task to the same URL is still pending.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.notification_config import Webhook, webhooks_for
from resinkit_grpc.store.models import DisabledWebhook, Task, TaskEvent, WebhookDelivery

deliveries = cast(Table, WebhookDelivery.__table__)
disabled = cast(Table, DisabledWebhook.__table__)
tasks = cast(Table, Task.__table__)
events = cast(Table, TaskEvent.__table__)

PENDING, DELIVERED, DEAD, DISABLED = "PENDING", "DELIVERED", "DEAD", "DISABLED"
# The task columns a delivery's body carries (the BASIC view).
SNAPSHOT_COLUMNS = (
    "task_id",
    "task_type",
    "task_name",
    "description",
    "status",
    "priority",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "expires_at",
    "created_by",
    "tags",
    "active",
    "version",
)
_SNAPSHOT_TIMES = frozenset({"created_at", "updated_at", "started_at", "finished_at", "expires_at"})
LAST_ERROR_LENGTH = 300


class Enqueued:
    """Counts enqueue calls in this process (on the writer thread), so that the delivery worker
    is woken after a commit only when that commit may have queued something."""

    count = itertools.count()
    last = 0

    @classmethod
    def note(cls) -> None:
        cls.last = next(cls.count)


def hearing(task: Mapping[str, Any], event_type: str, new_status: str | None) -> list[Webhook]:
    """The webhooks of `task` (as the event leaves it) that hear the event."""
    config = task.get("notification_config")
    return webhooks_for(config, event_type, new_status) if config else []


def enqueue(
    connection: Connection,
    task: Mapping[str, Any],
    hooks: Sequence[Webhook],
    event_id: int,
    now: datetime,
) -> int:
    """Queues one delivery of event `event_id` per webhook in `hooks` (see hearing), except to
    webhooks disabled for the task. Returns how many."""
    off = set(
        connection.execute(
            select(disabled.c.url).where(disabled.c.task_id == task["task_id"])
        ).scalars()
    )
    rows = [
        {
            "event_id": event_id,
            "task_id": task["task_id"],
            "url": hook.url,
            "secret_id": hook.secret_id,
            "message_id": f"msg_{event_id}_{index}",
            "task_snapshot": snapshot(task),
            "state": PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for index, hook in enumerate(hooks)
        if hook.url not in off
    ]
    if rows:
        connection.execute(insert(deliveries), rows)
        Enqueued.note()
    return len(rows)


def snapshot(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task's BASIC columns as JSON values (timestamps as ISO 8601 text)."""
    values: dict[str, Any] = {}
    for name in SNAPSHOT_COLUMNS:
        value = task.get(name)
        if name in _SNAPSHOT_TIMES and value is not None:
            value = value.isoformat()
        elif name == "active":
            value = bool(value)
        values[name] = value
    return values


def restore(values: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot back as a task record (BASIC columns)."""
    record = dict(values)
    for name in _SNAPSHOT_TIMES:
        if record.get(name) is not None:
            record[name] = datetime.fromisoformat(record[name])
    return record


_d = deliveries.c
_earlier = aliased(deliveries)
# Due: pending, its time has come, nobody holds it, and nothing of the same task and URL is
# ahead of it: no earlier delivery still pending, and no attempt in flight (a redelivered
# earlier event waits for a later one's attempt to end). The partial index
# ix_webhook_deliveries_pending serves the NOT EXISTS from pending rows alone.
_DUE = and_(
    _d.state == PENDING,
    _d.next_attempt_at <= bindparam("now"),
    or_(_d.lease_until.is_(None), _d.lease_until <= bindparam("now")),
    ~exists().where(
        _earlier.c.task_id == _d.task_id,
        _earlier.c.url == _d.url,
        _earlier.c.state == PENDING,
        _earlier.c.delivery_id != _d.delivery_id,
        or_(_earlier.c.event_id < _d.event_id, _earlier.c.lease_until > bindparam("now")),
    ),
)


def find_due(connection: Connection, now: datetime, limit: int) -> list[tuple[int, str]]:
    """(delivery_id, url) of deliveries due now, the longest due first (a read: claim them
    with `claim`)."""
    return [
        (row.delivery_id, row.url)
        for row in connection.execute(
            select(_d.delivery_id, _d.url).where(_DUE).order_by(_d.next_attempt_at).limit(limit),
            {"now": now},
        )
    ]


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt: everything needed to send it."""

    delivery_id: int
    attempt: int  # 1 for the first
    message_id: str
    url: str
    secret_id: str | None
    task: dict[str, Any]  # the snapshot, restored
    event: dict[str, Any]  # the task_events row, with task_type
    created_at: datetime


def claim(
    connection: Connection, ids: Sequence[int], now: datetime, lease_until: datetime, token: str
) -> list[Attempt]:
    """Claims an attempt of each of these deliveries that is still due and unclaimed: leased
    to `token` until `lease_until`. On PostgreSQL the rows are locked SKIP LOCKED, so a worker
    of another replica claiming at the same moment takes others, never these."""
    if not ids:
        return []
    chosen = select(_d.delivery_id).where(_d.delivery_id.in_(list(ids)), _DUE)
    if connection.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True, of=deliveries)
    claimed = list(
        connection.execute(
            update(deliveries)
            .where(_d.delivery_id.in_(chosen.scalar_subquery()))
            .values(
                lease_until=lease_until,
                claimed_by=token,
                attempts=_d.attempts + 1,
                last_attempt_at=now,
            )
            .returning(_d.delivery_id),
            {"now": now},
        ).scalars()
    )
    if not claimed:
        return []
    rows = connection.execute(
        select(
            _d.delivery_id,
            _d.attempts,
            _d.message_id,
            _d.url,
            _d.secret_id,
            _d.task_snapshot,
            _d.created_at,
            *events.c,
            tasks.c.task_type,
        )
        .select_from(
            deliveries.join(events, events.c.event_id == _d.event_id).join(
                tasks, tasks.c.task_id == _d.task_id
            )
        )
        .where(_d.delivery_id.in_(claimed))
        .order_by(_d.delivery_id)
    ).all()
    attempts = []
    for row in rows:
        values = row._asdict()
        event = {name: values[name] for name in (*events.c.keys(), "task_type")}
        attempts.append(
            Attempt(
                delivery_id=values["delivery_id"],
                attempt=values["attempts"],
                message_id=values["message_id"],
                url=values["url"],
                secret_id=values["secret_id"],
                task=restore(values["task_snapshot"]),
                event=event,
                created_at=values["created_at"],
            )
        )
    return attempts


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to. `state` PENDING means: try again at `next_attempt_at`."""

    state: str
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


def settle_all(
    connection: Connection,
    settled: Sequence[tuple[Attempt, Outcome, datetime]],
    token: str,
) -> list[bool]:
    """settle for each (attempt, outcome, when it ended), in one transaction."""
    return [settle(connection, attempt, token, outcome, now) for attempt, outcome, now in settled]


def settle(
    connection: Connection, attempt: Attempt, token: str, outcome: Outcome, now: datetime
) -> bool:
    """Records the outcome of an attempt this token claimed; False (nothing written) when the
    claim is no longer ours (its lease ran out and another worker took the delivery)."""
    values: dict[str, Any] = {
        "state": outcome.state,
        "lease_until": None,
        "claimed_by": None,
        "last_status_code": outcome.status_code,
        "last_error": None if outcome.error is None else outcome.error[:LAST_ERROR_LENGTH],
        "next_attempt_at": outcome.next_attempt_at if outcome.state == PENDING else None,
    }
    if outcome.state == DELIVERED:
        values["delivered_at"] = now
    settled = connection.execute(
        update(deliveries)
        .where(
            _d.delivery_id == attempt.delivery_id,
            _d.claimed_by == token,
            _d.attempts == attempt.attempt,
            _d.state == PENDING,
        )
        .values(values)
    ).rowcount
    if settled != 1:
        return False
    if outcome.state == DISABLED:
        task_id = attempt.event["task_id"]
        dialect_insert = (
            postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        )
        connection.execute(
            dialect_insert(disabled)
            .values(task_id=task_id, url=attempt.url, disabled_at=now)
            .on_conflict_do_nothing()
        )
        connection.execute(
            update(deliveries)
            .where(_d.task_id == task_id, _d.url == attempt.url, _d.state == PENDING)
            .values(
                state=DISABLED,
                next_attempt_at=None,
                lease_until=None,
                claimed_by=None,
                last_error=f"not sent: the webhook answered 410 Gone to {attempt.message_id}",
            )
        )
    return True


def list_deliveries(
    connection: Connection,
    task_id: str | None,
    states: Sequence[str],
    *,
    after_delivery_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Deliveries in delivery_id order (of one task, or of every task), after a position."""
    if task_id is not None and not _task_exists(connection, task_id):
        raise TaskNotFound(task_id)
    conditions = [_d.delivery_id > after_delivery_id]
    if task_id is not None:
        conditions.append(_d.task_id == task_id)
    if states:
        conditions.append(_d.state.in_(list(states)))
    return [
        row._asdict()
        for row in connection.execute(
            select(*_LISTED).where(*conditions).order_by(_d.delivery_id).limit(limit)
        )
    ]


_LISTED = tuple(column for column in deliveries.c if column.name != "task_snapshot")


def deliveries_of_events(
    connection: Connection, task_id: str, first_event_id: int, last_event_id: int
) -> list[dict[str, Any]]:
    """The deliveries of a task's events in an event-id range (a history page's)."""
    return [
        row._asdict()
        for row in connection.execute(
            select(*_LISTED)
            .where(
                _d.task_id == task_id,
                _d.event_id >= first_event_id,
                _d.event_id <= last_event_id,
            )
            .order_by(_d.event_id, _d.delivery_id)
        )
    ]


def redeliver_task(connection: Connection, task_id: str, now: datetime) -> list[dict[str, Any]]:
    """Sends the task's DEAD and DISABLED deliveries again, from a fresh retry schedule, and
    re-enables its disabled webhooks. Returns the deliveries made pending again."""
    if not _task_exists(connection, task_id):
        raise TaskNotFound(task_id)
    connection.execute(delete(disabled).where(disabled.c.task_id == task_id))
    ids = list(
        connection.execute(
            update(deliveries)
            .where(_d.task_id == task_id, _d.state.in_([DEAD, DISABLED]))
            .values(_again(now))
            .returning(_d.delivery_id)
        ).scalars()
    )
    if not ids:
        return []
    Enqueued.note()
    return [
        row._asdict()
        for row in connection.execute(
            select(*_LISTED).where(_d.delivery_id.in_(ids)).order_by(_d.delivery_id)
        )
    ]


@dataclass(frozen=True)
class Redelivered:
    count: int
    # The last event_id this call reached; None when the range is done.
    last_event_id: int | None


def redeliver_range(
    connection: Connection, first_event_id: int, last_event_id: int, now: datetime, limit: int
) -> Redelivered:
    """Sends DEAD deliveries of events first_event_id..last_event_id again, at most `limit` of
    them (oldest event first); call again after `last_event_id` for the rest."""
    chosen = list(
        connection.execute(
            select(_d.delivery_id, _d.event_id)
            .where(
                _d.state == DEAD,
                _d.event_id >= first_event_id,
                _d.event_id <= last_event_id,
                # A webhook that answered 410 for the task stays quiet (RedeliverTask
                # re-enables it).
                ~exists().where(disabled.c.task_id == _d.task_id, disabled.c.url == _d.url),
            )
            .order_by(_d.event_id, _d.delivery_id)
            .limit(limit)
        ).all()
    )
    if not chosen:
        return Redelivered(0, None)
    more = len(chosen) == limit
    # Whole events only, so that continuing after the last one misses none of its deliveries.
    if more and chosen[0].event_id != chosen[-1].event_id:
        chosen = [row for row in chosen if row.event_id != chosen[-1].event_id]
    last = chosen[-1].event_id
    connection.execute(
        update(deliveries)
        .where(_d.delivery_id.in_([row.delivery_id for row in chosen]))
        .values(_again(now))
    )
    Enqueued.note()
    return Redelivered(len(chosen), last if more else None)


def _again(now: datetime) -> dict[str, Any]:
    return {
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "claimed_by": None,
        "delivered_at": None,
    }


@dataclass(frozen=True)
class QueueState:
    pending: int
    oldest_pending: datetime | None


def queue_state(connection: Connection) -> QueueState:
    """How many deliveries are pending, and since when the oldest of them."""
    count, oldest = connection.execute(
        select(func.count(), func.min(_d.created_at)).where(_d.state == PENDING)
    ).one()
    return QueueState(int(count), oldest)


def pending_for(task_id: Any) -> Any:
    """Whether the task (a column or a value) has deliveries still pending: retention leaves
    it until they end."""
    return exists().where(_d.task_id == task_id, _d.state == PENDING)


def purge_of_tasks(connection: Connection, task_ids: Sequence[str]) -> int:
    """Deletes the deliveries and disabled webhooks of tasks being purged (retention)."""
    connection.execute(delete(disabled).where(disabled.c.task_id.in_(list(task_ids))))
    return connection.execute(delete(deliveries).where(_d.task_id.in_(list(task_ids)))).rowcount


def _task_exists(connection: Connection, task_id: str) -> bool:
    return bool(connection.execute(select(exists().where(tasks.c.task_id == task_id))).scalar_one())
