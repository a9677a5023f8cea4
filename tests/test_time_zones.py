"""Timestamps at both ends of the range every backend stores, through a server whose machine
(TZ) and database (PostgreSQL's TimeZone) are not UTC: sessions are pinned to UTC, so no row
can become unreadable (before: INTERNAL for every call touching it, 'timestamp too small')."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from google.protobuf import timestamp_pb2
from sqlalchemy.engine import make_url

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.servers import ServerProcess

EXTREMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, 13, 30, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(9999, 12, 31, 10, 0, tzinfo=UTC),
]


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def east_of_utc(database_url: str) -> None:
    """PostgreSQL: the database's own TimeZone, 14 hours east of UTC."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(
            f"ALTER DATABASE \"{url.database}\" SET timezone TO 'Pacific/Kiritimati'"
        )


def test_timestamps_at_the_ends_of_the_range_read_back_under_any_time_zone(
    start_server: Callable[..., ServerProcess], new_database_url: Callable[[], str]
) -> None:
    url = new_database_url()
    east_of_utc(url)
    server = start_server(database_url=url, TZ="America/Adak")  # 10 hours west of UTC
    stub: Any = server.stub()
    ids = []
    for n, moment in enumerate(EXTREMES):
        task = stub.CreateTask(
            pb.CreateTaskRequest(
                task_id=f"edge-{n}", task=pb.Task(task_type="tz", expires_at=stamp(moment))
            )
        )
        ids.append(task.task_id)
        assert task.expires_at.ToDatetime(tzinfo=UTC) == moment
    for task_id, moment in zip(ids, EXTREMES, strict=True):
        got = stub.GetTask(pb.GetTaskRequest(task_id=task_id))
        assert got.expires_at.ToDatetime(tzinfo=UTC) == moment
        stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task_id, priority=3)))
    for view in (pb.TASK_VIEW_BASIC, pb.TASK_VIEW_FULL):
        page = stub.ListTasks(
            pb.ListTasksRequest(filter=pb.TaskFilter(task_types=["tz"]), view=view)
        )
        assert sorted(t.expires_at.ToDatetime(tzinfo=UTC) for t in page.tasks) == sorted(EXTREMES)
    # Filters at the ends of the range too.
    page = stub.ListTasks(
        pb.ListTasksRequest(
            filter=pb.TaskFilter(
                task_types=["tz"],
                created_after=stamp(EXTREMES[0]),
                created_before=stamp(EXTREMES[2]),
            )
        )
    )
    assert len(page.tasks) == len(EXTREMES)
    for task_id in ids:
        stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id))
