"""Nothing a caller sent, and no secret, reaches the server's log at INFO or above: not through
validation errors, nor through database errors (whose driver messages quote statements and
their parameters), on either backend."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, detail
from tests.servers import ServerProcess

MARKER = "Xy7MarkerQz"


def hostile_calls(stub: Any) -> None:
    """Calls that carry the marker in every place a caller can put text, most of them failing."""
    task = create(
        stub,
        task_name=f"name {MARKER}",
        description=f"about {MARKER}",
        tags=[MARKER],
        submitted_configs={"sql": f"SELECT '{MARKER}'"},
    )
    calls = [
        lambda: stub.GetTask(pb.GetTaskRequest(task_id=f"{MARKER}-missing")),
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=task.task_id, priority=1, etag=f'W/"{MARKER}"')
            )
        ),
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=task.task_id),
                update_mask=field_mask_pb2.FieldMask(paths=[MARKER]),
            )
        ),
        lambda: stub.ListTasks(pb.ListTasksRequest(order_by=MARKER, page_token=MARKER)),
        lambda: stub.ListTaskEvents(pb.ListTaskEventsRequest(event_types=[MARKER])),
        lambda: stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(
                task_id=task.task_id, status=pb.TASK_STATUS_PENDING, actor=MARKER
            )
        ),
        lambda: list(stub.WatchTaskEvents(pb.WatchTaskEventsRequest(task_types=[MARKER * 300]))),
    ]
    for call in calls:
        with contextlib.suppress(grpc.RpcError):
            call()


def secret_of(database_url: str) -> str:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return str(
                connection.execute(
                    text("SELECT value FROM service_secrets WHERE name = 'page_tokens'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def break_the_writers_database(server: ServerProcess) -> Callable[[], None]:
    """Makes the next writes fail inside the database driver; returns how to undo it."""
    url = make_url(server.database_url)
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(url.database or "", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held: writes time out
        return lambda: holder.close()
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        # The server's connections, killed: its writer finds out at its next write.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    return lambda: None


def make_inserts_fail(database_url: str) -> None:
    """A trigger that fails the INSERT of a task described as MARKER: an unexpected database
    error raised by a statement whose parameters carry the caller's text."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.execute(
                    text(
                        "CREATE TRIGGER refuse_marker BEFORE INSERT ON tasks "
                        f"WHEN NEW.description = '{MARKER}' "
                        f"BEGIN SELECT RAISE(ABORT, 'refused {MARKER}'); END"
                    )
                )
            else:
                connection.execute(
                    text(
                        "CREATE FUNCTION refuse_marker() RETURNS trigger AS $$ BEGIN "
                        f"RAISE EXCEPTION 'refused {MARKER}'; END $$ LANGUAGE plpgsql"
                    )
                )
                connection.execute(
                    text(
                        "CREATE TRIGGER refuse_marker BEFORE INSERT ON tasks FOR EACH ROW "
                        f"WHEN (NEW.description = '{MARKER}') EXECUTE FUNCTION refuse_marker()"
                    )
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize(("level", "log_format"), [("INFO", "text"), ("DEBUG", "json")])
def test_the_log_holds_no_caller_input_and_no_secret(
    start_server: Callable[..., ServerProcess], level: str, log_format: str
) -> None:
    """At every level, in either format, access lines included."""
    server = start_server(
        "--sqlite-busy-timeout", "0.05", "--log-level", level, "--log-format", log_format
    )
    stub = server.stub()
    hostile_calls(stub)
    restore = break_the_writers_database(server)
    failed = 0
    for n in range(3):
        try:
            create(stub, task_id=f"{MARKER}-{n}", description=MARKER)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            # Lost before COMMIT: the caller learns that nothing was written.
            info = detail(error, error_details_pb2.ErrorInfo)
            assert info.metadata["outcome"] == "NOT_COMMITTED", info
            failed += 1
    restore()
    make_inserts_fail(server.database_url)
    for n in range(3, 6):
        try:
            create(server.stub(), task_id=f"{MARKER}-{n}", description=MARKER)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INTERNAL
            assert MARKER not in (error.details() or "")
            failed += 1
    hostile_calls(stub)
    secret = secret_of(server.database_url)
    assert server.stop() == 0
    log = server.log()
    assert failed >= 4, "the database never failed a write: the test proves nothing"
    assert "unexpected error in CreateTask" in log
    assert MARKER not in log, [line for line in log.splitlines() if MARKER in line][:3]
    assert secret not in log
    assert "/resinkit.v1.TaskService/CreateTask" in log  # the access lines were there
