"""Live updates for the pages: a watch stream of the watch core (watch/watches.py, the same one
WatchTaskEvents serves) as Server-Sent Events. Every event carries `id: <event_id>` and every
heartbeat `id: <position>`, so a client that reconnects with `Last-Event-ID` set to the last id
it saw receives exactly what it missed: the watch core's resume promise, unchanged."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from resinkit_grpc.api import parse
from resinkit_grpc.api.status import watch_ending
from resinkit_grpc.console.api import event_json, only
from resinkit_grpc.console.replies import error_body, status_reply
from resinkit_grpc.errors import InvalidArgument
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.security.auth import token_withdrawn
from resinkit_grpc.watch.items import Ended, EndReason, EventFilter, Item, LogEvent, Passed
from resinkit_grpc.watch.watches import Watches

if TYPE_CHECKING:  # aiohttp's query strings; multidict comes with aiohttp
    from multidict import MultiMapping


STREAM_PARAMETERS = ("task_id", "type", "event_type", "after")
# How long a browser waits before it reconnects (SSE `retry:`), in milliseconds.
RECONNECT_MS = 1000
# Streams write on a shared clock, every WRITE_INTERVAL seconds at most: what the watch core
# queued meanwhile goes out in one write. A page needs no more than ten updates a second, and
# since the fan-out hands a batch to every stream in one step, streams of one filter that wake
# on the same tick take the same run of events, encoded once for all of them (EncodedRuns):
# a hundred open pages cost about one encoding and a hundred writes per tick, not a hundred
# encodings and writes per commit.
WRITE_INTERVAL = 0.1
# Runs and events kept encoded (the oldest are dropped first).
RUNS_KEPT = 256
EVENTS_KEPT = 4096


class EncodedRuns:
    """SSE frames of events, and of runs of events as streams take them, made once."""

    def __init__(self) -> None:
        self._events: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._runs: collections.OrderedDict[tuple[Any, ...], bytes] = collections.OrderedDict()

    def run(self, event_filter: EventFilter, events: Sequence[Item]) -> bytes:
        """The frames of `events` (LogEvents, consecutive matches of `event_filter`): the same
        filter, first and last id and count mean the same run."""
        first, last = events[0], events[-1]
        assert isinstance(first, LogEvent) and isinstance(last, LogEvent)
        key = (event_filter, first.event_id, last.event_id, len(events))
        found = self._runs.get(key)
        if found is None:
            found = b"".join(self.frame(event) for event in events)  # type: ignore[arg-type]
            self._runs[key] = found
            if len(self._runs) > RUNS_KEPT:
                self._runs.popitem(last=False)
        return found

    def frame(self, event: LogEvent) -> bytes:
        found = self._events.get(event.event_id)
        if found is None:
            data = json.dumps(event_json(event), ensure_ascii=False, separators=(",", ":"))
            found = f"id: {event.event_id}\nevent: task_event\ndata: {data}\n\n".encode()
            self._events[event.event_id] = found
            if len(self._events) > EVENTS_KEPT:
                self._events.popitem(last=False)
        return found


def watch_request(query: MultiMapping[str], last_event_id: str | None) -> pb.WatchTaskEventsRequest:
    """The WatchTaskEventsRequest of a stream: `Last-Event-ID` (a reconnect) wins over `after`."""
    only(query, STREAM_PARAMETERS)
    request = pb.WatchTaskEventsRequest()
    try:
        request.task_ids.extend(query.getall("task_id", []))
        request.task_types.extend(query.getall("type", []))
        request.event_types.extend(query.getall("event_type", []))
    except (TypeError, ValueError):
        raise InvalidArgument.one("request", "is not valid text") from None
    position, field = (
        (last_event_id, "Last-Event-ID") if last_event_id else (query.get("after"), "after")
    )
    if len(query.getall("after", [])) > 1:
        raise InvalidArgument.one("after", "may be given once")
    if position is not None:
        if not position.isascii() or not position.isdigit() or int(position) >= 2**63:
            raise InvalidArgument.one(field, "must be an event id (a whole number, 0 or more)")
        request.after_event_id = int(position)
    return request


class LiveStreams:
    def __init__(self, watches: Watches) -> None:
        self._watches = watches
        self._encoded = EncodedRuns()
        self.open = 0

    async def stream(
        self,
        request: web.Request,
        owner: str | None,
        still_valid: Callable[[], bool] | None,
    ) -> web.StreamResponse:
        wanted = parse.watch(watch_request(request.query, request.headers.get("Last-Event-ID")))
        if owner is not None:
            wanted = dataclasses.replace(wanted, owner=owner)
        response: web.StreamResponse | None = None
        async with contextlib.aclosing(self._watches.stream(wanted)) as items_of:
            async for items in items_of:
                if response is None:
                    first = items[0]
                    if isinstance(first, Ended) and first.reason is EndReason.TOO_MANY_WATCHERS:
                        ending = watch_ending(first)
                        assert ending is not None
                        return status_reply(ending, {"Retry-After": "1"})
                    response = await self._begin(request)
                if still_valid is not None and not still_valid():
                    await _write(response, _frame("end", error_body(token_withdrawn())))
                    break
                data = self._encode(wanted.filter, items)
                if not await _write(response, data):
                    break
                await _next_tick()
        assert response is not None
        return response

    def _encode(self, event_filter: EventFilter, items: list[Item]) -> bytes:
        """A batch as SSE frames: its events (all but a mark or an ending, which come last)."""
        last = items[-1]
        events = items if isinstance(last, LogEvent) else items[:-1]
        self._watches.delivered += len(events)
        data = self._encoded.run(event_filter, events) if events else b""
        if isinstance(last, Passed):
            data += f"id: {last.position}\nevent: heartbeat\ndata: {{}}\n\n".encode()
        elif isinstance(last, Ended):
            self._watches.endings[last.reason] += 1
            data += _ending(last)
        return data

    async def _begin(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # proxies: pass each event on at once
            }
        )
        await response.prepare(request)
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        return response


async def _next_tick() -> None:
    """Sleeps to the next multiple of WRITE_INTERVAL on the loop's clock, shared by every
    stream."""
    now = asyncio.get_running_loop().time()
    await asyncio.sleep(WRITE_INTERVAL - now % WRITE_INTERVAL)


def _ending(ended: Ended) -> bytes:
    """The last frame of a stream. A resumable end carries its position as the `id`, so the
    client reconnects from there; EVENTS_PURGED (reload: what was purged is gone) carries none."""
    status = watch_ending(ended)
    if status is None:  # FINISHED: console streams have no until_terminal, but be complete
        body: dict[str, Any] = {}
        name = "finished"
    else:
        body = error_body(status)
        name = "purged" if ended.reason is EndReason.EVENTS_PURGED else "end"
    frame = _frame(name, body)
    if ended.resume_after is not None and ended.reason is not EndReason.EVENTS_PURGED:
        frame = f"id: {ended.resume_after}\n".encode() + frame
    return frame


def _frame(name: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


async def _write(response: web.StreamResponse, data: bytes) -> bool:
    """Whether the client still listens."""
    try:
        await response.write(data)
    except (ConnectionResetError, ConnectionError):
        return False
    return True
