"""Hostile input through a real server: whatever a caller sends, the answer is a clear
INVALID_ARGUMENT naming the field, small enough to reach the caller (gRPC drops trailers over
16 KiB and the caller would see RESOURCE_EXHAUSTED "Stream removed" instead), and nothing is
written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, detail, error_reason, rpc_error, status_of, violated_fields

# What a status may take of the trailers: far below gRPC's 16 KiB hard limit.
MAX_STATUS_BYTES = 8 * 1024


def invalid(call: Callable[[], Any], field: str) -> grpc.RpcError:
    """Asserts `call` is INVALID_ARGUMENT naming `field`, with a bounded status."""
    error = rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in violated_fields(error), violated_fields(error)
    assert len(status_of(error).SerializeToString()) < MAX_STATUS_BYTES
    assert len(error.details() or "") <= 1024
    return error


def test_a_huge_etag_is_invalid_and_the_error_reaches_the_caller(stub: Any) -> None:
    task = create(stub)
    invalid(
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=1, etag="e" * 10_000))
        ),
        "task.etag",
    )
    invalid(
        lambda: stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id, etag="e" * 10_000)),
        "etag",
    )
    invalid(
        lambda: stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(
                task_id=task.task_id, status=pb.TASK_STATUS_RUNNING, etag="e" * 10_000
            )
        ),
        "etag",
    )
    assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task  # nothing written


def test_twenty_thousand_unknown_event_types_are_one_bounded_error(stub: Any) -> None:
    many = [f"NO_SUCH_TYPE_{n}" for n in range(20_000)]
    invalid(lambda: stub.ListTaskEvents(pb.ListTaskEventsRequest(event_types=many)), "event_types")
    error = invalid(
        lambda: list(stub.WatchTaskEvents(pb.WatchTaskEventsRequest(event_types=many), timeout=10)),
        "event_types",
    )
    assert error_reason(error) == "INVALID_ARGUMENT"


def test_limits_on_filter_lists_are_enforced(stub: Any) -> None:
    invalid(
        lambda: stub.ListTasks(
            pb.ListTasksRequest(filter=pb.TaskFilter(statuses=[pb.TASK_STATUS_RUNNING] * 101))
        ),
        "filter.statuses",
    )
    invalid(
        lambda: stub.ListTaskEvents(pb.ListTaskEventsRequest(event_types=["CREATED"] * 101)),
        "event_types",
    )
    # At the limit, fine.
    stub.ListTasks(
        pb.ListTasksRequest(filter=pb.TaskFilter(statuses=[pb.TASK_STATUS_RUNNING] * 100))
    )
    stub.ListTaskEvents(pb.ListTaskEventsRequest(event_types=["CREATED"] * 100))


def test_two_hundred_thousand_unknown_statuses_are_one_bounded_error(stub: Any) -> None:
    statuses: Any = [99 + n % 1000 for n in range(200_000)]
    invalid(
        lambda: stub.ListTasks(pb.ListTasksRequest(filter=pb.TaskFilter(statuses=statuses))),
        "filter.statuses",
    )
    few: Any = [99, 100, 101]
    error = invalid(
        lambda: stub.ListTasks(pb.ListTasksRequest(filter=pb.TaskFilter(statuses=few))),
        "filter.statuses",
    )
    bad_request = detail(error, error_details_pb2.BadRequest)
    assert len(bad_request.field_violations) == 3  # each named while they are few


def test_thousands_of_bad_mask_paths_are_one_bounded_error(stub: Any) -> None:
    task = create(stub)
    for paths in (
        [f"no_such_field_{n}" for n in range(5_000)],
        ["x" * 10_000 + str(n) for n in range(30)],  # few, but each enormous
    ):
        invalid(
            lambda paths=paths: stub.UpdateTask(
                pb.UpdateTaskRequest(
                    task=pb.Task(task_id=task.task_id, priority=2),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            ),
            "update_mask",
        )


def test_a_non_numeric_task_timeout_is_invalid_not_internal(stub: Any) -> None:
    for bad in ("soon", True, [], {"s": 1}, -1, 0):
        invalid(
            lambda bad=bad: create(stub, submitted_configs={"task_timeout_seconds": bad}),
            "task.submitted_configs.task_timeout_seconds",
        )
    made = create(stub, submitted_configs={"task_timeout_seconds": 90.5})
    assert made.submitted_configs["task_timeout_seconds"] == 90.5


def nested(levels: int, kind: str) -> Any:
    """A JSON value `levels` objects or arrays deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if kind == "object" else [value]
    return value


