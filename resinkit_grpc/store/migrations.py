"""Migrations: at boot (the database to this code's Alembic head, or refuse to start), or as an
operator's step (`resinkit-grpc migrate upgrade|downgrade|current|history`).

On SQLite it runs inside one write transaction, which holds the write lock (BEGIN IMMEDIATE);
on PostgreSQL under a session-level advisory lock (a revision may build an index CONCURRENTLY
outside any transaction). Either way replicas booting together migrate once while the others
wait, then find the database at head. Other processes may keep serving on the database
meanwhile (see migrate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

import resinkit_grpc
from alembic import command
from resinkit_grpc.store.filter_indexes import SQLITE_BACKFILL, SQLITE_TRIGGERS

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


class MigrationRefused(RuntimeError):
    """The revision asked for is unknown, or not reachable in that direction."""


class SchemaBehind(RuntimeError):
    """The database is behind this code's head, and the server was told not to migrate it."""


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
    engine: Engine,
    *,
    target: str = "head",
    downgrade: bool = False,
    location: Path | None = None,
    wait: float = BOOT_WAIT_SECONDS,
) -> str:
    """Upgrades the database to `target` (head by default), or downgrades it to `target`
    ("base": empty); returns the revision it is at afterwards.

    Safe beside serving processes: while another process holds the database (SQLite's write
    lock, or a PostgreSQL table lock this migration needs), it waits and tries again, for up to
    `wait` seconds, instead of failing the boot; and on PostgreSQL it gives way after
    MIGRATION_LOCK_TIMEOUT_MS each time, so that serving replicas queued behind its lock
    request wait at most that long."""
    config = alembic_config(location)
    move = _Move(target, downgrade)
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            return _migrate_once(engine, config, move)
        except OperationalError as error:
            if not _lock_wait(error) or time.monotonic() + delay > deadline:
                raise
            log.info("the database is busy (a lock another process holds); migrating again")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def current(engine: Engine, *, location: Path | None = None) -> list[str]:
    """The revisions the database is at (none: empty); SchemaTooNew for one this code does not
    know."""
    config = alembic_config(location)
    with engine.connect() as connection:
        return sorted(_current(connection, ScriptDirectory.from_config(config)))


def heads(location: Path | None = None) -> list[str]:
    return sorted(ScriptDirectory.from_config(alembic_config(location)).get_heads())


def history(location: Path | None = None) -> list[tuple[str, str]]:
    """Every revision, oldest first: (revision, its one-line description)."""
    script = ScriptDirectory.from_config(alembic_config(location))
    return [
        (rev.revision, (rev.doc or "").strip()) for rev in reversed(list(script.walk_revisions()))
    ]


def require_head(engine: Engine, *, location: Path | None = None) -> str:
    """The revision, when the database is at this code's head; SchemaBehind (naming the command
    that migrates it) or SchemaTooNew otherwise. Changes nothing."""
    at, wanted = current(engine, location=location), heads(location)
    if at != wanted:
        raise SchemaBehind(
            f"the database is at revision {', '.join(at) or 'none (empty)'}, behind this "
            f"version's {', '.join(wanted)}: run `resinkit-grpc migrate upgrade` first"
        )
    return ", ".join(at)


@dataclass(frozen=True)
class _Move:
    target: str
    downgrade: bool


def _migrate_once(engine: Engine, config: Config, move: _Move) -> str:
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            _migrate_sqlite(connection, config, move)
        else:
            _migrate_postgresql(connection, config, move)
        connection.rollback()
        at = sorted(MigrationContext.configure(connection).get_current_heads())
    return ", ".join(at) or "none (empty)"


def _migrate_sqlite(connection: Connection, config: Config, move: _Move) -> None:
    """In one transaction holding the write lock (BEGIN IMMEDIATE), following SQLite's
    documented procedure for schema changes: foreign keys off outside the transaction (batch
    mode rebuilds a table by dropping it, which would cascade into the rows that refer to it),
    checked before commit, on again after."""
    # Through the driver: SQLAlchemy would begin a transaction first, and inside one the
    # pragma does nothing.
    _raw(connection).execute("PRAGMA foreign_keys = OFF")
    try:
        with connection.begin():
            moved = _apply(connection, config, move)
            # Every time (one statement): also repairs a rebuild done by hand.
            _keep_purged_ids_used(connection)
            keep_tag_triggers(connection)
            if moved:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise MigrationBroken(
                        f"the migration left {len(broken)} rows breaking a foreign key "
                        f"(first in table {broken[0][0]}); nothing was changed"
                    )
    finally:
        _raw(connection).execute("PRAGMA foreign_keys = ON")


