"""The event-append lock on PostgreSQL (events.serialize_appends): a write transaction holds it
from its start to its end, so that event ids become visible in id order across replicas, and
its commit, and only its commit, wakes every replica's tail with a NOTIFY."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from resinkit_grpc.config import Settings
from resinkit_grpc.store import migrations
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.events import EVENT_APPEND_LOCK_KEY, NOTIFY_CHANNEL, serialize_appends
from tests.databases import Databases


@pytest.fixture
def engine(databases: Databases, tmp_path: Path) -> Iterator[Engine]:
    if databases.unavailable_reason:
        pytest.skip(databases.unavailable_reason)
    url = databases.new_url("postgresql", tmp_path)
    writer, reader = create_engines(Settings(database_url=url))
    migrations.migrate(writer)
    yield writer
    writer.dispose()
    reader.dispose()


def connect(engine: Engine) -> psycopg.Connection[tuple[object, ...]]:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True)


def lock_is_free(other: psycopg.Connection[tuple[object, ...]]) -> bool:
    # In autocommit, a transaction-level lock obtained here is released as the statement ends.
    row = other.execute("SELECT pg_try_advisory_xact_lock(%s)", (EVENT_APPEND_LOCK_KEY,)).fetchone()
    assert row is not None
    return bool(row[0])


def notified(listener: psycopg.Connection[tuple[object, ...]], timeout: float) -> list[str]:
    return [n.channel for n in listener.notifies(timeout=timeout, stop_after=1)]


@pytest.mark.parametrize("driver_begins", [True, False], ids=["psycopg-begins", "autocommit"])
@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_the_append_lock_is_held_to_the_end_and_only_a_commit_notifies(
    engine: Engine, ending: str, driver_begins: bool
) -> None:
    """Also where the driver begins no transaction (psycopg in autocommit mode, as the group
    writer's connection runs): serialize_appends then begins it, with the lock in one round
    trip, and what follows is inside it."""
    with connect(engine) as listener, connect(engine) as other:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            raw.autocommit = not driver_begins
            transaction = connection.begin()
            serialize_appends(connection)
            connection.exec_driver_sql("CREATE TEMPORARY TABLE inside (n int)")
            serialize_appends(connection)  # again in the same transaction: still one holder
            assert not lock_is_free(other)
            assert notified(listener, 0.2) == []  # not before the commit
            getattr(transaction, ending)()
            assert lock_is_free(other)
            kept = connection.exec_driver_sql("SELECT to_regclass('pg_temp.inside')").scalar()
            assert (kept is not None) == (ending == "commit"), "a statement ran outside it"
            connection.rollback()
            raw.autocommit = False
        expected = [NOTIFY_CHANNEL] if ending == "commit" else []
        assert notified(listener, 5.0 if expected else 0.5) == expected
