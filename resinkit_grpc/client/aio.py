"""AsyncTaskClient: the asyncio twin of TaskClient (sync.py), with the same methods, requests,
conversions, retries and watch resume logic; only the waiting differs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from resinkit_grpc.client import wire
from resinkit_grpc.client.channels import ChannelSettings
from resinkit_grpc.client.core import ClientCore, new_request_id
from resinkit_grpc.client.errors import ClientError, DeadlineExceeded, WaitTimeout, from_rpc_error
from resinkit_grpc.client.retry import Attempts
from resinkit_grpc.client.types import (
    Delivery,
    DeliveryState,
    Page,
    Task,
    TaskEvent,
    TaskFilter,
    TaskStatus,
    TaskView,
)
from resinkit_grpc.client.watch import WatchCursor
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc

JSON = Mapping[str, Any]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class AsyncTaskClient(ClientCore):
    """A client of resinkit.v1.TaskService for asyncio; use it inside the loop that made it,
    and `await client.close()` (or `async with`) when done."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncTaskClient:
        """A client configured by RESINKIT_ADDRESS, RESINKIT_TOKEN, RESINKIT_CA_CERT,
        RESINKIT_CLIENT_CERT and RESINKIT_CLIENT_KEY; keyword arguments win."""
        client_options = {k: overrides.pop(k) for k in ("timeout", "retry") if k in overrides}
        return cls(settings=ChannelSettings.from_env(**overrides), **client_options)

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            await channel.close(None)

    def _stub(self, address: str) -> Any:
        if self._closed:
            raise ValueError("the client is closed")
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = self.settings.aio_channel(address)
            stub = self._stubs[address] = pb_grpc.TaskServiceStub(channel)
        return stub

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        attempts = Attempts(self.retry, self._rng)
        while True:
            address = self._address()
            try:
                return await getattr(self._stub(address), method)(
                    request, timeout=self._timeout(timeout), metadata=self._metadata
                )
            except grpc.RpcError as raw:
                error = from_rpc_error(raw)
                delay = attempts.next_delay(error)
                if delay is None:
                    raise error from None
                self._fail_over(address)
                await asyncio.sleep(delay)

    # --- the RPCs, one method each ---

    async def create_task(
        self,
        *,
        task_type: str,
        task_id: str | None = None,
        task_name: str | None = None,
        description: str | None = None,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        submitted_configs: JSON | None = None,
        execution_details: JSON | None = None,
        progress_details: JSON | None = None,
        notification_config: JSON | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
        request_id: str | None = None,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Creates a task (PENDING). Retry-safe: a request_id is generated when none is given."""
        request = wire.create_task_request(
            task_type=task_type,
            task_id=task_id,
            request_id=request_id or new_request_id(),
            actor=actor,
            fields={
                "task_name": task_name,
                "description": description,
                "priority": priority,
                "tags": tags,
                "submitted_configs": submitted_configs,
                "execution_details": execution_details,
                "progress_details": progress_details,
                "notification_config": notification_config,
                "expires_at": expires_at,
                "created_by": created_by,
            },
        )
        return wire.task_from_proto(await self._call("CreateTask", request, timeout))

    async def batch_create_tasks(
        self, items: Sequence[Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[Task]:
        """Creates up to 1000 tasks, all or none (BatchCreateTasks). Each item is a mapping of
        create_task's arguments (task_type required). Retry-safe: items without a request_id
        get one."""
        request = wire.batch_create_request(items, new_request_id)
        response = await self._call("BatchCreateTasks", request, timeout)
        return [wire.task_from_proto(task) for task in response.tasks]

    async def batch_get_tasks(
        self,
        task_ids: Sequence[str],
        *,
        view: TaskView | None = None,
        allow_missing: bool = False,
        timeout: float | None = None,
    ) -> list[Task]:
        """Up to 1000 tasks in the order asked (BatchGetTasks). TaskNotFound if one is unknown,
        unless allow_missing, which leaves it out."""
        request = pb.BatchGetTasksRequest(
            task_ids=task_ids, view=wire.view_to_proto(view), allow_missing=allow_missing
        )
        response = await self._call("BatchGetTasks", request, timeout)
        return [wire.task_from_proto(task) for task in response.tasks]

    async def get_task(
        self, task_id: str, *, view: TaskView | None = None, timeout: float | None = None
    ) -> Task:
        """One task, soft-deleted ones included (`active` False). TaskNotFound if unknown."""
        request = pb.GetTaskRequest(task_id=task_id, view=wire.view_to_proto(view))
        return wire.task_from_proto(await self._call("GetTask", request, timeout))

    async def list_tasks(
        self,
        filter: TaskFilter | None = None,
        *,
        order_by: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        show_deleted: bool = False,
        view: TaskView | None = None,
        timeout: float | None = None,
    ) -> Page[Task]:
        """One page of tasks; pass `next_page_token` back as `page_token` (iter_tasks does)."""
        request = wire.list_tasks_request(
            filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            show_deleted=show_deleted,
            view=view,
        )
        response = await self._call("ListTasks", request, timeout)
        return Page([wire.task_from_proto(t) for t in response.tasks], response.next_page_token)

    async def update_task(
        self,
        task_id: str,
        *,
        task_name: str | None = None,
        description: str | None = None,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        notification_config: JSON | None = None,
        expires_at: datetime | None = None,
        progress_details: JSON | None = None,
        execution_details: JSON | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Changes the fields given (not None; an empty value clears one). With `etag`, fails
        with EtagMismatch if the task changed since."""
        request = wire.update_task_request(
            task_id,
            fields={
                "task_name": task_name,
                "description": description,
                "priority": priority,
                "tags": tags,
                "notification_config": notification_config,
                "expires_at": expires_at,
                "progress_details": progress_details,
                "execution_details": execution_details,
            },
            etag=etag,
            request_id=request_id or new_request_id(),
            actor=actor,
        )
        return wire.task_from_proto(await self._call("UpdateTask", request, timeout))

    async def update_task_status(
        self,
        task_id: str,
        status: TaskStatus | str,
        *,
        error_info: JSON | None = None,
        result_summary: JSON | None = None,
        execution_details: JSON | None = None,
        progress_details: JSON | None = None,
        actor: str | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Moves the task along the transition table; InvalidTransition (with
        `allowed_next_statuses`) for an illegal move."""
        request = wire.update_status_request(
            task_id,
            status,
            details={
                "error_info": error_info,
                "result_summary": result_summary,
                "execution_details": execution_details,
                "progress_details": progress_details,
            },
            actor=actor,
            etag=etag,
            request_id=request_id or new_request_id(),
        )
        return wire.task_from_proto(await self._call("UpdateTaskStatus", request, timeout))

    async def delete_task(
        self,
        task_id: str,
        *,
        etag: str | None = None,
        request_id: str | None = None,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Soft-deletes the task (`active` False); TaskAlreadyDeleted if it is."""
        request = pb.DeleteTaskRequest(
            task_id=task_id,
            etag=etag or "",
            request_id=request_id or new_request_id(),
            actor=actor or "",
        )
        return wire.task_from_proto(await self._call("DeleteTask", request, timeout))

    async def undelete_task(
        self,
        task_id: str,
        *,
        request_id: str | None = None,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Task:
        """Restores a soft-deleted task; TaskNotDeleted if it is active."""
        request = pb.UndeleteTaskRequest(
            task_id=task_id, request_id=request_id or new_request_id(), actor=actor or ""
        )
        return wire.task_from_proto(await self._call("UndeleteTask", request, timeout))

    async def list_task_events(
        self,
        task_id: str | None = None,
        *,
        event_types: Sequence[str] = (),
        page_size: int | None = None,
        page_token: str | None = None,
        timeout: float | None = None,
    ) -> Page[TaskEvent]:
        """One page of stored events in event_id order (of one task, or of all)."""
        request = wire.list_events_request(
            task_id, event_types=event_types, page_size=page_size, page_token=page_token
        )
        response = await self._call("ListTaskEvents", request, timeout)
        return Page([wire.event_from_proto(e) for e in response.events], response.next_page_token)

    async def list_deliveries(
        self,
        task_id: str | None = None,
        *,
        states: Sequence[DeliveryState] = (),
        page_size: int | None = None,
        page_token: str | None = None,
        timeout: float | None = None,
    ) -> Page[Delivery]:
        """One page of webhook deliveries in delivery order (of one task, or of all)."""
        request = wire.list_deliveries_request(
            task_id, states=states, page_size=page_size, page_token=page_token
        )
        response = await self._call("ListDeliveries", request, timeout)
        return Page(
            [wire.delivery_from_proto(d) for d in response.deliveries], response.next_page_token
        )

    async def redeliver_task(self, task_id: str, *, timeout: float | None = None) -> list[Delivery]:
        """Sends the task's DEAD and DISABLED deliveries again; returns them, pending."""
        request = pb.RedeliverTaskRequest(task_id=task_id)
        response = await self._call("RedeliverTask", request, timeout)
        return [wire.delivery_from_proto(d) for d in response.deliveries]

    async def redeliver_events(
        self, first_event_id: int, last_event_id: int, *, timeout: float | None = None
    ) -> int:
        """Sends the DEAD deliveries of an event-id range again (admin), every call the RPC
        needs; returns how many."""
        count = 0
        while True:
            request = pb.RedeliverEventsRequest(
                first_event_id=first_event_id, last_event_id=last_event_id
            )
            response = await self._call("RedeliverEvents", request, timeout)
            count += int(response.redelivered_count)
            if not response.next_event_id:
                return count
            first_event_id = response.next_event_id

    # --- built on the RPCs ---

    async def iter_tasks(
        self,
        filter: TaskFilter | None = None,
        *,
        order_by: str | None = None,
        page_size: int | None = None,
        show_deleted: bool = False,
        view: TaskView | None = None,
    ) -> AsyncIterator[Task]:
        """Every matching task, page after page (fetched as the iteration reaches them)."""
        token: str | None = None
        while True:
            page = await self.list_tasks(
                filter,
                order_by=order_by,
                page_size=page_size,
                page_token=token,
                show_deleted=show_deleted,
                view=view,
            )
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def iter_events(
        self,
        task_id: str | None = None,
        *,
        event_types: Sequence[str] = (),
        page_size: int | None = None,
    ) -> AsyncIterator[TaskEvent]:
        """Every stored event (of one task, or of all), in event_id order."""
        token: str | None = None
        while True:
            page = await self.list_task_events(
                task_id, event_types=event_types, page_size=page_size, page_token=token
            )
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def iter_deliveries(
        self,
        task_id: str | None = None,
        *,
        states: Sequence[DeliveryState] = (),
        page_size: int | None = None,
    ) -> AsyncIterator[Delivery]:
        """Every webhook delivery (of one task, or of all), in delivery order."""
        token: str | None = None
        while True:
            page = await self.list_deliveries(
                task_id, states=states, page_size=page_size, page_token=token
            )
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    def watch(
        self,
        *,
        task_ids: Sequence[str] = (),
        task_types: Sequence[str] = (),
        event_types: Sequence[str] = (),
        after_event_id: int | None = None,
        until_terminal: bool = False,
        wait_for_creation: bool = False,
        timeout: float | None = None,
    ) -> AsyncWatch:
        """Events as they commit (after `after_event_id`, when given, the stored ones first),
        reconnecting by itself; see AsyncWatch. No deadline unless `timeout` is given (then
        WaitTimeout once it has passed)."""
        cursor = WatchCursor(
            task_ids=tuple(task_ids),
            task_types=tuple(task_types),
            event_types=tuple(event_types),
            position=after_event_id,
            until_terminal=until_terminal,
            wait_for_creation=wait_for_creation,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        return AsyncWatch(self, cursor, deadline)

    async def wait(
        self, task_id: str, timeout: float | None = None, *, wait_for_creation: bool = False
    ) -> Task:
        """The task once it is terminal (COMPLETED, FAILED, CANCELLED) or deleted, followed on a
        watch (no polling). WaitTimeout after `timeout` seconds; TaskNotFound for an unknown
        task unless `wait_for_creation`."""
        watch = self.watch(
            task_ids=[task_id],
            after_event_id=0,
            until_terminal=True,
            wait_for_creation=wait_for_creation,
            timeout=timeout,
        )
        async with watch:
            async for _ in watch:
                pass
        return await self.get_task(task_id)


class AsyncWatch(AsyncIterator[TaskEvent]):
    """The asyncio twin of Watch (sync.py): the same resume logic and guarantees."""

    def __init__(
        self, client: AsyncTaskClient, cursor: WatchCursor, deadline: float | None
    ) -> None:
        self._client = client
        self._cursor = cursor
        self._deadline = deadline
        self._attempts = Attempts(client.retry, client._rng)
        self._call: Any = None
        self._address = ""
        self._closed = False
        self.reconnects = 0

    @property
    def position(self) -> int | None:
        return self._cursor.position

    @property
    def live(self) -> bool:
        return self._cursor.live

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def _open(self) -> None:
        remaining = None
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out()
        self._address = self._client._address()
        self._call = self._client._stub(self._address).WatchTaskEvents(
            self._cursor.request(), timeout=remaining, metadata=self._client._metadata
        )

    def _timed_out(self) -> ClientError:
        return WaitTimeout(grpc.StatusCode.DEADLINE_EXCEEDED, "the watch's timeout passed")

    async def __anext__(self) -> TaskEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                self._open()
            try:
                response = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as raw:
                if self._closed:
                    raise StopAsyncIteration from None
                error = from_rpc_error(raw)
                self._call = None
                if isinstance(error, DeadlineExceeded) and self._deadline is not None:
                    raise self._timed_out() from None
                delay = self._attempts.next_delay(error, retryable=self._cursor.resumable(error))
                if delay is None:
                    raise error from None
                self._client._fail_over(self._address)
                self.reconnects += 1
                await asyncio.sleep(delay)
                continue
            if response is _EOF:
                self._closed = True
                raise StopAsyncIteration
            self._attempts.reset()
            event = self._cursor.accept(response)
            if event is not None:
                return event
