"""CreateTask and GetTask through a real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, error_reason, new_task, rpc_error, violated_fields


def test_create_assigns_an_id_and_starts_pending(stub: Any) -> None:
    task = create(stub, task_name="nightly", submitted_configs={"sql": "SELECT 1"})
    assert uuid.UUID(task.task_id).version == 7  # time-ordered: see api/task_ids.py
    assert task.status == pb.TASK_STATUS_PENDING
    assert task.active and task.etag
    assert task.created_by == "system"
    assert task.created_at == task.updated_at
    assert dict(task.submitted_configs) == {"sql": "SELECT 1"}
    assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task


def test_client_chosen_id_is_kept_and_a_taken_one_is_already_exists(
    stub: Any, unique: Callable[[str], str]
) -> None:
    task_id = unique("job")
    assert create(stub, task_id=task_id).task_id == task_id
    error = rpc_error(lambda: create(stub, task_id=task_id), grpc.StatusCode.ALREADY_EXISTS)
    assert error_reason(error) == "TASK_ALREADY_EXISTS"


def test_a_retry_with_the_same_request_id_returns_the_first_task(
    stub: Any, unique: Callable[[str], str]
) -> None:
    request_id = unique("req")
    first = create(stub, request_id=request_id, task_name="once")
    again = create(stub, request_id=request_id, task_name="once")
    assert again == first
    history = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=first.task_id)).events
    assert [event.event_type for event in history] == ["CREATED"]


def test_expires_at_is_derived_from_the_task_timeout(stub: Any) -> None:
    task = create(stub, submitted_configs={"task_timeout_seconds": 90})
    lifetime = task.expires_at.ToDatetime() - task.created_at.ToDatetime()
    assert lifetime.total_seconds() == 90
    # Integral numbers are stored as integers, as other tools reading the table expect.
    assert task.submitted_configs["task_timeout_seconds"] == 90


def test_timestamps_are_utc(stub: Any) -> None:
    task = create(stub)
    created = task.created_at.ToDatetime()
    assert abs((created - task.updated_at.ToDatetime()).total_seconds()) < 1
    assert 2020 < created.year < 2100


def test_get_unknown_task_is_not_found(stub: Any) -> None:
    error = rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id="no-such-task")), grpc.StatusCode.NOT_FOUND
    )
    assert error_reason(error) == "TASK_NOT_FOUND"
    assert "no-such-task" in error.details()


def test_basic_view_leaves_the_large_fields_out(stub: Any) -> None:
    task = create(stub, submitted_configs={"sql": "SELECT 2"}, tags=["x"])
    basic = stub.GetTask(pb.GetTaskRequest(task_id=task.task_id, view=pb.TASK_VIEW_BASIC))
    assert not basic.HasField("submitted_configs")
    assert list(basic.tags) == ["x"] and basic.etag == task.etag


def test_invalid_create_lists_every_bad_field_and_writes_nothing(stub: Any) -> None:
    task = new_task(
        "",
        status=pb.TASK_STATUS_RUNNING,
        tags=["ok", ""],
        submitted_configs={"task_timeout_seconds": -5},
    )
    error = rpc_error(
        lambda: stub.CreateTask(pb.CreateTaskRequest(task=task, task_id="bad id!")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {
        "task_id",
        "task.task_type",
        "task.status",
        "task.tags",
        "task.submitted_configs.task_timeout_seconds",
    }
    assert "Traceback" not in error.details()
    rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id="bad id!")), grpc.StatusCode.INVALID_ARGUMENT
    )


def test_non_finite_numbers_are_refused(stub: Any) -> None:
    task = new_task()
    task.submitted_configs.update({"x": float("nan")})
    error = rpc_error(
        lambda: stub.CreateTask(pb.CreateTaskRequest(task=task)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"task.submitted_configs"}


def test_nested_json_round_trips(stub: Any) -> None:
    configs = struct_pb2.Struct()
    configs.update({"a": {"b": [1, 2.5, "three", True, None]}, "ü": "ÿ"})
    task = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type="t", submitted_configs=configs))
    )
    assert task.submitted_configs == configs


def test_nul_characters_are_invalid_argument_on_every_backend(stub: Any) -> None:
    task = new_task("type\x00", tags=["a\x00b"], task_name="n\x00")
    task.submitted_configs.update({"sql": "SELECT '\x00'"})
    error = rpc_error(
        lambda: stub.CreateTask(pb.CreateTaskRequest(task=task)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {
        "task.task_type",
        "task.tags",
        "task.task_name",
        "task.submitted_configs",
    }
    error = rpc_error(
        lambda: stub.ListTasks(pb.ListTasksRequest(filter=pb.TaskFilter(name_contains="x\x00"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"filter.name_contains"}
