"""Alembic environment, shared by the `alembic` command and the server's boot-time migration.

The server hands in its own connection (config.attributes["connection"]) inside a transaction
it controls; the command line connects to RESINKIT_DATABASE_URL or alembic.ini's URL.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from sqlalchemy import Connection, create_engine, pool

from alembic import context
from resinkit_grpc.store.filter_indexes import SIDE_OBJECTS
from resinkit_grpc.store.models import Base

config = context.config
target_metadata = Base.metadata


def _compared(name: str | None, type_: str, parent_names: object) -> bool:
    """Per-dialect filter structures (store/filter_indexes.py) are the migrations' alone."""
    return name not in SIDE_OBJECTS


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=_compared,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
        # Our own column types render by bare name; script.py.mako imports them.
        user_module_prefix="",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = os.environ.get("RESINKIT_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    assert url, "no database URL: set RESINKIT_DATABASE_URL or sqlalchemy.url"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_with(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
