"""Engines per dialect: SQLite pragmas and transaction modes, PostgreSQL pools."""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from resinkit_grpc.config import Settings


class DatabaseURLError(ValueError):
    """The database URL cannot be used; the message is one line for the operator."""


SUPPORTED_DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}


def parse_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise DatabaseURLError(f"cannot parse database URL {raw!r}") from exc
    drivers = SUPPORTED_DRIVERS.get(url.get_backend_name())
    if drivers is None or url.get_driver_name() not in drivers:
        raise DatabaseURLError(
            f"unsupported database URL {url.render_as_string(hide_password=True)!r}: "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise DatabaseURLError("an in-memory SQLite database cannot be shared: give a file path")
    return url


def create_engines(settings: Settings) -> tuple[Engine, Engine]:
    """Returns (writer, reader) engines for the configured database."""
    url = parse_url(settings.database_url)
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url, settings, immediate=True), _sqlite_engine(
                url, settings, immediate=False
            )
        return (
            _postgres_engine(url, settings, writer=True),
            _postgres_engine(url, settings, writer=False),
        )
    except NoSuchModuleError as exc:  # pragma: no cover - guarded by parse_url
        raise DatabaseURLError(f"no driver for {url.drivername}") from exc
    except ImportError as exc:
        raise DatabaseURLError(
            "PostgreSQL needs its driver: pip install 'resinkit-grpc[postgresql]'"
        ) from exc


UNICODE_LOWER = "unicode_lower"
# Set in a connection's info: its statements run without BEGIN, each one atomic on its own.
AUTOCOMMIT = "resinkit_autocommit"


def unbegun(connection: Connection) -> Any:
    """The psycopg connection under `connection` when it begins no transaction by itself
    (autocommit mode: the group writer's) and is outside any: a transaction on it must start
    with an explicit BEGIN. None otherwise (psycopg begins one itself, or one is open; SQLite)."""
    psycopg = sys.modules.get("psycopg")  # loaded only with a PostgreSQL URL
    raw = connection.connection.driver_connection
    if psycopg is None or not isinstance(raw, psycopg.Connection) or not raw.autocommit:
        return None
    return raw if raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE else None


def describe(error: BaseException) -> str:
    """An error as it may be logged: its type and, for a driver error, the database's code,
    never its message (drivers quote statements, values and server messages there)."""
    cause = getattr(error, "orig", None) or error
    kind = type(error).__qualname__
    if cause is not error:
        kind += f" from {type(cause).__module__.split('.')[0]}.{type(cause).__qualname__}"
    code = getattr(cause, "sqlstate", None) or getattr(cause, "sqlite_errorname", None)
    return f"{kind} ({code})" if code else kind


def fold(value: Any) -> Any:
    """A name as name_contains compares it: Python's Unicode lower case (SQL's UNICODE_LOWER)."""
    return value.lower() if isinstance(value, str) else value


def register_functions(dbapi_connection: Any) -> None:
    """The SQL functions this service's SQLite statements use, on one sqlite3 connection."""
    # SQLite's own lower() and LIKE fold ASCII only; name_contains is case-insensitive for
    # every script, as on PostgreSQL.
    dbapi_connection.create_function(UNICODE_LOWER, 1, fold, deterministic=True)


def _null(value: None) -> None:
    return value


def _sqlite_engine(url: URL, settings: Settings, *, immediate: bool) -> Engine:
    # The driver binds None as it would a type it does not know: a look-up among its adapters,
    # then __adapt__ and __conform__ (failed attribute look-ups), about 0.7 µs per None; a new
    # task's row binds ten, its event two. An adapter for None makes that one dictionary
    # look-up (None still binds as NULL). Process-wide, and the same for every connection.
    sqlite3.register_adapter(type(None), _null)
    engine = create_engine(
        url,
        # Errors never quote what a caller sent (or the page-token secret) into logs.
        hide_parameters=True,
        # Readers: one connection per read thread, and one for reads on the event loop.
        pool_size=1 if immediate else settings.read_threads + 1,
        max_overflow=0,
        pool_pre_ping=False,
    )
    busy_ms = int(settings.sqlite_busy_timeout * 1000)
    synchronous = settings.sqlite_synchronous

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours
        # (SQLAlchemy's documented recipe for pysqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()
        register_functions(dbapi_connection)

    # A writer takes the write lock when its transaction begins, never half-way through: a
    # deferred transaction that reads first and upgrades later fails at once with "database is
    # locked" when another process writes, without waiting for busy_timeout.
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if not connection.info.get(AUTOCOMMIT):
            connection.exec_driver_sql(begin)

    return engine


# Bounds on every wait, so that a stuck replica or a vanished peer turns into UNAVAILABLE
# instead of a call that never returns: lock waits (the event-append lock included), single
# statements, and dead TCP peers (keepalives).
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    # Sessions in UTC whatever the server's or database's TimeZone: timestamps near the ends of
    # the range (0001-01-01, 9999-12-31) would otherwise not convert back to Python.
    "options": "-c lock_timeout=10000 -c statement_timeout=60000 -c TimeZone=UTC",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "connect_timeout": 10,
}


def _postgres_engine(url: URL, settings: Settings, *, writer: bool) -> Engine:
    # One connection per thread that uses the pool: the writer's, or one per read thread.
    # The writer's: pre_ping replaces a connection the server dropped (restart,
    # pg_terminate_backend) when the writer takes one. Readers' run in autocommit: under READ
    # COMMITTED each statement has a snapshot of its own in a transaction or not, so BEGIN and
    # the ROLLBACK that returned it to the pool were two round trips for nothing, and so was
    # the ping (a SELECT 1 before every read); a read that meets a dropped connection is run
    # once more on a new one instead (Database._run).
    return create_engine(
        url,
        hide_parameters=True,
        pool_size=1 if writer else settings.read_threads,
        max_overflow=0,
        pool_pre_ping=writer,
        pool_timeout=settings.pool_timeout,
        connect_args=POSTGRES_CONNECT_ARGS,
        **({} if writer else {"isolation_level": "AUTOCOMMIT"}),
    )
