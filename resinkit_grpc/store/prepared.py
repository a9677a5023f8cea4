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
the statement through Connection.execute unchanged, except on PostgreSQL `returned`, which
takes the same path through psycopg: CreateTask's one statement, run by the writer while it
holds the event-append lock, where SQLAlchemy's execution cost about 140 µs of the GIL per
call (measured: 300 µs against 155 µs through the driver); and `execute_many` /
`returned_many` of an INSERT, sent as one `INSERT ... SELECT * FROM unnest(...)` of one array
per column (see _unnest_compiled).

IN-list (expanding) parameters are written out as SQLAlchemy writes them, one placeholder per
value, and each length of list gets its SQL built once.

Many rows of an INSERT (execute_many) go in as few multi-row INSERTs (`VALUES (...), (...)`):
the driver's executemany runs the statement once per row, and each run adds about half of
what writing the row costs (tasks of a 100-task batch: 50 against 35 µs each, in CPU time),
and releases and wins back the GIL. Chunks have power-of-two sizes, so that any number of rows
takes a handful of SQL texts (the driver's statement cache keeps them compiled).

Unlike SQLAlchemy's execution: NULLs skip the processors (every column type here maps None to
None), a statement binds every parameter it was compiled with (an INSERT names all its
columns), an IN list must not be empty (SQLAlchemy writes an empty one as a different
expression), a failing execute_many keeps none of the rows of its failing chunk (every caller
gives up its transaction or savepoint then), and engine events and echo do not see the
statements (DRIVER_PATH.on = False sends every statement through SQLAlchemy, for tracing).
"""

from __future__ import annotations

import dataclasses
import operator
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, Insert, Select, Update
from sqlalchemy.exc import DBAPIError

from resinkit_grpc.store.engine import AUTOCOMMIT

T = TypeVar("T")
Processor = Callable[[Any], Any] | None
# The most IN-list length combinations whose SQL a statement keeps.
MAX_EXPANDED = 256
# Rows per multi-row INSERT at most (fewer when the statement's columns would pass SQLite's
# limit on parameters).
MAX_ROWS_PER_INSERT = 512
_MISSING = object()
# A placeholder as psycopg's dialect writes it, with the cast it may add: %(name)s::VARCHAR.
_PLACEHOLDER = r"%\((\w+)\)s(?:::[A-Z][A-Z0-9_ ]*(?:\(\d+\))?)?"
_PYFORMAT = re.compile(_PLACEHOLDER)
# An INSERT of one VALUES row of placeholders only, and what comes before and after that row.
_ONE_ROW_INSERT = re.compile(
    rf"(?P<head>INSERT INTO .*?) VALUES "
    rf"\((?P<row>{_PLACEHOLDER}(?:, {_PLACEHOLDER})*)\)(?P<tail>.*)",
    re.DOTALL,
)
Statement = Select[Any] | Insert | Update


class _DriverPath:
    """Whether SQLite statements may skip SQLAlchemy's execution. Off while statements are
    traced (observe/tracing.py): the tracing listens to SQLAlchemy's engine events."""

    on = True


DRIVER_PATH = _DriverPath()


@dataclass(frozen=True)
class _Compiled:
    sql: str  # IN lists still as SQLAlchemy's __[POSTCOMPILE_name] tokens
    names: tuple[str, ...]  # the parameters, in the driver's (positional) order
    binds: tuple[Processor, ...]
    defaults: Mapping[str, Any]  # values the statement carries itself (e.g. OFFSET 0)
    expanding: frozenset[str]  # the IN-list parameters
    keys: tuple[str, ...]  # a SELECT's column keys
    results: tuple[tuple[int, str, Callable[[Any], Any]], ...]  # index, key, result processor
    # An INSERT of one VALUES row of placeholders: the SQL around that row, for multi-row
    # INSERTs; None for any other statement.
    values_row: tuple[str, str, str] | None = None
    # The SQL for each combination of IN-list lengths (in `names` order).
    expanded_sql: dict[tuple[int, ...], str] = field(default_factory=dict)
    # A multi-row INSERT's SQL for each number of rows.
    rows_sql: dict[int, str] = field(default_factory=dict)


