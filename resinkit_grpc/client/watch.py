"""The resume logic of a watch, shared by the sync and asyncio clients: where the stream has
got to, what to ask for on reconnecting, and which endings are worth a reconnect.

The position is the last event id or heartbeat id received. The server promises that a stream
resumed with `after_event_id = position` carries exactly what comes after it: nothing is
skipped. The cursor also drops anything at or below its position, so that an event is never
delivered twice whatever happens to the connection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resinkit_grpc.client.errors import (
    Cancelled,
    ClientError,
    ShuttingDown,
    SlowConsumer,
    TooManyWatchers,
    Unavailable,
)
from resinkit_grpc.client.types import TaskEvent
from resinkit_grpc.client.wire import event_from_proto
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb


@dataclass
class WatchCursor:
    task_ids: Sequence[str] = ()
    task_types: Sequence[str] = ()
    event_types: Sequence[str] = ()
    # None: live only, until the first message (the server starts every stream with a
    # heartbeat once it is live) gives a position.
    position: int | None = None
    until_terminal: bool = False
    wait_for_creation: bool = False
    live: bool = False  # a heartbeat has arrived: the replay is over

    def request(self) -> pb.WatchTaskEventsRequest:
        request = pb.WatchTaskEventsRequest(
            task_ids=list(self.task_ids),
            task_types=list(self.task_types),
            event_types=list(self.event_types),
            until_terminal=self.until_terminal,
            wait_for_creation=self.wait_for_creation,
        )
        if self.position is not None:
            request.after_event_id = self.position
        return request

    def accept(self, response: pb.WatchTaskEventsResponse) -> TaskEvent | None:
        """The event to deliver, or None (a heartbeat, or an event already delivered)."""
        if response.HasField("heartbeat"):
            self.live = True
            self._advance(response.heartbeat.event_id)
            return None
        event = response.event
        if self.position is not None and event.event_id <= self.position:
            return None
        self.position = event.event_id
        return event_from_proto(event)

    def resumable(self, error: ClientError) -> bool:
        """Whether the ending is one to reconnect after (elsewhere, for a list of replicas):
        a server restart or shutdown, a broken connection, a slow-consumer cut-off, a server
        that is full of watchers for now. CANCELLED too: the watch checks its own close()
        first, so a cancellation that reaches here came from the server's side (a server
        stopping cancels the streams still open when its grace ends), and resuming from the
        position is as exact as after any other ending."""
        if not isinstance(error, Unavailable | SlowConsumer | TooManyWatchers | Cancelled):
            return False
        if self.position is None and isinstance(
            error, ShuttingDown | SlowConsumer | TooManyWatchers
        ):
            resume = error.resume_after_event_id
            if resume is not None:
                self._advance(resume)
        return True

    def _advance(self, position: int) -> None:
        if self.position is None or position > self.position:
            self.position = position
