"""Conversions between store rows / Python values and protobuf messages. No validation here."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store.tasks import LARGE_COLUMNS, TaskRecord, etag_of
from resinkit_grpc.watch.items import LogEvent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Stored status name -> enum number, and back.
STATUS_TO_PROTO: dict[str, pb.TaskStatus.ValueType] = {
    status.value: pb.TaskStatus.Value(f"TASK_STATUS_{status.value}") for status in TaskStatus
}
PROTO_TO_STATUS: dict[int, TaskStatus] = {
    number: TaskStatus(name) for name, number in STATUS_TO_PROTO.items()
}

_TIMESTAMP_FIELDS = ("created_at", "updated_at", "started_at", "finished_at", "expires_at")
_TEXT_FIELDS = ("task_id", "task_type", "task_name", "description", "created_by")


class UnstorableJSON(ValueError):
    """A Struct held something a JSON column cannot store (NaN, infinities, NUL characters);
    the message says what, for the caller."""


def task_to_proto(values: TaskRecord) -> pb.Task:
    """A stored task as a message; a BASIC record (without the large JSON columns) gives a
    BASIC message."""
    task = pb.Task()
    fill_task(task, values)
    return task


def fill_task(task: pb.Task, values: TaskRecord) -> None:
    """Fills a message in place, e.g. one added to a response's repeated field (building a
    separate message and copying it in costs a copy per task of a page)."""
    task.status = STATUS_TO_PROTO[values["status"]]
    task.priority = values["priority"]
    task.active = bool(values["active"])
    task.etag = etag_of(values["version"])
    for name in _TEXT_FIELDS:
        value = values[name]
        if value is not None:
            setattr(task, name, value)
    for name in _TIMESTAMP_FIELDS:
        value = values[name]
        if value is not None:
            set_timestamp(getattr(task, name), value)
    for name in LARGE_COLUMNS:
        value = values.get(name)
        if value:  # an empty document sets nothing
            getattr(task, name).update(value)
    if values["tags"]:
        task.tags.extend(values["tags"])


def event_to_proto(row: LogEvent) -> pb.TaskEvent:
    event = pb.TaskEvent(
        event_id=row.event_id,
        task_id=row.task_id,
        event_type=row.event_type,
        task_type=row.task_type,
    )
    set_timestamp(event.timestamp, row.timestamp)
    if row.event_data is not None:
        event.event_data.update(row.event_data)
    if row.previous_status is not None:
        event.previous_status = STATUS_TO_PROTO[row.previous_status]
    if row.new_status is not None:
        event.new_status = STATUS_TO_PROTO[row.new_status]
    if row.actor is not None:
        event.actor = row.actor
    return event


def watch_event(event: LogEvent) -> bytes:
    """A serialized WatchTaskEventsResponse carrying the event, encoded once for every stream
    that sends it."""
    encoded: bytes | None = event.encoded
    if encoded is None:
        response = pb.WatchTaskEventsResponse(event=event_to_proto(event))
        encoded = event.encoded = response.SerializeToString()
    return encoded


def heartbeat(position: int) -> bytes:
    """A serialized WatchTaskEventsResponse carrying a heartbeat at `position`."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    response = pb.WatchTaskEventsResponse(heartbeat=pb.Heartbeat(event_id=position, timestamp=now))
    return response.SerializeToString()


def set_timestamp(stamp: timestamp_pb2.Timestamp, value: datetime) -> None:
    # Direct arithmetic: Timestamp.FromDatetime costs ten times as much, on every row of a page.
    delta = value - EPOCH
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def datetime_from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# How deep a JSON field may nest (objects and arrays alike, its own object counted). Protobuf
# itself decodes no more than 33 levels of objects; a documented limit of our own, below that,
# names the field instead of the whole request.
MAX_JSON_DEPTH = 32


def struct_to_dict(message: struct_pb2.Struct, depth: int = 1) -> dict[str, Any]:
    """A Struct as plain JSON values; integral numbers come back as ints (Struct only has
    doubles), so stored documents read naturally to other tools. At most MAX_JSON_DEPTH objects
    and arrays deep, the Struct itself counted."""
    if depth > MAX_JSON_DEPTH:
        raise UnstorableJSON(f"is nested more than {MAX_JSON_DEPTH} levels deep")
    result = {}
    for key, value in message.fields.items():
        if "\x00" in key:
            raise UnstorableJSON("keys must not contain NUL characters")
        # Text first and without a call: most values of configs are.
        if value.WhichOneof("kind") == "string_value":
            text = value.string_value
            if "\x00" in text:
                raise UnstorableJSON("strings must not contain NUL characters")
            result[key] = text
        else:
            result[key] = _value(value, depth)
    return result


def _value(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise UnstorableJSON("numbers must be finite (JSON has no NaN or Infinity)")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        if "\x00" in value.string_value:
            raise UnstorableJSON("strings must not contain NUL characters")
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, depth + 1)
    if kind == "list_value":
        if depth + 1 > MAX_JSON_DEPTH:
            raise UnstorableJSON(f"is nested more than {MAX_JSON_DEPTH} levels deep")
        return [_value(item, depth + 1) for item in value.list_value.values]
    return None


_DELIVERY_TIMES = ("next_attempt_at", "last_attempt_at", "delivered_at", "created_at")


def fill_delivery(delivery: pb.Delivery, row: dict[str, Any]) -> None:
    """A webhook_deliveries row (store/deliveries.py) into a message."""
    delivery.delivery_id = row["delivery_id"]
    delivery.task_id = row["task_id"]
    delivery.event_id = row["event_id"]
    delivery.url = row["url"]
    delivery.webhook_id = row["message_id"]
    delivery.state = pb.DeliveryState.Value(f"DELIVERY_STATE_{row['state']}")
    delivery.attempts = row["attempts"]
    if row["secret_id"] is not None:
        delivery.secret_id = row["secret_id"]
    if row["last_status_code"] is not None:
        delivery.last_status_code = row["last_status_code"]
    if row["last_error"] is not None:
        delivery.last_error = row["last_error"]
    for name in _DELIVERY_TIMES:
        if row[name] is not None:
            set_timestamp(getattr(delivery, name), row[name])
