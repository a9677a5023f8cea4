"""EventTail: the one reader of task_events in this process.

It reads the table in event_id order from its position and offers each batch to every live
subscription. The table is the source of truth: wake-ups (this process's commits; other
processes' commits through a `PRAGMA data_version` poll on SQLite, LISTEN/NOTIFY on PostgreSQL)
only tell it to look, and a timer makes it look anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import defaultdict
from typing import Any

import psycopg
from sqlalchemy import Row

from resinkit_grpc.api.convert import event_to_proto
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.engine import POSTGRES_CONNECT_ARGS
from resinkit_grpc.watch.subscription import LogEvent, Subscription

log = logging.getLogger(__name__)

BATCH = 1000
# How often the tail looks at the table when nothing woke it: the bound on delivery delay if
# every wake-up were lost.
FALLBACK_POLL_SECONDS = 1.0
# How often SQLite's data_version is polled for commits made by other processes.
DATA_VERSION_POLL_SECONDS = 0.005
# How long a LISTEN wait lasts before it checks whether the tail is stopping.
LISTEN_TIMEOUT_SECONDS = 0.5


class EventTail:
    def __init__(self, database: Database) -> None:
        self._db = database
        self.position = 0
        self._wake = asyncio.Event()
        self._by_task: dict[str, set[Subscription]] = defaultdict(set)
        self._everyone: set[Subscription] = set()
        # Every subscription, whichever of the two above holds it: one collection, so that
        # listening() reads it in one step from another thread.
        self._subscribed: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()

    async def start(self) -> None:
        self.position = await self._db.read(events.last_event_id)
        loop = asyncio.get_running_loop()
        self._db.on_commit(self.wake, wanted=self.listening)
        watch_commits = (
            self._poll_data_version if self._db.dialect == "sqlite" else self._listen_for_notify
        )
        self._poller = threading.Thread(
            target=watch_commits, args=(loop,), name="resinkit-commit-watch", daemon=True
        )
        self._poller.start()
        self._task = asyncio.create_task(self._run(), name="event-tail")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)

    def wake(self) -> None:
        self._wake.set()

    def listening(self) -> bool:
        """Whether anybody subscribes. Safe from any thread. While nobody does, commits need not
        wake the tail: it reads nothing then, and the first subscriber wakes it (subscribe)."""
        return bool(self._subscribed)

    def subscribe(self, subscription: Subscription, replayed_to: int) -> None:
        """Adds a subscription that has read the log itself up to `replayed_to`, at or past
        this tail's position: from now on it is offered every batch, so it misses nothing."""
        assert replayed_to >= self.position
        first = not self._subscribed
        if first:
            # The tail reads nothing while nobody listens; the first subscriber has replayed
            # the log up to replayed_to (never beyond its real end), so reading resumes there.
            self.position = replayed_to
        if subscription.filter.task_ids:
            for task_id in subscription.filter.task_ids:
                self._by_task[task_id].add(subscription)
        else:
            self._everyone.add(subscription)
        self._subscribed.add(subscription)
        if first:
            # Commits made since that replay's snapshot found nobody to read for: look now,
            # rather than at the next commit or the fallback timer.
            self._wake.set()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribed.discard(subscription)
        self._everyone.discard(subscription)
        for task_id in subscription.filter.task_ids:
            watchers = self._by_task.get(task_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._by_task[task_id]

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event being set, and the tail would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FALLBACK_POLL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
            except Exception:
                log.exception("event tail could not read task_events; retrying")
                await asyncio.sleep(0.5)

    async def _catch_up(self) -> None:
        if not self._subscribed:
            return  # nobody to tell; subscribe() moves the position forward
        while True:
            rows = await self._db.read(
                events.read_events, after_event_id=self.position, limit=BATCH
            )
            if not rows:
                return
            self._dispatch([_log_event(row) for row in rows])
            if len(rows) < BATCH:
                return

    def _dispatch(self, batch: list[LogEvent]) -> None:
        batch_end = batch[-1].event_id
        targets = set(self._everyone)
        for event in batch:
            targets.update(self._by_task.get(event.task_id, ()))
        for subscription in targets:
            if not subscription.offer(batch, batch_end):
                self.unsubscribe(subscription)
        # Never backwards: subscribe() may have moved it past this batch while it was read.
        self.position = max(self.position, batch_end)

    def _poll_data_version(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wakes the tail when any connection, in any process, commits to the SQLite file."""
        database = self._db.writer_engine.url.database
        assert database is not None
        connection = sqlite3.connect(database, check_same_thread=False)
        try:
            last = None
            while not self._stopping.wait(DATA_VERSION_POLL_SECONDS):
                if not self.listening():
                    continue  # a later change of version still wakes the tail, once
                version = connection.execute("PRAGMA data_version").fetchone()[0]
                if version != last:
                    last = version
                    loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass
        except sqlite3.Error:
            log.exception("data_version poll stopped; falling back to the timer")
        finally:
            connection.close()

    def _listen_for_notify(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wakes the tail on every NOTIFY from any replica's commit (PostgreSQL). A dropped
        connection is re-established, with a wake-up in case a notification was lost."""
        url = self._db.writer_engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    conninfo, autocommit=True, **POSTGRES_CONNECT_ARGS
                ) as connection:
                    connection.execute(f"LISTEN {events.NOTIFY_CHANNEL}")
                    loop.call_soon_threadsafe(self._wake.set)
                    while not self._stopping.is_set():
                        for _ in connection.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            if self.listening():
                                loop.call_soon_threadsafe(self._wake.set)
            except psycopg.Error as error:
                log.warning("LISTEN connection lost (%s); reconnecting", error)
                self._stopping.wait(1.0)
            except RuntimeError:  # the event loop is closed: the server is gone
                return


def _log_event(row: Row[Any]) -> LogEvent:
    return LogEvent(
        event_id=row.event_id,
        task_id=row.task_id,
        task_type=row.task_type,
        event_type=row.event_type,
        new_status=row.new_status,
        response=pb.WatchTaskEventsResponse(event=event_to_proto(row)),
    )
