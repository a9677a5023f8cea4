"""The watch streams of this process: replay from the table, join the tail's live feed at
exactly the replay's position, position marks, limits and resumable endings.

Retention may purge events while a stream replays: every page is checked against the log
horizon after it is read (events.missing_since), so a stream whose position falls below what
was purged ends EVENTS_PURGED before it could hand out anything past the gap.

A stream is an async iterator of item batches (events, position marks, one ending last) in
strictly increasing position; whoever serves it over a transport maps items to messages."""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import Ended, EndReason, EventFilter, Item, LogEvent
from resinkit_grpc.watch.subscription import Subscription
from resinkit_grpc.watch.tail import EventTail

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
    # Whose stream it is (the authenticated principal), for the per-principal limit.
    owner: str | None = None


class Watches:
    """Every watch stream of this process, sharing one EventTail."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._db = database
        self._settings = settings
        self.tail = EventTail(database, batch_bytes=settings.watch_buffer_bytes)
        self.active = 0
        # Counted by the stream's consumer (the servicer), read by metrics.
        self.delivered = 0  # events handed to streams
        self.endings: collections.Counter[EndReason] = collections.Counter()  # streams ended
        self._owned: collections.Counter[str] = collections.Counter()
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
        owner, per_owner = request.owner, self._settings.max_watchers_per_principal
        if self.active >= self._settings.max_watchers or (
            owner is not None and per_owner and self._owned[owner] >= per_owner
        ):
            yield [Ended(EndReason.TOO_MANY_WATCHERS, after)]
            return
        self.active += 1
        if owner is not None:
            self._owned[owner] += 1
        subscription: Subscription | None = None
        try:
            cursor = after if after is not None else await self._db.read(events.last_event_id)
            # Replay: read the table after the cursor until a page reaches the end of the log.
            first = True
            replayed_to = 0  # how far this stream has read the log: never beyond its end
            while True:
                page = await self._replay_page(request, cursor, upper=None)
                if first and until and page.task is None and not request.wait_for_creation:
                    raise TaskNotFound(until)
                first = False
                if page.purged_through is not None:
                    yield [_purged(cursor, page)]
                    return
                items = self._replayed(request, page)
                replayed_to = max(replayed_to, page.scanned_to)
                # A client may name a position beyond the log; it still gets nothing before it.
                cursor = max(cursor, page.scanned_to)
                if _ends(items):
                    yield items
                    return
                if page.complete:
                    if until and page.task is not None and _has_ended(page.task):
                        # Its ending event lies at or before the position the stream began at.
                        yield [*items, Ended(EndReason.FINISHED, cursor)]
                        return
                    break
                if items:
                    yield items
                if self._closing:
                    yield [Ended(EndReason.SHUTTING_DOWN, cursor)]
                    return
            # Join the live feed, with no await since the closing check: close() cannot miss
            # this stream. The tail may have passed the replay's end meanwhile; the stream
            # takes the feed from the tail's position and reads the gap from the table itself.
            if self._closing:
                yield [*items, Ended(EndReason.SHUTTING_DOWN, cursor)]
                return
            joined_at = max(replayed_to, self.tail.position)
            subscription = Subscription(
                request.filter,
                max(cursor, joined_at),
                max_events=self._settings.watch_buffer,
                max_bytes=self._settings.watch_buffer_bytes,
                until_terminal=until,
                position=lambda: self.tail.position,
            )
            subscription.taken = cursor
            self.tail.subscribe(subscription, joined_at)
            self._live.add(subscription)
            if items:
                yield items
            while cursor < joined_at:
                page = await self._replay_page(request, cursor, upper=joined_at)
                if page.purged_through is not None:
                    yield [_purged(cursor, page)]
                    return
                items = self._replayed(request, page)
                cursor = page.scanned_to
                if _ends(items):
                    yield items
                    return
                if items:
                    yield items
                subscription.handed(cursor)
                if self._closing:
                    yield [Ended(EndReason.SHUTTING_DOWN, cursor)]
                    return
            yield subscription.take(mark=True)  # the stream is live from here
            interval = self._settings.heartbeat_interval
            while True:
                items = await subscription.next_items(interval)
                yield items
                if isinstance(items[-1], Ended):
                    return
        finally:
            self.active -= 1
            if owner is not None:
                self._owned[owner] -= 1
                if not self._owned[owner]:
                    del self._owned[owner]
            if subscription is not None:
                self.tail.unsubscribe(subscription)
                self._live.discard(subscription)

    async def _replay_page(
        self, request: WatchRequest, after: int, upper: int | None
    ) -> events.ReplayPage:
        until = request.until_terminal
        # An until_terminal stream reads all of its task's events, so that it sees the one that
        # ends the task even when its filter hides it.
        sql_filter = EventFilter(frozenset((until,))) if until else request.filter
        return await self._db.read(
            events.read_replay_page,
            after_event_id=after,
            up_to_event_id=upper,
            limit=REPLAY_PAGE,
            max_bytes=self._settings.watch_buffer_bytes,
            task_ids=sorted(sql_filter.task_ids),
            task_types=sorted(sql_filter.task_types),
            event_types=sorted(sql_filter.event_types),
            state_of=until,
        )

    @staticmethod
    def _replayed(request: WatchRequest, page: events.ReplayPage) -> list[Item]:
        """A replay page as items; for until_terminal, cut after the task's ending event."""
        until = request.until_terminal
        items: list[Item] = []
        for row in page.events:
            event = LogEvent.from_row(row)
            if not until or request.filter.matches(event):
                items.append(event)
            if until and event.ends_task:
                items.append(Ended(EndReason.FINISHED, event.event_id))
                break
        return items


def _purged(cursor: int, page: events.ReplayPage) -> Ended:
    """The end of a stream whose next page lost events to retention: none of the page goes
    out, since a client moving past the gap would never learn of it."""
    return Ended(EndReason.EVENTS_PURGED, cursor, page.purged_through)


def _ends(items: list[Item]) -> bool:
    return bool(items) and isinstance(items[-1], Ended)


def _has_ended(task: events.TaskState) -> bool:
    return not task.active or TaskStatus(task.status).is_terminal
