"""The only owner of connections: runs store operations in transactions off the event loop.

Writes go to one GroupWriter thread (SQLite has one writer anyway; a single writer per process
also means this process never contends with itself for the lock), which commits whatever has
queued up together. Reads run on a small pool beside it; WAL lets them proceed while the writer
works.
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
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.writer import GroupWriter

P = ParamSpec("P")
T = TypeVar("T")
Operation = Callable[Concatenate[Connection, P], T]

log = logging.getLogger(__name__)


class Database:
    def __init__(self, settings: Settings) -> None:
        self.writer_engine: Engine
        self.reader_engine: Engine
        self.writer_engine, self.reader_engine = create_engines(settings)
        self._writer = GroupWriter(
            self.writer_engine, self._committed, prepare=events.serialize_appends
        )
        self._readers = ThreadPoolExecutor(
            settings.read_threads, thread_name_prefix="resinkit-read"
        )
        self._inline: Connection | None = None  # read_bounded()'s, used on the event loop only
        self._commit_listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []

    @property
    def dialect(self) -> str:
        return self.writer_engine.dialect.name

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Calls `listener` on this event loop after every write this process commits (even
        when the caller has gone away in the meantime)."""
        self._commit_listeners.append((asyncio.get_running_loop(), listener))

    def _committed(self) -> None:  # on the writer thread
        for loop, listener in self._commit_listeners:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(listener)

    async def write(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `operation(connection, ...)` atomically: all of it commits, or none of it and
        the error is raised. Returns once it has committed."""
        result: T = await self._writer.submit(
            lambda connection: operation(connection, *args, **kwargs)
        )
        return result

    async def read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `operation(connection, ...)` in one read transaction (a consistent snapshot)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: self.run_read(operation, *args, **kwargs)
        )

    async def read_bounded(
        self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Like read(), for an operation whose cost is small and bounded (a primary-key
        lookup). On SQLite it runs right here on the event loop: a hop to a thread and back
        costs more than the lookup, in CPU and in the GIL hand-offs between the two threads.
        Its connection never waits for a lock; in the rare case SQLite is busy, the read goes
        to the read threads after all."""
        if self.dialect != "sqlite":
            return await self.read(operation, *args, **kwargs)
        if self._inline is None:
            self._inline = self.reader_engine.connect()
            self._inline.exec_driver_sql("PRAGMA busy_timeout = 0")
            self._inline.commit()
        try:
            with self._inline.begin():
                return operation(self._inline, *args, **kwargs)
        except OperationalError:
            return await self.read(operation, *args, **kwargs)

    def run_read(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(self.reader_engine, operation, *args, **kwargs)

    @staticmethod
    def _run(engine: Engine, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with engine.begin() as connection:
                return operation(connection, *args, **kwargs)
        except (OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            raise StorageUnavailable("the database is unavailable; retry later") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                log.warning("database connection lost: %s", exc)
                raise StorageUnavailable("the database connection was lost; retry later") from exc
            raise

    def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
        self._writer.close()
        self._readers.shutdown(wait=True)
        self.writer_engine.dispose()
        self.reader_engine.dispose()
