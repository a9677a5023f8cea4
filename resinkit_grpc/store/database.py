"""The only owner of connections: runs store operations in transactions, without stalling the
event loop.

Writes go to one GroupWriter thread (SQLite has one writer anyway; a single writer per process
also means this process never contends with itself for the lock), which commits whatever has
queued up together. Reads run on a small pool of read threads beside it (WAL lets them proceed
while the writer works); on SQLite a read first tries the event loop itself, under a time
budget (see LoopReader).

Work stops when its caller stops waiting: a write whose deadline (`call_deadline`, set for each
call by the API layer) has passed before its batch begins is never committed, and a read on a
read thread whose caller has gone is interrupted in the database (SQLite's interrupt, PostgreSQL's
cancel request) and its connection discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import DeadlineExceeded, StorageUnavailable
from resinkit_grpc.store import events
from resinkit_grpc.store.engine import create_engines, describe
from resinkit_grpc.store.loop_reader import LoopReader, OverBudget
from resinkit_grpc.store.writer import GroupWriter

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")
Operation = Callable[Concatenate[Connection, P], T]

log = logging.getLogger(__name__)

# Database.read_alike: how long a kind of read that ran past the loop's budget goes straight
# to a read thread, how many such kinds are remembered (the most recent), and how often one of
# them tries the loop again all the same.
LONG_READ_SECONDS = 60.0
LONG_READ_KINDS = 1024
PROBE_EVERY = 8

# The time.monotonic() past which the caller of the store operations in progress no longer
# waits, or None. Each RPC runs in a task of its own, so setting it concerns that call alone.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "call_deadline", default=None
)


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer_engine: Engine
        self.reader_engine: Engine
        self.writer_engine, self.reader_engine = create_engines(settings)
        self._writer = GroupWriter(
            self.writer_engine,
            self._committed,
            prepare=events.serialize_appends,
            max_queued=settings.max_queued_writes,
        )
        self._readers = ThreadPoolExecutor(
            settings.read_threads, thread_name_prefix="resinkit-read"
        )
        self._loop_reader = None
        self._long_reads = _LongReads()
        if self.dialect == "sqlite" and settings.loop_read_budget > 0:
            self._loop_reader = LoopReader(self.reader_engine, settings.loop_read_budget / 1000)
        self._commit_listeners: list[
            tuple[asyncio.AbstractEventLoop, Callable[[], None], Callable[[], bool]]
        ] = []

    @property
    def writer(self) -> GroupWriter:
        return self._writer

    @property
    def dialect(self) -> str:
        return self.writer_engine.dialect.name

    def on_commit(
        self, listener: Callable[[], None], *, wanted: Callable[[], bool] = lambda: True
    ) -> None:
        """Calls `listener` on this event loop after every write this process commits (even
        when the caller has gone away in the meantime), if `wanted()` says so right after the
        commit. `wanted` runs on the writer thread: it must be quick and thread-safe. It saves
        the listener's loop a wake-up per commit while the listener has nothing to do."""
        self._commit_listeners.append((asyncio.get_running_loop(), listener, wanted))

    def _committed(self) -> None:  # on the writer thread
        for loop, listener, wanted in self._commit_listeners:
            if wanted():
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(listener)

    async def write(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `operation(connection, ...)` atomically: all of it commits, or none of it and
        the error is raised. Returns once it has committed. The operation may run more than
        once (see GroupWriter): it must depend on nothing but the database and its arguments,
        and do nothing outside the transaction."""
        result: T = await self._writer.submit(
            lambda connection: operation(connection, *args, **kwargs),
            deadline=call_deadline.get(),
        )
        return result

    async def write_item(
        self, together: Callable[[Connection, list[Item]], list[T]], item: Item
    ) -> T:
        """Runs together(connection, [item])[0] as write() runs an operation; the writer may run
        it in one call of `together` with the items of other calls queued beside it (see
        GroupWriter.submit_item), so `together` must answer each item as if it ran alone."""
        result: T = await self._writer.submit_item(together, item, deadline=call_deadline.get())
        return result

    async def read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `operation(connection, ...)` and returns its result. On SQLite it runs on the
        event loop first, under a budget (see LoopReader); otherwise, or when it needs more
        than the budget, in one read transaction on a read thread."""
        return await self._read(None, operation, *args, **kwargs)

    async def read_alike(
        self, kind: Hashable, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """read(), for reads that come again and cost about the same each time, `kind` naming
        them (a list's filter and order: its pages, and the same page asked again). Once one
        of a kind has run past the loop's budget, the next ones go straight to a read thread
        for LONG_READ_SECONDS, instead of spending the budget on the loop first; but every
        PROBE_EVERY-th still tries the loop, and one that fits sends its kind back there (a
        read that ran long once, by chance, costs a few hops to a read thread, no more)."""
        return await self._read(kind, operation, *args, **kwargs)

    async def _read(
        self,
        kind: Hashable | None,
        operation: Operation[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        if self._loop_reader is not None and not self._long_reads.holds(kind):
            try:
                result: T = self._loop_reader.run(lambda c: operation(c, *args, **kwargs))
            except OverBudget as over:
                log.debug("read %s moved to a read thread", getattr(operation, "__name__", "?"))
                if over.slow and kind is not None:
                    self._long_reads.long(kind)
            else:
                if kind is not None:
                    self._long_reads.short(kind)
                return result
        loop = asyncio.get_running_loop()
        read = _AbandonableRead(call_deadline.get())
        try:
            # In the caller's context, as writes are (see GroupWriter.submit).
            context = contextvars.copy_context()
            watched = read.run(operation)

            def in_context() -> T:
                return self._run(self.reader_engine, watched, *args, **kwargs)

            return await loop.run_in_executor(self._readers, context.run, in_context)
        except asyncio.CancelledError:
            # Off the loop: a PostgreSQL cancel request is a round trip of its own.
            loop.run_in_executor(None, read.abandon)
            raise

    def run_read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(self.reader_engine, operation, *args, **kwargs)

    @staticmethod
    def _run(engine: Engine, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            try:
                with engine.begin() as connection:
                    return operation(connection, *args, **kwargs)
            except DBAPIError as exc:
                # A pooled connection the server dropped meanwhile (PostgreSQL readers take no
                # ping, see engine.py): the read, which changed nothing, once more on a new one.
                if not exc.connection_invalidated or engine.dialect.name == "sqlite":
                    raise
                log.info("a pooled database connection was lost; reading again on a new one")
                with engine.begin() as connection:
                    return operation(connection, *args, **kwargs)
        except _Abandoned as exc:
            raise DeadlineExceeded("the caller stopped waiting for this read") from exc
        except (OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", describe(exc))
            raise StorageUnavailable("the database is unavailable; retry later") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                log.warning("database connection lost: %s", describe(exc))
                raise StorageUnavailable("the database connection was lost; retry later") from exc
            raise

    def close(self) -> None:
        if self._loop_reader is not None:
            self._loop_reader.close()
        self._writer.close()
        self._readers.shutdown(wait=True)
        self.writer_engine.dispose()
        self.reader_engine.dispose()


class _LongReads:
    """The kinds of read (Database.read_alike) that ran past the loop's budget lately: at most
    LONG_READ_KINDS of them, each for LONG_READ_SECONDS. Used on the event loop only."""

    def __init__(self) -> None:
        # kind -> [until (time.monotonic()), reads sent to a read thread since]
        self._kinds: OrderedDict[Hashable, list[float]] = OrderedDict()

    def holds(self, kind: Hashable | None) -> bool:
        """Whether a read of `kind` is to go straight to a read thread."""
        entry = None if kind is None else self._kinds.get(kind)
        if entry is None:
            return False
        if time.monotonic() >= entry[0]:
            del self._kinds[kind]
            return False
        entry[1] += 1
        return entry[1] % PROBE_EVERY != 0

    def long(self, kind: Hashable) -> None:
        self._kinds[kind] = [time.monotonic() + LONG_READ_SECONDS, 0]
        self._kinds.move_to_end(kind)
        while len(self._kinds) > LONG_READ_KINDS:
            self._kinds.popitem(last=False)

    def short(self, kind: Hashable) -> None:
        self._kinds.pop(kind, None)


class _Abandoned(Exception):
    """The read's caller stopped waiting: what it did is of no use to anyone."""


class _AbandonableRead:
    """A read on a read thread that its caller may abandon (cancelled, deadline passed).
    abandon() interrupts its statement in the database; the connection is then discarded rather
    than returned to the pool, so that an interruption arriving late (a PostgreSQL cancel request
    travels on a connection of its own) can never hit a later read. The lock makes the two sides
    agree on which statement is interrupted."""

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._lock = threading.Lock()
        self._raw: Any = None
        self._abandoned = False

    def run(self, operation: Operation[P, T]) -> Operation[P, T]:
        """`operation`, run under this watch."""

        def watched(connection: Connection, /, *args: P.args, **kwargs: P.kwargs) -> T:
            self._begin(connection)
            try:
                return operation(connection, *args, **kwargs)
            finally:
                self._end(connection)

        return watched

    def _begin(self, connection: Connection) -> None:
        with self._lock:
            if self._abandoned or (
                self._deadline is not None and time.monotonic() >= self._deadline
            ):
                raise _Abandoned()
            self._raw = connection.connection.dbapi_connection

    def _end(self, connection: Connection) -> None:
        with self._lock:
            self._raw = None
            if not self._abandoned:
                return
        connection.invalidate()
        raise _Abandoned()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._raw is not None:
                with contextlib.suppress(Exception):  # the read ended in between, or the link
                    _interrupt(self._raw)


def _interrupt(raw: Any) -> None:
    if isinstance(raw, sqlite3.Connection):
        raw.interrupt()
        return
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(raw, psycopg.Connection):
        raw.cancel_safe(timeout=5)
