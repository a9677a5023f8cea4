"""GroupWriter: the one thread that writes, committing queued operations together.

Operations queue up while a commit is in progress; the writer then runs the whole queue in one
transaction, commits once, and only then answers each caller. N commits become one; on
PostgreSQL the serialized event append (see events.append_event) is paid once per batch instead
of once per operation. One failing operation never takes its neighbours down with it: a batch in
which one fails runs again, each operation inside a SAVEPOINT of its own (and, while operations
keep failing, batches start that way). Operations must therefore be safe to run more than once:
functions of the database and their arguments, with no effect outside the transaction.

Every statement the writer runs releases the GIL and must win it back from the event loop, so
statements saved here are worth more than their own cost suggests. Hence `submit_item`: callers
of the same kind of operation (CreateTask) queued one after another run as one call with all
their items (one multi-row INSERT instead of one round trip each); should that call fail, the
batch runs again isolated, each item alone, so that each caller still gets its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from resinkit_grpc.errors import DeadlineExceeded, Overloaded, ResinkitError, StorageUnavailable
from resinkit_grpc.store.engine import describe, unbegun

log = logging.getLogger(__name__)

# Enough to amortize a commit; small enough that one batch never holds the lock for long.
MAX_BATCH = 64


# An operation that can take several callers' items in one call: together(connection, items)
# returns, in order, what each item's operation would have returned had they run one after
# another in that transaction (values only: any failure raises, and the batch runs again
# isolated, each item alone).
Together = Callable[[Connection, list[Any]], list[Any]]


@dataclass
class _Job:
    run: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # time.monotonic() past which the caller no longer waits; None: no deadline.
    deadline: float | None = None
    # With `together`: this job's item, and its context (run is together on [item] in it).
    together: Together | None = None
    item: Any = None
    context: contextvars.Context | None = None


class _BatchFailed(Exception):
    """The transaction itself failed (BEGIN, a lost connection): nothing committed; or its
    COMMIT failed (_CommitFailed): whether it committed is unknown."""


class _CommitFailed(Exception):
    """COMMIT raised: the database may have committed before the failure reached us."""


class GroupWriter:
    """Every submitted operation is answered: with its outcome, with Overloaded when
    `max_queued` operations wait already, with StorageUnavailable once the writer has stopped
    (closed, or its thread died). An operation whose caller has gone (cancelled) or whose
    deadline has passed before its batch starts is skipped, never committed: nobody would learn
    of its outcome."""

    def __init__(
        self,
        engine: Engine,
        on_commit: Callable[[], None],
        prepare: Callable[[Connection], None],
        *,
        max_queued: int = 10_000,
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._prepare = prepare
        self._max_queued = max_queued
        self._stopped = False
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: Connection | None = None
        # Whether the last batch held a failing operation: the next one then starts isolated.
        self._failing = False
        # Told of every committed batch: its size and how long its transaction took (seconds);
        # on the writer thread, so it must be quick and thread-safe (metrics).
        self.on_batch: Callable[[int, float], None] | None = None
        self._thread = threading.Thread(target=self._run, name="resinkit-writer", daemon=True)
        self._thread.start()

    def submit(
        self, run: Callable[[Connection], Any], *, deadline: float | None = None
    ) -> asyncio.Future[Any]:
        return self._submit(run, deadline, None, None)

    def submit_item(
        self, together: Together, item: Any, *, deadline: float | None = None
    ) -> asyncio.Future[Any]:
        """Runs together(connection, [item]); jobs of the same `together` that follow each
        other in a batch run as one call of it, with all their items (on PostgreSQL, one
        statement for many callers instead of one round trip each)."""
        return self._submit(
            lambda connection: together(connection, [item])[0], deadline, together, item
        )

    def _submit(
        self,
        run: Callable[[Connection], Any],
        deadline: float | None,
        together: Together | None,
        item: Any,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._stopped:
            future.set_exception(_stopped())
        elif self._queue.qsize() >= self._max_queued:
            future.set_exception(Overloaded("too many writes are waiting; retry later"))
        else:
            # Run in the caller's context: what it carries (a trace's span) follows its
            # statements onto this thread.
            context = contextvars.copy_context()

            def in_context(connection: Connection) -> Any:
                return context.run(run, connection)

            self._queue.put(_Job(in_context, future, loop, deadline, together, item, context))
            if self._stopped:  # it stopped while this was queued: nobody else will answer
                self._answer_the_rest()
        return future

    def close(self) -> None:
        """Commits what is queued, then stops the thread; later writes are answered
        StorageUnavailable."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
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
                wanted = self._still_wanted(batch)
                if wanted:
                    self._commit(wanted)
        finally:
            self._stopped = True
            self._answer_the_rest()
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()

    @staticmethod
    def _still_wanted(batch: list[_Job]) -> list[_Job]:
        """The jobs whose callers still wait. A cancelled future is read across threads, a
        hint only; the deadline is exact."""
        now = time.monotonic()
        late = [job for job in batch if job.deadline is not None and job.deadline <= now]
        if late:
            _settle(
                late, [DeadlineExceeded("the deadline passed before the write began")] * len(late)
            )
        return [
            job
            for job in batch
            if not job.future.done() and (job.deadline is None or job.deadline > now)
        ]

    def _answer_the_rest(self) -> None:
        """Answers whatever is still queued once the writer has stopped (any thread)."""
        left = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                left.append(job)
        _settle(left, [_stopped()] * len(left))

    def queued(self) -> int:
        """Operations waiting for the writer (approximate, from any thread)."""
        return self._queue.qsize()

    def _commit(self, batch: list[_Job]) -> None:
        began = time.perf_counter()
        try:
            outcomes = self._transaction(batch)
        except _BatchFailed as failure:
            error = failure.__cause__ or failure
            _settle(batch, [error] * len(batch))
            return
        except BaseException:
            # Whatever kills this thread must not leave callers waiting forever.
            _settle(batch, [_stopped()] * len(batch))
            raise
        try:
            self._on_commit()
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - began)
        except Exception:  # a listener's bug: the batch committed all the same
            log.exception("a commit listener failed")
        _settle(batch, outcomes)

    def _transaction(self, batch: list[_Job]) -> list[Any]:
        try:
            connection = self._connect()
            outcomes = None if self._failing else self._run_straight(connection, batch)
            if outcomes is None:
                outcomes = self._run_isolated(connection, [job.run for job in batch])
            self._failing = any(isinstance(outcome, Exception) for outcome in outcomes)
        except Exception as error:
            failed = error.__cause__ if isinstance(error, _CommitFailed) else error
            log.warning("write transaction failed: %s", describe(failed or error))
            self._discard_connection()
            raise _BatchFailed() from _as_caller_error(error)
        return outcomes

    def _run_straight(self, connection: Connection, batch: Sequence[_Job]) -> list[Any] | None:
        """The operations one after another (each run of jobs sharing a `together` as one
        call), then one commit: the common case, three statements per operation fewer than
        with savepoints. When one fails, nothing commits; a lone operation's error is then its
        outcome, and a batch returns None, to run again isolated (few batches hold a failing
        operation, and after one that did, batches start isolated until one passes without a
        failure)."""
        with self._begin(connection) as transaction:
            try:
                outcomes: list[Any] = []
                for run, size in _runs(batch):
                    done = _run_checked(run, connection)
                    if size is None:
                        outcomes.append(done)
                    else:
                        if len(done) != size:
                            raise RuntimeError(f"together answered {len(done)} of {size} items")
                        outcomes.extend(done)
                return outcomes
            except Exception as error:
                if _connection_lost(error):
                    raise
                transaction.rollback()
                return [_as_caller_error(error)] if len(batch) == 1 else None

    def _run_isolated(
        self, connection: Connection, runs: Sequence[Callable[[Connection], Any]]
    ) -> list[Any]:
        """The operations each inside a SAVEPOINT of its own, so that what a failing one did is
        undone alone and its neighbours still commit."""
        raw = connection.connection.dbapi_connection
        assert raw is not None
        outcomes: list[Any] = []
        with self._begin(connection):
            for run in runs:
                # Savepoints through the driver: SQLAlchemy's begin_nested() costs several
                # times more, and the outer transaction is ours alone.
                raw.execute("SAVEPOINT op")
                try:
                    outcomes.append(_run_checked(run, connection))
                except Exception as error:
                    if _connection_lost(error):
                        raise
                    raw.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append(_as_caller_error(error))
                raw.execute("RELEASE SAVEPOINT op")
        return outcomes

    @contextlib.contextmanager
    def _begin(self, connection: Connection) -> Iterator[RootTransaction]:
        """A transaction, prepared; committed at the end unless rolled back already."""
        transaction = connection.begin()
        try:
            # On PostgreSQL prepare (events.serialize_appends) begins the transaction itself,
            # with its lock in the same round trip; should it send nothing, BEGIN goes alone.
            self._prepare(connection)
            raw = unbegun(connection)
            if raw is not None:
                raw.execute("BEGIN")
            yield transaction
            if transaction.is_active:
                if not _can_commit(connection):
                    raise TransactionAborted("the write transaction was aborted")
                try:
                    transaction.commit()
                except Exception as error:
                    raise _CommitFailed() from error
        except BaseException:
            if transaction.is_active:
                transaction.rollback()
            raise

    def _connect(self) -> Connection:
        if self._connection is None or self._connection.invalidated:
            if self._connection is not None:
                self._connection.close()
            self._connection = self._engine.connect()
            raw = self._connection.connection.driver_connection
            psycopg = _psycopg()
            if psycopg is not None and isinstance(raw, psycopg.Connection):
                # psycopg sends BEGIN as a round trip of its own before a transaction's first
                # statement; with autocommit on it sends none, and _begin sends it with the
                # transaction's first statement instead. This connection is the writer's
                # alone (its engine's one), and every transaction on it goes through _begin.
                raw.autocommit = True
        return self._connection

    def _discard_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._connection.invalidate()
                self._connection.close()
            self._connection = None


