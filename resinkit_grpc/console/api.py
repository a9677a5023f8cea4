"""The console's JSON endpoints. Each turns its HTTP input into the request message of the RPC
it mirrors, so that api/parse.py checks it exactly as it checks the RPC, then runs the same
store operation; tasks and events go out in the gRPC JSON mapping (proto field names)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import json_format, timestamp_pb2

from resinkit_grpc.api import parse
from resinkit_grpc.api.convert import event_to_proto, fill_delivery, task_to_proto
from resinkit_grpc.api.page_tokens import PageTokens
from resinkit_grpc.errors import FieldViolation, InvalidArgument
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store import deliveries, events, tasks
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.tasks import TaskRecord
from resinkit_grpc.watch.items import LogEvent

if TYPE_CHECKING:  # aiohttp's query strings; multidict comes with aiohttp
    from multidict import MultiMapping


# The ListTasks filter in a query string: parameter -> ListTasksRequest field (repeatable
# parameters may be given several times).
LIST_PARAMETERS = {
    "status": "filter.statuses",
    "type": "filter.task_types",
    "tag_any": "filter.tags_any",
    "tag_all": "filter.tags_all",
    "creator": "filter.created_by",
    "name": "filter.name_contains",
    "created_after": "filter.created_after",
    "created_before": "filter.created_before",
    "show_deleted": "show_deleted",
    "order_by": "order_by",
    "page_size": "page_size",
    "page_token": "page_token",
}
REPEATABLE = frozenset({"status", "type", "tag_any", "tag_all"})
CANCEL_STATUSES = {"CANCELLING": pb.TASK_STATUS_CANCELLING, "CANCELLED": pb.TASK_STATUS_CANCELLED}
# What an action's body may hold; the actor is the caller's principal when there is one.
ACTION_FIELDS = frozenset({"status", "etag", "request_id", "actor"})
MAX_BODY_BYTES = 64 * 1024


def task_json(row: TaskRecord) -> dict[str, Any]:
    return _message_json(task_to_proto(row))


def event_json(event: LogEvent) -> dict[str, Any]:
    return _message_json(event_to_proto(event))


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    delivery = pb.Delivery()
    fill_delivery(delivery, row)
    return _message_json(delivery)


def _message_json(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


def status_value(text: str, field: str) -> pb.TaskStatus.ValueType:
    """A status as `RUNNING`, `running` or `TASK_STATUS_RUNNING`."""
    name = text.strip().upper()
    name = name if name.startswith("TASK_STATUS_") else f"TASK_STATUS_{name}"
    number = pb.TaskStatus.DESCRIPTOR.values_by_name.get(name)
    if number is None or number.number == pb.TASK_STATUS_UNSPECIFIED:
        raise InvalidArgument.one(field, f"{parse._echo([text])} is not a task status")
    return pb.TaskStatus.Value(name)


def list_request(query: MultiMapping[str]) -> pb.ListTasksRequest:
    """A ListTasksRequest from the table's query string; an unknown parameter or a value that is
    not of its kind is INVALID_ARGUMENT naming it (what parse.list_tasks checks, it checks)."""
    problems = parse.Violations()
    request = pb.ListTasksRequest()
    for name in query:
        if name not in LIST_PARAMETERS:
            problems.add(name, "is not a filter of the task list")
    for name in LIST_PARAMETERS:
        values = query.getall(name, [])
        if not values:
            continue
        if len(values) > 1 and name not in REPEATABLE:
            problems.add(name, "may be given once")
            continue
        try:
            _fill(request, name, values)
        except InvalidArgument as error:
            problems.items.extend(error.violations)
        except (TypeError, ValueError):  # text protobuf cannot hold (lone surrogates)
            problems.add(name, "is not valid text")
    problems.raise_if_any()
    return request


def _fill(request: pb.ListTasksRequest, name: str, values: list[str]) -> None:
    f = request.filter
    value = values[0]
    if name == "status":
        f.statuses.extend(status_value(v, name) for v in values)
    elif name in ("type", "tag_any", "tag_all"):
        target = {"type": f.task_types, "tag_any": f.tags_any, "tag_all": f.tags_all}[name]
        target.extend(values)
    elif name == "creator":
        f.created_by = value
    elif name == "name":
        f.name_contains = value
    elif name in ("created_after", "created_before"):
        _timestamp(getattr(f, name), value, name)
    elif name == "show_deleted":
        if value not in ("true", "false"):
            raise InvalidArgument.one(name, "must be true or false")
        request.show_deleted = value == "true"
    elif name == "page_size":
        request.page_size = _integer(value, name, 0, parse.MAX_PAGE_SIZE)
    elif name == "order_by":
        request.order_by = value
    else:
        request.page_token = value


def _timestamp(stamp: timestamp_pb2.Timestamp, text: str, field: str) -> None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(text)
        stamp.FromDatetime(moment)
    except (ValueError, OverflowError):
        raise InvalidArgument.one(
            field, "must be an RFC 3339 time with its offset, e.g. 2026-05-01T12:00:00Z"
        ) from None


def _integer(text: str, field: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise InvalidArgument.one(field, f"must be a whole number from {low} to {high}")
    return int(text)


def only(query: MultiMapping[str], allowed: Iterable[str]) -> None:
    known = set(allowed)
    unknown = [
        FieldViolation(name, "is not a parameter here") for name in query if name not in known
    ]
    if unknown:
        raise InvalidArgument(unknown)


class ConsoleApi:
    """The reads and actions behind the pages; `actor` is who the caller is (app.py)."""

    def __init__(self, database: Database, page_tokens: PageTokens) -> None:
        self._db = database
        self._tokens = page_tokens

    async def list_tasks(self, query: MultiMapping[str]) -> dict[str, Any]:
        page = parse.list_tasks(list_request(query), self._tokens)
        # Read before the page: a watch from here on misses nothing the page does not show.
        position = await self._db.read(events.last_event_id)
        rows = await self._db.read(
            tasks.list_tasks,
            page.query,
            page.order,
            after=page.after,
            limit=page.page_size + 1,
            full=False,
        )
        shown = rows[: page.page_size]
        next_token = ""
        if len(rows) > page.page_size:
            last = shown[-1]
            position_of_last = parse.task_position(last[page.order.field], last["task_id"])
            next_token = self._tokens.encode(page.fingerprint, position_of_last)
        return {
            "tasks": [task_json(row) for row in shown],
            "next_page_token": next_token,
            "log_position": str(position),
        }

    async def counts(self, query: MultiMapping[str]) -> dict[str, Any]:
        """Tasks by status under the table's filter, its statuses and paging aside."""
        request = list_request(query)
        del request.filter.statuses[:]
        request.page_token = ""
        page = parse.list_tasks(request, self._tokens)
        found = await self._db.read(tasks.count_by_status, page.query)
        return {"counts": found, "total": sum(found.values())}

    async def get_task(self, task_id: str) -> dict[str, Any]:
        row = await self._db.read(tasks.get_task, parse.task_id(task_id), full=True)
        return task_json(row)

    async def task_events(self, task_id: str, query: MultiMapping[str]) -> dict[str, Any]:
        only(query, ("page_size", "page_token"))
        request = pb.ListTaskEventsRequest(task_id=task_id, page_token=query.get("page_token", ""))
        if "page_size" in query:
            request.page_size = _integer(query["page_size"], "page_size", 0, parse.MAX_PAGE_SIZE)
        page = parse.list_task_events(request, self._tokens)
        found = await self._db.read(
            events.list_task_events,
            page.task_id,
            page.event_types,
            after_event_id=page.after_event_id,
            limit=page.page_size + 1,
        )
        rows = found.rows[: page.page_size]
        next_token = ""
        if rows and (len(found.rows) > page.page_size or not found.complete):
            next_token = self._tokens.encode(page.fingerprint, [rows[-1]["event_id"]])
        return {
            "events": [event_json(LogEvent.from_row(row)) for row in rows],
            "next_page_token": next_token,
        }

    async def task_deliveries(self, task_id: str, query: MultiMapping[str]) -> dict[str, Any]:
        """The task's webhook deliveries, as ListDeliveries of the task pages them."""
        only(query, ("page_size", "page_token"))
        request = pb.ListDeliveriesRequest(task_id=task_id, page_token=query.get("page_token", ""))
        if "page_size" in query:
            request.page_size = _integer(query["page_size"], "page_size", 0, parse.MAX_PAGE_SIZE)
        page = parse.list_deliveries(request, self._tokens)
        rows = await self._db.read(
            deliveries.list_deliveries,
            page.task_id,
            page.states,
            after_delivery_id=page.after_delivery_id,
            limit=page.page_size + 1,
        )
        shown = rows[: page.page_size]
        next_token = ""
        if len(rows) > page.page_size:
            next_token = self._tokens.encode(page.fingerprint, [shown[-1]["delivery_id"]])
        return {"deliveries": [delivery_json(row) for row in shown], "next_page_token": next_token}

    async def redeliver(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """RedeliverTask: the task's dead and disabled deliveries, sent again."""
        _fields(body, frozenset())
        rows = await self._db.write(deliveries.redeliver_task, parse.task_id(task_id), utcnow())
        return {"deliveries": [delivery_json(row) for row in rows]}

    async def cancel(self, task_id: str, body: dict[str, Any], actor: str | None) -> dict[str, Any]:
        _fields(body, ACTION_FIELDS)
        wanted = body.get("status", "CANCELLED")
        if wanted not in CANCEL_STATUSES:
            raise InvalidArgument.one("status", "must be CANCELLING or CANCELLED")
        request = pb.UpdateTaskStatusRequest(
            task_id=task_id,
            status=CANCEL_STATUSES[wanted],
            etag=_text(body, "etag"),
            request_id=_text(body, "request_id"),
            actor=actor or _text(body, "actor"),
        )
        change = parse.status_change(request)
        return task_json(await self._db.write(tasks.update_task_status, change))

    async def delete(self, task_id: str, body: dict[str, Any], actor: str | None) -> dict[str, Any]:
        _fields(body, ACTION_FIELDS - {"status"})
        change = parse.task_change(
            pb.DeleteTaskRequest(
                task_id=task_id,
                etag=_text(body, "etag"),
                request_id=_text(body, "request_id"),
                actor=actor or _text(body, "actor"),
            )
        )
        row = await self._db.write(
            tasks.delete_task,
            change.task_id,
            change.etag,
            actor=change.caller.actor,
            request_id=change.caller.request_id,
        )
        return task_json(row)

    async def undelete(
        self, task_id: str, body: dict[str, Any], actor: str | None
    ) -> dict[str, Any]:
        _fields(body, ACTION_FIELDS - {"status", "etag"})
        change = parse.task_change(
            pb.UndeleteTaskRequest(
                task_id=task_id,
                request_id=_text(body, "request_id"),
                actor=actor or _text(body, "actor"),
            )
        )
        row = await self._db.write(
            tasks.undelete_task,
            change.task_id,
            actor=change.caller.actor,
            request_id=change.caller.request_id,
        )
        return task_json(row)


async def json_body(request: web.Request) -> dict[str, Any]:
    """An action's body: empty, or one JSON object."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidArgument.one("request", f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidArgument.one("request", f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument.one("request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument.one("request", "the body must be a JSON object")
    return body


def _fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidArgument.one("request", f"unknown field(s) {parse._echo(unknown)}")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidArgument.one(name, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: protobuf refuses them
        raise InvalidArgument.one(name, "is not valid text") from None
    return value
