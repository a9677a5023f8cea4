"""Expiry: a live task whose expires_at has passed before it reached a terminal status is moved
to FAILED by the server itself (actor `system`, event_data.reason `EXPIRED`).

Found on a read connection (due_for_expiry), decided in a write transaction (expire_tasks)
that reads each task again under the write serialization every writer takes (SQLite's write
lock; on PostgreSQL the event-append lock, and the row's FOR UPDATE): so when several replicas
find the same task due, the first to write moves it and the others find it FAILED already.
Exactly one transition, one event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, select, text

from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.models import POSTGRES_OPEN, SQLITE_OPEN, Task
from resinkit_grpc.store.tasks import TaskRecord, current_task, move_status

tasks = cast(Table, Task.__table__)

# The actor of the events the server writes on its own.
SYSTEM_ACTOR = "system"
EXPIRED = "EXPIRED"

# The partial index's own predicate (models.ix_tasks_open_expires_at), as literal text: with
# bound values neither database could tell that the index covers the query.
_DUE = {
    dialect: select(tasks.c.task_id)
    .where(
        text(predicate.text), tasks.c.expires_at <= bindparam("now", type_=tasks.c.expires_at.type)
    )
    .order_by(tasks.c.expires_at)
    .limit(bindparam("limit"))
    for dialect, predicate in (("sqlite", SQLITE_OPEN), ("postgresql", POSTGRES_OPEN))
}


def due_for_expiry(connection: Connection, now: datetime, limit: int) -> list[str]:
    """Ids of at most `limit` live, unended tasks whose expires_at is at or before `now`,
    soonest first."""
    statement = _DUE[connection.dialect.name]
    return list(connection.execute(statement, {"now": now, "limit": limit}).scalars())


def expire_tasks(connection: Connection, task_ids: Sequence[str]) -> list[TaskRecord]:
    """Moves each of these tasks that is still live, unended and expired now to FAILED, with
    its STATUS_CHANGE event; returns the tasks it moved. Tasks that ended, were deleted, were
    given a later expires_at or are gone meanwhile are left alone."""
    # Read here, like every write's clock (a rerun of the batch reads it again).
    now = utcnow()
    moved = []
    for task_id in task_ids:
        try:
            current = current_task(connection, task_id, None)
        except TaskNotFound:  # purged meanwhile
            continue
        status = TaskStatus(current["status"])
        expires_at = current["expires_at"]
        # The guard: checked again here, inside the write transaction, so a task moved by
        # another replica (or its executor) since it was found is not moved twice.
        if not current["active"] or status.is_terminal or expires_at is None or expires_at > now:
            continue
        error_info = {
            "reason": EXPIRED,
            "message": (
                f"the task expired at {expires_at.isoformat()} before it reached a terminal "
                f"status (it was {status.value}); the server failed it"
            ),
            "expires_at": expires_at.isoformat(),
        }
        # Every non-terminal status may move to FAILED (rules.TRANSITIONS): no path of its own.
        moved.append(
            move_status(
                connection,
                current,
                TaskStatus.FAILED,
                {"error_info": error_info},
                actor=SYSTEM_ACTOR,
                now=now,
                reason=EXPIRED,
            )
        )
    return moved