def _runs(batch: Sequence[_Job]) -> Iterator[tuple[Callable[[Connection], Any], int | None]]:
    """What _run_straight calls, in order: each job's run, except that jobs of one `together`
    following each other make one call of it with their items, in the first one's context
    (its trace gets the statements); with how many outcomes that call returns (None: one)."""
    start = 0
    while start < len(batch):
        together = batch[start].together
        end = start + 1
        while together is not None and end < len(batch) and batch[end].together is together:
            end += 1
        if together is None or end - start == 1:
            yield batch[start].run, None
        else:
            yield _call_together(batch[start:end]), end - start
        start = end


def _call_together(jobs: Sequence[_Job]) -> Callable[[Connection], Any]:
    together, context = jobs[0].together, jobs[0].context
    assert together is not None and context is not None
    items = [job.item for job in jobs]
    return lambda connection: context.run(together, connection, items)


def _stopped() -> StorageUnavailable:
    return StorageUnavailable("the writer has stopped; retry later")


class TransactionAborted(RuntimeError):
    """An operation caught a database error and carried on, and the driver's transaction can no
    longer commit what it holds: a bug in that operation, never to be reported as success."""


def _run_checked(run: Callable[[Connection], Any], connection: Connection) -> Any:
    """The operation's result, or TransactionAborted when the transaction broke under it:
    checked before anything else runs in that transaction (on SQLite, a statement run after
    the transaction ended would commit on its own)."""
    result = run(connection)
    if not _can_commit(connection):
        raise TransactionAborted("an operation carried on after its transaction was aborted")
    return result


