"""Prepared statements against a real database: the same rows, values and errors as
SQLAlchemy's own execution of the same statements."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from resinkit_grpc.config import Settings
from resinkit_grpc.errors import TaskNotFound
from resinkit_grpc.store import batches, events, filter_indexes, migrations, tasks
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.prepared import DRIVER_PATH, Prepared


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


def test_pages_with_in_lists_equal_sqlalchemys_own(engine: Engine) -> None:
    """ListTasks statements (IN lists of several lengths, a JSON tag filter, a keyset position,
    LIMIT and the OFFSET the statement carries itself) give SQLAlchemy's rows, in its order."""
    with engine.begin() as connection:
        for _ in range(5):
            stored_task(connection)
        shape = dict(
            dense=frozenset(),
            dialect=connection.dialect.name,
            statuses=True,
            task_types=True,
            created_by=False,
            name_contains=False,
            name_indexed=False,
            name_narrowed=False,
            tags_any=True,
            tags_all=0,
            created_after=False,
            created_before=False,
            show_deleted=False,
            order=tasks.SortOrder("created_at", descending=True),
            full=True,
        )
        first = tasks._list_statement(tasks._ListShape(**shape, keyset=False))
        later = tasks._list_statement(tasks._ListShape(**shape, keyset=True))
        for statuses, types, tags in [
            (["PENDING"], ["prepared"], ["a"]),
            (["PENDING", "RUNNING", "FAILED"], ["other", "prepared"], ["z", "b"]),
        ]:
            params = {
                "statuses": statuses,
                "task_types": types,
                "tags_any": tags,
                "limit": 3,
                "max_bytes": 10**9,
            }
            page = first.all(connection, params)
            expected = connection.execute(first.statement, params).all()
            assert page == [row._asdict() for row in expected]
            assert len(page) == 3
            position = {"after_value": page[-1]["created_at"], "after_task_id": page[-1]["task_id"]}
            rest = later.all(connection, params | position)
            expected = connection.execute(later.statement, params | position).all()
            assert rest == [row._asdict() for row in expected]
            assert len(rest) == 2 and not {r["task_id"] for r in rest} & {
                r["task_id"] for r in page
            }


