"""Task operations. Each takes a Connection inside a transaction opened by Database, changes the
task and appends its event last, so the change and its event commit together or not at all."""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Boolean,
    Connection,
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
from resinkit_grpc.store import name_index, name_words
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.engine import UNICODE_LOWER, fold
from resinkit_grpc.store.events import append_event, append_with, with_event
from resinkit_grpc.store.filter_indexes import add_tags, dense_conditions, task_tags
from resinkit_grpc.store.models import ServiceSecret, Task
from resinkit_grpc.store.prepared import Prepared
from resinkit_grpc.store.requests import once
from resinkit_grpc.store.size_cut import cut_by_size, stored_length

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
SELECT_FULL = Prepared(select(*FULL_COLUMNS).where(_BY_ID))
SELECT_BASIC = Prepared(select(*BASIC_COLUMNS).where(_BY_ID))
SELECT_FOR_UPDATE = Prepared(select(*FULL_COLUMNS).where(_BY_ID).with_for_update())
SELECT_BY_REQUEST_ID = select(*FULL_COLUMNS).where(tasks.c.request_id == bindparam("request_id"))
# Waits for a concurrent insert of the same key to commit, then does nothing. Whether the row
# went in: pysqlite's rowcount says so; on PostgreSQL, whether the task_id comes back from
# RETURNING, in the statement that also inserts the CREATED event (see events.with_event) when
# the task went in (on SQLite RETURNING would cost the writer two more trips for the GIL: see
# writer.py).
INSERT_SQLITE = Prepared(sqlite.insert(tasks).on_conflict_do_nothing())
CREATE_POSTGRESQL = Prepared(
    with_event(
        postgresql.insert(tasks)
        .values({column.name: bindparam(column.name) for column in tasks.c})
        .on_conflict_do_nothing()
        .returning(tasks.c.task_id)
    )
)
# No RETURNING: the writer knows every value it wrote, and reading them back cost more than the
# write.
UPDATE = sql_update(tasks).where(_BY_ID)


@functools.lru_cache(maxsize=1024)
def _update_of(columns: frozenset[str]) -> Prepared:
    """The UPDATE that sets these columns (one statement per set of columns, built once)."""
    return Prepared(UPDATE.values({name: bindparam(name) for name in sorted(columns)}))


# A task as stored: column name -> value (BASIC reads leave LARGE_COLUMNS out).
TaskRecord = dict[str, Any]


def etag_of(version: int) -> str:
    return f'W/"{version}"'


class NewTask(NamedTuple):
    """A task to create, as the API checked it. A NamedTuple, immutable as a frozen dataclass
    but made in a third of the time (a batch makes one per task)."""

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
    # Who asks: the CREATED event's actor (else created_by).
    actor: str | None = None


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
    request_id: str | None = None


def create_task(connection: Connection, new: NewTask) -> TaskRecord:
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
    record = new_record(new, now, expires_at)
    actor = new.actor or new.created_by
    if connection.dialect.name == "sqlite":
        inserted = INSERT_SQLITE.execute(connection, record) == 1
        if inserted:
            if record["tags"]:
                add_tags(connection, [record])
            append_event(
                connection,
                new.task_id,
                EventType.CREATED,
                now,
                new_status=TaskStatus.PENDING,
                actor=actor,
                task=record,
            )
    else:
        inserted = append_with(
            connection,
            CREATE_POSTGRESQL,
            record,
            new.task_id,
            EventType.CREATED,
            now,
            new_status=TaskStatus.PENDING,
            actor=actor,
            task=record,
        )
    if not inserted:
        first = None if new.request_id is None else _by_request_id(connection, new.request_id)
        if first is not None:
            return first
        raise TaskAlreadyExists(new.task_id)
    return record


def new_record(new: NewTask, now: datetime, expires_at: datetime | None) -> TaskRecord:
    """The row of a task about to be created."""
    return {
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
        "started_at": None,
        "finished_at": None,
        "error_info": None,
        "result_summary": None,
    }


def _by_request_id(connection: Connection, request_id: str) -> TaskRecord | None:
    row = connection.execute(SELECT_BY_REQUEST_ID, {"request_id": request_id}).first()
    return None if row is None else row._asdict()


def get_task(connection: Connection, task_id: str, *, full: bool = True) -> TaskRecord:
    record = (SELECT_FULL if full else SELECT_BASIC).first(connection, {"key_task_id": task_id})
    if record is None:
        raise TaskNotFound(task_id)
    return record


