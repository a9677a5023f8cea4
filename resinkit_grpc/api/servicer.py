"""TaskService: thin handlers. Each parses its request, runs one store operation, converts the
result. The servicer never opens a transaction; Database does, around a store operation."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from resinkit_grpc.api import parse
from resinkit_grpc.api.convert import (
    event_to_proto,
    fill_delivery,
    fill_task,
    heartbeat,
    task_to_proto,
    watch_event,
)
from resinkit_grpc.api.page_tokens import PageTokens
from resinkit_grpc.api.status import (
    abort,
    translate_errors,
    translate_stream_errors,
    watch_ending,
)
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from resinkit_grpc.security.auth import current_caller, token_withdrawn
from resinkit_grpc.security.tls import principal_of
from resinkit_grpc.store import batches, deliveries, events, tasks
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import LogEvent, Passed
from resinkit_grpc.watch.watches import Watches, WatchRequest

Context = grpc.aio.ServicerContext[Any, Any]


class TaskService(pb_grpc.TaskServiceServicer):
    def __init__(
        self,
        database: Database,
        page_tokens: PageTokens,
        watches: Watches,
        *,
        mutual_tls: bool = False,
        webhooks: parse.WebhookRules = parse.ANY_WEBHOOK,
    ) -> None:
        self._webhooks = webhooks
        self._db = database
        self._tokens = page_tokens
        self._watches = watches
        self._mutual_tls = mutual_tls

    def _authenticated(self, context: Context) -> str | None:
        """The caller's authenticated identity: its token's principal, else its client
        certificate's (mutual TLS); None when authentication is off."""
        caller = current_caller.get()
        if caller is not None:
            return caller.identity.principal
        return principal_of(context) if self._mutual_tls else None

    def _watch(self, request: pb.WatchTaskEventsRequest, context: Context) -> WatchRequest:
        wanted = parse.watch(request)
        owner = self._authenticated(context)
        return wanted if owner is None else dataclasses.replace(wanted, owner=owner)

    def _actor(self, context: Context, named: str | None) -> str | None:
        """Who makes a mutation: the authenticated identity when there is one, whatever the
        request names (documented: actor and created_by are overwritten)."""
        return self._authenticated(context) or named

    @translate_errors
    async def CreateTask(self, request: pb.CreateTaskRequest, context: Context) -> pb.Task:
        new = parse.create_task(request, self._webhooks)
        if (caller := self._authenticated(context)) is not None:
            new = new._replace(created_by=caller, actor=caller)
        # CreateTasks queued together run as one batch (batches.create_tasks).
        row = await self._db.write_item(batches.create_tasks, new)
        return task_to_proto(row)

    @translate_errors
    async def BatchCreateTasks(
        self, request: pb.BatchCreateTasksRequest, context: Context
    ) -> pb.BatchCreateTasksResponse:
        news = parse.batch_create_tasks(request, self._webhooks)
        if (caller := self._authenticated(context)) is not None:
            news = [new._replace(created_by=caller, actor=caller) for new in news]
        # The reply is built inside the transaction: one that would not fit in a response is
        # refused before anything commits.
        response: pb.BatchCreateTasksResponse = await self._db.write(
            batches.batch_create_tasks,
            news,
            _batch_reply(pb.BatchCreateTasksResponse, "requests", "send fewer per call"),
        )
        return response

    @translate_errors
    async def BatchGetTasks(
        self, request: pb.BatchGetTasksRequest, context: Context
    ) -> pb.BatchGetTasksResponse:
        task_ids, full = parse.batch_get_tasks(request)
        rows = await self._db.read(
            batches.batch_get_tasks, task_ids, full=full, allow_missing=request.allow_missing
        )
        response: pb.BatchGetTasksResponse = _batch_reply(
            pb.BatchGetTasksResponse, "task_ids", "ask for fewer, or for the BASIC view"
        )(rows)
        return response

    @translate_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.Task:
        # Unset is FULL for GetTask.
        full = request.view == pb.TASK_VIEW_UNSPECIFIED or parse.view(request.view)
        row = await self._db.read(tasks.get_task, parse.task_id(request.task_id), full=full)
        return task_to_proto(row)

    @translate_errors
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        page = parse.list_tasks(request, self._tokens)
        # Pages of one filter and order cost about the same: see Database.read_alike.
        rows = await self._db.read_alike(
            page.fingerprint,
            tasks.list_tasks,
            page.query,
            page.order,
            after=page.after,
            limit=page.page_size + 1,
            full=page.full,
        )
        response = pb.ListTasksResponse()
        sent = _fill_bounded(response.tasks, rows[: page.page_size], fill_task)
        if sent < len(rows) or (rows and rows[0].get("page_rows", 0) > len(rows)):
            last = rows[sent - 1]
            position = parse.task_position(last[page.order.field], last["task_id"])
            response.next_page_token = self._tokens.encode(page.fingerprint, position)
        return response

    @translate_errors
    async def UpdateTask(self, request: pb.UpdateTaskRequest, context: Context) -> pb.Task:
        update = parse.update_task(request, self._webhooks)
        row = await self._db.write(
            tasks.update_task,
            update.task_id,
            update.changes,
            update.etag,
            actor=self._actor(context, update.caller.actor),
            request_id=update.caller.request_id,
        )
        return task_to_proto(row)

    @translate_errors
    async def UpdateTaskStatus(
        self, request: pb.UpdateTaskStatusRequest, context: Context
    ) -> pb.Task:
        change = parse.status_change(request)
        if (caller := self._authenticated(context)) is not None:
            change = dataclasses.replace(change, actor=caller)
        row = await self._db.write(tasks.update_task_status, change)
        return task_to_proto(row)

    @translate_errors
    async def DeleteTask(self, request: pb.DeleteTaskRequest, context: Context) -> pb.Task:
        change = parse.task_change(request)
        row = await self._db.write(
            tasks.delete_task,
            change.task_id,
            change.etag,
            actor=self._actor(context, change.caller.actor),
            request_id=change.caller.request_id,
        )
        return task_to_proto(row)

    @translate_errors
    async def UndeleteTask(self, request: pb.UndeleteTaskRequest, context: Context) -> pb.Task:
        change = parse.task_change(request)
        row = await self._db.write(
            tasks.undelete_task,
            change.task_id,
            actor=self._actor(context, change.caller.actor),
            request_id=change.caller.request_id,
        )
        return task_to_proto(row)

    @translate_errors
    async def ListTaskEvents(
        self, request: pb.ListTaskEventsRequest, context: Context
    ) -> pb.ListTaskEventsResponse:
        page = parse.list_task_events(request, self._tokens)
        found = await self._db.read(
            events.list_task_events,
            page.task_id,
            page.event_types,
            after_event_id=page.after_event_id,
            limit=page.page_size + 1,
        )
        rows = found.rows
        shown = rows[: page.page_size]
        # A task's history shows each event's webhook deliveries beside it.
        sent_to: dict[int, list[dict[str, Any]]] = {}
        if page.task_id is not None and shown:
            for delivery in await self._db.read(
                deliveries.deliveries_of_events,
                page.task_id,
                shown[0]["event_id"],
                shown[-1]["event_id"],
            ):
                sent_to.setdefault(delivery["event_id"], []).append(delivery)

        def fill(event: pb.TaskEvent, row: dict[str, Any]) -> None:
            event.CopyFrom(event_to_proto(LogEvent.from_row(row)))
            for delivery in sent_to.get(row["event_id"], ()):
                fill_delivery(event.deliveries.add(), delivery)

        response = pb.ListTaskEventsResponse()
        sent = _fill_bounded(response.events, shown, fill)
        if sent < len(rows) or not found.complete:
            position = [rows[sent - 1]["event_id"]]
            response.next_page_token = self._tokens.encode(page.fingerprint, position)
        return response

    @translate_errors
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Context
    ) -> pb.ListDeliveriesResponse:
        page = parse.list_deliveries(request, self._tokens)
        rows = await self._db.read(
            deliveries.list_deliveries,
            page.task_id,
            page.states,
            after_delivery_id=page.after_delivery_id,
            limit=page.page_size + 1,
        )
        response = pb.ListDeliveriesResponse()
        sent = _fill_bounded(response.deliveries, rows[: page.page_size], fill_delivery)
        if sent < len(rows):
            position = [rows[sent - 1]["delivery_id"]]
            response.next_page_token = self._tokens.encode(page.fingerprint, position)
        return response

    @translate_errors
    async def RedeliverTask(
        self, request: pb.RedeliverTaskRequest, context: Context
    ) -> pb.RedeliverTaskResponse:
        the_id = parse.task_id(request.task_id)
        rows = await self._db.write(deliveries.redeliver_task, the_id, utcnow())
        response = pb.RedeliverTaskResponse()
        _fill_bounded(response.deliveries, rows, fill_delivery)
        return response

    @translate_errors
    async def RedeliverEvents(
        self, request: pb.RedeliverEventsRequest, context: Context
    ) -> pb.RedeliverEventsResponse:
        first, last = parse.event_range(request)
        done = await self._db.write(
            deliveries.redeliver_range, first, last, utcnow(), REDELIVER_BATCH
        )
        response = pb.RedeliverEventsResponse(redelivered_count=done.count)
        if done.last_event_id is not None and done.last_event_id < last:
            response.next_event_id = done.last_event_id + 1
        return response

    async def WatchTaskEvents(  # type: ignore[override]
        self, request: pb.WatchTaskEventsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Yields serialized WatchTaskEventsResponse messages (see api/registration.py)."""
        async with (
            translate_stream_errors(context),
            contextlib.aclosing(self._watches.stream(self._watch(request, context))) as stream,
        ):
            caller = current_caller.get()
            watches = self._watches
            async for items in stream:
                if caller is not None and not caller.still_valid():
                    await abort(context, token_withdrawn())
                for item in items:
                    if isinstance(item, LogEvent):
                        watches.delivered += 1
                        yield watch_event(item)
                    elif isinstance(item, Passed):
                        yield heartbeat(item.position)
                    else:
                        watches.endings[item.reason] += 1
                        ending = watch_ending(item)
                        if ending is not None:
                            await abort(context, ending)
                        return


# Deliveries one RedeliverEvents call makes pending again at most (one short transaction).
REDELIVER_BATCH = 1000

# What one page's items may take of a response: a default client refuses messages over 4 MiB.
# A single item always fits (a task is at most about 3.1 MiB, see parse.MAX_JSON_FIELD_BYTES).
MAX_PAGE_RESPONSE_BYTES = 3_500_000


def _fill_bounded(
    target: Any, rows: Sequence[dict[str, Any]], fill: Callable[[Any, dict[str, Any]], None]
) -> int:
    """Adds a message per row to the repeated field `target` until the next would take the
    response past MAX_PAGE_RESPONSE_BYTES (the first always goes in); returns how many."""
    size = 0
    for count, row in enumerate(rows):
        item = target.add()
        fill(item, row)
        size += item.ByteSize() + 6  # the field's tag and length
        if size > MAX_PAGE_RESPONSE_BYTES and count > 0:
            del target[-1]
            return count
    return len(rows)


def _batch_reply(
    response_class: Any, field: str, advice: str
) -> Callable[[list[dict[str, Any]]], Any]:
    """Builds a batch response of every task, or refuses one past MAX_PAGE_RESPONSE_BYTES (a
    batch is never cut short)."""

    def reply(rows: list[dict[str, Any]]) -> Any:
        response = response_class()
        if _fill_bounded(response.tasks, rows, fill_task) < len(rows):
            raise batches.too_large(field, "tasks", advice)
        return response

    return reply
