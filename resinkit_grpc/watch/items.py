"""What a watch stream is made of, in domain terms: committed events, position marks and
endings, in strictly increasing log position. Nothing here knows how a stream is transported."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from resinkit_grpc.rules import EventType, TaskStatus

# What one event costs a buffer beyond its event_data: ids, names, timestamps, framing.
EVENT_OVERHEAD_BYTES = 128


class LogEvent:
    """One committed row of task_events (with its task's type), shared by every stream that
    carries it: built once per event by whoever read it from the table."""

    __slots__ = (
        "actor",
        "encoded",
        "event_data",
        "event_id",
        "event_type",
        "new_status",
        "previous_status",
        "size",
        "task_id",
        "task_type",
        "timestamp",
    )

    def __init__(
        self,
        *,
        event_id: int,
        task_id: str,
        task_type: str,
        event_type: str,
        timestamp: datetime,
        event_data: dict[str, Any] | None = None,
        previous_status: str | None = None,
        new_status: str | None = None,
        actor: str | None = None,
        data_size: int = 0,
    ) -> None:
        self.event_id = event_id
        self.task_id = task_id
        self.task_type = task_type
        self.event_type = event_type
        self.timestamp = timestamp
        self.event_data = event_data
        self.previous_status = previous_status
        self.new_status = new_status
        self.actor = actor
        # What the event costs a stream's buffer: the stored size of its event_data plus a
        # fixed overhead, so that a byte bound holds however large one event's data is.
        self.size = EVENT_OVERHEAD_BYTES + data_size
        # The transport's encoding of this event, made once by the first stream that sends it
        # and reused by every other (opaque here).
        self.encoded: Any = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LogEvent:
        """A row of events.read_log."""
        return cls(
            event_id=row["event_id"],
            task_id=row["task_id"],
            task_type=row["task_type"],
            event_type=row["event_type"],
            timestamp=row["timestamp"],
            event_data=row["event_data"],
            previous_status=row["previous_status"],
            new_status=row["new_status"],
            actor=row["actor"],
            data_size=row["stored_size"],
        )

    @property
    def position(self) -> int:
        return self.event_id

    @property
    def ends_task(self) -> bool:
        """Whether this event ends an until_terminal watch of its task: a move to a terminal
        status, or a soft delete (a deleted task can change no more until undeleted)."""
        if self.event_type == EventType.DELETED:
            return True
        return (
            self.event_type == EventType.STATUS_CHANGE
            and self.new_status is not None
            and TaskStatus(self.new_status).is_terminal
        )

    def __repr__(self) -> str:
        return f"LogEvent({self.event_id}, {self.task_id!r}, {self.event_type})"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a stream carries: AND between the fields, any value within one; an empty
    field means any."""

    task_ids: frozenset[str] = frozenset()
    task_types: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()

    @property
    def matches_all(self) -> bool:
        return not (self.task_ids or self.task_types or self.event_types)

    def matches(self, event: LogEvent) -> bool:
        return (
            (not self.task_ids or event.task_id in self.task_ids)
            and (not self.task_types or event.task_type in self.task_types)
            and (not self.event_types or event.event_type in self.event_types)
        )


@dataclass(frozen=True, slots=True)
class Passed:
    """A position mark: every matching event with an id up to `position` has been handed to the
    stream before this mark, and no later item carries an event at or below it. Resuming after
    `position` therefore loses nothing. Marks never move backwards; a repeated mark (an idle
    stream) keeps the connection alive."""

    position: int


class EndReason(enum.Enum):
    # The watched task ended (until_terminal): a normal end.
    FINISHED = "FINISHED"
    # The stream fell behind its buffer bound.
    SLOW_CONSUMER = "SLOW_CONSUMER"
    # The server is stopping.
    SHUTTING_DOWN = "SHUTTING_DOWN"
    # The server already serves as many streams as it may; refused before it started.
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    # Retention purged events the stream would have carried, above its position: it cannot go
    # on without a gap. Not resumable from its position; see Ended.purged_through.
    EVENTS_PURGED = "EVENTS_PURGED"


@dataclass(frozen=True, slots=True)
class Ended:
    """The last item of a stream. `resume_after`: every matching event up to it was handed to
    the stream, none after it; None only for a live-only stream refused before it started.
    For EVENTS_PURGED, resuming there would skip what was purged: `purged_through` is the
    log horizon, above which every event is still stored."""

    reason: EndReason
    resume_after: int | None
    purged_through: int | None = None


Item = LogEvent | Passed | Ended
