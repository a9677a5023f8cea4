"""EventTail: the one reader of task_events in this process.

It reads the table in event_id order from the fan-out's position and hands each batch to the
fan-out. The table is the source of truth: wake-ups (this process's commits; other processes'
commits through a `PRAGMA data_version` poll on SQLite, LISTEN/NOTIFY on PostgreSQL) only tell
it to look, and a timer makes it look anyway. The thread that watches for other processes'
commits is restarted whenever it fails, so delivery stays prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable

from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.engine import POSTGRES_CONNECT_ARGS, describe
from resinkit_grpc.watch.fanout import Fanout
from resinkit_grpc.watch.items import LogEvent
from resinkit_grpc.watch.subscription import Subscription

log = logging.getLogger(__name__)

BATCH = 1000
# How often the tail looks at the table when nothing woke it: the bound on delivery delay if
# every wake-up were lost.
FALLBACK_POLL_SECONDS = 1.0
# How often SQLite's data_version is polled for commits made by other processes.
DATA_VERSION_POLL_SECONDS = 0.005
# How long a LISTEN wait lasts before it checks whether the tail is stopping.
LISTEN_TIMEOUT_SECONDS = 0.5
# Pauses before a failed commit watcher is started again, longer while it keeps failing.
RESTART_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)


class EventTail:
    def __init__(self, database: Database, *, batch_bytes: int) -> None:
        self._db = database
        self.fanout = Fanout()
        self._batch_bytes = batch_bytes
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commit_watch: threading.Thread | None = None
        self._stopping = threading.Event()
        # How often the commit watcher has failed and been started again.
        self.commit_watch_restarts = 0

    @property
    def position(self) -> int:
        return self.fanout.position

    async def start(self) -> None:
        self.fanout.position = await self._db.read(events.last_event_id)
        loop = asyncio.get_running_loop()
        self._db.on_commit(self.wake, wanted=self.listening)
        watch_once = (
            self._poll_data_version if self._db.dialect == "sqlite" else self._listen_for_notify
        )
        self._commit_watch = threading.Thread(
            target=self._watch_commits,
            args=(loop, watch_once),
            name="resinkit-commit-watch",
            daemon=True,
        )
        self._commit_watch.start()
        self._task = asyncio.create_task(self._run(), name="event-tail")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            # wait(), not `await self._task` under suppress(CancelledError): that would also
            # swallow a cancellation of stop() itself.
            await asyncio.wait([self._task])
        if self._commit_watch is not None:
            await asyncio.to_thread(self._commit_watch.join)

    def wake(self) -> None:
        self._wake.set()

    def listening(self) -> bool:
        """Whether anybody subscribes. Safe from any thread. While nobody does, commits need not
        wake the tail: it reads nothing then, and the first subscriber wakes it (subscribe)."""
        return self.fanout.listening

    def subscribe(self, subscription: Subscription, joined_at: int) -> None:
        """Adds a subscription that joins at `joined_at` (see Fanout.subscribe)."""
        first = not self.fanout.listening
        self.fanout.subscribe(subscription, joined_at)
        if first:
            # Commits made since that replay's snapshot found nobody to read for: look now,
            # rather than at the next commit or the fallback timer.
            self._wake.set()

    def unsubscribe(self, subscription: Subscription) -> None:
        self.fanout.unsubscribe(subscription)

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
            except Exception as error:
                log.warning("event tail could not read task_events (%s); retrying", describe(error))
                await asyncio.sleep(0.5)

    async def _catch_up(self) -> None:
        while self.fanout.listening:  # nobody to tell: subscribe() moves the position
            before = self.fanout.position
            page, horizon = await self._db.read(
                events.read_tail,
                after_event_id=before,
                limit=BATCH,
                max_bytes=self._batch_bytes,
            )
            if horizon > before:
                self.fanout.end_behind(horizon)
            if page.rows:
                self.fanout.dispatch([LogEvent.from_row(row) for row in page.rows])
            if page.complete:
                return
            # More to read: let the streams take this batch first (a read that fits the loop
            # budget never suspends), so that one that keeps up is not cut off by the next.
            await asyncio.sleep(0)

    def _watch_commits(
        self,
        loop: asyncio.AbstractEventLoop,
        watch_once: Callable[[asyncio.AbstractEventLoop], None],
    ) -> None:
        """Runs the commit watcher until the tail stops, starting it again whenever it fails:
        without it, commits of other processes would wait for the fallback timer."""
        failures = 0
        while not self._stopping.is_set():
            try:
                watch_once(loop)
                failures = 0
            except RuntimeError:  # the event loop is closed: the server is gone
                return
            except Exception as error:
                failures += 1
                self.commit_watch_restarts += 1
                log.warning("commit watcher failed (%s); restarting it", describe(error))
            # It may have missed commits: have the tail look at the table.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)
            if failures:
                self._stopping.wait(RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1])

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
                version = self.read_data_version(connection)
                if version != last:
                    last = version
                    loop.call_soon_threadsafe(self._wake.set)
        finally:
            connection.close()

    @staticmethod
    def read_data_version(connection: sqlite3.Connection) -> int:
        version: int = connection.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _listen_for_notify(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wakes the tail on every NOTIFY from any replica's commit (PostgreSQL)."""
        import psycopg

        url = self._db.writer_engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True, **POSTGRES_CONNECT_ARGS) as connection:
            connection.execute(f"LISTEN {events.NOTIFY_CHANNEL}")
            loop.call_soon_threadsafe(self._wake.set)  # what committed before LISTEN
            while not self._stopping.is_set():
                for _ in connection.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                    if self.listening():
                        loop.call_soon_threadsafe(self._wake.set)