def list_tasks(
    connection: Connection,
    query: TaskQuery,
    order: SortOrder,
    *,
    after: tuple[Any, str] | None,
    limit: int,
    full: bool,
    max_bytes: int = 2 * 1024 * 1024,
) -> list[TaskRecord]:
    """One keyset page: rows strictly after `after` (sort value, task_id) in the sort order,
    at most `limit`. FULL pages hold no more rows than fit in `max_bytes` of stored text (the
    first row always comes), and each of their rows carries `page_rows`: how many rows the
    page had before that cut."""
    if after is not None and order.field == "created_at":
        # Past the first page, the position bounds created_at on its side already (its row
        # was in the range): a second bound on that side would be the one the database walks
        # the index from, reading every row between it and the position.
        if order.descending:
            query = dataclasses.replace(query, created_before=None)
        else:
            query = dataclasses.replace(query, created_after=None)
    dense = frozenset[str]()
    narrow = None
    if connection.dialect.name == "postgresql" and query.name_contains:
        narrow = name_words.narrower(connection, fold(query.name_contains))
    elif connection.dialect.name == "sqlite":
        pattern = fold(query.name_contains) if query.name_contains else ""
        # PostgreSQL's planner has statistics (ANALYZE) and chooses for itself.
        dense = dense_conditions(
            connection,
            statuses=query.statuses,
            task_types=query.task_types,
            tags_any=query.tags_any,
            tags_all=query.tags_all,
            created_range=None
            if order.field == "created_at"
            else (query.created_after, query.created_before),
            name_pattern=pattern if name_index.serves("sqlite", pattern) else None,
            active_only=not query.show_deleted,
        )
    shape = _list_shape(
        connection.dialect.name,
        query,
        order,
        keyset=after is not None,
        full=full,
        dense=dense,
        name_narrowed=narrow is not None,
    )
    params = _list_params(query, limit=limit, max_bytes=max_bytes)
    if narrow is not None:
        params["name_word_pattern"] = f"%{_like_escape(narrow)}%"
    if after is not None:
        params["after_value"], params["after_task_id"] = after
    return _list_statement(shape).all(connection, params)


def update_task(
    connection: Connection,
    task_id: str,
    changes: Mapping[str, Any],
    etag: str | None,
    *,
    actor: str | None = None,
    request_id: str | None = None,
) -> TaskRecord:
    """Applies `changes` (mutable fields only); a change that changes nothing writes nothing.
    Done once per request_id (see requests.once)."""
    return once(
        connection,
        request_id,
        "UpdateTask",
        [task_id, changes, etag, actor],
        lambda: _update_task(connection, task_id, changes, etag, actor),
    )


def _update_task(
    connection: Connection,
    task_id: str,
    changes: Mapping[str, Any],
    etag: str | None,
    actor: str | None,
) -> TaskRecord:
    current = current_task(connection, task_id, etag)
    _require_active(current, "update")
    changed = [name for name, value in changes.items() if current[name] != value]
    if not changed:
        return current
    now = utcnow()
    record = _update(connection, current, now, {name: changes[name] for name in changed})
    append_event(
        connection,
        task_id,
        EventType.UPDATED,
        now,
        event_data={"fields": changed},
        actor=actor,
        task=record,
    )
    return record


def update_task_status(connection: Connection, change: StatusChange) -> TaskRecord:
    """Moves the task along the transition table; done once per request_id."""
    return once(
        connection,
        change.request_id,
        "UpdateTaskStatus",
        [change.task_id, change.status, change.details, change.actor, change.etag],
        lambda: _update_task_status(connection, change),
    )


def _update_task_status(connection: Connection, change: StatusChange) -> TaskRecord:
    current = current_task(connection, change.task_id, change.etag)
    _require_active(current, "change the status of")
    return move_status(
        connection, current, change.status, change.details, actor=change.actor, now=utcnow()
    )


