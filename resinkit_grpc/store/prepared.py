"""Prepared: a hot statement compiled once and, on SQLite, run straight through the driver.

SQLAlchemy's execution of a cached statement still builds an execution context per call
(parameter set-up, result metadata, events, cursor bookkeeping): about 20 µs, several times
what SQLite takes to answer a point read or write a row. On the hot paths that cost is most of
an operation (an UpdateTaskStatus spent 60 of its 84 µs there), and the writer pays it while
holding the GIL the event loop needs.

So on SQLite a Prepared statement is compiled once by SQLAlchemy for the connection's dialect,
and each call binds its values with the columns' own bind processors, runs the SQL on the
driver's connection (inside whatever transaction SQLAlchemy began), and converts a row with the
columns' own result processors: the SQL, the types and the transaction stay SQLAlchemy's. Driver
errors are raised as SQLAlchemy's exceptions, as from Connection.execute. Other dialects run
the statement through Connection.execute unchanged: there the network round trip dominates.

Unlike SQLAlchemy's execution: NULLs skip the processors (every column type here maps None to
None), a statement binds every parameter it was compiled with (an INSERT names all its
columns), IN-list parameters are refused, and engine events and echo do not see the statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Select, Update
from sqlalchemy.exc import DBAPIError

from resinkit_grpc.store.engine import AUTOCOMMIT

Processor = Callable[[Any], Any] | None
Statement = Select[Any] | Insert | Update


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters, in the driver's (positional) order
    binds: tuple[Processor, ...]
    columns: tuple[tuple[str, Processor], ...]  # a SELECT's columns: key, result processor


class Prepared:
    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Runs a DML statement; returns the driver's rowcount."""
        if connection.dialect.name != "sqlite":
            return connection.execute(self.statement, dict(params)).rowcount
        cursor = self._run(connection, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def first(self, connection: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Runs a SELECT; returns its first row as column key -> value, or None."""
        if connection.dialect.name != "sqlite":
            row = connection.execute(self.statement, dict(params)).first()
            return None if row is None else row._asdict()
        compiled = self._compiled(connection.dialect)
        cursor = self._run(connection, params)
        try:
            row = cursor.fetchone()
        except sqlite3.Error as error:
            raise _wrapped(error, compiled, params, connection.dialect) from error
        finally:
            cursor.close()
        if row is None:
            return None
        return {
            key: value if value is None or process is None else process(value)
            for (key, process), value in zip(compiled.columns, row, strict=True)
        }

    def _run(self, connection: Connection, params: Mapping[str, Any]) -> sqlite3.Cursor:
        compiled = self._compiled(connection.dialect)
        values = [
            value if value is None or process is None else process(value)
            for value, process in zip(
                (params[name] for name in compiled.names), compiled.binds, strict=True
            )
        ]
        if not connection.in_transaction() and not connection.info.get(AUTOCOMMIT):
            connection.begin()  # what SQLAlchemy's autobegin would do (BEGIN)
        raw = connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        try:
            return raw.execute(compiled.sql, values)
        except sqlite3.Error as error:
            raise _wrapped(error, compiled, params, connection.dialect) from error

    def _compiled(self, dialect: Dialect) -> _Compiled:
        if self._sqlite is None:
            compiled = self.statement.compile(dialect=dialect)
            if any(bind.expanding for bind in compiled.binds.values()):
                raise ValueError("a Prepared statement cannot take IN-list parameters")
            names = tuple(compiled.positiontup or ())
            binds = tuple(
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in names
            )
            columns = tuple(
                (str(column.key), column.type.dialect_impl(dialect).result_processor(dialect, None))
                for column in (
                    self.statement.selected_columns if isinstance(self.statement, Select) else ()
                )
            )
            self._sqlite = _Compiled(compiled.string, names, binds, columns)
        return self._sqlite


def _wrapped(
    error: sqlite3.Error, compiled: _Compiled, params: Mapping[str, Any], dialect: Dialect
) -> BaseException:
    """The driver's error as SQLAlchemy's exception class for it (OperationalError, ...)."""
    return DBAPIError.instance(
        compiled.sql, dict(params), error, sqlite3.Error, hide_parameters=True, dialect=dialect
    )