class Prepared:
    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None
        self._postgresql: _Compiled | None = None
        self._unnest_sql: _Compiled | None = None
        self._unnest_known = False

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Runs a DML statement; returns the driver's rowcount."""
        if not DRIVER_PATH.on or connection.dialect.name != "sqlite":
            return connection.execute(self.statement, dict(params)).rowcount
        cursor = self._run(connection, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Runs a DML statement (no IN lists) once per row; returns the driver's rowcount (the
        rows it changed, on SQLite and for an INSERT on PostgreSQL). An INSERT goes in as
        multi-row INSERTs on SQLite, as one INSERT ... SELECT FROM unnest(...) on PostgreSQL,
        in row order."""
        if DRIVER_PATH.on and connection.dialect.name == "postgresql" and rows:
            unnest = self._unnest_compiled(connection.dialect)
            if unnest is not None:
                return len(self._unnest(connection, unnest, rows, fetch=False))
        if not DRIVER_PATH.on or connection.dialect.name != "sqlite":
            return connection.execute(self.statement, [dict(row) for row in rows]).rowcount
        compiled = self._compiled(connection.dialect)
        values = _bound_rows(compiled, rows)
        if not connection.in_transaction() and not connection.info.get(AUTOCOMMIT):
            connection.begin()
        raw = connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        sql = compiled.sql
        try:
            if compiled.values_row is None:
                return int(raw.executemany(sql, values).rowcount)
            width = len(compiled.names)
            limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            most = min(MAX_ROWS_PER_INSERT, limit // width)
            changed, start = 0, 0
            while start < len(values):
                size = 1 << (min(len(values) - start, most).bit_length() - 1)
                sql = _rows_sql(compiled, size)
                chunk = values[start : start + size]
                changed += raw.execute(sql, [value for row in chunk for value in row]).rowcount
                start += size
            return changed
        except sqlite3.Error as error:
            raise _wrapped(error, compiled, {}, connection.dialect) from error

    def returned_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Runs an INSERT ... RETURNING for many rows (in order); returns the first column of
        each row it returned (fewer than `rows` when ON CONFLICT DO NOTHING skipped some)."""
        if DRIVER_PATH.on and connection.dialect.name == "postgresql" and rows:
            unnest = self._unnest_compiled(connection.dialect)
            if unnest is not None:
                returned = self._unnest(connection, unnest, rows, fetch=True)
                process = next((p for index, _, p in unnest.results if index == 0), None)
                if process is None:
                    return [row[0] for row in returned]
                return [None if row[0] is None else process(row[0]) for row in returned]
        result = connection.execute(self.statement, [dict(row) for row in rows])
        return list(result.scalars().all())

    def _unnest_compiled(self, dialect: Dialect) -> _Compiled | None:
        """For an INSERT of one VALUES row: the same INSERT taking its rows from unnest() of
        one array parameter per column (one short SQL text for any number of rows, which
        psycopg parses once and PostgreSQL prepares, where a multi-row VALUES text of a batch
        is long and new: psycopg's parse of it was a third of the writer's time); else None."""
        if not self._unnest_known:
            self._unnest_known = True
            if isinstance(self.statement, Insert):
                compiled = self.statement.compile(dialect=dialect)
                whole = _ONE_ROW_INSERT.fullmatch(compiled.string)
                if whole is not None:
                    head, row, tail = whole.group("head", "row", "tail")
                    names = tuple(_PYFORMAT.findall(row))
                    # Each array as its column's type without length or precision: an
                    # explicit cast to VARCHAR(16) cuts a longer value short where the INSERT's
                    # own assignment to the column refuses it, as SQLAlchemy's INSERT would.
                    arrays = ", ".join(
                        f"%({name})s::{_unsized(compiled.binds[name].type, dialect)}[]"
                        for name in names
                    )
                    base = self._postgresql_compiled(dialect)
                    self._unnest_sql = dataclasses.replace(
                        base,
                        sql=f"{head} SELECT * FROM unnest({arrays}){tail}",
                        names=names,
                        binds=tuple(
                            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                            for name in names
                        ),
                    )
        return self._unnest_sql

    def _unnest(
        self,
        connection: Connection,
        compiled: _Compiled,
        rows: Sequence[Mapping[str, Any]],
        *,
        fetch: bool,
    ) -> list[tuple[Any, ...]]:
        """Runs the unnest INSERT with `rows`; its RETURNING rows when `fetch`, else one
        placeholder per row it inserted."""
        columns = list(zip(*_bound_rows(compiled, rows), strict=True))
        params = {name: list(values) for name, values in zip(compiled.names, columns, strict=True)}
        return _run_postgresql(connection, compiled.sql, params, fetch=fetch)

    def returned(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """Runs a statement that returns at most one row (a DML statement's RETURNING, say);
        returns its first column, or None when it returned no row."""
        if DRIVER_PATH.on and connection.dialect.name == "postgresql":
            return self._returned_postgresql(connection, params)
        if not DRIVER_PATH.on or connection.dialect.name != "sqlite":
            return connection.execute(self.statement, dict(params)).scalar()
        row = self.first(connection, params)
        return None if row is None else next(iter(row.values()))

    def _returned_postgresql(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        compiled = self._postgresql_compiled(connection.dialect)
        values = {
            name: value if value is None or process is None else process(value)
            for name, process in zip(compiled.names, compiled.binds, strict=True)
            for value in (params[name] if name in params else compiled.defaults[name],)
        }
        rows = _run_postgresql(connection, compiled.sql, values, fetch=True)
        if not rows:
            return None
        value = rows[0][0]
        for index, _key, process in compiled.results:
            if index == 0 and value is not None:
                value = process(value)
        return value

    def _postgresql_compiled(self, dialect: Dialect) -> _Compiled:
        if self._postgresql is None:
            compiled = self.statement.compile(dialect=dialect)
            if any(bind.expanding for bind in compiled.binds.values()):
                raise ValueError("a Prepared statement with IN lists cannot run on PostgreSQL")
            names = tuple(compiled.binds)
            # A SELECT's columns, or what a DML statement RETURNs.
            columns = tuple(self.statement.exported_columns)
            self._postgresql = _Compiled(
                sql=compiled.string,
                names=names,
                binds=tuple(
                    compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                    for name in names
                ),
                defaults={
                    name: bind.value for name, bind in compiled.binds.items() if not bind.required
                },
                expanding=frozenset(),
                keys=(),
                results=tuple(
                    (index, str(column.key), process)
                    for index, column in enumerate(columns)
                    for process in (
                        column.type.dialect_impl(dialect).result_processor(dialect, None),
                    )
                    if process is not None
                ),
            )
        return self._postgresql

    def first(self, connection: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Runs a SELECT; returns its first row as column key -> value, or None."""
        if not DRIVER_PATH.on or connection.dialect.name != "sqlite":
            row = connection.execute(self.statement, dict(params)).first()
            return None if row is None else row._asdict()
        row = self._fetch(connection, params, sqlite3.Cursor.fetchone)
        return None if row is None else _record(self._compiled(connection.dialect), row)

    def all(self, connection: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Runs a SELECT; returns every row as column key -> value."""
        if not DRIVER_PATH.on or connection.dialect.name != "sqlite":
            result = connection.execute(self.statement, dict(params))
            keys = tuple(result.keys())  # once: Row._asdict() works them out on every row
            return [dict(zip(keys, row, strict=True)) for row in result.all()]
        rows = self._fetch(connection, params, sqlite3.Cursor.fetchall)
        compiled = self._compiled(connection.dialect)
        return [_record(compiled, row) for row in rows]

    def _fetch(
        self, connection: Connection, params: Mapping[str, Any], fetch: Callable[[Any], T]
    ) -> T:
        """Runs the statement on SQLite and fetches its rows with `fetch(cursor)`."""
        cursor = self._run(connection, params)
        try:
            return fetch(cursor)
        except sqlite3.Error as error:
            compiled = self._compiled(connection.dialect)
            raise _wrapped(error, compiled, params, connection.dialect) from error
        finally:
            cursor.close()

    def _run(self, connection: Connection, params: Mapping[str, Any]) -> sqlite3.Cursor:
        compiled = self._compiled(connection.dialect)
        sql, values, lengths = compiled.sql, list[Any](), list[int]()
        for name, process in zip(compiled.names, compiled.binds, strict=True):
            value = params[name] if name in params else compiled.defaults[name]
            if name in compiled.expanding:
                if not value:
                    raise ValueError(f"a Prepared statement needs values in the IN list {name!r}")
                lengths.append(len(value))
                values.extend(
                    value if process is None else (None if v is None else process(v) for v in value)
                )
            else:
                values.append(value if value is None or process is None else process(value))
        if lengths:
            sql = _expanded(compiled, tuple(lengths))
        if not connection.in_transaction() and not connection.info.get(AUTOCOMMIT):
            connection.begin()  # what SQLAlchemy's autobegin would do (BEGIN)
        raw = connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        try:
            return raw.execute(sql, values)
        except sqlite3.Error as error:
            raise _wrapped(error, compiled, params, connection.dialect) from error

    def _compiled(self, dialect: Dialect) -> _Compiled:
        if self._sqlite is None:
            compiled = self.statement.compile(dialect=dialect)
            names = tuple(compiled.positiontup or ())
            binds = tuple(
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in names
            )
            columns = [
                (str(column.key), column.type.dialect_impl(dialect).result_processor(dialect, None))
                # A SELECT's columns, or what a DML statement RETURNs.
                for column in self.statement.exported_columns
            ]
            self._sqlite = _Compiled(
                sql=compiled.string,
                values_row=_values_row(compiled.string, len(names))
                if isinstance(self.statement, Insert)
                else None,
                names=names,
                binds=binds,
                defaults={
                    name: bind.value
                    for name, bind in compiled.binds.items()
                    if not bind.required and not bind.expanding
                },
                expanding=frozenset(name for name in names if compiled.binds[name].expanding),
                keys=tuple(key for key, _ in columns),
                results=tuple(
                    (index, key, process)
                    for index, (key, process) in enumerate(columns)
                    if process is not None
                ),
            )
        return self._sqlite


def _unsized(type_: Any, dialect: Dialect) -> str:
    """A column type's SQL without its length or precision: VARCHAR(16) -> VARCHAR."""
    return re.sub(r"\s*\([^)]*\)", "", type_.compile(dialect=dialect))


def _run_postgresql(
    connection: Connection, sql: str, params: Mapping[str, Any], *, fetch: bool
) -> list[tuple[Any, ...]]:
    """Runs `sql` through psycopg inside SQLAlchemy's transaction; the rows it returned when
    `fetch` (none unless it returns rows), else one empty tuple per row it changed. Driver
    errors are raised as SQLAlchemy's, a lost connection marked invalidated."""
    import psycopg  # imported already: the connection is psycopg's

    if not connection.in_transaction():
        connection.begin()  # SQLAlchemy's autobegin (psycopg sends BEGIN itself)
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        with raw.cursor() as cursor:
            cursor.execute(sql, params)
            if not fetch:
                return [()] * max(cursor.rowcount, 0)
            return cursor.fetchall() if cursor.pgresult and cursor.pgresult.ntuples else []
    except psycopg.Error as error:
        dbapi_error: Any = error
        lost = connection.dialect.is_disconnect(
            dbapi_error, connection.connection.dbapi_connection, None
        )
        raise DBAPIError.instance(
            sql,
            {},
            error,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=connection.dialect,
        ) from error


def _bound_rows(compiled: _Compiled, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Each row's values in the driver's order, through the columns' bind processors."""
    names = compiled.names
    # itemgetter of one name gives the value itself, not a tuple of it.
    pick = operator.itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    processed = [(index, process) for index, process in enumerate(compiled.binds) if process]
    # Rows of one batch share values (its timestamp, its type): each is processed once.
    done: dict[tuple[int, int], Any] = {}
    values = []
    for row in rows:
        out = list(pick(row))
        for index, process in processed:
            value = out[index]
            if value is not None:
                key = (index, id(value))
                bound = done.get(key, _MISSING)
                if bound is _MISSING:
                    bound = done[key] = process(value)
                out[index] = bound
        values.append(out)
    return values


def _values_row(sql: str, width: int) -> tuple[str, str, str] | None:
    """An INSERT's SQL split around its one VALUES row of `width` placeholders, or None when
    it is not written so (INSERT ... SELECT, literal values)."""
    row = "(" + ", ".join("?" * width) + ")"
    head, found, tail = sql.partition(" VALUES " + row)
    if not found or row in tail:
        return None
    return head + " VALUES ", row, tail


def _rows_sql(compiled: _Compiled, count: int) -> str:
    """The multi-row INSERT of `count` rows."""
    sql = compiled.rows_sql.get(count)
    if sql is None:
        assert compiled.values_row is not None
        head, row, tail = compiled.values_row
        sql = compiled.rows_sql[count] = head + ", ".join([row] * count) + tail
    return sql


def _expanded(compiled: _Compiled, lengths: tuple[int, ...]) -> str:
    """The SQL with each IN list written out for these lengths, as SQLAlchemy writes it."""
    sql = compiled.expanded_sql.get(lengths)
    if sql is None:
        sql = compiled.sql
        expanding = (name for name in compiled.names if name in compiled.expanding)
        for name, length in zip(expanding, lengths, strict=True):
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * length), 1)
        if len(compiled.expanded_sql) < MAX_EXPANDED:  # callers choose the lengths
            compiled.expanded_sql[lengths] = sql
    return sql


def _record(compiled: _Compiled, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as column key -> value, through the columns' result processors."""
    record = dict(zip(compiled.keys, row, strict=True))
    for index, key, process in compiled.results:
        value = row[index]
        if value is not None:
            record[key] = process(value)
    return record


def _wrapped(
    error: sqlite3.Error, compiled: _Compiled, params: Mapping[str, Any], dialect: Dialect
) -> BaseException:
    """The driver's error as SQLAlchemy's exception class for it (OperationalError, ...)."""
    return DBAPIError.instance(
        compiled.sql, dict(params), error, sqlite3.Error, hide_parameters=True, dialect=dialect
    )
