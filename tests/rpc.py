"""Small helpers for calling the service and reading rich errors in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb


def rpc_error(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    """Runs `call`, asserts it fails with `code`, returns the error."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == code, error.details()
    return error


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    return status


def detail(error: grpc.RpcError, kind: type[Any]) -> Any:
    for packed in status_of(error).details:
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    raise AssertionError(f"no {kind.__name__} in the error details")


def error_reason(error: grpc.RpcError) -> str:
    info: error_details_pb2.ErrorInfo = detail(error, error_details_pb2.ErrorInfo)
    return info.reason


def violated_fields(error: grpc.RpcError) -> set[str]:
    bad: error_details_pb2.BadRequest = detail(error, error_details_pb2.BadRequest)
    return {violation.field for violation in bad.field_violations}


def new_task(task_type: str = "flink_sql", **fields: Any) -> pb.Task:
    configs = fields.pop("submitted_configs", None)
    task = pb.Task(task_type=task_type, **fields)
    if configs is not None:
        task.submitted_configs.update(configs)
    return task


def create(stub: Any, task_type: str = "flink_sql", **fields: Any) -> pb.Task:
    request_fields = {k: fields.pop(k) for k in ("task_id", "request_id") if k in fields}
    return stub.CreateTask(
        pb.CreateTaskRequest(task=new_task(task_type, **fields), **request_fields)
    )


def get(stub: Any, task_id: str) -> pb.Task:
    return stub.GetTask(pb.GetTaskRequest(task_id=task_id))


def history(stub: Any, task_id: str, timeout: float | None = None) -> list[pb.TaskEvent]:
    """Every event of a task, following page tokens to the end."""
    events: list[pb.TaskEvent] = []
    token = ""
    while True:
        request = pb.ListTaskEventsRequest(task_id=task_id, page_size=1000, page_token=token)
        page = stub.ListTaskEvents(request, timeout=timeout)
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events
