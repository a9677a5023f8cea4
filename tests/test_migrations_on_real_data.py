"""Migrations on a database that holds data while another server process keeps serving it: a
throwaway revision (applied in this test only) that rebuilds `tasks` on SQLite (batch mode's
copy-and-drop) and alters it under an ACCESS EXCLUSIVE lock on PostgreSQL, then builds an
index (CONCURRENTLY, outside the transaction, on PostgreSQL). The migration
completes, the serving process errs at most with a documented retryable status, and no row is
lost; a server booting while another process holds the database waits instead of crashing."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from resinkit_grpc.config import Settings
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.migrations import MIGRATION_LOCK_KEY, migrate, script_location
from tests.rpc import create, error_reason
from tests.servers import ServerProcess

REBUILD = '''"""throwaway, for tests only: rebuild tasks"""

import sqlalchemy as sa

from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    with op.batch_alter_table("tasks", recreate="always" if sqlite else "auto") as batch:
        batch.add_column(sa.Column("scratch", sa.Text(), nullable=True))
    if sqlite:
        op.create_index("ix_tasks_scratch", "tasks", ["scratch"])
    else:
        # Outside the transaction, as an index on a large live table must be built.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_tasks_scratch", "tasks", ["scratch"], postgresql_concurrently=True
            )


def downgrade() -> None:
    op.drop_index("ix_tasks_scratch", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("scratch")
'''


def with_a_rebuild(tmp_path: Path) -> Path:
    """The project's migrations plus the throwaway revision, in a directory of the test's."""
    location = tmp_path / "migrations"
    shutil.copytree(script_location(), location, ignore=shutil.ignore_patterns("__pycache__"))
    heads = sorted(p.name.split("_")[0] for p in (location / "versions").glob("0*.py"))
    (location / "versions" / "9001_rebuild_tasks.py").write_text(REBUILD.format(head=heads[-1]))
    return location


class Load:
    """Clients of the serving process: creates, status changes and reads, recording every
    outcome, until stopped."""

    def __init__(self, server: ServerProcess, workers: int = 3) -> None:
        self.created: list[str] = []
        self.errors: list[grpc.RpcError] = []
        self.calls = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(server.stub(), n)) for n in range(workers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _work(self, stub: Any, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            task_id = f"load-{worker}-{n}"
            try:
                create(stub, "load", task_id=task_id)
                with self._lock:
                    self.created.append(task_id)
                stub.UpdateTaskStatus(
                    pb.UpdateTaskStatusRequest(task_id=task_id, status=pb.TASK_STATUS_RUNNING)
                )
                stub.GetTask(pb.GetTaskRequest(task_id=task_id))
                stub.ListTasks(pb.ListTasksRequest(page_size=20))
            except grpc.RpcError as error:
                with self._lock:
                    self.errors.append(error)
            with self._lock:
                self.calls += 1


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                "tasks": connection.execute(text("SELECT count(*) FROM tasks")).scalar_one(),
                "events": connection.execute(text("SELECT count(*) FROM task_events")).scalar_one(),
                "without_created": connection.execute(
                    text(
                        "SELECT count(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM task_events"
                        " e WHERE e.task_id = t.task_id AND e.event_type = 'CREATED')"
                    )
                ).scalar_one(),
            }
    finally:
        engine.dispose()


def test_a_rebuild_of_tasks_migrates_beside_a_serving_process_and_loses_nothing(
    start_server: Callable[..., ServerProcess], new_database_url: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database_url()
    server = start_server(database_url=url)
    stub = server.stub()
    seeded = [create(stub, "seed").task_id for _ in range(200)]
    for task_id in seeded[:100]:
        stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(task_id=task_id, status=pb.TASK_STATUS_FAILED)
        )
    before = counts(url)
    writer, reader = create_engines(Settings(database_url=url))
    try:
        with Load(server) as load:
            time.sleep(0.5)
            revision = migrate(writer, location=with_a_rebuild(tmp_path))
            time.sleep(0.5)
        calls, created, errors = load.calls, load.created, load.errors
    finally:
        writer.dispose()
        reader.dispose()
    assert revision == "9001"
    schema = inspect(create_engine(url, poolclass=NullPool))
    assert "scratch" in {c["name"] for c in schema.get_columns("tasks")}
    assert "ix_tasks_scratch" in {i["name"] for i in schema.get_indexes("tasks")}
    assert calls > 20, "the load did not run during the migration"
    assert all(
        e.code() == grpc.StatusCode.UNAVAILABLE and error_reason(e) == "STORAGE_UNAVAILABLE"
        for e in errors
    ), [(e.code(), e.details()) for e in errors]
    after = counts(url)
    assert after["tasks"] == before["tasks"] + len(created)
    assert after["without_created"] == 0
    assert after["events"] >= before["events"] + 2 * len(created) - len(errors)
    if make_url(url).get_backend_name() == "sqlite":
        with sqlite3.connect(make_url(url).database or "") as check:
            assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    # The serving process carries on on the new schema.
    assert stub.GetTask(pb.GetTaskRequest(task_id=seeded[0])).task_id == seeded[0]
    assert create(stub, "after").task_id
    assert server.stop() == 0, server.log()


def hold_the_database(url: str, seconds: float) -> threading.Thread:
    """Another process's hold on what a booting server's migration needs: SQLite's write lock,
    PostgreSQL's migration lock."""
    parsed = make_url(url)
    ready = threading.Event()

    def hold() -> None:
        if parsed.get_backend_name() == "sqlite":
            holder = sqlite3.connect(parsed.database or "", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            ready.set()
            time.sleep(seconds)
            holder.close()
            return
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            ready.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert ready.wait(10)
    return thread


@pytest.mark.timeout(120)
def test_a_server_booting_while_another_process_holds_the_database_waits_for_it(
    start_server: Callable[..., ServerProcess], new_database_url: Callable[[], str]
) -> None:
    url = new_database_url()
    start_server(database_url=url).stop()  # migrated, with its tables
    holding = hold_the_database(url, seconds=7)  # longer than the 5 s busy timeout
    began = time.monotonic()
    server = start_server(database_url=url)
    waited = time.monotonic() - began
    holding.join()
    assert waited > 5, "the database was not held: the test proves nothing"
    assert server.stub().CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="late")))