def _can_commit(connection: Connection) -> bool:
    """False when COMMIT would succeed having saved nothing, or not all of it atomically:
    PostgreSQL aborted the transaction at an error (and turns COMMIT into ROLLBACK), or the
    transaction ended under the operation (SQLite rolled it back by itself, after a full disk
    for one; or a stray COMMIT: on the writer's connection, in psycopg's autocommit mode, what
    followed it committed statement by statement)."""
    raw = connection.connection.dbapi_connection
    if isinstance(raw, sqlite3.Connection):
        return raw.in_transaction
    psycopg = _psycopg()
    if psycopg is not None and isinstance(raw, psycopg.Connection):
        return bool(raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS)
    return True


def _psycopg() -> Any:
    """psycopg if it is in use: it is imported only with a PostgreSQL URL (an optional extra)."""
    return sys.modules.get("psycopg")


def _connection_lost(error: Exception) -> bool:
    # Driver errors too: the savepoint statements go straight to the driver.
    psycopg = _psycopg()
    if isinstance(error, sqlite3.OperationalError) or (
        psycopg is not None and isinstance(error, psycopg.OperationalError)
    ):
        return True
    return isinstance(error, OperationalError | PoolTimeout) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def _as_caller_error(error: Exception) -> Exception:
    """Domain errors go to the caller as they are; database trouble becomes UNAVAILABLE, which
    says whether the change may have been saved (a failed COMMIT) or surely was not."""
    if isinstance(error, _CommitFailed):
        cause = error.__cause__
        if not isinstance(cause, Exception) or not _connection_lost(cause):
            # The database answered, refusing the commit: nothing was saved.
            return _as_caller_error(cause) if isinstance(cause, Exception) else error
        unknown = StorageUnavailable(
            "the commit failed: the change may or may not have been saved; retry with the "
            "same request_id",
            outcome_unknown=True,
        )
        unknown.__cause__ = error.__cause__
        return unknown
    if isinstance(error, ResinkitError):
        return error
    if _connection_lost(error):
        unavailable = StorageUnavailable("the database is unavailable; retry later")
        unavailable.__cause__ = error
        return unavailable
    return error


def _settle(batch: list[_Job], outcomes: list[Any]) -> None:
    """Answers the callers, with one wake-up of each event loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for job, outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, outcome))
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:  # on the caller's loop
    for future, outcome in answers:
        if future.done():  # the caller went away
            continue
        if isinstance(outcome, StopIteration):  # a future refuses it, and the rest would wait
            outcome = RuntimeError(f"a write operation raised {outcome!r}")
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
