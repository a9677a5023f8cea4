"""The watch streams of this process: replay from the table, join the tail's live feed at
exactly the replay's position, position marks, limits and resumable endings.

A stream is an async iterator of item batches (events, position marks, one ending last) in
strictly increasing position; whoever serves it over a transport maps items to messages."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import Ended, EndReason, EventFilter, Item
from resinkit_grpc.watch.subscription import Subscription
from resinkit_grpc.watch.tail import EventTail, log_event

REPLAY_PAGE = 500


@dataclass(frozen=True)
class WatchRequest:
    filter: EventFilter
    # None: only events committed after the stream starts. Else replay everything after it.
    after_event_id: int | None = None
    # The one task whose end (terminal status or soft delete) ends the stream.
    until_terminal: str | None = None
    # With until_terminal: a task that does not exist yet is waited for, not NOT_FOUND.
    wait_for_creation: bool = False


class Watches:
    """Every watch stream of this process, sharing one EventTail."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._db = database
        self._settings = settings
        self.tail = EventTail(database, batch_bytes=settings.watch_buffer_bytes)
        self.active = 0
        self._closing = False
        self._live: set[Subscription] = set()

    async def start(self) -> None:
        await self.tail.start()

    async def close(self) -> None:
        """Ends every stream (SHUTTING_DOWN, resumable) and stops the tail."""
        self._closing = True
        for subscription in list(self._live):
            subscription.end(EndReason.SHUTTING_DOWN)
        await self.tail.stop()

    async def stream(self, request: WatchRequest) -> AsyncGenerator[list[Item], None]:
        """The items of one stream, in batches; the last item of the last batch is an Ended
        (unless the consumer stops first). Raises TaskNotFound before the first batch for an
        until_terminal watch of a task that does not exist (unless wait_for_creation)."""
        after, until = request.after_event_id, request.until_terminal
        if self._closing:
            yield [Ended(EndReason.SHUTTING_DOWN, after)]
            return
        if self.active >= self._settings.max_watchers:
            yield [Ended(EndReason.TOO_MANY_WATCHERS, after)]
            return
        self.active += 1
        subscription: Subscription | None = None
        try:
            cursor = after if after is not None else await self._db.read(events.last_event_id)
            replayed_to = 0  # how far this stream has read the log itself
            event_filter = request.filter
            # An until_terminal stream reads all of its task's events, so that it sees the one
            # that ends the task even when its filter hides it.
            sql_filter = EventFilter(frozenset((until,))) if until else event_filter
            first = True
            # Replay: read the table after the cursor until caught up with the tail.
            while True:
                page = await self._db.read(
                    events.read_replay_page,
                    after_event_id=cursor,
                    limit=REPLAY_PAGE,
                    max_bytes=self._settings.watch_buffer_bytes,
                    task_ids=sorted(sql_filter.task_ids),
                    task_types=sorted(sql_filter.task_types),
                    event_types=sorted(sql_filter.event_types),
                    state_of=until,
                )
                if first and until and page.task is None and not request.wait_for_creation:
                    raise TaskNotFound(until)
                first = False
                batch: list[Item] = []
                for row in page.events:
                    event = log_event(row)
                    if not until or event_filter.matches(event):
                        batch.append(event)
                    if until and event.ends_task:
                        batch.append(Ended(EndReason.FINISHED, event.event_id))
                        yield batch
                        return
                replayed_to = max(replayed_to, page.scanned_to)
                # A client may name a position beyond the log; it still gets nothing before it.
                cursor = max(cursor, page.scanned_to)
                if self._closing:
                    batch.append(Ended(EndReason.SHUTTING_DOWN, cursor))
                    yield batch
                    return
                if batch:
                    yield batch
                if not page.complete:
                    continue
                if until and page.task is not None and _has_ended(page.task):
                    # Its ending event lies at or before the position the stream started from.
                    yield [Ended(EndReason.FINISHED, cursor)]
                    return
                # No await between this check and subscribe(): the tail cannot move in
                # between, so the live feed starts exactly where the replay stopped.
                if replayed_to >= self.tail.position:
                    break
            subscription = Subscription(
                event_filter,
                cursor,
                max_events=self._settings.watch_buffer,
                max_bytes=self._settings.watch_buffer_bytes,
                until_terminal=until,
                position=lambda: self.tail.position,
            )
            self.tail.subscribe(subscription, replayed_to)
            self._live.add(subscription)
            yield subscription.take(mark=True)  # the stream is live from here
            interval = self._settings.heartbeat_interval
            while True:
                items = await subscription.next_items(interval)
                yield items
                if isinstance(items[-1], Ended):
                    return
        finally:
            self.active -= 1
            if subscription is not None:
                self.tail.unsubscribe(subscription)
                self._live.discard(subscription)


def _has_ended(task: events.TaskState) -> bool:
    return not task.active or TaskStatus(task.status).is_terminal