def move_status(
    connection: Connection,
    current: TaskRecord,
    status: TaskStatus,
    details: Mapping[str, Mapping[str, Any]],
    *,
    actor: str | None,
    now: datetime,
    reason: str | None = None,
) -> TaskRecord:
    """Moves a task read in this transaction (see current_task) along the transition table and
    records its STATUS_CHANGE event; `reason` (a server's own decision, e.g. EXPIRED) goes
    into the event's data beside the details."""
    previous = TaskStatus(current["status"])
    if not can_transition(previous, status):
        raise InvalidTransition(current["task_id"], previous, status, allowed_next(previous))
    values: dict[str, Any] = {"status": status.value}
    if status is TaskStatus.RUNNING and current["started_at"] is None:
        values["started_at"] = now
    if status.is_terminal:
        values["finished_at"] = now
    details = {name: dict(value) for name, value in details.items()}
    values.update(details)
    record = _update(connection, current, now, values)
    event_data: dict[str, Any] = dict(details)
    if reason is not None:
        event_data["reason"] = reason
    append_event(
        connection,
        current["task_id"],
        EventType.STATUS_CHANGE,
        now,
        event_data=event_data or None,
        previous_status=previous,
        new_status=status,
        actor=actor,
        task=record,
    )
    return record


def delete_task(
    connection: Connection,
    task_id: str,
    etag: str | None,
    *,
    actor: str | None = None,
    request_id: str | None = None,
) -> TaskRecord:
    """Soft-deletes the task; done once per request_id."""
    return once(
        connection,
        request_id,
        "DeleteTask",
        [task_id, etag, actor],
        lambda: _delete_task(connection, task_id, etag, actor),
    )


def _delete_task(
    connection: Connection, task_id: str, etag: str | None, actor: str | None
) -> TaskRecord:
    current = current_task(connection, task_id, etag)
    if not current["active"]:
        raise TaskStateConflict(
            task_id, "TASK_ALREADY_DELETED", f"task {task_id!r} is already deleted"
        )
    now = utcnow()
    record = _update(connection, current, now, {"active": False})
    append_event(connection, task_id, EventType.DELETED, now, actor=actor, task=record)
    return record


def undelete_task(
    connection: Connection,
    task_id: str,
    *,
    actor: str | None = None,
    request_id: str | None = None,
) -> TaskRecord:
    """Restores a soft-deleted task; done once per request_id."""
    return once(
        connection,
        request_id,
        "UndeleteTask",
        [task_id, actor],
        lambda: _undelete_task(connection, task_id, actor),
    )


def _undelete_task(connection: Connection, task_id: str, actor: str | None) -> TaskRecord:
    current = current_task(connection, task_id, None)
    if current["active"]:
        raise TaskStateConflict(task_id, "TASK_NOT_DELETED", f"task {task_id!r} is not deleted")
    now = utcnow()
    record = _update(connection, current, now, {"active": True})
    append_event(connection, task_id, EventType.UNDELETED, now, actor=actor, task=record)
    return record


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


def current_task(connection: Connection, task_id: str, etag: str | None) -> TaskRecord:
    # FOR UPDATE: concurrent changes of one task (from any replica) apply one after the other.
    statement = SELECT_FOR_UPDATE if connection.dialect.name == "postgresql" else SELECT_FULL
    record = statement.first(connection, {"key_task_id": task_id})
    if record is None:
        raise TaskNotFound(task_id)
    if etag and etag != etag_of(record["version"]):
        raise EtagMismatch(task_id)
    return record


def _require_active(record: TaskRecord, action: str) -> None:
    if not record["active"]:
        task_id = record["task_id"]
        raise TaskStateConflict(
            task_id,
            "TASK_DELETED",
            f"cannot {action} task {task_id!r}: it is deleted (UndeleteTask restores it)",
        )


def _update(
    connection: Connection, current: TaskRecord, now: datetime, values: Mapping[str, Any]
) -> TaskRecord:
    """Writes `values` and returns the task as it now stands."""
    changes = {**values, "updated_at": now, "version": current["version"] + 1}
    statement = _update_of(frozenset(changes))
    statement.execute(connection, {**changes, "key_task_id": current["task_id"]})
    return {**current, **changes}


@dataclass(frozen=True)
class _ListShape:
    """What a ListTasks statement depends on, apart from its parameter values."""

    # SQLite: conditions many tasks meet, tested while walking the sort order's index (see
    # filter_indexes.dense_conditions) rather than used to find the matches first.
    dense: frozenset[str]
    dialect: str
    statuses: bool
    task_types: bool
    created_by: bool
    name_contains: bool
    # SQLite: name_contains read through store/name_index.py (a pattern it can serve, and rare).
    name_indexed: bool
    # PostgreSQL: the trigram index asked for the pattern's rarest word (store/name_words.py).
    name_narrowed: bool
    tags_any: bool
    tags_all: int
    created_after: bool
    created_before: bool
    show_deleted: bool
    order: SortOrder
    keyset: bool
    full: bool


