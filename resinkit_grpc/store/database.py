"""The only owner of connections: runs store operations in transactions, without stalling the
event loop.

Writes go to one GroupWriter thread (SQLite has one writer anyway; a single writer per process
also means this process never contends with itself for the lock), which commits whatever has
queued up together. Reads run on a small pool of read threads beside it (WAL lets them proceed
while the writer works); on SQLite a read first tries the event loop itself, under a time
budget (see LoopReader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import StorageUnavailable
from resinkit_grpc.store import events
from resinkit_grpc.store.engine import create_engines, describe
from resinkit_grpc.store.loop_reader import LoopReader, OverBudget
from resinkit_grpc.store.writer import GroupWriter

P = ParamSpec("P")
T = TypeVar("T")
Operation = Callable[Concatenate[Connection, P], T]

log = logging.getLogger(__name__)


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
        if self.dialect == "sqlite" and settings.loop_read_budget > 0:
            self._loop_reader = LoopReader(self.reader_engine, settings.loop_read_budget / 1000)
        self._commit_listeners: list[
            tuple[asyncio.AbstractEventLoop, Callable[[], None], Callable[[], bool]]
        ] = []

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
            lambda connection: operation(connection, *args, **kwargs)
        )
        return result

    async def read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `operation(connection, ...)` and returns its result. On SQLite it runs on the
        event loop first, under a budget (see LoopReader); otherwise, or when it needs more
        than the budget, in one read transaction on a read thread."""
        if self._loop_reader is not None:
            try:
                result: T = self._loop_reader.run(lambda c: operation(c, *args, **kwargs))
                return result
            except OverBudget:
                log.debug("read %s moved to a read thread", getattr(operation, "__name__", "?"))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: self.run_read(operation, *args, **kwargs)
        )

    def run_read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(self.reader_engine, operation, *args, **kwargs)

    @staticmethod
    def _run(engine: Engine, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with engine.begin() as connection:
                return operation(connection, *args, **kwargs)
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
