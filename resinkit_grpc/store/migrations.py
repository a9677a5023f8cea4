"""Boot-time migration: bring the database to this code's Alembic head, or refuse to start.

On SQLite it runs inside one write transaction, which holds the write lock (BEGIN IMMEDIATE);
on PostgreSQL under a session-level advisory lock (a revision may build an index CONCURRENTLY
outside any transaction). Either way replicas booting together migrate once while the others
wait, then find the database at head. Other processes may keep serving on the database
meanwhile (see migrate).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

import resinkit_grpc
from alembic import command

log = logging.getLogger(__name__)

# Any constant shared by every replica; it names the migration lock in pg_locks.
MIGRATION_LOCK_KEY = 0x7265_736B_6D69_67  # "reskmig"
# PostgreSQL: how long one attempt waits for a table lock before it gives way. A request for an
# ACCESS EXCLUSIVE lock blocks every later query on the table while it waits, so serving
# replicas are held up at most this long at a time.
MIGRATION_LOCK_TIMEOUT_MS = 2000
# How long boot keeps trying while another process holds the database.
BOOT_WAIT_SECONDS = 600.0


class SchemaTooNew(RuntimeError):
    """The database was migrated by newer code than this server's."""


def script_location() -> Path:
    package = Path(resinkit_grpc.__file__).parent
    installed = package / "migrations"  # inside a wheel
    return installed if (installed / "env.py").exists() else package.parent / "alembic"


def alembic_config(location: Path | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(location or script_location()))
    return config


class MigrationBroken(RuntimeError):
    """A migration left rows that break a foreign key; it was rolled back."""


def migrate(
    engine: Engine, *, location: Path | None = None, wait: float = BOOT_WAIT_SECONDS
) -> str:
    """Upgrades the database to head; returns the revision it is at afterwards.

    Safe beside serving processes: while another process holds the database (SQLite's write
    lock, or a PostgreSQL table lock this migration needs), it waits and tries again, for up to
    `wait` seconds, instead of failing the boot; and on PostgreSQL it gives way after
    MIGRATION_LOCK_TIMEOUT_MS each time, so that serving replicas queued behind its lock
    request wait at most that long."""
    config = alembic_config(location)
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            return _migrate_once(engine, config)
        except OperationalError as error:
            if not _lock_wait(error) or time.monotonic() + delay > deadline:
                raise
            log.info("the database is busy (a lock another process holds); migrating again")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _migrate_once(engine: Engine, config: Config) -> str:
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            _migrate_sqlite(connection, config)
        else:
            _migrate_postgresql(connection, config)
    return ", ".join(sorted(ScriptDirectory.from_config(config).get_heads()))


def _migrate_sqlite(connection: Connection, config: Config) -> None:
    """In one transaction holding the write lock (BEGIN IMMEDIATE), following SQLite's
    documented procedure for schema changes: foreign keys off outside the transaction (batch
    mode rebuilds a table by dropping it, which would cascade into the rows that refer to it),
    checked before commit, on again after."""
    # Through the driver: SQLAlchemy would begin a transaction first, and inside one the
    # pragma does nothing.
    _raw(connection).execute("PRAGMA foreign_keys = OFF")
    try:
        with connection.begin():
            if _upgrade_if_behind(connection, config):
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise MigrationBroken(
                        f"the migration left {len(broken)} rows breaking a foreign key "
                        f"(first in table {broken[0][0]}); nothing was changed"
                    )
    finally:
        _raw(connection).execute("PRAGMA foreign_keys = ON")


def _migrate_postgresql(connection: Connection, config: Config) -> None:
    """Under a session-level advisory lock, so that replicas booting together migrate once;
    session-level because a revision may leave the transaction to build an index
    CONCURRENTLY (op.get_context().autocommit_block()), and the lock must hold through it.
    Alembic's environment runs the revisions in a transaction of its own."""
    # Waiting for another replica's migration is unbounded; the migration's own lock waits
    # are not (see migrate); index builds may take long.
    connection.exec_driver_sql("SET lock_timeout = 0")
    connection.exec_driver_sql("SET statement_timeout = 0")
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.exec_driver_sql(f"SET lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}")
    connection.commit()
    try:
        _upgrade_if_behind(connection, config)
        connection.commit()
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # Back to the bounds ordinary statements get (engine.POSTGRES_CONNECT_ARGS).
        connection.exec_driver_sql("RESET lock_timeout")
        connection.exec_driver_sql("RESET statement_timeout")
        connection.commit()


def _upgrade_if_behind(connection: Connection, config: Config) -> bool:
    """Upgrades to head unless the database is there; whether it did. A revision this code
    does not know is SchemaTooNew."""
    heads = set(ScriptDirectory.from_config(config).get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
    unknown = current - known
    if unknown:
        raise SchemaTooNew(
            f"the database is at revision {', '.join(sorted(unknown))}, which this server does "
            f"not know (its newest is {', '.join(sorted(heads))}): deploy newer code"
        )
    if current == heads:
        return False
    log.info("migrating database from %s to %s", sorted(current) or "empty", sorted(heads))
    if connection.dialect.name == "postgresql":
        connection.commit()  # the revisions run in the environment's own transaction
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return True


def _raw(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _lock_wait(error: OperationalError) -> bool:
    """Whether the error is a lock held by another process: SQLite busy, or PostgreSQL's
    lock_timeout (SQLSTATE 55P03)."""
    cause = error.orig
    return getattr(cause, "sqlstate", None) == "55P03" or (
        getattr(cause, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED")
        or "database is locked" in str(cause)
    )


class SchemaBehind(RuntimeError):
    """The database is older than this code's schema, and the command does not migrate."""


def require_head(engine: Engine, *, location: Path | None = None) -> None:
    """Raises SchemaBehind (or SchemaTooNew) unless the database is at this code's head: for
    commands that use the database but leave migrating to `serve` and `migrate`."""
    config = alembic_config(location)
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    with engine.connect() as connection:
        # Read straight from the table: a MigrationContext would log its set-up at INFO.
        current = set()
        if inspect(connection).has_table("alembic_version"):
            current = set(
                connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )
    if current == heads:
        return
    unknown = current - {rev.revision for rev in script.walk_revisions()}
    if unknown:
        raise SchemaTooNew(
            f"the database is at revision {', '.join(sorted(unknown))}, which this version "
            f"does not know (its newest is {', '.join(sorted(heads))}): use newer code"
        )
    raise SchemaBehind(
        f"the database is at revision {', '.join(sorted(current)) or 'none'}, this version "
        f"needs {', '.join(sorted(heads))}: run `resinkit-grpc migrate` first"
    )
