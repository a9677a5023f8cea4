"""Test helpers for WatchTaskEvents: a watcher that records its stream on a thread, and the
task_events table read straight from the database file, to compare streams against."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import detail


class Watcher:
    """Records one WatchTaskEvents stream (events, heartbeats and how it ended) on a thread."""

    def __init__(
        self, stub: Any, *, metadata: Sequence[tuple[str, str]] = (), **request: Any
    ) -> None:
        self.call = stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(**request), metadata=list(metadata)
        )
        self.events: list[pb.TaskEvent] = []
        self.heartbeats: list[int] = []
        # Every message's position in the order received: ("event" | "heartbeat", event_id).
        self.positions: list[tuple[str, int]] = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self._changed:
                    if response.HasField("event"):
                        self.events.append(response.event)
                        self.positions.append(("event", response.event.event_id))
                    else:
                        self.heartbeats.append(response.heartbeat.event_id)
                        self.positions.append(("heartbeat", response.heartbeat.event_id))
                    self._changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.done.set()
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, condition: Callable[[Watcher], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.done.is_set() and not condition(self)):
                    raise AssertionError(
                        f"watcher condition not met: {len(self.events)} events, "
                        f"heartbeats {self.heartbeats[-3:]}, error {self.error}"
                    )
                self._changed.wait(min(left, 0.1))

    def wait_live(self) -> None:
        """The first heartbeat marks the end of the replay: from then on the stream is live."""
        self.wait_for(lambda w: bool(w.heartbeats))

    def wait_position(self, event_id: int, timeout: float = 20.0) -> None:
        """Until the stream has passed `event_id` (an event or a heartbeat at or beyond it)."""
        self.wait_for(
            lambda w: (
                any(h >= event_id for h in w.heartbeats[-1:])
                or any(e.event_id >= event_id for e in w.events[-1:])
            ),
            timeout,
        )

    def events_after_a_heartbeat_that_claimed_them(self) -> list[tuple[int, int]]:
        """(event_id, heartbeat) for every event received after a heartbeat at or above its id:
        what a client resuming from that heartbeat would never see."""
        broken = []
        claimed = 0
        for kind, position in self.positions:
            if kind == "event" and position <= claimed:
                broken.append((position, claimed))
            if kind == "heartbeat":
                claimed = max(claimed, position)
        return broken

    def ids(self) -> list[int]:
        return [event.event_id for event in self.events]

    def stop(self) -> None:
        self.call.cancel()
        self.done.wait(10)

    def resume_after(self) -> int:
        assert self.error is not None
        return resume_point(self.error)


def resume_point(error: grpc.RpcError) -> int:
    """Where a resumable end of stream says to resume from."""
    info = detail(error, error_details_pb2.ErrorInfo)
    return int(info.metadata["resume_after_event_id"])


def table_events(database_url: str) -> list[dict[str, Any]]:
    """task_events joined with the task's type, in event_id order, straight from the database."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT e.event_id, e.task_id, e.event_type, t.task_type FROM task_events e "
                    "JOIN tasks t ON t.task_id = e.task_id ORDER BY e.event_id"
                )
            ).mappings()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def matching(
    rows: Sequence[dict[str, Any]],
    *,
    after: int = 0,
    task_ids: Sequence[str] = (),
    task_types: Sequence[str] = (),
    event_types: Sequence[str] = (),
) -> list[int]:
    return [
        row["event_id"]
        for row in rows
        if row["event_id"] > after
        and (not task_ids or row["task_id"] in task_ids)
        and (not task_types or row["task_type"] in task_types)
        and (not event_types or row["event_type"] in event_types)
    ]
