"""Conversions between the client's Python values and the generated messages, shared by the
sync and asyncio clients: requests are built and responses read here, nowhere else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import struct_pb2, timestamp_pb2

from resinkit_grpc.client.types import (
    Delivery,
    DeliveryState,
    Heartbeat,
    Task,
    TaskEvent,
    TaskFilter,
    TaskView,
)
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TaskStatus

JSON_FIELDS = (
    "submitted_configs",
    "error_info",
    "result_summary",
    "execution_details",
    "progress_details",
    "notification_config",
)
_TIMES = ("created_at", "updated_at", "started_at", "finished_at", "expires_at")
_VIEWS = {None: pb.TASK_VIEW_UNSPECIFIED, TaskView.BASIC: pb.TASK_VIEW_BASIC}
_VIEWS[TaskView.FULL] = pb.TASK_VIEW_FULL


def status_to_proto(status: TaskStatus | str) -> pb.TaskStatus.ValueType:
    return pb.TaskStatus.Value(f"TASK_STATUS_{TaskStatus(status).value}")


def status_from_proto(number: int) -> TaskStatus | None:
    if number == pb.TASK_STATUS_UNSPECIFIED:
        return None
    return TaskStatus(pb.TaskStatus.Name(cast(Any, number)).removeprefix("TASK_STATUS_"))


def view_to_proto(view: TaskView | None) -> pb.TaskView.ValueType:
    return _VIEWS[view]


def set_time(stamp: timestamp_pb2.Timestamp, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError("timestamps must be aware datetimes (e.g. datetime.now(UTC))")
    stamp.FromDatetime(value.astimezone(UTC))


def time_or_none(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def json_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_dict(value.struct_value)
    if kind == "list_value":
        return [json_value(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        # Struct has only doubles: integral numbers come back as ints, as they were sent.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: json_value(value) for key, value in struct.fields.items()}


def task_from_proto(message: pb.Task) -> Task:
    fields: Any = message  # HasField by a name held in a variable
    status = status_from_proto(message.status)
    assert status is not None, "the server always sends a task's status"
    values: dict[str, Any] = {
        name: (struct_dict(getattr(message, name)) if fields.HasField(name) else None)
        for name in JSON_FIELDS
    }
    values.update({name: time_or_none(message, name) for name in _TIMES})
    return Task(
        task_id=message.task_id,
        task_type=message.task_type,
        status=status,
        task_name=message.task_name,
        description=message.description,
        priority=message.priority,
        created_by=message.created_by,
        tags=tuple(message.tags),
        active=message.active,
        etag=message.etag,
        **values,
    )


def event_from_proto(message: pb.TaskEvent) -> TaskEvent:
    return TaskEvent(
        event_id=message.event_id,
        task_id=message.task_id,
        event_type=message.event_type,
        timestamp=message.timestamp.ToDatetime(tzinfo=UTC),
        task_type=message.task_type,
        event_data=struct_dict(message.event_data),
        previous_status=status_from_proto(message.previous_status),
        new_status=status_from_proto(message.new_status),
        actor=message.actor or None,
        deliveries=tuple(delivery_from_proto(d) for d in message.deliveries),
    )


def delivery_from_proto(message: pb.Delivery) -> Delivery:
    def moment(name: Any) -> datetime | None:
        if not message.HasField(name):
            return None
        stamp: Any = getattr(message, name)
        return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]

    return Delivery(
        delivery_id=message.delivery_id,
        task_id=message.task_id,
        event_id=message.event_id,
        url=message.url,
        webhook_id=message.webhook_id,
        state=DeliveryState(pb.DeliveryState.Name(message.state).removeprefix("DELIVERY_STATE_")),
        attempts=message.attempts,
        secret_id=message.secret_id or None,
        next_attempt_at=moment("next_attempt_at"),
        last_attempt_at=moment("last_attempt_at"),
        last_status_code=message.last_status_code or None,
        last_error=message.last_error or None,
        delivered_at=moment("delivered_at"),
        created_at=moment("created_at"),
    )


def list_deliveries_request(
    task_id: str | None,
    *,
    states: Sequence[DeliveryState],
    page_size: int | None,
    page_token: str | None,
) -> pb.ListDeliveriesRequest:
    return pb.ListDeliveriesRequest(
        task_id=task_id or "",
        states=[pb.DeliveryState.Value(f"DELIVERY_STATE_{state.value}") for state in states],
        page_size=page_size or 0,
        page_token=page_token or "",
    )


def heartbeat_from_proto(message: pb.Heartbeat) -> Heartbeat:
    return Heartbeat(message.event_id, message.timestamp.ToDatetime(tzinfo=UTC))


def fill_task(task: pb.Task, values: Mapping[str, Any]) -> None:
    """Sets the given (not None) fields of a Task message from Python values."""
    for name, value in values.items():
        if value is None:
            continue
        if name in JSON_FIELDS:
            getattr(task, name).update(value)
        elif name in _TIMES:
            set_time(getattr(task, name), value)
        elif name == "tags":
            task.tags.extend(value)
        else:
            setattr(task, name, value)


def create_task_request(
    *,
    task_type: str,
    task_id: str | None,
    request_id: str,
    actor: str | None,
    fields: Mapping[str, Any],
) -> pb.CreateTaskRequest:
    request = pb.CreateTaskRequest(task_id=task_id or "", request_id=request_id, actor=actor or "")
    request.task.task_type = task_type
    fill_task(request.task, fields)
    return request


def update_task_request(
    task_id: str,
    *,
    fields: Mapping[str, Any],
    etag: str | None,
    request_id: str,
    actor: str | None,
) -> pb.UpdateTaskRequest:
    """Every field given (not None) is named in the mask, so an empty value ("", [], {}, 0)
    clears it."""
    changed = {name: value for name, value in fields.items() if value is not None}
    if not changed:
        raise ValueError("update_task needs at least one field to change")
    request = pb.UpdateTaskRequest(request_id=request_id, actor=actor or "")
    request.task.task_id = task_id
    if etag:
        request.task.etag = etag
    fill_task(request.task, changed)
    request.update_mask.paths.extend(sorted(changed))
    return request


def update_status_request(
    task_id: str,
    status: TaskStatus | str,
    *,
    details: Mapping[str, Mapping[str, Any] | None],
    actor: str | None,
    etag: str | None,
    request_id: str,
) -> pb.UpdateTaskStatusRequest:
    request = pb.UpdateTaskStatusRequest(
        task_id=task_id,
        status=status_to_proto(status),
        actor=actor or "",
        etag=etag or "",
        request_id=request_id,
    )
    for name, value in details.items():
        if value is not None:
            getattr(request, name).update(value)
    return request


def list_tasks_request(
    task_filter: TaskFilter | None,
    *,
    order_by: str | None,
    page_size: int | None,
    page_token: str | None,
    show_deleted: bool,
    view: TaskView | None,
) -> pb.ListTasksRequest:
    request = pb.ListTasksRequest(
        page_size=page_size or 0,
        page_token=page_token or "",
        order_by=order_by or "",
        show_deleted=show_deleted,
        view=view_to_proto(view),
    )
    if task_filter is not None:
        wanted = request.filter
        wanted.statuses.extend(status_to_proto(s) for s in task_filter.statuses)
        wanted.task_types.extend(task_filter.task_types)
        wanted.created_by = task_filter.created_by or ""
        wanted.name_contains = task_filter.name_contains or ""
        wanted.tags_any.extend(task_filter.tags_any)
        wanted.tags_all.extend(task_filter.tags_all)
        if task_filter.created_after is not None:
            set_time(wanted.created_after, task_filter.created_after)
        if task_filter.created_before is not None:
            set_time(wanted.created_before, task_filter.created_before)
    return request


def list_events_request(
    task_id: str | None,
    *,
    event_types: Sequence[str],
    page_size: int | None,
    page_token: str | None,
) -> pb.ListTaskEventsRequest:
    return pb.ListTaskEventsRequest(
        task_id=task_id or "",
        event_types=list(event_types),
        page_size=page_size or 0,
        page_token=page_token or "",
    )
