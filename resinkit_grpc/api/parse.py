"""Requests in, store inputs out: every check of caller input happens here, and every failure is
an InvalidArgument naming the offending field, so nothing half-valid reaches the store."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from google.protobuf import struct_pb2, timestamp_pb2

from resinkit_grpc.api.convert import (
    PROTO_TO_STATUS,
    UnstorableJSON,
    datetime_from_timestamp,
    struct_to_dict,
)
from resinkit_grpc.api.page_tokens import PageTokens, fingerprint
from resinkit_grpc.api.task_ids import new_task_id
from resinkit_grpc.errors import FieldViolation, InvalidArgument
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.notification_config import InvalidConfig
from resinkit_grpc.notification_config import parse as parse_notification_config
from resinkit_grpc.rules import EventType
from resinkit_grpc.store.tasks import (
    MUTABLE_FIELDS,
    SORT_FIELDS,
    STATUS_DETAIL_FIELDS,
    NewTask,
    SortOrder,
    StatusChange,
    TaskQuery,
)
from resinkit_grpc.watch.items import EventFilter
from resinkit_grpc.watch.watches import WatchRequest

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TAGS = 64
MAX_TAG_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 4096
MAX_SHORT_TEXT = 128
# Values per list in a filter (statuses, task types, tags); watches may name more tasks.
MAX_FILTER_VALUES = 100
MAX_WATCHED_TASKS = 1000
# Items per BatchCreateTasks / BatchGetTasks call (AIP-231, AIP-233).
MAX_BATCH_SIZE = 1000
# Up to ten years; longer is almost certainly a unit mistake.
MAX_TIMEOUT_SECONDS = 10 * 365 * 24 * 3600
# Each JSON field of a task (Struct), as encoded on the wire. Six of them at most keep a whole
# task (about 3.1 MiB) inside the 4 MiB a default client accepts.
MAX_JSON_FIELD_BYTES = 512 * 1024
MAX_ETAG_LENGTH = 64
MAX_PAGE_TOKEN_LENGTH = 1024
MAX_ORDER_BY_LENGTH = 64
# Task has fewer fields than this; more paths in a mask are a mistake or an attack.
MAX_MASK_PATHS = 32
# How many unknown values an error names (the rest are counted).
MAX_ECHOED_VALUES = 5
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
OUTPUT_ONLY_FIELDS = frozenset(
    {
        "task_id",
        "task_type",
        "status",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "submitted_configs",
        "error_info",
        "result_summary",
        "created_by",
        "active",
        "etag",
    }
)
EVENT_TYPES = frozenset(event_type.value for event_type in EventType)


class Undecodable:
    """A request that gRPC could not decode (invalid UTF-8, truncated or corrupt wire data,
    JSON nested deeper than protobuf parses; see api/registration.py): answered
    INVALID_ARGUMENT like any other bad input, instead of gRPC's UNKNOWN with the decoder's
    text."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def decodable(request: Any) -> None:
    if request is UNDECODABLE:
        raise InvalidArgument.one(
            "request",
            "cannot be decoded as this method's message (bad UTF-8, corrupt or nested too deep)",
        )


class Violations:
    """Collects every problem with a request, so the caller learns of all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def text(self, value: str, field: str, max_length: int) -> None:
        """Text that every backend can store: bounded, and without NUL characters."""
        if len(value) > max_length:
            self.add(field, f"is too long (max {max_length})")
        elif "\x00" in value:
            self.add(field, "must not contain NUL characters")

    def texts(self, values: Sequence[str], field: str, max_length: int, max_count: int) -> None:
        if len(values) > max_count:
            self.add(field, f"at most {max_count} values")
        for value in values:
            self.text(value, field, max_length)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def task_id(value: str, field: str = "task_id") -> str:
    if not value:
        raise InvalidArgument.one(field, "is required")
    if not TASK_ID_PATTERN.fullmatch(value):
        raise InvalidArgument.one(
            field, "must be 1 to 128 characters of [A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


def optional_text(value: str) -> str | None:
    return value or None


def etag(value: str, field: str = "etag") -> str | None:
    """An etag as the service issues them; empty means none given."""
    if len(value) > MAX_ETAG_LENGTH or "\x00" in value:
        raise InvalidArgument.one(field, "is not an etag this service issued")
    return value or None


def view(value: int, field: str = "view") -> bool:
    """Whether a TaskView asks for the FULL view; unset is the RPC's default."""
    _enum(value, pb.TaskView.DESCRIPTOR, field)
    return value == pb.TASK_VIEW_FULL


