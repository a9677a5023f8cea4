"""Hands each batch of the log to every subscription it concerns, in one synchronous step.

Work per batch grows with the number of distinct filters, not of subscriptions: streams that
share a filter share one pass over the batch (a thousand unfiltered watchers walk it once)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from resinkit_grpc.watch.items import EndReason, EventFilter, LogEvent
from resinkit_grpc.watch.subscription import Subscription


class Fanout:
    def __init__(self, position: int = 0) -> None:
        # Every matching event up to here has been offered to every subscription.
        self.position = position
        # Subscriptions naming task ids, by task id; the others, by their filter.
        self._by_task: dict[str, set[Subscription]] = defaultdict(set)
        self._by_filter: dict[EventFilter, set[Subscription]] = defaultdict(set)
        # Every subscription, whichever of the two holds it: one collection, so that
        # `listening` reads it in one step from another thread.
        self._subscribed: set[Subscription] = set()

    @property
    def listening(self) -> bool:
        """Whether anybody subscribes. Safe from any thread."""
        return bool(self._subscribed)

    def subscribe(self, subscription: Subscription, joined_at: int) -> None:
        """Adds a subscription that joins at `joined_at`: at or past this position and never
        beyond the log's end; its stream reads everything up to there from the table itself.
        From now on it is offered every batch, so it misses nothing after it."""
        assert joined_at >= self.position, (joined_at, self.position)
        if not self._subscribed:
            # Nothing is read while nobody listens: reading resumes where the first subscriber
            # joins.
            self.position = joined_at
        if subscription.filter.task_ids:
            for task_id in subscription.filter.task_ids:
                self._by_task[task_id].add(subscription)
        else:
            self._by_filter[subscription.filter].add(subscription)
        self._subscribed.add(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribed.discard(subscription)
        if subscription.filter.task_ids:
            for task_id in subscription.filter.task_ids:
                watchers = self._by_task.get(task_id)
                if watchers is not None:
                    watchers.discard(subscription)
                    if not watchers:
                        del self._by_task[task_id]
        else:
            group = self._by_filter.get(subscription.filter)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._by_filter[subscription.filter]

    def end_behind(self, horizon: int) -> None:
        """Ends (EVENTS_PURGED) every subscription whose position is below `horizon`: retention
        removed events it had not been offered yet. Only a tail lagging further behind than
        the retention meets this."""
        for subscription in list(self._subscribed):
            if subscription.cursor < horizon:
                subscription.end(EndReason.EVENTS_PURGED, purged_through=horizon)
                self.unsubscribe(subscription)

    def dispatch(self, batch: Sequence[LogEvent]) -> None:
        """Offers one batch (consecutive log events in id order, none at or below `position`)
        and moves `position` to its end."""
        if not batch:
            return
        batch_end = batch[-1].event_id
        done: list[Subscription] = []
        for event_filter, group in self._by_filter.items():
            matched = (
                batch
                if event_filter.matches_all
                else [event for event in batch if event_filter.matches(event)]
            )
            if not matched:
                continue
            size = sum(event.size for event in matched)
            for subscription in group:
                if not subscription.offer(matched, size, batch_end):
                    done.append(subscription)
        if self._by_task:
            by_task: dict[str, list[LogEvent]] = {}
            for event in batch:
                if event.task_id in self._by_task:
                    by_task.setdefault(event.task_id, []).append(event)
            targets: set[Subscription] = set()
            for task_id in by_task:
                targets.update(self._by_task[task_id])
            for subscription in targets:
                if not self._offer_task_events(subscription, by_task, batch_end):
                    done.append(subscription)
        for subscription in done:
            self.unsubscribe(subscription)
        # Never backwards: subscribe() may have moved it past this batch while it was read.
        self.position = max(self.position, batch_end)

    @staticmethod
    def _offer_task_events(
        subscription: Subscription, by_task: dict[str, list[LogEvent]], batch_end: int
    ) -> bool:
        task_ids = subscription.filter.task_ids
        if len(task_ids) == 1:
            (task_id,) = task_ids
            events = by_task.get(task_id, [])
        else:
            events = sorted(
                (event for task_id in task_ids for event in by_task.get(task_id, ())),
                key=lambda event: event.event_id,
            )
        ending_at = None
        if subscription.until_terminal is not None:
            # Seen whether or not the filter shows it: the task has ended either way.
            ending_at = next(
                (e.event_id for e in events if e.event_id > subscription.cursor and e.ends_task),
                None,
            )
        event_filter = subscription.filter
        if event_filter.task_types or event_filter.event_types:
            events = [event for event in events if event_filter.matches(event)]
        return subscription.offer(events, sum(e.size for e in events), batch_end, ending_at)
