"""The stream core without a server: the fan-out and its subscriptions under arbitrary
interleavings of commits, tail reads, timer expiries (position marks), slow consumers,
cancellations, shutdowns and resumes.

The promise under attack: a stream's positions only grow; no event ever follows a position
mark at or above its id; and whatever a stream has emitted up to any position it emits (a mark
or an ending's resume point) is exactly the matching log up to there. Resuming from such a
position therefore reproduces exactly the rest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resinkit_grpc.watch.fanout import Fanout
from resinkit_grpc.watch.items import (
    Ended,
    EndReason,
    EventFilter,
    Item,
    LogEvent,
    Passed,
)
from resinkit_grpc.watch.subscription import Subscription

TASK_TYPES = {"t1": "flink", "t2": "cdc", "t3": "flink"}
EVENT_KINDS = [
    ("CREATED", None),
    ("UPDATED", None),
    ("STATUS_CHANGE", "RUNNING"),
    ("STATUS_CHANGE", "FAILED"),
    ("DELETED", None),
]
NOW = datetime(2026, 1, 1, tzinfo=UTC)

event_specs = st.tuples(
    st.sampled_from(sorted(TASK_TYPES)),
    st.sampled_from(EVENT_KINDS),
    st.sampled_from([0, 40, 3000]),  # stored event_data bytes
    st.integers(1, 3),  # id step: rolled-back transactions leave holes
)
filters = st.builds(
    EventFilter,
    task_ids=st.frozensets(st.sampled_from(sorted(TASK_TYPES)), max_size=2),
    task_types=st.frozensets(st.sampled_from(["flink", "cdc"]), max_size=1),
    event_types=st.frozensets(st.sampled_from(["CREATED", "UPDATED", "STATUS_CHANGE"]), max_size=2),
)


@dataclass
class Stream:
    filter: EventFilter
    start: int  # the position it replays after
    until: str | None
    items: list[Item] = field(default_factory=list)
    subscription: Subscription | None = None
    done: bool = False  # ended, or its client went away

    @property
    def ended(self) -> Ended | None:
        last = self.items[-1] if self.items else None
        return last if isinstance(last, Ended) else None


class StreamCore(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[LogEvent] = []
        self.fanout = Fanout()
        self.streams: list[Stream] = []
        self.max_events = 4
        self.max_bytes = 4000

    # -- the model's table ----------------------------------------------------------------

    @property
    def log_end(self) -> int:
        return self.log[-1].event_id if self.log else 0

    def first_ending(self, stream: Stream) -> int | None:
        """The id of the event after the stream's start that ends its until_terminal task."""
        return next(
            (
                e.event_id
                for e in self.log
                if e.event_id > stream.start and e.task_id == stream.until and e.ends_task
            ),
            None,
        )

    def expected(self, stream: Stream, up_to: int) -> list[int]:
        """The ids of the matching log in (start, up_to]: what the stream owes by then."""
        if stream.until is not None:
            ending = self.first_ending(stream)
            if ending is not None:
                up_to = min(up_to, ending)
        return [
            e.event_id
            for e in self.log
            if stream.start < e.event_id <= up_to and stream.filter.matches(e)
        ]

    # -- rules ----------------------------------------------------------------------------

    @rule(specs=st.lists(event_specs, min_size=1, max_size=6))
    def commit(self, specs: list[tuple[str, tuple[str, str | None], int, int]]) -> None:
        for task_id, (event_type, new_status), size, step in specs:
            self.log.append(
                LogEvent(
                    event_id=self.log_end + step,
                    task_id=task_id,
                    task_type=TASK_TYPES[task_id],
                    event_type=event_type,
                    new_status=new_status,
                    timestamp=NOW,
                    data_size=size,
                )
            )

    @rule(count=st.integers(1, 8))
    def tail_reads(self, count: int) -> None:
        """The tail reads the next batch after its position (only while anybody listens)."""
        if not self.fanout.listening:
            return
        batch = [e for e in self.log if e.event_id > self.fanout.position][:count]
        self.fanout.dispatch(batch)

    @rule(
        event_filter=filters,
        start=st.sampled_from(["live", "zero", "inside", "beyond"]),
        pick=st.integers(0, 10**6),
        until=st.booleans(),
        lag=st.integers(0, 4),
    )
    def open_stream(
        self, event_filter: EventFilter, start: str, pick: int, until: bool, lag: int
    ) -> None:
        after = {
            "live": self.log_end,
            "zero": 0,
            "inside": self.log[pick % len(self.log)].event_id if self.log else 0,
            "beyond": self.log_end + 5,
        }[start]
        watched = None
        if until and len(event_filter.task_ids) == 1:
            (watched,) = event_filter.task_ids
        self._open(Stream(event_filter, after, watched), lag)

    @rule(index=st.integers(0, 10**6), pick=st.integers(0, 10**6))
    def resume_from_an_emitted_position(self, index: int, pick: int) -> None:
        """A client reconnects from any position a stream gave it: an event, a mark or an
        ending's resume point."""
        if not self.streams:
            return
        stream = self.streams[index % len(self.streams)]
        positions = [_position(item) for item in stream.items]
        known = [p for p in positions if p is not None]
        if known:
            self._open(Stream(stream.filter, known[pick % len(known)], stream.until))

    @rule(index=st.integers(0, 10**6), mark=st.booleans())
    def stream_takes(self, index: int, mark: bool) -> None:
        """The stream's handler wakes: on a wake-up (mark=False) or when its heartbeat timer
        ran out (mark=True), even in the same turn as an offer."""
        stream = self._live(index)
        if stream is None or stream.subscription is None:
            return
        stream.items += stream.subscription.take(mark=mark)
        if stream.ended is not None:
            self._finish(stream)

    @rule(index=st.integers(0, 10**6))
    def client_cancels(self, index: int) -> None:
        stream = self._live(index)
        if stream is not None:
            self._finish(stream)

    @rule(index=st.integers(0, 10**6))
    def server_shuts_down_a_stream(self, index: int) -> None:
        stream = self._live(index)
        if stream is not None and stream.subscription is not None:
            stream.subscription.end(EndReason.SHUTTING_DOWN)

    @precondition(lambda self: len(self.streams) < 30)
    @rule()
    def tight_buffers(self) -> None:
        self.max_events, self.max_bytes = 2, 3100

    # -- how Watches.stream opens a stream, replaying from the table ----------------------

    def _open(self, stream: Stream, lag: int = 0) -> None:
        """Replays from a snapshot of the table `lag` events old (the tail may have read past
        it meanwhile), joins the fan-out at its position and reads the gap from the table."""
        self.streams.append(stream)
        upper = self.log[-1 - lag].event_id if len(self.log) > lag else 0
        if self._replay(stream, stream.start, upper):
            return
        cursor = max(stream.start, upper)
        if stream.until is not None and any(
            e.task_id == stream.until and e.ends_task and e.event_id <= upper for e in self.log
        ):
            stream.items.append(Ended(EndReason.FINISHED, cursor))  # ended before its start
            stream.done = True
            return
        joined_at = max(upper, self.fanout.position)  # within the log, unlike the cursor
        subscription = Subscription(
            stream.filter,
            max(cursor, joined_at),
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            until_terminal=stream.until,
            position=lambda: self.fanout.position,
        )
        subscription.taken = cursor
        self.fanout.subscribe(subscription, joined_at)
        stream.subscription = subscription
        if self._replay(stream, cursor, joined_at):  # the gap
            self.fanout.unsubscribe(subscription)
            return
        subscription.handed(max(cursor, joined_at))
        stream.items += subscription.take(mark=True)

    def _replay(self, stream: Stream, after: int, upper: int) -> bool:
        """Appends the matching log in (after, upper]; True if the watched task ended there."""
        for event in self.log:
            if not after < event.event_id <= upper:
                continue
            if stream.filter.matches(event):
                stream.items.append(event)
            if stream.until == event.task_id and event.ends_task:
                stream.items.append(Ended(EndReason.FINISHED, event.event_id))
                stream.done = True
                return True
        return False

    def _live(self, index: int) -> Stream | None:
        live = [s for s in self.streams if not s.done]
        return live[index % len(live)] if live else None

    def _finish(self, stream: Stream) -> None:
        stream.done = True
        if stream.subscription is not None:
            self.fanout.unsubscribe(stream.subscription)

    # -- the promise ----------------------------------------------------------------------

    @invariant()
    def positions_only_grow_and_no_event_follows_a_mark_that_claimed_it(self) -> None:
        for stream in self.streams:
            passed = stream.start
            for number, item in enumerate(stream.items):
                if isinstance(item, LogEvent):
                    assert item.event_id > passed, (item, passed, stream.items)
                    passed = item.event_id
                elif isinstance(item, Passed):
                    assert item.position >= passed, (item, passed)
                    passed = item.position
                else:
                    assert number == len(stream.items) - 1, "items after the ending"
                    assert item.resume_after is not None and item.resume_after >= passed

    @invariant()
    def every_emitted_position_covers_exactly_the_matching_log(self) -> None:
        for stream in self.streams:
            sent: list[int] = []
            for item in stream.items:
                if isinstance(item, LogEvent):
                    sent.append(item.event_id)
                    continue
                position = item.position if isinstance(item, Passed) else item.resume_after
                assert position is not None
                assert sent == self.expected(stream, position), (stream, position)

    @invariant()
    def only_finished_streams_end_normally(self) -> None:
        for stream in self.streams:
            ended = stream.ended
            if ended is not None and ended.reason is EndReason.FINISHED:
                assert stream.until is not None