def _enum(value: int, descriptor: Any, field: str) -> None:
    """Every enum of every request is checked alike: a number the enum does not define is
    INVALID_ARGUMENT, never ignored."""
    if value not in descriptor.values_by_number:
        raise InvalidArgument.one(field, f"{value} is not a {descriptor.name}")


def _echo(values: Iterable[str]) -> str:
    """Unknown values named in an error: a few of them, each cut short."""
    names = sorted(set(values))
    shown = ", ".join(repr(name[:32]) for name in names[:MAX_ECHOED_VALUES])
    more = len(names) - MAX_ECHOED_VALUES
    return shown + (f" and {more} more" if more > 0 else "")


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgument.one(field, "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class WebhookRules:
    """What a notification_config may name on this server (see notification_config.parse)."""

    allow_private: bool = True
    known_secret: Callable[[str], bool] | None = None


ANY_WEBHOOK = WebhookRules()


def create_task(request: pb.CreateTaskRequest, webhooks: WebhookRules = ANY_WEBHOOK) -> NewTask:
    problems = Violations()
    task = request.task
    new_id = request.task_id or task.task_id
    if new_id:
        _collect(problems, lambda: task_id(new_id))
    else:
        new_id = new_task_id()
    # Each field read once: every read of a message's field makes a new Python object.
    task_type, created_by = task.task_type, task.created_by
    problems.check(bool(task_type), "task.task_type", "is required")
    problems.text(task_type, "task.task_type", MAX_SHORT_TEXT)
    problems.check(
        task.status in (pb.TASK_STATUS_UNSPECIFIED, pb.TASK_STATUS_PENDING),
        "task.status",
        "a new task starts in TASK_STATUS_PENDING; leave status unset",
    )
    who = caller(request, problems)
    problems.text(created_by, "task.created_by", MAX_SHORT_TEXT)
    task_name, description = _checked_texts(problems, task)
    configs = _struct(problems, task, "submitted_configs") or {}
    timeout = configs.get("task_timeout_seconds")
    if timeout is not None and not _valid_timeout(timeout):
        problems.add(
            "task.submitted_configs.task_timeout_seconds",
            f"must be a JSON number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}",
        )
        timeout = None
    new = NewTask(
        task_id=new_id,
        task_type=task_type,
        created_by=created_by or "system",
        task_name=task_name or None,
        description=description or None,
        priority=task.priority,
        submitted_configs=configs,
        notification_config=_notification_config(problems, task, webhooks),
        execution_details=_struct(problems, task, "execution_details"),
        progress_details=_struct(problems, task, "progress_details"),
        tags=_tags(problems, task.tags),
        expires_at=_timestamp(problems, task, "expires_at"),
        timeout_seconds=float(timeout) if timeout is not None else None,
        request_id=who.request_id,
        actor=who.actor,
    )
    problems.raise_if_any()
    return new


def batch_create_tasks(
    request: pb.BatchCreateTasksRequest, webhooks: WebhookRules = ANY_WEBHOOK
) -> list[NewTask]:
    """Every item checked as CreateTask checks it, its fields named `requests[i]...`; the first
    bad item's index goes into the error. Two items may not share a task_id or request_id: the
    outcome of such a batch would depend on the order of its items."""
    items = request.requests
    if not items:
        raise InvalidArgument.one("requests", "is required: 1 to 1000 tasks")
    if len(items) > MAX_BATCH_SIZE:
        raise InvalidArgument.one("requests", f"at most {MAX_BATCH_SIZE} tasks per call")
    problems = Violations()
    first_bad: int | None = None
    news: list[NewTask] = []
    task_ids: dict[str, int] = {}
    request_ids: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            new = create_task(item, webhooks)
        except InvalidArgument as invalid:
            for v in invalid.violations:
                problems.add(f"requests[{index}].{v.field}", v.description)
            first_bad = index if first_bad is None else first_bad
            continue
        for key, seen, field in (
            (new.task_id, task_ids, "task_id"),
            (new.request_id, request_ids, "request_id"),
        ):
            if key is None:
                continue
            if key in seen:
                problems.add(f"requests[{index}].{field}", f"repeats requests[{seen[key]}].{field}")
                first_bad = index if first_bad is None else first_bad
            seen[key] = index
        news.append(new)
    if problems.items:
        failure = InvalidArgument(problems.items)
        failure.index = first_bad
        raise failure
    return news


def batch_get_tasks(request: pb.BatchGetTasksRequest) -> tuple[list[str], bool]:
    """The ids asked for, checked, and whether the FULL view is wanted (the default)."""
    ids = list(request.task_ids)
    if not ids:
        raise InvalidArgument.one("task_ids", "is required: 1 to 1000 ids")
    if len(ids) > MAX_BATCH_SIZE:
        raise InvalidArgument.one("task_ids", f"at most {MAX_BATCH_SIZE} ids per call")
    problems = Violations()
    for index, value in enumerate(ids):
        _collect(problems, lambda: task_id(value, f"task_ids[{index}]"))  # noqa: B023
    full = request.view == pb.TASK_VIEW_UNSPECIFIED or _collect(
        problems, lambda: view(request.view)
    )
    problems.raise_if_any()
    return ids, bool(full)


class Caller(NamedTuple):
    """Who makes a mutation, and the key that makes its retries safe."""

    actor: str | None
    request_id: str | None


def caller(request: Any, problems: Violations | None = None) -> Caller:
    """The actor and request_id of a mutation request, checked."""
    found = problems or Violations()
    found.text(request.request_id, "request_id", MAX_SHORT_TEXT)
    found.text(request.actor, "actor", MAX_SHORT_TEXT)
    if problems is None:
        found.raise_if_any()
    return Caller(optional_text(request.actor), optional_text(request.request_id))


@dataclass(frozen=True)
class TaskChange:
    """DeleteTask and UndeleteTask: which task, the etag guard (DeleteTask), who and the key."""

    task_id: str
    etag: str | None
    caller: Caller


def task_change(request: pb.DeleteTaskRequest | pb.UndeleteTaskRequest) -> TaskChange:
    problems = Violations()
    the_id = _collect(problems, lambda: task_id(request.task_id))
    the_etag = None
    if isinstance(request, pb.DeleteTaskRequest):
        the_etag = _collect(problems, lambda: etag(request.etag))
    who = caller(request, problems)
    problems.raise_if_any()
    assert the_id is not None
    return TaskChange(the_id, the_etag, who)


@dataclass(frozen=True)
class TaskUpdate:
    task_id: str
    changes: dict[str, Any]
    etag: str | None
    caller: Caller


def update_task(request: pb.UpdateTaskRequest, webhooks: WebhookRules = ANY_WEBHOOK) -> TaskUpdate:
    task = request.task
    the_id = task_id(task.task_id, "task.task_id")
    if len(request.update_mask.paths) > MAX_MASK_PATHS:
        raise InvalidArgument.one("update_mask", f"at most {MAX_MASK_PATHS} paths")
    paths = list(request.update_mask.paths) or _populated_mutable_fields(task)
    if not paths:
        raise InvalidArgument.one("update_mask", "names no field, and no mutable field is set")
    if "*" in paths:
        if paths != ["*"]:
            raise InvalidArgument.one("update_mask", "`*` must be the only path")
        paths = list(MUTABLE_FIELDS)
    problems = Violations()
    for path in dict.fromkeys(paths):
        if path == "status":
            problems.add("update_mask", "status is changed with UpdateTaskStatus")
        elif path in OUTPUT_ONLY_FIELDS:
            problems.add("update_mask", f"{path} is output only or immutable")
        elif path not in MUTABLE_FIELDS:
            problems.add(
                "update_mask", f"{_echo([path])} is not a field of Task that can be updated"
            )
    problems.raise_if_any()
    _checked_texts(problems, task)
    readers: dict[str, Callable[[], Any]] = {
        "task_name": lambda: optional_text(task.task_name),
        "description": lambda: optional_text(task.description),
        "priority": lambda: task.priority,
        "tags": lambda: _tags(problems, task.tags),
        "expires_at": lambda: _timestamp(problems, task, "expires_at"),
        "notification_config": lambda: _notification_config(problems, task, webhooks),
    }
    changes = {
        path: readers[path]() if path in readers else _struct(problems, task, path)
        for path in dict.fromkeys(paths)
    }
    the_etag = _collect(problems, lambda: etag(task.etag, "task.etag"))
    who = caller(request, problems)
    problems.raise_if_any()
    return TaskUpdate(the_id, changes, the_etag, who)


def status_change(request: pb.UpdateTaskStatusRequest) -> StatusChange:
    the_id = task_id(request.task_id)
    if request.status == pb.TASK_STATUS_UNSPECIFIED:
        raise InvalidArgument.one("status", "is required")
    _enum(request.status, pb.TaskStatus.DESCRIPTOR, "status")
    status = PROTO_TO_STATUS[request.status]
    problems = Violations()
    who = caller(request, problems)
    the_etag = _collect(problems, lambda: etag(request.etag))
    details = {}
    for name in STATUS_DETAIL_FIELDS:
        value = _struct(problems, request, name, prefix="")
        if value is not None:
            details[name] = value
    problems.raise_if_any()
    return StatusChange(
        task_id=the_id,
        status=status,
        details=details,
        actor=who.actor,
        etag=the_etag,
        request_id=who.request_id,
    )


@dataclass(frozen=True)
class TaskPage:
    query: TaskQuery
    order: SortOrder
    after: tuple[Any, str] | None
    page_size: int
    full: bool
    fingerprint: str


def list_tasks(request: pb.ListTasksRequest, tokens: PageTokens) -> TaskPage:
    problems = Violations()
    f = request.filter
    statuses = []
    if len(f.statuses) > MAX_FILTER_VALUES:
        problems.add("filter.statuses", f"at most {MAX_FILTER_VALUES} values")
    else:
        for number in f.statuses:
            if number == pb.TASK_STATUS_UNSPECIFIED:  # "no status given": places no condition
                continue
            status = PROTO_TO_STATUS.get(number)
            if status is None:
                problems.add("filter.statuses", f"{number} is not a TaskStatus")
            else:
                statuses.append(status.value)
    problems.texts(f.task_types, "filter.task_types", MAX_SHORT_TEXT, MAX_FILTER_VALUES)
    problems.text(f.created_by, "filter.created_by", MAX_SHORT_TEXT)
    problems.text(f.name_contains, "filter.name_contains", MAX_NAME_LENGTH)
    problems.texts(f.tags_any, "filter.tags_any", MAX_TAG_LENGTH, MAX_FILTER_VALUES)
    problems.texts(f.tags_all, "filter.tags_all", MAX_TAG_LENGTH, MAX_FILTER_VALUES)
    query = TaskQuery(
        statuses=tuple(sorted(set(statuses))),
        task_types=tuple(sorted(set(f.task_types))),
        created_by=optional_text(f.created_by),
        name_contains=optional_text(f.name_contains),
        tags_any=tuple(sorted(set(f.tags_any))),
        tags_all=tuple(sorted(set(f.tags_all))),
        created_after=_timestamp(problems, f, "created_after", prefix="filter."),
        created_before=_timestamp(problems, f, "created_before", prefix="filter."),
        show_deleted=request.show_deleted,
    )
    order = _collect(problems, lambda: order_by(request.order_by))
    size = _collect(problems, lambda: page_size(request.page_size))
    full = _collect(problems, lambda: view(request.view))
    problems.check(
        len(request.page_token) <= MAX_PAGE_TOKEN_LENGTH,
        "page_token",
        "is not a page token this service issued",
    )
    problems.raise_if_any()
    assert order is not None and size is not None
    digest = fingerprint(query, order)
    after = None
    if request.page_token:
        after = _task_position(tokens.decode(request.page_token, digest), order)
    return TaskPage(query, order, after, size, bool(full), digest)


def task_position(row_value: Any, row_task_id: str) -> list[Any]:
    """The keyset position of a row, as it is written into a page token."""
    value = row_value.isoformat() if isinstance(row_value, datetime) else row_value
    return [value, row_task_id]


def order_by(text: str) -> SortOrder:
    words = text[: MAX_ORDER_BY_LENGTH + 1].replace(",", " , ").split()
    if not words:
        return SortOrder()
    field = words[0]
    direction = words[1].lower() if len(words) == 2 else "asc"
    if (
        len(text) > MAX_ORDER_BY_LENGTH
        or field not in SORT_FIELDS
        or len(words) > 2
        or direction not in ("asc", "desc")
    ):
        raise InvalidArgument.one(
            "order_by",
            "must be one of created_at, updated_at, priority, optionally followed by asc or desc",
        )
    return SortOrder(field, direction == "desc")


@dataclass(frozen=True)
class EventPage:
    task_id: str | None
    event_types: tuple[str, ...]
    after_event_id: int
    page_size: int
    fingerprint: str


def list_task_events(request: pb.ListTaskEventsRequest, tokens: PageTokens) -> EventPage:
    the_id = task_id(request.task_id) if request.task_id else None
    types = event_types(request.event_types)
    size = page_size(request.page_size)
    digest = fingerprint(the_id, types)
    after = 0
    if len(request.page_token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument.one("page_token", "is not a page token this service issued")
    if request.page_token:
        position = tokens.decode(request.page_token, digest)
        if len(position) != 1 or not isinstance(position[0], int):
            raise InvalidArgument.one("page_token", "is not a page token this service issued")
        after = position[0]
    return EventPage(the_id, types, after, size, digest)


@dataclass(frozen=True)
class DeliveryPage:
    task_id: str | None
    states: tuple[str, ...]
    after_delivery_id: int
    page_size: int
    fingerprint: str


def list_deliveries(request: pb.ListDeliveriesRequest, tokens: PageTokens) -> DeliveryPage:
    the_id = task_id(request.task_id) if request.task_id else None
    if len(request.states) > MAX_FILTER_VALUES:
        raise InvalidArgument.one("states", f"at most {MAX_FILTER_VALUES} values")
    states = set()
    for state in request.states:
        if state == pb.DELIVERY_STATE_UNSPECIFIED or state not in pb.DeliveryState.values():
            raise InvalidArgument.one(
                "states", f"{state} is not a DeliveryState (PENDING, DELIVERED, DEAD, DISABLED)"
            )
        states.add(pb.DeliveryState.Name(state).removeprefix("DELIVERY_STATE_"))
    chosen = tuple(sorted(states))
    size = page_size(request.page_size)
    digest = fingerprint("deliveries", the_id, chosen)
    after = 0
    if len(request.page_token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument.one("page_token", "is not a page token this service issued")
    if request.page_token:
        position = tokens.decode(request.page_token, digest)
        if len(position) != 1 or not isinstance(position[0], int):
            raise InvalidArgument.one("page_token", "is not a page token this service issued")
        after = position[0]
    return DeliveryPage(the_id, chosen, after, size, digest)


def event_range(request: pb.RedeliverEventsRequest) -> tuple[int, int]:
    problems = Violations()
    problems.check(request.first_event_id >= 1, "first_event_id", "must be at least 1")
    problems.check(
        request.last_event_id >= request.first_event_id,
        "last_event_id",
        "must be at least first_event_id",
    )
    problems.raise_if_any()
    return request.first_event_id, request.last_event_id


def event_types(values: Sequence[str], field: str = "event_types") -> tuple[str, ...]:
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidArgument.one(field, f"at most {MAX_FILTER_VALUES} values")
    unknown = set(values) - EVENT_TYPES
    if unknown:
        raise InvalidArgument.one(
            field,
            f"unknown event type(s) {_echo(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}",
        )
    return tuple(sorted(set(values)))


def _task_position(position: list[Any], order: SortOrder) -> tuple[Any, str]:
    bad = InvalidArgument.one("page_token", "is not a page token this service issued")
    if len(position) != 2 or not isinstance(position[1], str):
        raise bad
    value = position[0]
    if order.field == "priority":
        if not isinstance(value, int):
            raise bad
        return value, position[1]
    try:
        return datetime.fromisoformat(value), position[1]
    except (TypeError, ValueError):
        raise bad from None


def _populated_mutable_fields(task: pb.Task) -> list[str]:
    populated = {descriptor.name for descriptor, _ in task.ListFields()}
    return [name for name in MUTABLE_FIELDS if name in populated]


def _checked_texts(problems: Violations, task: pb.Task) -> tuple[str, str]:
    """The task's name and description, checked."""
    name, description = task.task_name, task.description
    problems.text(name, "task.task_name", MAX_NAME_LENGTH)
    problems.text(description, "task.description", MAX_DESCRIPTION_LENGTH)
    return name, description


def _tags(problems: Violations, values: Sequence[str]) -> list[str] | None:
    if not values:
        return None
    tags = list(dict.fromkeys(values))
    problems.check(len(tags) <= MAX_TAGS, "task.tags", f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or "\x00" in tag:
            problems.add(
                "task.tags", f"each tag must be 1 to {MAX_TAG_LENGTH} characters, without NUL"
            )
            break
    return tags or None


def _struct(
    problems: Violations, message: Any, name: str, prefix: str = "task."
) -> dict[str, Any] | None:
    if not message.HasField(name):
        return None
    value: struct_pb2.Struct = getattr(message, name)
    if value.ByteSize() > MAX_JSON_FIELD_BYTES:
        problems.add(prefix + name, f"is larger than {MAX_JSON_FIELD_BYTES} bytes encoded")
        return None
    try:
        return struct_to_dict(value)
    except UnstorableJSON as error:
        problems.add(prefix + name, str(error))
        return None


def _notification_config(
    problems: Violations, task: pb.Task, rules: WebhookRules
) -> dict[str, Any] | None:
    """The task's notification_config, checked against its schema (notification_config.py)."""
    if not task.HasField("notification_config"):
        return None
    config = _struct(problems, task, "notification_config")
    try:
        parse_notification_config(
            config, allow_private=rules.allow_private, known_secret=rules.known_secret
        )
    except InvalidConfig as error:
        for problem in error.problems:
            problems.add(f"task.notification_config.{problem.field}", problem.description)
    return config


def _timestamp(
    problems: Violations, message: Any, name: str, prefix: str = "task."
) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    try:
        return datetime_from_timestamp(stamp)
    except (ValueError, OverflowError):
        problems.add(prefix + name, "is not a valid timestamp")
        return None


def _valid_timeout(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 < value <= MAX_TIMEOUT_SECONDS
    )


def _collect(problems: Violations, parse: Callable[[], T]) -> T | None:
    try:
        return parse()
    except InvalidArgument as exc:
        problems.items.extend(exc.violations)
        return None


def watch(request: pb.WatchTaskEventsRequest) -> WatchRequest:
    decodable(request)
    problems = Violations()
    for index, value in enumerate(request.task_ids):
        if not value or not TASK_ID_PATTERN.fullmatch(value):
            problems.add(f"task_ids[{index}]", "is not a valid task_id")
    problems.check(
        len(request.task_ids) <= MAX_WATCHED_TASKS,
        "task_ids",
        f"at most {MAX_WATCHED_TASKS} tasks per watch",
    )
    problems.check(all(request.task_types), "task_types", "must not contain empty strings")
    problems.texts(request.task_types, "task_types", MAX_SHORT_TEXT, MAX_FILTER_VALUES)
    types = _collect(problems, lambda: event_types(request.event_types)) or ()
    after = request.after_event_id if request.HasField("after_event_id") else None
    problems.check(after is None or after >= 0, "after_event_id", "must not be negative")
    until = None
    if request.until_terminal:
        if len(set(request.task_ids)) != 1:
            problems.add("until_terminal", "needs exactly one task_ids entry")
        else:
            until = request.task_ids[0]
    problems.check(
        until is not None or not request.wait_for_creation,
        "wait_for_creation",
        "only applies with until_terminal",
    )
    problems.raise_if_any()
    return WatchRequest(
        EventFilter(frozenset(request.task_ids), frozenset(request.task_types), frozenset(types)),
        after_event_id=after,
        until_terminal=until,
        wait_for_creation=request.wait_for_creation,
    )