def _list_shape(
    dialect: str,
    query: TaskQuery,
    order: SortOrder,
    *,
    keyset: bool,
    full: bool,
    dense: frozenset[str] = frozenset(),
    name_narrowed: bool = False,
) -> _ListShape:
    return _ListShape(
        dense=dense,
        dialect=dialect,
        statuses=bool(query.statuses),
        task_types=bool(query.task_types),
        created_by=query.created_by is not None,
        name_contains=bool(query.name_contains),
        name_indexed=bool(query.name_contains)
        and name_index.serves(dialect, fold(query.name_contains))
        and "name_contains" not in dense,
        name_narrowed=name_narrowed,
        tags_any=bool(query.tags_any),
        tags_all=len(query.tags_all),
        created_after=query.created_after is not None,
        created_before=query.created_before is not None,
        show_deleted=query.show_deleted,
        order=order,
        keyset=keyset,
        full=full,
    )


def _list_params(query: TaskQuery, *, limit: int, max_bytes: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "limit": limit,
        "max_bytes": max_bytes,
        "statuses": list(query.statuses),
        "task_types": list(query.task_types),
        "created_by": query.created_by,
        "created_after": query.created_after,
        "created_before": query.created_before,
        "tags_any": list(query.tags_any),
        "tags_all": list(query.tags_all),
        **{f"tag_{i}": tag for i, tag in enumerate(query.tags_all)},
    }
    if query.name_contains:
        folded = fold(query.name_contains)
        params["name_pattern"] = f"%{_like_escape(folded)}%"
        params["name_folded"] = folded
        params["name_phrase"] = name_index.phrase(folded)
    return params


def count_by_status(connection: Connection, query: TaskQuery) -> dict[str, int]:
    """How many tasks ListTasks would select with `query`, by status (statuses absent: none)."""
    shape = _list_shape(connection.dialect.name, query, SortOrder(), keyset=False, full=False)
    statement = _count_statement(shape)
    params = _list_params(query, limit=0, max_bytes=0)
    return {row["status"]: row["count"] for row in statement.all(connection, params)}


@functools.lru_cache(maxsize=256)
def _count_statement(shape: _ListShape) -> Prepared:
    c = tasks.c
    return Prepared(
        select(c.status, func.count().label("count"))
        .where(and_(true(), *_conditions(shape)))
        .group_by(c.status)
    )


def _conditions(shape: _ListShape) -> list[ColumnElement[bool]]:
    """The WHERE terms of a ListTasks filter (the keyset position aside)."""
    c = tasks.c
    conditions: list[ColumnElement[bool]] = []
    if not shape.show_deleted:
        conditions.append(c.active == true())

    # SQLite: a rare tag or name is where a page starts (from its few matches), so the
    # conditions a B-tree on tasks could drive are tested instead: walking one status's index
    # in the sort order for a rare tag's tasks reads every task of that status.
    rare_side = shape.dialect == "sqlite" and (
        (shape.tags_any and "tags_any" not in shape.dense)
        or (bool(shape.tags_all) and "tags_all" not in shape.dense)
        or shape.name_indexed
    )

    # likely(x) is x, but no index serves it: SQLite then filters on it instead of driving.
    def tested(name: str, column: Any) -> Any:
        if name in shape.dense or rare_side:
            return func.likely(column, type_=column.type)
        return column

    if shape.statuses:
        conditions.append(tested("statuses", c.status).in_(bindparam("statuses", expanding=True)))
    if shape.task_types:
        conditions.append(
            tested("task_types", c.task_type).in_(bindparam("task_types", expanding=True))
        )
    if shape.created_by:
        conditions.append(tested("created_by", c.created_by) == bindparam("created_by"))
    if shape.name_contains:
        # SQLite's own lower() and LIKE fold ASCII only; its unicode_lower folds every script.
        lower = getattr(func, UNICODE_LOWER) if shape.dialect == "sqlite" else func.lower
        if shape.name_narrowed:
            # The index finds the names with the pattern's rarest word; strpos, which it
            # cannot serve, then tests the whole pattern on those alone.
            conditions.append(
                lower(c.task_name).like(bindparam("name_word_pattern"), escape=LIKE_ESCAPE)
            )
            conditions.append(func.strpos(lower(c.task_name), bindparam("name_folded")) > 0)
        else:
            conditions.append(
                lower(c.task_name).like(bindparam("name_pattern"), escape=LIKE_ESCAPE)
            )
        if shape.name_indexed:
            conditions.append(c.task_id.in_(name_index.candidates()))
    if shape.tags_any:
        conditions.append(_has_any_tag(shape.dialect, "tags_any" in shape.dense))
    if shape.tags_all:
        conditions.append(_has_every_tag(shape.dialect, shape.tags_all, "tags_all" in shape.dense))
    created = tested("created_range", c.created_at)
    if shape.created_after:
        conditions.append(created >= bindparam("created_after", type_=c.created_at.type))
    if shape.created_before:
        conditions.append(created < bindparam("created_before", type_=c.created_at.type))
    return conditions


