"""GroupWriter: the one thread that writes, committing queued operations together.

Operations queue up while a commit is in progress; the writer then runs the whole queue in one
transaction, each operation inside its own SAVEPOINT (so that one failing operation is undone
alone and its neighbours still commit), commits once, and only then answers each caller. N
commits become one; on PostgreSQL the serialized event append (see events.append_event) is
paid once per batch instead of once per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from resinkit_grpc.errors import ResinkitError, StorageUnavailable

log = logging.getLogger(__name__)

# Enough to amortize a commit; small enough that one batch never holds the lock for long.
MAX_BATCH = 64


@dataclass
class _Job:
    run: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class _BatchFailed(Exception):
    """The transaction itself failed (BEGIN, a lost connection, COMMIT): nothing committed."""


class GroupWriter:
    def __init__(
        self,
        engine: Engine,
        on_commit: Callable[[], None],
        prepare: Callable[[Connection], None],
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._prepare = prepare
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="resinkit-writer", daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[Connection], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(run, future, loop))
        return future

    def close(self) -> None:
        """Commits what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._commit(batch)
        if self._connection is not None:
            self._connection.close()

    def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes = self._transaction(batch)
        except _BatchFailed as failure:
            error = failure.__cause__ or failure
            for job in batch:
                _settle(job, error)
            return
        except BaseException:
            # Whatever kills this thread must not leave callers waiting forever.
            for job in batch:
                _settle(job, StorageUnavailable("the writer stopped; retry later"))
            raise
        self._on_commit()
        for job, outcome in zip(batch, outcomes, strict=True):
            _settle(job, outcome)

    def _transaction(self, batch: list[_Job]) -> list[Any]:
        outcomes: list[Any] = []
        try:
            connection = self._connect()
            transaction = connection.begin()
            raw = connection.connection.dbapi_connection
            assert raw is not None
            try:
                self._prepare(connection)
                for job in batch:
                    # Savepoints through the driver: SQLAlchemy's begin_nested() costs several
                    # times more, and the outer transaction is ours alone.
                    raw.execute("SAVEPOINT op")
                    try:
                        outcomes.append(job.run(connection))
                    except Exception as error:
                        if _connection_lost(error):
                            raise
                        raw.execute("ROLLBACK TO SAVEPOINT op")
                        outcomes.append(_as_caller_error(error))
                    raw.execute("RELEASE SAVEPOINT op")
                transaction.commit()
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise
        except Exception as error:
            log.warning("write transaction failed: %s", error)
            self._discard_connection()
            raise _BatchFailed() from _as_caller_error(error)
        return outcomes

    def _connect(self) -> Connection:
        if self._connection is None or self._connection.invalidated:
            if self._connection is not None:
                self._connection.close()
            self._connection = self._engine.connect()
        return self._connection

    def _discard_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._connection.invalidate()
                self._connection.close()
            self._connection = None


def _connection_lost(error: Exception) -> bool:
    return isinstance(error, OperationalError | PoolTimeout) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def _as_caller_error(error: Exception) -> Exception:
    """Domain errors go to the caller as they are; database trouble becomes UNAVAILABLE."""
    if isinstance(error, ResinkitError):
        return error
    if _connection_lost(error):
        unavailable = StorageUnavailable("the database is unavailable; retry later")
        unavailable.__cause__ = error
        return unavailable
    return error


def _settle(job: _Job, outcome: Any) -> None:
    def settle() -> None:
        if job.future.done():  # the caller went away
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)
