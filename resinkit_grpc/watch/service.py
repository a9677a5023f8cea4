"""The WatchTaskEvents stream: replay from the table, join the tail's live feed at exactly the
replay's position, heartbeats, limits, and resumable endings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2

from resinkit_grpc.api import parse
from resinkit_grpc.api.convert import event_to_proto
from resinkit_grpc.api.status import DOMAIN, abort, pack_status
from resinkit_grpc.config import Settings
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.subscription import (
    EventFilter,
    Overflowed,
    ShuttingDown,
    Subscription,
)
from resinkit_grpc.watch.tail import EventTail

REPLAY_PAGE = 500
Context = grpc.aio.ServicerContext[Any, Any]


class Watches:
    """Every WatchTaskEvents stream of this process, sharing one EventTail."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._db = database
        self._settings = settings
        self.tail = EventTail(database)
        self._active = 0
        self._closing = False
        self._live: set[Subscription] = set()

    async def start(self) -> None:
        await self.tail.start()

    async def close(self) -> None:
        """Ends every stream with UNAVAILABLE (clients reconnect elsewhere) and stops the tail."""
        self._closing = True
        for subscription in list(self._live):
            subscription.end(ShuttingDown())
        await self.tail.stop()

    async def watch(
        self, request: pb.WatchTaskEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchTaskEventsResponse]:
        """The stream for one request. One flat generator on purpose: with a thousand streams,
        every layer of `async for` between the tail and gRPC costs on every message."""
        wanted = parse.watch(request)  # InvalidArgument: the servicer answers
        event_filter = EventFilter(wanted.task_ids, wanted.task_types, wanted.event_types)
        after, until = wanted.after_event_id, wanted.until_terminal
        if self._closing:
            await abort(context, _shutting_down(after))
        if self._active >= self._settings.max_watchers:
            message = (
                f"this server already serves {self._active} watchers; retry later or elsewhere"
            )
            await abort(
                context,
                _ending(code_pb2.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS", message, after),
            )
        self._active += 1
        subscription: Subscription | None = None
        try:
            start = after if after is not None else await self._db.read(events.last_event_id)
            sent = cursor = start  # cursor: every matching event up to it has been sent
            replayed_to = 0  # how far this stream has read the log itself
            # Replay: read the table after the cursor until caught up with the tail.
            while True:
                page = await self._db.read(
                    events.read_replay_page,
                    after_event_id=cursor,
                    limit=REPLAY_PAGE,
                    task_ids=sorted(event_filter.task_ids),
                    task_types=sorted(event_filter.task_types),
                    event_types=sorted(event_filter.event_types),
                    status_of=until,
                )
                for row in page.events:
                    yield pb.WatchTaskEventsResponse(event=event_to_proto(row))
                    sent = row.event_id
                replayed_to = max(replayed_to, page.scanned_to)
                # A client may name a position beyond the log; it still gets nothing before it.
                cursor = max(cursor, page.scanned_to)
                if self._closing:
                    await abort(context, _shutting_down(sent))
                if len(page.events) == REPLAY_PAGE:
                    continue
                if until and page.task_status and TaskStatus(page.task_status).is_terminal:
                    return  # the terminal event, if it matches, was in this replay
                # No await between this check and subscribe(): the tail cannot move in
                # between, so the live feed starts exactly where the replay stopped.
                if replayed_to >= self.tail.position:
                    break
            subscription = Subscription(
                event_filter, cursor, self._settings.watch_buffer, until_terminal=until
            )
            self.tail.subscribe(subscription, replayed_to)
            self._live.add(subscription)
            sent = cursor
            yield _heartbeat(sent)  # the stream is live from here
            interval = self._settings.heartbeat_interval
            pending = subscription.pending
            while subscription.ended is None:
                if pending:
                    event = pending.popleft()
                    yield event.response
                    sent = event.event_id
                    continue
                if subscription.finished:
                    return
                subscription.wakeup.clear()
                try:
                    async with asyncio.timeout(interval):  # not wait_for: see EventTail._run
                        await subscription.wakeup.wait()
                except TimeoutError:
                    # Nothing pending: every matching event up to the tail's position is sent.
                    sent = max(subscription.cursor, self.tail.position)
                    yield _heartbeat(sent)
            if isinstance(subscription.ended, Overflowed):
                message = (
                    f"the stream fell more than {self._settings.watch_buffer} events behind; "
                    f"resume with after_event_id={sent}"
                )
                await abort(
                    context, _ending(code_pb2.RESOURCE_EXHAUSTED, "SLOW_CONSUMER", message, sent)
                )
            await abort(context, _shutting_down(sent))
        finally:
            self._active -= 1
            if subscription is not None:
                self.tail.unsubscribe(subscription)
                self._live.discard(subscription)


def _heartbeat(position: int) -> pb.WatchTaskEventsResponse:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return pb.WatchTaskEventsResponse(heartbeat=pb.Heartbeat(event_id=position, timestamp=now))


def _shutting_down(resume_after: int | None) -> Any:
    return _ending(
        code_pb2.UNAVAILABLE,
        "SHUTTING_DOWN",
        "the server is shutting down; reconnect",
        resume_after,
    )


def _ending(code: int, reason: str, message: str, resume_after: int | None) -> Any:
    """A resumable end of stream: ErrorInfo.metadata["resume_after_event_id"] says where from
    (absent when a live-only stream is refused before it started: just ask again)."""
    metadata = {} if resume_after is None else {"resume_after_event_id": str(resume_after)}
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    return pack_status(code, message, [info])