@functools.lru_cache(maxsize=1024)
def _list_statement(shape: _ListShape) -> Prepared:
    """The ListTasks statement of one shape, built once: values travel as parameters."""
    c = tasks.c
    conditions = _conditions(shape)
    sort_column = c[shape.order.field]
    if shape.keyset:
        position = tuple_(sort_column, c.task_id)
        cursor = tuple_(
            bindparam("after_value", type_=sort_column.type),
            bindparam("after_task_id", type_=c.task_id.type),
        )
        conditions.append(position < cursor if shape.order.descending else position > cursor)
    ordering = _ordering(tasks, shape.order)
    if not shape.full:
        # BASIC rows are small (bounded texts): a page of them is cut, if need be, by the
        # response's size alone (see api/servicer.py).
        return Prepared(
            select(*BASIC_COLUMNS)
            .where(and_(true(), *conditions))
            .order_by(*ordering)
            .limit(bindparam("limit"))
        )
    # FULL rows carry the JSON columns (up to about 3 MiB each): the database cuts the page by
    # their stored size, so that a page of large tasks is never fetched whole.
    stored = sum(
        (
            stored_length(c[name])
            for name in ("task_name", "description", "tags", *sorted(LARGE_COLUMNS))
        ),
        literal(0),
    )
    page = (
        select(*FULL_COLUMNS)
        .where(and_(true(), *conditions))
        .order_by(*ordering)
        .limit(bindparam("limit"))
    )
    return Prepared(
        cut_by_size(
            page,
            stored,
            [column.name for column in FULL_COLUMNS],
            lambda table: _ordering(table, shape.order),
        )
    )


def _ordering(table: Any, order: SortOrder) -> tuple[Any, Any]:
    """ORDER BY terms of a ListTasks sort order, on `table`'s columns."""
    sort, task_id = table.c[order.field], table.c.task_id
    return (sort.desc(), task_id.desc()) if order.descending else (sort.asc(), task_id.asc())


def _has_any_tag(dialect: str, dense: bool) -> ColumnElement[bool]:
    """Exact tag membership; `tags` is a JSON array of strings. On PostgreSQL through the GIN
    index on tags; on SQLite through task_tags (see store/filter_indexes.py): the matches of
    a rare tag first, or for a common (dense) one a probe per task as the sort order is
    walked."""
    if dialect == "postgresql":
        wanted = bindparam("tags_any", type_=postgresql.ARRAY(postgresql.TEXT))
        return tasks.c.tags.op("?|", return_type=Boolean())(wanted)
    return _tagged(task_tags.c.tag.in_(bindparam("tags_any", expanding=True)), dense)


def _has_every_tag(dialect: str, count: int, dense: bool) -> ColumnElement[bool]:
    if dialect == "postgresql":
        wanted = bindparam("tags_all", type_=postgresql.ARRAY(postgresql.TEXT))
        return tasks.c.tags.op("?&", return_type=Boolean())(wanted)
    return and_(
        *(_tagged(task_tags.c.tag == bindparam(f"tag_{index}"), dense) for index in range(count))
    )


def _tagged(tag_condition: ColumnElement[bool], dense: bool) -> ColumnElement[bool]:
    if dense:
        return exists(select(1).where(tag_condition, task_tags.c.task_id == tasks.c.task_id))
    return tasks.c.task_id.in_(select(task_tags.c.task_id).where(tag_condition))


LIKE_ESCAPE = "/"


def _like_escape(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _copy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)