def test_an_empty_in_list_is_refused(engine: Engine) -> None:
    statement = select(tasks.tasks.c.task_id).where(
        tasks.tasks.c.task_id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            pytest.skip("Prepared hands other dialects to Connection.execute")
        assert Prepared(statement).all(connection, {"ids": ["a", "b"]}) == []
        with pytest.raises(ValueError, match="IN list"):
            Prepared(statement).all(connection, {"ids": []})


@pytest.mark.parametrize("count", [1, 3, 100, 1000])
def test_many_rows_go_in_as_sqlalchemy_would_put_them_in_order_and_counted(
    engine: Engine, count: int
) -> None:
    """execute_many of an INSERT (multi-row INSERTs of power-of-two chunks on SQLite, one
    INSERT ... SELECT FROM unnest(...) on PostgreSQL) stores every row with its values bound as
    SQLAlchemy binds them, in the order given (the autoincrement ids follow it), and counts the
    rows that went in: a conflict DO NOTHING skips is not counted."""
    with engine.begin() as connection:
        counted = connection.dialect.name == "sqlite"
        task_id = stored_task(connection)
        now = datetime.now(UTC)
        rows = [
            {
                "task_id": task_id,
                "event_type": "UPDATED",
                "event_data": {"n": n, "text": "naïve ☃"} if n % 2 else None,
                "previous_status": None,
                "new_status": "PENDING" if n % 3 else None,
                "timestamp": now + timedelta(microseconds=n),
                "actor": f"actor-{n}",
            }
            for n in range(count)
        ]
        assert events.INSERT.execute_many(connection, rows) == count
        stored = connection.execute(
            select(*(events.events.c[name] for name in events.EVENT_FIELDS))
            .where(events.events.c.task_id == task_id, events.events.c.event_type == "UPDATED")
            .order_by(events.events.c.event_id)
        ).all()
        assert [row._asdict() for row in stored] == rows
        if counted:  # task_tags is SQLite's (filter_indexes.py)
            tags = [{"tag": f"t{n % (count // 2 + 1)}", "task_id": task_id} for n in range(count)]
            distinct = len({row["tag"] for row in tags})
            assert filter_indexes.INSERT_TAGS.execute_many(connection, tags) == distinct


def test_a_failing_row_keeps_none_of_the_rows(engine: Engine) -> None:
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            pytest.skip("PostgreSQL aborts the whole transaction")
        with connection.begin():
            task_id = stored_task(connection)
        rows = [
            {name: None for name in events.EVENT_FIELDS}
            | {"task_id": task_id, "event_type": "UPDATED", "timestamp": datetime.now(UTC)}
            for _ in range(5)
        ]
        rows[3]["task_id"] = "no such task"  # the foreign key refuses it
        with connection.begin():
            with pytest.raises(IntegrityError):
                events.INSERT.execute_many(connection, rows)
            assert (
                connection.execute(
                    select(events.events.c.event_id).where(events.events.c.event_type == "UPDATED")
                ).all()
                == []
            )


def test_none_binds_as_null_through_the_driver(engine: Engine) -> None:
    """The engine's adapter for None (store/engine.py) binds it as SQL NULL, as the driver
    would without it."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            pytest.skip("an adapter of the SQLite driver")
        raw = connection.connection.driver_connection
        assert raw is not None
        found = raw.execute("SELECT ? IS NULL, typeof(?)", (None, None)).fetchone()
        assert found == (1, "null")


def test_a_returned_value_and_its_absence_equal_sqlalchemys_own(engine: Engine) -> None:
    """`returned` (through psycopg on PostgreSQL) binds timestamps and JSON as SQLAlchemy
    does, converts what comes back the same way, and is None when no row comes back."""
    when = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    statement = tasks.UPDATE.values(
        expires_at=bindparam("expires_at"), tags=bindparam("tags")
    ).returning(tasks.tasks.c.expires_at)
    with engine.begin() as connection:
        task_id = stored_task(connection)
        params = {"key_task_id": task_id, "expires_at": when, "tags": ["x", "ÿ"]}
        through_driver = Prepared(statement).returned(connection, params)
        assert through_driver == connection.execute(statement, params).scalar() == when
        assert through_driver.tzinfo is UTC
        assert tasks.get_task(connection, task_id)["tags"] == ["x", "ÿ"]
        missing = {**params, "key_task_id": "no such task"}
        assert Prepared(statement).returned(connection, missing) is None


def test_a_returned_statements_errors_arrive_as_sqlalchemys_exceptions(engine: Engine) -> None:
    duplicate = Prepared(
        insert(tasks.tasks)
        .values({column.name: bindparam(column.name) for column in tasks.tasks.c})
        .returning(tasks.tasks.c.task_id)
    )
    with engine.connect() as connection:
        with connection.begin():
            record = tasks.get_task(connection, stored_task(connection))
        with pytest.raises(IntegrityError), connection.begin():
            duplicate.returned(connection, record)


def test_many_returned_rows_equal_sqlalchemys_and_skip_conflicts(engine: Engine) -> None:
    """returned_many (one unnest INSERT on PostgreSQL): every column of every task, of every
    kind (JSON documents and NULLs, timestamps, booleans, text with quotes and braces), stored
    as SQLAlchemy stores them, the RETURNING values in row order, a row DO NOTHING skips
    (taken before, or twice among them) left out."""
    with engine.begin() as connection:
        taken = tasks.get_task(connection, stored_task(connection))
        now = datetime.now(UTC)
        fresh = [
            tasks.new_record(
                tasks.NewTask(
                    task_id=f"many-{n}-" + '{"},\\',
                    task_type="prepared",
                    created_by="test",
                    task_name=None if n % 2 else f"name {n} ☃",
                    submitted_configs={"n": n, "nested": [None, {"q": '"'}]} if n else {},
                    tags=[f"t{n}", "{x}"] if n % 3 else None,
                    priority=-(2**31) if n == 1 else n,
                ),
                now + timedelta(microseconds=n),
                None if n % 2 else now + timedelta(days=n),
            )
            for n in range(5)
        ]
        rows = [fresh[0], taken, fresh[1], fresh[2], dict(fresh[2]), fresh[3], fresh[4]]
        returned = batches.INSERT_POSTGRESQL.returned_many(connection, rows)
        assert returned == [record["task_id"] for record in fresh]
        for record in fresh:
            stored = tasks.get_task(connection, record["task_id"])
            assert stored == {**record, "version": 1, "active": True}


def _event_row(task_id: str, new_status: str | None) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "event_type": "UPDATED",
        "event_data": None,
        "previous_status": None,
        "new_status": new_status,
        "timestamp": datetime.now(UTC),
        "actor": None,
    }


def test_an_over_long_value_is_refused_as_sqlalchemy_refuses_it(engine: Engine) -> None:
    """From a review: new_status is VARCHAR(16), and an explicit cast of the unnest array to
    VARCHAR(16)[] cut 17 characters down to 16 where SQLAlchemy's INSERT refuses them."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps no VARCHAR length")
    with engine.connect() as connection:
        with connection.begin():
            task_id = stored_task(connection)
        rows = [_event_row(task_id, "X" * 17)] * 2
        for through_driver in (False, True):
            DRIVER_PATH.on = through_driver
            try:
                with pytest.raises(DBAPIError), connection.begin():
                    events.INSERT.execute_many(connection, rows)
            finally:
                DRIVER_PATH.on = True
        stored = connection.execute(
            select(events.events.c.new_status).where(events.events.c.task_id == task_id)
        ).scalars()
        assert "X" * 16 not in list(stored)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_EVENT_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "event_type": _TEXT,
            "event_data": st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
            "previous_status": st.none() | st.text(max_size=16).filter(lambda s: "\x00" not in s),
            "new_status": st.none() | st.sampled_from(["NULL", "null", "", " ", '"', "{}", "a,b"]),
            "timestamp": st.datetimes(
                min_value=datetime(1, 1, 2),
                max_value=datetime(9999, 12, 30),
                timezones=st.just(UTC),
            ),
            "actor": st.none() | _TEXT | st.sampled_from(["NULL", "null", "", " x ", "{", "}"]),
        }
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=_EVENT_ROWS)
def test_many_rows_are_stored_exactly_as_sqlalchemy_stores_them(
    engine: Engine, rows: list[dict[str, Any]]
) -> None:
    """From a review: any text (NUL-free; quotes, braces, backslashes, commas, the word NULL),
    JSON documents with JSON nulls beside SQL NULLs and integers past 64 bits, timestamps of
    years 1 to 9999: execute_many stores the same rows, in the same order, as SQLAlchemy's own
    executemany (or fails where it fails)."""
    fields = [events.events.c[name] for name in events.EVENT_FIELDS]
    with engine.connect() as connection, connection.begin() as transaction:
        ours, theirs = stored_task(connection), stored_task(connection)

        def insert(task_id: str, through_driver: bool) -> None:
            DRIVER_PATH.on = through_driver
            try:
                events.INSERT.execute_many(
                    connection, [{**row, "task_id": task_id} for row in rows]
                )
            finally:
                DRIVER_PATH.on = True

        def read(task_id: str) -> list[dict[str, Any]]:
            query = (
                select(*fields)
                .where(events.events.c.task_id == task_id, events.events.c.event_type != "CREATED")
                .order_by(events.events.c.event_id)
            )
            return [row._asdict() | {"task_id": None} for row in connection.execute(query)]

        try:
            insert(ours, True)
        except DBAPIError:
            transaction.rollback()
            with pytest.raises(DBAPIError), connection.begin():
                insert(stored_task(connection), False)
            return
        insert(theirs, False)
        assert read(ours) == read(theirs)
        assert [row["timestamp"] for row in read(ours)] == [row["timestamp"] for row in rows]
        transaction.rollback()
