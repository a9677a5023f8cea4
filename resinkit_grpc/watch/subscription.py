"""One live stream's queue: what the fan-out has offered it and the stream has not taken yet.

It owns the rule the whole watch rests on: a position mark is only ever handed out when nothing
at or below it is still queued, because marks are made in the same step that empties the queue.
Touched only on the event loop."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

from resinkit_grpc.watch.items import Ended, EndReason, EventFilter, Item, LogEvent, Passed


class Subscription:
    """A live watcher.

    `cursor` is the last position considered for it, matching or not: every matching event up
    to it is queued or already taken. `taken` is the last position handed to the stream, the
    resume point of any ending."""

    def __init__(
        self,
        event_filter: EventFilter,
        cursor: int,
        *,
        max_events: int,
        max_bytes: int,
        until_terminal: str | None = None,
        position: Callable[[], int] = lambda: 0,
    ) -> None:
        self.filter = event_filter
        self.cursor = cursor
        self.taken = cursor
        self.until_terminal = until_terminal
        self.max_events = max_events
        self.max_bytes = max_bytes
        # The fan-out's position: every matching event up to it has been offered.
        self._position = position
        self._queue: deque[LogEvent] = deque()
        self._queued_bytes = 0
        self._finished = False  # the watched task ended: end once the queue is taken
        self._ended: EndReason | None = None
        self._purged_through: int | None = None
        self._wakeup = asyncio.Event()

    @property
    def closed(self) -> bool:
        """Whether the fan-out may forget it: it takes no more events."""
        return self._finished or self._ended is not None

    def offer(
        self,
        events: Sequence[LogEvent],
        size: int,
        batch_end: int,
        ending_at: int | None = None,
    ) -> bool:
        """Queues `events` (those of one batch that match its filter, `size` bytes in all, ids
        up to `batch_end`). `ending_at`: the id of the batch's event that ends the watched
        task, if any. False once it takes no more."""
        if self.closed:
            return False
        if events and events[0].event_id <= self.cursor:  # joined inside this batch
            events = [event for event in events if event.event_id > self.cursor]
            size = sum(event.size for event in events)
        finishes = False
        if ending_at is not None and ending_at > self.cursor:  # else handed over already
            finishes = True
            if events and events[-1].event_id > ending_at:
                events = [event for event in events if event.event_id <= ending_at]
                size = sum(event.size for event in events)
        if events:
            # A stream whose queue is empty keeps up: it takes a whole batch, however large
            # (the fan-out's batches are bounded, and shared by every stream). One that still
            # holds events falls behind once they pass either bound.
            count = len(self._queue) + len(events)
            queued_bytes = self._queued_bytes + size
            if self._queue and (count > self.max_events or queued_bytes > self.max_bytes):
                self.end(EndReason.SLOW_CONSUMER)
                return False
            self._queue.extend(events)
            self._queued_bytes = queued_bytes
            self._wakeup.set()
        if finishes:
            assert ending_at is not None
            self._finished = True
            self.cursor = ending_at
            self._wakeup.set()
            return False
        self.cursor = max(self.cursor, batch_end)
        return True

    def handed(self, position: int) -> None:
        """The stream handed over, itself, every matching event up to `position` (the events
        it read from the table between joining and taking its first live batch)."""
        self.taken = max(self.taken, position)

    def end(self, reason: EndReason, *, purged_through: int | None = None) -> None:
        """Ends the stream early: what is queued is dropped; it resumes after `taken`
        (EVENTS_PURGED: the events purged through `purged_through` are lost to it)."""
        if self._ended is None and not self._finished:
            self._ended = reason
            self._purged_through = purged_through
            self._queue.clear()
            self._queued_bytes = 0
            self._wakeup.set()

    def take(self, *, mark: bool) -> list[Item]:
        """Everything queued, in order; then, if `mark`, a position mark that covers all of it
        and whatever the fan-out has passed since; or the ending. Marks are made here, and only
        here, after the queue has been emptied: so no mark can ever claim a queued event."""
        if self._ended is not None:
            return [Ended(self._ended, self.taken, self._purged_through)]
        queued = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        if queued:
            self.taken = queued[-1].event_id
        items: list[Item] = [*queued]
        if self._finished:
            # The ending event itself may not match the filter: resume after it all the same.
            self.taken = max(self.taken, self.cursor)
            items.append(Ended(EndReason.FINISHED, self.taken))
        elif mark:
            position = max(self.cursor, self._position(), self.taken)
            self.taken = position
            items.append(Passed(position))
        return items

    async def next_items(self, mark_after: float) -> list[Item]:
        """Waits until something is queued or the stream ends, for at most `mark_after`
        seconds; then takes it (with a position mark if the wait ran out)."""
        if not (self._queue or self.closed):
            self._wakeup.clear()
            try:
                async with asyncio.timeout(mark_after):  # not wait_for: see EventTail._run
                    await self._wakeup.wait()
            except TimeoutError:
                # The queue may have filled in the same turn as the timer expired: take() puts
                # the mark after whatever it holds.
                return self.take(mark=True)
        return self.take(mark=False)
