"""LoopReader: SQLite reads run right on the event loop, under a time budget.

A hop to a read thread and back costs more than most reads do: CPU for the futures, and GIL
hand-offs between the two threads on every call. So a SQLite read first runs here, on one
connection of the event loop's own, while SQLite's progress handler watches the clock. A read
that takes longer than the budget (a scan through many rows) is interrupted, and a read that
finds the database busy fails at once (busy_timeout 0); either has changed nothing, and the
caller runs it on a read thread instead, where it may take as long as it needs. SQLite never
holds the event loop for much longer than the budget.

Statements run without BEGIN, each a snapshot of its own: every read operation of the store is
correct under per-statement snapshots, as it must be for PostgreSQL's READ COMMITTED anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from resinkit_grpc.store.engine import AUTOCOMMIT

# The progress handler looks at the clock every STEP virtual-machine instructions (well under
# a tenth of a millisecond).
STEP = 500


class OverBudget(Exception):
    """The read was interrupted (too long) or refused (busy): run it on a read thread."""

    def __init__(self, *, slow: bool) -> None:
        super().__init__()
        self.slow = slow  # it ran out of time (not: the database was busy)


class LoopReader:
    def __init__(self, engine: Engine, budget_seconds: float) -> None:
        self._budget = budget_seconds
        self._deadline = 0.0
        self._connection = engine.connect()
        self._connection.exec_driver_sql("PRAGMA busy_timeout = 0")
        self._connection.commit()
        self._connection.info[AUTOCOMMIT] = True
        raw = self._connection.connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(self._progress, STEP)

    def _progress(self) -> int:
        return 1 if time.perf_counter() > self._deadline else 0  # non-zero interrupts

    def run(self, operation: Callable[[Connection], Any]) -> Any:
        """The operation's result, or OverBudget."""
        self._deadline = time.perf_counter() + self._budget
        try:
            return operation(self._connection)
        except OperationalError as error:
            raise OverBudget(slow=time.perf_counter() > self._deadline) from error
        finally:
            self._connection.rollback()  # SQLAlchemy's bookkeeping only: no SQL was begun

    def close(self) -> None:
        self._connection.close()