def _position(item: Item) -> int | None:
    if isinstance(item, LogEvent):
        return item.event_id
    if isinstance(item, Passed):
        return item.position
    return item.resume_after


StreamCore.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_stream_core_never_promises_an_event_it_has_not_sent = StreamCore.TestCase


def test_a_timer_that_expires_in_the_same_turn_as_an_offer_marks_after_the_event() -> None:
    """The defect this core was rebuilt for: the heartbeat timer runs out in the same event-loop
    turn as the fan-out queues an event. The mark must come after the event, never before."""

    async def scenario() -> list[Item]:
        fanout = Fanout(position=10)
        subscription = Subscription(
            EventFilter(),
            10,
            max_events=10,
            max_bytes=10_000,
            position=lambda: fanout.position,
        )
        fanout.subscribe(subscription, 10)
        event = LogEvent(
            event_id=11, task_id="t1", task_type="flink", event_type="CREATED", timestamp=NOW
        )
        asyncio.get_running_loop().call_soon(fanout.dispatch, [event])
        # A zero-length timer: it expires in the very turn the event is offered.
        return await subscription.next_items(0)

    items = asyncio.run(scenario())
    assert [type(item) for item in items] == [LogEvent, Passed]
    assert isinstance(items[1], Passed) and items[1].position == 11


def test_one_event_larger_than_the_byte_bound_still_goes_out_alone() -> None:
    fanout = Fanout()
    subscription = Subscription(
        EventFilter(), 0, max_events=10, max_bytes=1000, position=lambda: fanout.position
    )
    fanout.subscribe(subscription, 0)
    big = [_event(n, size=5000) for n in (1, 2)]
    fanout.dispatch(big[:1])
    assert subscription.take(mark=False) == big[:1]
    fanout.dispatch(big[1:])  # alone in the queue, it fits however large
    assert subscription.take(mark=False) == big[1:]
    fanout.dispatch([_event(3, size=0)])
    fanout.dispatch([_event(4, size=5000)])
    # Two queued events over the bound: cut off, resumable after the last one handed over.
    assert subscription.take(mark=True) == [Ended(EndReason.SLOW_CONSUMER, 2)]


def _event(event_id: int, *, size: int) -> LogEvent:
    return LogEvent(
        event_id=event_id,
        task_id="t1",
        task_type="flink",
        event_type="UPDATED",
        timestamp=NOW,
        data_size=size,
    )
