"""Responses stay inside what a default client accepts (4 MiB): a task's stored size is bounded
(each JSON field at most 512 KiB encoded), and pages stop early, with a token, before they
outgrow a response; paging still returns every row exactly once."""

from __future__ import annotations

from typing import Any

import grpc

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, rpc_error, violated_fields

DEFAULT_CLIENT_LIMIT = 4 * 1024 * 1024
JSON_FIELDS = (
    "submitted_configs",
    "execution_details",
    "progress_details",
)
# notification_config has a schema (at most 10 webhooks, each URL at most 2048 characters);
# these hear only UNDELETED, which the tests here never cause: nothing is ever sent.
LARGEST_NOTIFICATION_CONFIG = {
    "webhooks": [
        {"url": f"https://hooks.example/{n}/" + "x" * 2000, "event_types": ["UNDELETED"]}
        for n in range(10)
    ]
}


def blob(size: int) -> dict[str, Any]:
    return {"blob": "x" * size}


def test_a_json_field_over_the_bound_is_invalid_and_writes_nothing(stub: Any) -> None:
    too_big = blob(600_000)
    error = rpc_error(
        lambda: create(stub, "size-refused", submitted_configs=too_big),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "task.submitted_configs" in violated_fields(error)
    task = create(stub, "size-refused")
    update = pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id))
    update.task.execution_details.update(too_big)
    update.update_mask.paths.append("execution_details")
    error = rpc_error(lambda: stub.UpdateTask(update), grpc.StatusCode.INVALID_ARGUMENT)
    assert "task.execution_details" in violated_fields(error)
    status = pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_FAILED)
    status.error_info.update(too_big)
    error = rpc_error(lambda: stub.UpdateTaskStatus(status), grpc.StatusCode.INVALID_ARGUMENT)
    assert "error_info" in violated_fields(error)
    assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).etag == task.etag


def largest_task(stub: Any, task_type: str) -> pb.Task:
    """A task with every JSON field near its bound: about 2.5 MiB."""
    task = pb.Task(task_type=task_type)
    for name in JSON_FIELDS:
        getattr(task, name).update(blob(500_000))
    task.notification_config.update(LARGEST_NOTIFICATION_CONFIG)
    made = stub.CreateTask(pb.CreateTaskRequest(task=task))
    status = pb.UpdateTaskStatusRequest(task_id=made.task_id, status=pb.TASK_STATUS_FAILED)
    status.error_info.update(blob(500_000))
    status.result_summary.update(blob(500_000))
    return stub.UpdateTaskStatus(status)


def test_full_pages_of_the_largest_tasks_stay_inside_a_default_client(stub: Any) -> None:
    made = [largest_task(stub, "size-full").task_id for _ in range(6)]
    got = stub.GetTask(pb.GetTaskRequest(task_id=made[0]))  # a default client, 4 MiB
    assert got.ByteSize() < DEFAULT_CLIENT_LIMIT and got.error_info["blob"]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListTasks(
            pb.ListTasksRequest(
                filter=pb.TaskFilter(task_types=["size-full"]),
                view=pb.TASK_VIEW_FULL,
                page_size=50,
                page_token=token,
            )
        )
        assert page.ByteSize() < DEFAULT_CLIENT_LIMIT
        seen += [task.task_id for task in page.tasks]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    assert pages >= 6  # one such task per page


def test_basic_pages_of_long_texts_stop_early_and_miss_nothing(stub: Any) -> None:
    made = [
        create(
            stub,
            "size-basic",
            description="d" * 4096,
            tags=[f"{n:03d}" + "t" * 124 for n in range(64)],
        ).task_id
        for _ in range(400)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListTasks(
            pb.ListTasksRequest(
                filter=pb.TaskFilter(task_types=["size-basic"]), page_size=1000, page_token=token
            )
        )
        assert 0 < page.ByteSize() < DEFAULT_CLIENT_LIMIT
        seen += [task.task_id for task in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)


def test_event_pages_of_large_events_stop_early_and_miss_nothing(stub: Any) -> None:
    task = create(stub, "size-events")
    for status in (
        pb.TASK_STATUS_SUBMITTED,
        pb.TASK_STATUS_VALIDATING,
        pb.TASK_STATUS_PREPARING,
        pb.TASK_STATUS_BUILDING,
        pb.TASK_STATUS_RUNNING,
        pb.TASK_STATUS_COMPLETED,
    ):
        request = pb.UpdateTaskStatusRequest(task_id=task.task_id, status=status)
        request.execution_details.update(blob(500_000))
        request.progress_details.update(blob(500_000))
        stub.UpdateTaskStatus(request)  # an event of about 1 MB
    seen: list[int] = []
    token = ""
    while True:
        page = stub.ListTaskEvents(
            pb.ListTaskEventsRequest(task_id=task.task_id, page_size=1000, page_token=token)
        )
        assert page.ByteSize() < DEFAULT_CLIENT_LIMIT
        seen += [event.event_id for event in page.events]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 7 and seen == sorted(seen)


def test_the_largest_request_accepted_is_a_setting(
    start_server: Any,
) -> None:
    """Beyond --max-receive-message-bytes gRPC refuses the request (RESOURCE_EXHAUSTED); within
    it, the request meets the field bounds like any other."""
    huge = pb.CreateTaskRequest(task=pb.Task(task_type="huge"))
    huge.task.submitted_configs.update(blob(5_000_000))
    small = start_server()
    error = rpc_error(lambda: small.stub().CreateTask(huge), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    large = start_server("--max-receive-message-bytes", str(8 * 1024 * 1024))
    error = rpc_error(lambda: large.stub().CreateTask(huge), grpc.StatusCode.INVALID_ARGUMENT)
    assert "task.submitted_configs" in violated_fields(error)