@pytest.mark.parametrize("kind", ["object", "array"])
def test_json_nested_past_the_documented_depth_is_invalid_naming_the_field(
    stub: Any, kind: str
) -> None:
    """32 levels, the field's own object counted, are stored and read back; 33 are refused,
    naming the field, for objects and arrays alike (past 33 objects protobuf itself refuses to
    decode, which names the request)."""
    deepest = {"k": nested(31, kind)}
    made = create(stub, submitted_configs=deepest)
    got = stub.GetTask(pb.GetTaskRequest(task_id=made.task_id)).submitted_configs
    assert json_format.MessageToDict(got) == deepest
    invalid(
        lambda: create(stub, submitted_configs={"k": nested(32, kind)}), "task.submitted_configs"
    )
    stuck = stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="deep")))
    request = pb.UpdateTaskStatusRequest(task_id=stuck.task_id, status=pb.TASK_STATUS_RUNNING)
    request.execution_details.update({"k": nested(32, kind)})
    invalid(lambda: stub.UpdateTaskStatus(request), "execution_details")
    assert stub.GetTask(pb.GetTaskRequest(task_id=stuck.task_id)).status == pb.TASK_STATUS_PENDING


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda stub: stub.GetTask(pb.GetTaskRequest(task_id="any", view=7)), "view"),
        (lambda stub: stub.ListTasks(pb.ListTasksRequest(view=9)), "view"),
        (
            lambda stub: stub.UpdateTaskStatus(
                pb.UpdateTaskStatusRequest(task_id="any", status=99)
            ),
            "status",
        ),
    ],
)
def test_every_enum_in_a_request_is_checked_alike(
    stub: Any, call: Callable[[Any], Any], field: str
) -> None:
    invalid(lambda: call(stub), field)


def test_transition_errors_name_statuses_as_the_api_does(stub: Any) -> None:
    task = create(stub)
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_COMPLETED)
    )
    error = rpc_error(
        lambda: stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_RUNNING)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    info = detail(error, error_details_pb2.ErrorInfo)
    assert info.metadata["current_status"] == "TASK_STATUS_COMPLETED"
    assert info.metadata["requested_status"] == "TASK_STATUS_RUNNING"
    assert "TASK_STATUS_COMPLETED" in (error.details() or "")


hostile_text = st.one_of(
    st.text(max_size=50),
    st.text(alphabet="\x00a", min_size=1, max_size=5),
    st.builds(lambda n, c: c * n, st.integers(1_000, 60_000), st.sampled_from("x\x00é")),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    etag=hostile_text,
    paths=st.lists(hostile_text, max_size=40),
    event_types=st.lists(hostile_text, max_size=300),
    order_by=hostile_text,
    page_token=hostile_text,
)
def test_no_hostile_request_is_answered_with_more_than_a_bounded_invalid_argument(
    stub: Any,
    etag: str,
    paths: list[str],
    event_types: list[str],
    order_by: str,
    page_token: str,
) -> None:
    calls = [
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id="hostile-target", priority=1, etag=etag),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        ),
        lambda: stub.ListTaskEvents(
            pb.ListTaskEventsRequest(event_types=event_types, page_token=page_token)
        ),
        lambda: stub.ListTasks(pb.ListTasksRequest(order_by=order_by, page_token=page_token)),
        lambda: stub.DeleteTask(pb.DeleteTaskRequest(task_id="hostile-target", etag=etag)),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            # Never INTERNAL, UNKNOWN or a status too large to arrive.
            assert error.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.ABORTED,
            ), (error.code(), (error.details() or "")[:200])
            assert len(status_of(error).SerializeToString()) < MAX_STATUS_BYTES


def test_every_bad_field_of_a_delete_is_named_at_once(stub: Any) -> None:
    error = invalid(
        lambda: stub.DeleteTask(
            pb.DeleteTaskRequest(task_id="not valid!", etag="e" * 100, actor="a" * 200)
        ),
        "task_id",
    )
    assert {"task_id", "etag", "actor"} <= violated_fields(error)


UNDECODABLE_PAYLOADS = {
    "bad UTF-8": b"\x0a\x01\xff",
    "truncated": b"\x0a\x05ab",
    "corrupt tag": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
}


def nested_struct_request(depth: int) -> bytes:
    """A CreateTaskRequest whose submitted_configs nests `depth` Structs, written by hand:
    protobuf refuses to build one that deep."""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + _varint(len(inner)) + inner  # Value.struct_value
        entry = b"\x0a\x01a" + b"\x12" + _varint(len(value)) + value  # fields["a"]
        inner = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields
    task = b"\x12\x01x" + b"\x62" + _varint(len(inner)) + inner  # task_type, submitted_configs
    return b"\x0a" + _varint(len(task)) + task


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_request_that_cannot_be_decoded_is_invalid_argument_not_unknown(
    server: Any,
) -> None:
    channel = server.channel()
    assert pb.CreateTaskRequest.FromString(nested_struct_request(8)).task.submitted_configs
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["TaskService"].methods]
    service = pb.DESCRIPTOR.services_by_name["TaskService"]
    for method in methods:
        payloads = dict(UNDECODABLE_PAYLOADS)
        first = service.methods_by_name[method].input_type.fields_by_number[1]
        if first.type not in (first.TYPE_STRING, first.TYPE_MESSAGE):
            # Field 1 is a number: length-delimited data there is an unknown field, which
            # protobuf keeps without looking inside, so nothing is there to be bad UTF-8.
            del payloads["bad UTF-8"]
        if method == "CreateTask":  # the request with a JSON field at its top
            payloads["nested 64 deep"] = nested_struct_request(64)
        path = f"/resinkit.v1.TaskService/{method}"
        streaming = method == "WatchTaskEvents"
        call = (channel.unary_stream if streaming else channel.unary_unary)(path)
        for name, payload in payloads.items():
            with pytest.raises(grpc.RpcError) as failed:
                answer = call(payload, timeout=10)
                if streaming:
                    list(answer)
            error = failed.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, name, error)
            assert "request" in violated_fields(error), (method, name)
            assert "DecodeError" not in (error.details() or "")
    log = server.log()
    assert "DecodeError" not in log and "Traceback" not in log
