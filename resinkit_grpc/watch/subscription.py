"""One watcher's filter, bounded buffer and position. Touched only on the event loop."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TERMINAL_STATUSES, EventType, TaskStatus


@dataclass(frozen=True)
class LogEvent:
    """A committed event as the tail hands it out: the message to send and what filters need."""

    event_id: int
    task_id: str
    task_type: str
    event_type: str
    new_status: str | None
    response: pb.WatchTaskEventsResponse

    @property
    def makes_terminal(self) -> bool:
        return (
            self.event_type == EventType.STATUS_CHANGE
            and self.new_status is not None
            and TaskStatus(self.new_status) in TERMINAL_STATUSES
        )


@dataclass(frozen=True)
class EventFilter:
    task_ids: frozenset[str] = frozenset()
    task_types: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()

    def matches(self, event: LogEvent) -> bool:
        return (
            (not self.task_ids or event.task_id in self.task_ids)
            and (not self.task_types or event.task_type in self.task_types)
            and (not self.event_types or event.event_type in self.event_types)
        )


class Ended(Exception):
    """Why a live subscription stopped before its client went away."""


class Overflowed(Ended):
    pass


class ShuttingDown(Ended):
    pass


class Subscription:
    """A live watcher. `cursor` is the last event_id considered for it (matching or not): every
    matching event up to it is either in `pending` or already handed to the stream."""

    def __init__(
        self, event_filter: EventFilter, cursor: int, buffer: int, until_terminal: str | None
    ) -> None:
        self.filter = event_filter
        self.cursor = cursor
        self.until_terminal = until_terminal
        self.pending: deque[LogEvent] = deque()
        self.finished = False  # the watched task became terminal: end after `pending`
        self.ended: Ended | None = None
        self.wakeup = asyncio.Event()
        self._buffer = buffer

    def offer(self, batch: Sequence[LogEvent], batch_end: int) -> bool:
        """Takes the events of one tail batch (ids up to batch_end). False once it needs no more."""
        for event in batch:
            if event.event_id <= self.cursor:
                continue
            if self.filter.matches(event):
                if len(self.pending) >= self._buffer:
                    self.end(Overflowed())
                    return False
                self.pending.append(event)
            self.cursor = event.event_id
            if self.until_terminal == event.task_id and event.makes_terminal:
                self.finished = True
                self.wakeup.set()
                return False
        self.cursor = max(self.cursor, batch_end)
        if self.pending:
            self.wakeup.set()
        return True

    def end(self, reason: Ended) -> None:
        self.ended = reason
        self.wakeup.set()
