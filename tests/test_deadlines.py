"""Deadlines are honoured: once a caller's deadline has passed, the server does nothing more
for it. A write still queued is never committed, and a read still running is stopped, so that
a caller who gave up cannot change the database behind its back or hold a connection."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store.events import EVENT_APPEND_LOCK_KEY
from tests.rpc import new_task, rpc_error
from tests.servers import ServerProcess

DEADLINE = 0.4


def postgres_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def writes_held(server: ServerProcess) -> Iterator[None]:
    """Holds the database's write lock from outside the server: its writer waits meanwhile."""
    url = server.database_url
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    else:
        with psycopg.connect(postgres_dsn(url)) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_APPEND_LOCK_KEY,))
            yield
            holder.rollback()


def exists(stub: Any, task_id: str) -> bool:
    try:
        stub.GetTask(pb.GetTaskRequest(task_id=task_id))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        return False
    return True


def test_a_write_whose_deadline_passed_while_queued_is_never_committed(
    server: ServerProcess, stub: Any, unique: Any
) -> None:
    first, late = unique("held"), unique("late")
    with writes_held(server):
        # The first write takes the writer and waits for the lock; the second queues behind it.
        waiting = stub.CreateTask.future(
            pb.CreateTaskRequest(task_id=first, task=new_task("deadline")), timeout=30
        )
        time.sleep(0.3)
        rpc_error(
            lambda: stub.CreateTask(
                pb.CreateTaskRequest(task_id=late, task=new_task("deadline")), timeout=DEADLINE
            ),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        time.sleep(0.3)  # the deadline has long passed when the writer gets to it
    assert waiting.result().task_id == first
    # Nothing of the late write may appear, now or after the writer's next batches.
    stub.CreateTask(pb.CreateTaskRequest(task_id=unique("after"), task=new_task("deadline")))
    assert not exists(stub, late)
    rpc_error(
        lambda: stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=late)),
        grpc.StatusCode.NOT_FOUND,
    )


def test_a_read_whose_deadline_passed_stops_in_the_database(
    backend: str, server: ServerProcess, stub: Any, unique: Any
) -> None:
    """A read blocked inside PostgreSQL is cancelled there once its caller's deadline passes,
    instead of holding its connection and a read thread until the lock goes."""
    if backend != "postgresql":
        pytest.skip("SQLite readers never wait on a lock; PostgreSQL's can")
    created = stub.CreateTask(pb.CreateTaskRequest(task_id=unique("read"), task=new_task("d")))
    dsn = postgres_dsn(server.database_url)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as observer:
        holder.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        rpc_error(
            lambda: stub.GetTask(pb.GetTaskRequest(task_id=created.task_id), timeout=DEADLINE),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        waiting = -1
        for _ in range(50):
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            assert row is not None
            waiting = row[0]
            if waiting == 0:
                break
            time.sleep(0.05)
        assert waiting == 0, "the abandoned read still waits in the database"
        holder.rollback()
    # The server is none the worse: its read threads and connections still serve.
    for _ in range(10):
        assert stub.GetTask(pb.GetTaskRequest(task_id=created.task_id)).task_id == created.task_id
    assert "Traceback" not in server.log()
