"""Prepared statements against a real database: the same rows, values and errors as
SQLAlchemy's own execution of the same statements."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.store import migrations, tasks
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.prepared import Prepared


@pytest.fixture
def engine(new_database_url: Callable[[], str]) -> Iterator[Engine]:
    writer, reader = create_engines(Settings(database_url=new_database_url()))
    reader.dispose()
    migrations.migrate(writer)
    yield writer
    writer.dispose()


def stored_task(connection: Connection) -> str:
    """A task with every kind of column filled: text, JSON, timestamps, booleans, NULLs."""
    task_id = str(uuid.uuid4())
    tasks.create_task(
        connection,
        tasks.NewTask(
            task_id=task_id,
            task_type="prepared",
            created_by="test",
            task_name="naïve ☃ name",
            submitted_configs={"sql": "SELECT 1", "nested": {"list": [1, 2.5, None, True]}},
            tags=["a", "b"],
            expires_at=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        ),
    )
    return task_id


def test_a_point_read_equals_sqlalchemys_own(engine: Engine) -> None:
    statement = select(*tasks.FULL_COLUMNS).where(tasks.tasks.c.task_id == bindparam("task_id"))
    with engine.begin() as connection:
        task_id = stored_task(connection)
        prepared = Prepared(statement).first(connection, {"task_id": task_id})
        row = connection.execute(statement, {"task_id": task_id}).one()
        assert prepared == row._asdict()
        assert prepared is not None and prepared["created_at"].tzinfo is UTC
        assert prepared["active"] is True and prepared["tags"] == ["a", "b"]
        assert Prepared(statement).first(connection, {"task_id": "no such task"}) is None


def test_a_write_binds_values_as_sqlalchemy_does(engine: Engine) -> None:
    """Timestamps, JSON and booleans written through a Prepared UPDATE read back the same
    through SQLAlchemy."""
    when = datetime.now(UTC) + timedelta(days=1)
    update = Prepared(
        tasks.UPDATE.values(
            expires_at=bindparam("expires_at"),
            progress_details=bindparam("progress_details"),
            active=bindparam("active"),
        )
    )
    with engine.begin() as connection:
        task_id = stored_task(connection)
        changed = update.execute(
            connection,
            {
                "key_task_id": task_id,
                "expires_at": when,
                "progress_details": {"done": 3, "of": 7},
                "active": False,
            },
        )
        assert changed == 1
        assert (
            update.execute(
                connection,
                {
                    "key_task_id": "none",
                    "expires_at": when,
                    "progress_details": None,
                    "active": True,
                },
            )
            == 0
        )
        stored = tasks.get_task(connection, task_id)
        assert stored["expires_at"] == when
        assert stored["progress_details"] == {"done": 3, "of": 7}
        assert stored["active"] is False


def test_driver_errors_arrive_as_sqlalchemys_exceptions(engine: Engine) -> None:
    duplicate = Prepared(
        insert(tasks.tasks).values(
            {column.name: bindparam(column.name) for column in tasks.tasks.c}
        )
    )
    with engine.connect() as connection:
        with connection.begin():
            task_id = stored_task(connection)
            record = tasks.get_task(connection, task_id)
        with pytest.raises(IntegrityError), connection.begin():
            duplicate.execute(connection, record)


def test_a_first_statement_begins_the_transaction_as_sqlalchemy_would(engine: Engine) -> None:
    """Run first on a connection, a Prepared write is inside the transaction SQLAlchemy
    begins for it, and a rollback takes it back."""
    with engine.connect() as connection:
        task_id = stored_task(connection)  # its first statement is a Prepared INSERT
        connection.rollback()
        with pytest.raises(TaskNotFound):
            tasks.get_task(connection, task_id)


def test_in_list_parameters_are_refused_up_front(engine: Engine) -> None:
    statement = select(tasks.tasks.c.task_id).where(
        tasks.tasks.c.task_id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            pytest.skip("Prepared hands other dialects to Connection.execute")
        with pytest.raises(ValueError, match="IN-list"):
            Prepared(statement).first(connection, {"ids": ["a"]})
