"""Boot-time migration: bring the database to this code's Alembic head, or refuse to start.

Runs inside one write transaction: on SQLite that holds the write lock (BEGIN IMMEDIATE), on
PostgreSQL a transaction-scoped advisory lock, so that replicas booting together migrate once
while the others wait, then find the database at head.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

import resinkit_grpc
from alembic import command

log = logging.getLogger(__name__)

# Any constant shared by every replica; it names the migration lock in pg_locks.
MIGRATION_LOCK_KEY = 0x7265_736B_6D69_67  # "reskmig"


class SchemaTooNew(RuntimeError):
    """The database was migrated by newer code than this server's."""


def script_location() -> Path:
    package = Path(resinkit_grpc.__file__).parent
    installed = package / "migrations"  # inside a wheel
    return installed if (installed / "env.py").exists() else package.parent / "alembic"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def migrate(engine: Engine) -> str:
    """Upgrades the database to head; returns the revision it is at afterwards."""
    config = alembic_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # A migration (or waiting for another replica's) may take longer than the bounds
            # ordinary statements get (see engine.POSTGRES_CONNECT_ARGS).
            connection.execute(text("SET LOCAL lock_timeout = 0"))
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        current = set(MigrationContext.configure(connection).get_current_heads())
        known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
        unknown = current - known
        if unknown:
            raise SchemaTooNew(
                f"the database is at revision {', '.join(sorted(unknown))}, which this server does "
                f"not know (its newest is {', '.join(sorted(heads))}): deploy newer code"
            )
        if current == heads:
            return ", ".join(sorted(heads))
        log.info("migrating database from %s to %s", sorted(current) or "empty", sorted(heads))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return ", ".join(sorted(heads))
