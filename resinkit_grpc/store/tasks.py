"""Task operations. Each takes a Connection inside a transaction opened by Database, changes the
task and appends its event last, so the change and its event commit together or not at all."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from resinkit_grpc.errors import (
    EtagMismatch,
    InvalidTransition,
    TaskAlreadyExists,
    TaskNotFound,
    TaskStateConflict,
)
from resinkit_grpc.rules import EventType, TaskStatus, allowed_next, can_transition
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.engine import UNICODE_LOWER
from resinkit_grpc.store.events import append_event
from resinkit_grpc.store.models import ServiceSecret, Task

tasks = cast(Table, Task.__table__)

# The JSON columns a BASIC read leaves out.
LARGE_COLUMNS = frozenset(
    {
        "submitted_configs",
        "error_info",
        "result_summary",
        "execution_details",
        "progress_details",
        "notification_config",
    }
)
FULL_COLUMNS = tuple(tasks.c)
BASIC_COLUMNS = tuple(c for c in tasks.c if c.name not in LARGE_COLUMNS)

MUTABLE_FIELDS = (
    "task_name",
    "description",
    "priority",
    "tags",
    "notification_config",
    "expires_at",
    "progress_details",
    "execution_details",
)
SORT_FIELDS = ("created_at", "updated_at", "priority")
STATUS_DETAIL_FIELDS = ("error_info", "result_summary", "execution_details", "progress_details")

# Hot statements are built once: building a statement per call (and its cache key) costs
# several times what executing it does. Values travel as bound parameters.
_BY_ID = tasks.c.task_id == bindparam("key_task_id")
SELECT_FULL = select(*FULL_COLUMNS).where(_BY_ID)
SELECT_BASIC = select(*BASIC_COLUMNS).where(_BY_ID)
SELECT_FOR_UPDATE = SELECT_FULL.with_for_update()
SELECT_BY_REQUEST_ID = select(*FULL_COLUMNS).where(tasks.c.request_id == bindparam("request_id"))
# Waits for a concurrent insert of the same key to commit, then does nothing.
INSERT = {
    "sqlite": sqlite.insert(tasks).on_conflict_do_nothing().returning(*FULL_COLUMNS),
    "postgresql": postgresql.insert(tasks).on_conflict_do_nothing().returning(*FULL_COLUMNS),
}
# The SET columns are the parameters given besides key_task_id.
UPDATE = sql_update(tasks).where(_BY_ID).returning(*FULL_COLUMNS)


def etag_of(version: int) -> str:
    return f'W/"{version}"'


@dataclass(frozen=True)
class NewTask:
    task_id: str
    task_type: str
    created_by: str
    task_name: str | None = None
    description: str | None = None
    priority: int = 0
    submitted_configs: Mapping[str, Any] | None = None
    notification_config: Mapping[str, Any] | None = None
    execution_details: Mapping[str, Any] | None = None
    progress_details: Mapping[str, Any] | None = None
    tags: Sequence[str] | None = None
    expires_at: datetime | None = None
    # Seconds after creation; wins over expires_at (submitted_configs.task_timeout_seconds).
    timeout_seconds: float | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class TaskQuery:
    """What ListTasks selects. Empty fields place no condition."""

    statuses: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    created_by: str | None = None
    name_contains: str | None = None
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    show_deleted: bool = False


@dataclass(frozen=True)
class SortOrder:
    field: str = "created_at"
    descending: bool = True


@dataclass(frozen=True)
class StatusChange:
    task_id: str
    status: TaskStatus
    details: Mapping[str, Mapping[str, Any]]
    actor: str | None = None
    etag: str | None = None


def create_task(connection: Connection, new: NewTask) -> Row[Any]:
    """Inserts the task and its CREATED event. A request_id already used returns the task it
    created; concurrent duplicates (from any replica) are settled by the unique constraints."""
    if new.request_id is not None:
        first = _by_request_id(connection, new.request_id)
        if first is not None:
            return first
    now = utcnow()
    expires_at = new.expires_at
    if new.timeout_seconds is not None:
        expires_at = now + timedelta(seconds=new.timeout_seconds)
    row = connection.execute(
        INSERT[connection.dialect.name],
        {
            "task_id": new.task_id,
            "task_type": new.task_type,
            "task_name": new.task_name,
            "description": new.description,
            "status": TaskStatus.PENDING.value,
            "priority": new.priority,
            "created_at": now,
            "updated_at": now,
            "expires_at": expires_at,
            "submitted_configs": dict(new.submitted_configs or {}),
            "notification_config": _copy(new.notification_config),
            "execution_details": _copy(new.execution_details),
            "progress_details": _copy(new.progress_details),
            "created_by": new.created_by,
            "tags": list(new.tags) if new.tags else None,
            "active": True,
            "request_id": new.request_id,
            "version": 1,
        },
    ).first()
    if row is None:
        first = None if new.request_id is None else _by_request_id(connection, new.request_id)
        if first is not None:
            return first
        raise TaskAlreadyExists(new.task_id)
    append_event(
        connection,
        new.task_id,
        EventType.CREATED,
        now,
        new_status=TaskStatus.PENDING,
        actor=new.created_by,
    )
    return row


def _by_request_id(connection: Connection, request_id: str) -> Row[Any] | None:
    return connection.execute(SELECT_BY_REQUEST_ID, {"request_id": request_id}).first()


def get_task(connection: Connection, task_id: str, *, full: bool = True) -> Row[Any]:
    row = connection.execute(
        SELECT_FULL if full else SELECT_BASIC, {"key_task_id": task_id}
    ).first()
    if row is None:
        raise TaskNotFound(task_id)
    return row


def list_tasks(
    connection: Connection,
    query: TaskQuery,
    order: SortOrder,
    *,
    after: tuple[Any, str] | None,
    limit: int,
    full: bool,
) -> list[Row[Any]]:
    """One keyset page: rows strictly after `after` (sort value, task_id) in the sort order."""
    sort_column = tasks.c[order.field]
    conditions = _conditions(query, connection.dialect.name)
    if after is not None:
        position = tuple_(sort_column, tasks.c.task_id)
        conditions.append(position < after if order.descending else position > after)
    if order.descending:
        ordering = (sort_column.desc(), tasks.c.task_id.desc())
    else:
        ordering = (sort_column.asc(), tasks.c.task_id.asc())
    statement = (
        select(*(FULL_COLUMNS if full else BASIC_COLUMNS))
        .where(and_(true(), *conditions))
        .order_by(*ordering)
        .limit(limit)
    )
    return list(connection.execute(statement))


def update_task(
    connection: Connection, task_id: str, changes: Mapping[str, Any], etag: str | None
) -> Row[Any]:
    """Applies `changes` (mutable fields only); a change that changes nothing writes nothing."""
    current = _current(connection, task_id, etag)
    _require_active(current, "update")
    changed = [name for name, value in changes.items() if getattr(current, name) != value]
    if not changed:
        return current
    now = utcnow()
    row = _update(connection, current, now, {name: changes[name] for name in changed})
    append_event(connection, task_id, EventType.UPDATED, now, event_data={"fields": changed})
    return row


def update_task_status(connection: Connection, change: StatusChange) -> Row[Any]:
    current = _current(connection, change.task_id, change.etag)
    _require_active(current, "change the status of")
    previous = TaskStatus(current.status)
    if not can_transition(previous, change.status):
        raise InvalidTransition(change.task_id, previous, change.status, allowed_next(previous))
    now = utcnow()
    values: dict[str, Any] = {"status": change.status.value}
    if change.status is TaskStatus.RUNNING and current.started_at is None:
        values["started_at"] = now
    if change.status.is_terminal:
        values["finished_at"] = now
    details = {name: dict(value) for name, value in change.details.items()}
    values.update(details)
    row = _update(connection, current, now, values)
    append_event(
        connection,
        change.task_id,
        EventType.STATUS_CHANGE,
        now,
        event_data=details or None,
        previous_status=previous,
        new_status=change.status,
        actor=change.actor,
    )
    return row


def delete_task(connection: Connection, task_id: str, etag: str | None) -> Row[Any]:
    current = _current(connection, task_id, etag)
    if not current.active:
        raise TaskStateConflict(
            task_id, "TASK_ALREADY_DELETED", f"task {task_id!r} is already deleted"
        )
    now = utcnow()
    row = _update(connection, current, now, {"active": False})
    append_event(connection, task_id, EventType.DELETED, now)
    return row


def undelete_task(connection: Connection, task_id: str) -> Row[Any]:
    current = _current(connection, task_id, None)
    if current.active:
        raise TaskStateConflict(task_id, "TASK_NOT_DELETED", f"task {task_id!r} is not deleted")
    now = utcnow()
    row = _update(connection, current, now, {"active": True})
    append_event(connection, task_id, EventType.UNDELETED, now)
    return row


def load_or_create_secret(connection: Connection, name: str) -> str:
    """A secret shared by every replica on this database, created by whichever asks first."""
    table = cast(Table, ServiceSecret.__table__)
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        dialect_insert(table)
        .values(name=name, value=secrets.token_hex(32))
        .on_conflict_do_nothing()
    )
    return str(connection.execute(select(table.c.value).where(table.c.name == name)).scalar_one())


def _current(connection: Connection, task_id: str, etag: str | None) -> Row[Any]:
    # FOR UPDATE: concurrent changes of one task (from any replica) apply one after the other.
    statement = SELECT_FOR_UPDATE if connection.dialect.name == "postgresql" else SELECT_FULL
    row = connection.execute(statement, {"key_task_id": task_id}).first()
    if row is None:
        raise TaskNotFound(task_id)
    if etag and etag != etag_of(row.version):
        raise EtagMismatch(task_id, etag)
    return row


def _require_active(row: Row[Any], action: str) -> None:
    if not row.active:
        raise TaskStateConflict(
            row.task_id,
            "TASK_DELETED",
            f"cannot {action} task {row.task_id!r}: it is deleted (UndeleteTask restores it)",
        )


def _update(
    connection: Connection, current: Row[Any], now: datetime, values: Mapping[str, Any]
) -> Row[Any]:
    return connection.execute(
        UPDATE,
        {
            **values,
            "updated_at": now,
            "version": current.version + 1,
            "key_task_id": current.task_id,
        },
    ).one()


def _conditions(query: TaskQuery, dialect: str) -> list[ColumnElement[bool]]:
    c = tasks.c
    conditions: list[ColumnElement[bool]] = []
    if not query.show_deleted:
        conditions.append(c.active == true())
    if query.statuses:
        conditions.append(c.status.in_(query.statuses))
    if query.task_types:
        conditions.append(c.task_type.in_(query.task_types))
    if query.created_by is not None:
        conditions.append(c.created_by == query.created_by)
    if query.name_contains:
        if dialect == "sqlite":
            lowered = getattr(func, UNICODE_LOWER)(c.task_name)
            conditions.append(lowered.contains(query.name_contains.lower(), autoescape=True))
        else:
            conditions.append(c.task_name.icontains(query.name_contains, autoescape=True))
    if query.tags_any:
        conditions.append(_has_tags(dialect, query.tags_any, every=False))
    if query.tags_all:
        conditions.append(_has_tags(dialect, query.tags_all, every=True))
    if query.created_after is not None:
        conditions.append(c.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(c.created_at < query.created_before)
    return conditions


def _has_tags(dialect: str, tags_wanted: Sequence[str], *, every: bool) -> ColumnElement[bool]:
    """Exact tag membership; `tags` is a JSON array of strings."""
    if dialect == "postgresql":
        wanted = literal(list(tags_wanted), postgresql.ARRAY(postgresql.TEXT))
        return tasks.c.tags.op("?&" if every else "?|", return_type=Boolean())(wanted)

    def member(*values: str) -> ColumnElement[bool]:
        each = func.json_each(tasks.c.tags).table_valued("value")
        return exists(select(1).select_from(each).where(each.c.value.in_(values)))

    if every:
        return and_(*(member(tag) for tag in tags_wanted))
    return member(*tags_wanted)


def _copy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)
