"""SQLite's name index (store/name_index.py) follows the event log behind the writes, and a
page reads the log's tail beside it: whatever order creates, renames, deletes, purges and the
index's catching up come in, name_contains finds exactly the tasks whose name contains the
pattern, as Python folds it, never fewer and never more."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text

from resinkit_grpc.config import Settings
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store import filter_indexes, name_index, retention
from resinkit_grpc.store import tasks as store
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.engine import create_engines, fold
from resinkit_grpc.store.migrations import migrate
from resinkit_grpc.store.tasks import NewTask, SortOrder, TaskQuery
from tests.servers import ServerProcess
from tests.test_filter_indexes import plan as filter_plan

# Letters whose lower case Python and SQLite see differently (ẞ, İ, Σ), FTS5's query syntax
# inside a phrase (", *, ^, :) and LIKE's wildcards (%, _).
ALPHABET = 'abAB ßẞİiıΣσς"*^:%_'  # noqa: RUF001
names = st.one_of(st.none(), st.text(ALPHABET, max_size=9))
patterns = st.text(ALPHABET, min_size=1, max_size=5)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("names") / "names.db"
    writer, reader = create_engines(Settings(database_url=f"sqlite:///{path}"))
    migrate(writer)
    reader.dispose()
    yield writer
    writer.dispose()


def found(connection: Connection, pattern: str) -> list[str]:
    """Every page of name_contains `pattern`, 3 tasks at a time, newest first."""
    query, order, seen, after = TaskQuery(name_contains=pattern), SortOrder(), [], None
    while True:
        page = store.list_tasks(connection, query, order, after=after, limit=3, full=False)
        seen.extend(row["task_id"] for row in page)
        if len(page) < 3:
            return seen
        after = (page[-1]["created_at"], page[-1]["task_id"])


def truth(connection: Connection, pattern: str) -> list[str]:
    """What name_contains must find: worked out in Python from the tasks as they stand."""
    rows = connection.execute(
        text(
            "SELECT task_id, task_name FROM tasks WHERE active "
            "ORDER BY created_at DESC, task_id DESC"
        )
    ).all()
    return [task_id for task_id, name in rows if name is not None and fold(pattern) in fold(name)]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), names),
        st.tuples(st.just("rename"), st.integers(0, 20), names),
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("purge")),
        st.tuples(st.just("catch up"), st.integers(1, 4)),
        st.tuples(st.just("rebuild")),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=operations, data=st.data(), dense=st.booleans())
def test_name_contains_finds_exactly_the_names_that_contain_it(
    engine: Engine, steps: list[tuple[Any, ...]], data: st.DataObject, dense: bool
) -> None:
    """After every step, for patterns cut from the names the steps write (in any case) and
    others. `dense` makes every pattern count as common: pages then walk the order and test
    each name instead of reading the index."""
    written = [step[-1] for step in steps if step[0] in ("create", "rename") and step[-1]]
    cut = st.sampled_from(written or ["ab"]).flatmap(
        lambda name: st.tuples(st.integers(0, len(name)), st.integers(1, 5)).map(
            lambda span: name[span[0] : span[0] + span[1]] or name
        )
    )
    cased = cut.flatmap(lambda part: st.sampled_from([part, part.upper(), part.lower()]))
    wanted = data.draw(st.lists(st.one_of(cased, patterns), min_size=1, max_size=4))
    made: list[str] = []
    saved = filter_indexes.NAME_DENSE_AT
    filter_indexes.NAME_DENSE_AT = 1 if dense else saved
    try:
        with engine.connect() as connection:
            connection.begin()
            name_index.catch_up(connection, 10_000)  # the tasks earlier examples left behind
            for step in steps:
                if step[0] == "create":
                    task_id = f"n-{len(made)}-{time.monotonic_ns()}"
                    store.create_task(connection, NewTask(task_id, "t", "me", task_name=step[1]))
                    made.append(task_id)
                elif step[0] == "rename" and made:
                    task_id = made[step[1] % len(made)]
                    if store.get_task(connection, task_id, full=False)["active"]:
                        store.update_task(connection, task_id, {"task_name": step[2]}, None)
                elif step[0] == "delete" and made:
                    task_id = made[step[1] % len(made)]
                    if store.get_task(connection, task_id, full=False)["active"]:
                        store.delete_task(connection, task_id, None)
                elif step[0] == "purge":
                    retention.purge_batch(connection, utcnow() + timedelta(days=1), 50)
                    made = [
                        task_id
                        for task_id in made
                        if connection.execute(
                            text("SELECT 1 FROM tasks WHERE task_id = :id"), {"id": task_id}
                        ).first()
                    ]
                elif step[0] == "catch up":
                    name_index.catch_up(connection, step[1])
                elif step[0] == "rebuild":
                    name_index.rebuild(connection)
                for pattern in wanted:
                    assert found(connection, pattern) == truth(connection, pattern), (step, pattern)
            connection.rollback()
    finally:
        filter_indexes.NAME_DENSE_AT = saved


def test_the_index_holds_exactly_the_folded_names_once_caught_up(engine: Engine) -> None:
    """No stale row after renames and purges, none missing: task_names is the live and
    deleted tasks' folded names, and FTS5's own integrity check passes."""
    with engine.connect() as connection:
        connection.begin()
        for i, name in enumerate(["Straße", "İstanbul", "ΣΊΣΥΦΟΣ", None, "plain"]):
            store.create_task(connection, NewTask(f"held-{i}", "t", "me", task_name=name))
        name_index.catch_up(connection)
        store.update_task(connection, "held-3", {"task_name": "Was None"}, None)
        store.update_task(connection, "held-4", {"task_name": "Renamed"}, None)
        store.update_task(connection, "held-1", {"task_name": None}, None)
        store.delete_task(connection, "held-0", None)
        retention.purge_batch(connection, utcnow() + timedelta(days=1), 50)
        while name_index.catch_up(connection, 2) == 2:
            pass
        assert not name_index.behind(connection)
        kept = connection.execute(text("SELECT task_id, name FROM task_names ORDER BY 1")).all()
        wanted = connection.execute(
            text("SELECT task_id, task_name FROM tasks WHERE task_name IS NOT NULL ORDER BY 1")
        ).all()
        assert [(task_id, name) for task_id, name in kept] == [
            (task_id, fold(name)) for task_id, name in wanted
        ]
        assert ("held-4", "renamed") in kept and ("held-2", "σίσυφος") in kept
        assert ("held-3", "was none") in kept and "held-1" not in dict(kept)
        connection.execute(
            text("INSERT INTO task_names_fts (task_names_fts) VALUES ('integrity-check')")
        )
        connection.rollback()


def test_a_rare_name_is_read_through_the_trigram_index(engine: Engine) -> None:
    """The plan starts from the FTS5 index, never a scan of tasks; a pattern FTS5 cannot
    serve (two characters) walks the order instead. SQLite keeps no statistics: without
    being told, it walks a status's index in the sort order and tests every task's name."""

    def plan(connection: Connection, pattern: str) -> str:
        return filter_plan(connection, TaskQuery(name_contains=pattern), SortOrder(), False)

    with engine.connect() as connection:
        found_plan = plan(connection, "needle")
        assert "task_names_fts VIRTUAL TABLE INDEX" in found_plan, found_plan
        assert "SCAN tasks" not in found_plan, found_plan
        short = plan(connection, "ne")
        assert "task_names_fts" not in short, short
        # With one status as well, in an order that status has an index for, the page still
        # starts from the rare name (or tag), not from walking every task of that status.
        for query in (
            TaskQuery(name_contains="needle", statuses=("RUNNING",)),
            TaskQuery(tags_any=("rare",), statuses=("RUNNING",), created_by="me"),
        ):
            both = filter_plan(connection, query, SortOrder("updated_at", False), False)
            assert "ix_tasks_status" not in both and "ix_tasks_created_by" not in both, both
            assert "task_names_fts VIRTUAL" in both or "task_tags USING PRIMARY KEY" in both, both


def test_a_served_name_is_found_at_once_and_indexed_soon_after(tmp_path: Path) -> None:
    """Through a real server: a new or renamed task is found by its name the moment its write
    returns (the log's tail), and the server's job takes it into the index within a second."""
    path = tmp_path / "served.db"
    server = ServerProcess(f"sqlite:///{path}", tmp_path).start()
    try:
        stub = server.stub()
        made = stub.CreateTask(
            pb.CreateTaskRequest(task=pb.Task(task_type="t", task_name="Größe Import"))
        )
        assert [t.task_id for t in stub.ListTasks(_named("größe")).tasks] == [made.task_id]
        stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=made.task_id, task_name="Nightly Export"),
                update_mask={"paths": ["task_name"]},
            )
        )
        assert not stub.ListTasks(_named("größe")).tasks
        assert [t.task_id for t in stub.ListTasks(_named("ly exp")).tasks] == [made.task_id]
        deadline = time.monotonic() + 10
        with sqlite3.connect(path) as reader:
            while True:
                row = reader.execute(
                    "SELECT (SELECT indexed_through FROM task_names_state), "
                    "(SELECT max(event_id) FROM task_events), "
                    "(SELECT name FROM task_names WHERE task_id = ?)",
                    (made.task_id,),
                ).fetchone()
                if (row[0] == row[1] and row[2] == "nightly export") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert row == (row[1], row[1], "nightly export")
        assert [t.task_id for t in stub.ListTasks(_named("ly exp")).tasks] == [made.task_id]
    finally:
        assert server.stop() == 0, server.log()


def _named(pattern: str) -> pb.ListTasksRequest:
    return pb.ListTasksRequest(filter=pb.TaskFilter(name_contains=pattern))


def test_a_failing_catch_up_is_logged_once_per_retry_interval_and_pages_stay_right(
    tmp_path: Path,
) -> None:
    """With its index's state gone (an operator's hand), the job fails at every attempt: it
    says so and waits (server.NAME_INDEX_RETRY_SECONDS) instead of logging ten times a second;
    everything else goes on being served."""
    path = tmp_path / "broken.db"
    server = ServerProcess(f"sqlite:///{path}", tmp_path).start()
    try:
        stub = server.stub()
        with sqlite3.connect(path) as raw:
            raw.execute("DROP TABLE task_names_state")
        made = stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="t", task_name="ab")))
        time.sleep(2.0)  # twenty attempts, were there no pause after a failure
        # A pattern of two characters walks the order: the index is not read.
        assert [t.task_id for t in stub.ListTasks(_named("AB")).tasks] == [made.task_id]
        assert server.log().count("could not index task names") == 1, server.log()
    finally:
        assert server.stop() == 0, server.log()