def _keep_purged_ids_used(connection: Connection) -> None:
    """A migration that rebuilds task_events (batch mode copies the table) resets SQLite's
    AUTOINCREMENT sequence to the largest stored id, which purges may have lowered: raised back
    to the horizon, no purged event id is handed out again (a watcher at the horizon would
    never see the event that reused it). A migration that rebuilds task_events must also pass
    batch_alter_table(..., table_kwargs={"sqlite_autoincrement": True}): reflection does not
    see AUTOINCREMENT, and without it SQLite reuses the largest id once it is deleted."""
    tables = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    if {"log_horizon", "sqlite_sequence"} <= tables:
        connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = (SELECT purged_through_event_id FROM log_horizon) "
            "WHERE name = 'task_events' AND seq < (SELECT purged_through_event_id FROM log_horizon)"
        )


def keep_tag_triggers(connection: Connection) -> None:
    """A migration that rebuilds `tasks` (batch mode copies the table) drops its triggers with
    it, and task_tags would silently fall behind: when one is missing they are made again and
    task_tags is filled afresh from every task's tags."""
    names = {
        name
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')"
        )
    }
    if "task_tags" not in names or set(SQLITE_TRIGGERS) <= names:
        return
    log.warning("the triggers that keep task_tags were gone (a rebuild of tasks?): restoring")
    for name, ddl in SQLITE_TRIGGERS.items():
        connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        connection.exec_driver_sql(ddl)
    connection.exec_driver_sql("DELETE FROM task_tags")
    connection.exec_driver_sql(SQLITE_BACKFILL)


def _migrate_postgresql(connection: Connection, config: Config, move: _Move) -> None:
    """Under a session-level advisory lock, so that replicas booting together migrate once;
    session-level because a revision may leave the transaction to build an index
    CONCURRENTLY (op.get_context().autocommit_block()), and the lock must hold through it.
    Alembic's environment runs the revisions in a transaction of its own."""
    # Waiting for another replica's migration is unbounded; the migration's own lock waits
    # are not (see migrate); index builds may take long.
    connection.exec_driver_sql("SET lock_timeout = 0")
    connection.exec_driver_sql("SET statement_timeout = 0")
    connection.commit()
    # Tried for, never waited for inside a statement: the migrating replica's CREATE INDEX
    # CONCURRENTLY waits for every statement running when it starts, a blocked
    # pg_advisory_lock included, which waits for the migrator: PostgreSQL reported "deadlock
    # detected" when five replicas booted together. Short tries outside any transaction (what
    # SQLAlchemy's AUTOCOMMIT does, on the driver) let the index build pass between them.
    raw = _raw(connection)
    raw.autocommit = True
    try:
        delay = 0.02
        while not raw.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()[
            0
        ]:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    finally:
        raw.autocommit = False
    connection.exec_driver_sql(f"SET lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}")
    connection.commit()
    try:
        _apply(connection, config, move)
        connection.commit()
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # Back to the bounds ordinary statements get (engine.POSTGRES_CONNECT_ARGS).
        connection.exec_driver_sql("RESET lock_timeout")
        connection.exec_driver_sql("RESET statement_timeout")
        connection.commit()


def _current(connection: Connection, script: ScriptDirectory) -> set[str]:
    """The database's revisions; a revision this code does not know is SchemaTooNew."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = current - known
    if unknown:
        raise SchemaTooNew(
            f"the database is at revision {', '.join(sorted(unknown))}, which this code does "
            f"not know (its newest is {', '.join(sorted(script.get_heads()))}): deploy newer code"
        )
    return current


def _apply(connection: Connection, config: Config, move: _Move) -> bool:
    """Moves the database to the target unless it is there; whether it did."""
    try:
        return _apply_checked(connection, config, move)
    except (CommandError, RevisionError) as error:  # a target Alembic cannot go to
        raise MigrationRefused(f"cannot migrate to {move.target!r}: {error}") from error


def _apply_checked(connection: Connection, config: Config, move: _Move) -> bool:
    script = ScriptDirectory.from_config(config)
    current = _current(connection, script)
    if move.downgrade:
        wanted = set() if move.target == "base" else {script.get_revision(move.target).revision}
    else:
        wanted = (
            set(script.get_heads())
            if move.target == "head"
            else {script.get_revision(move.target).revision}
        )
    if current == wanted or (not move.downgrade and wanted <= _below_or_at(script, current)):
        return False
    log.info(
        "migrating database from %s to %s",
        sorted(current) or "empty",
        sorted(wanted) or "empty",
    )
    if connection.dialect.name == "postgresql":
        connection.commit()  # the revisions run in the environment's own transaction
    config.attributes["connection"] = connection
    if move.downgrade:
        command.downgrade(config, move.target)
    else:
        command.upgrade(config, move.target)
    return True


def _below_or_at(script: ScriptDirectory, revisions: set[str]) -> set[str]:
    """The revisions `revisions` include (themselves and everything before them)."""
    found: set[str] = set()
    for revision in revisions:
        found.update(rev.revision for rev in script.iterate_revisions(revision, "base"))
    return found


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
