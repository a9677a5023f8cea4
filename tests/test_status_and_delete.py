"""UpdateTaskStatus, DeleteTask and UndeleteTask through a real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, detail, error_reason, get, history, rpc_error, violated_fields

S = pb.TaskStatus


def move(stub: Any, task_id: str, status: int, **fields: Any) -> pb.Task:
    return stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task_id, status=status, **fields)
    )


def walk(stub: Any, task_id: str, *statuses: int) -> pb.Task:
    task = None
    for status in statuses:
        task = move(stub, task_id, status)
    assert task is not None
    return task


def event_types(stub: Any, task_id: str) -> list[str]:
    return [event.event_type for event in history(stub, task_id)]


def status_names(text: str) -> set[str]:
    """`allowed_next_statuses` metadata as bare names, whichever spelling the server uses."""
    return {name.strip().removeprefix("TASK_STATUS_") for name in text.split(",") if name.strip()}


def error_metadata(error: grpc.RpcError) -> dict[str, str]:
    info: error_details_pb2.ErrorInfo = detail(error, error_details_pb2.ErrorInfo)
    assert info.domain == "resinkit.v1"
    return dict(info.metadata)


# UpdateTaskStatus


def test_a_task_walks_from_pending_through_submitted_and_running_to_completed(stub: Any) -> None:
    task = create(stub)
    steps = [S.TASK_STATUS_SUBMITTED, S.TASK_STATUS_RUNNING, S.TASK_STATUS_COMPLETED]
    etags = {task.etag}
    for status in steps:
        moved = move(stub, task.task_id, status)
        assert moved.status == status
        assert get(stub, task.task_id) == moved
        etags.add(moved.etag)
    assert len(etags) == len(steps) + 1, "the etag changes on every move"
    changes = [event for event in history(stub, task.task_id) if event.event_type != "CREATED"]
    assert [(event.previous_status, event.new_status) for event in changes] == [
        (S.TASK_STATUS_PENDING, S.TASK_STATUS_SUBMITTED),
        (S.TASK_STATUS_SUBMITTED, S.TASK_STATUS_RUNNING),
        (S.TASK_STATUS_RUNNING, S.TASK_STATUS_COMPLETED),
    ]
    assert {event.event_type for event in changes} == {"STATUS_CHANGE"}


def test_started_at_is_set_once_by_the_first_running_and_finished_at_by_a_terminal_status(
    stub: Any,
) -> None:
    task = create(stub)
    assert not task.HasField("started_at") and not task.HasField("finished_at")
    submitted = move(stub, task.task_id, S.TASK_STATUS_SUBMITTED)
    assert not submitted.HasField("started_at") and not submitted.HasField("finished_at")
    running = move(stub, task.task_id, S.TASK_STATUS_RUNNING)
    assert running.HasField("started_at") and not running.HasField("finished_at")
    started = running.started_at.ToDatetime()
    assert submitted.updated_at.ToDatetime() < started <= running.updated_at.ToDatetime()
    cancelling = move(stub, task.task_id, S.TASK_STATUS_CANCELLING)
    assert cancelling.started_at == running.started_at
    assert not cancelling.HasField("finished_at")
    completed = move(stub, task.task_id, S.TASK_STATUS_COMPLETED)
    assert completed.started_at == running.started_at
    assert completed.HasField("finished_at")
    assert completed.finished_at.ToDatetime() > running.started_at.ToDatetime()
    # Nothing leads back to RUNNING: started_at can never move again.
    rpc_error(
        lambda: move(stub, task.task_id, S.TASK_STATUS_RUNNING),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert get(stub, task.task_id).started_at == running.started_at


def test_a_task_cancelled_before_it_ran_has_finished_at_but_no_started_at(stub: Any) -> None:
    task = create(stub)
    cancelled = move(stub, task.task_id, S.TASK_STATUS_CANCELLED)
    assert cancelled.HasField("finished_at") and not cancelled.HasField("started_at")


def test_steps_may_be_skipped_from_pending_straight_to_running(stub: Any) -> None:
    task = create(stub)
    running = move(stub, task.task_id, S.TASK_STATUS_RUNNING)
    assert running.status == S.TASK_STATUS_RUNNING and running.HasField("started_at")
    last = history(stub, task.task_id)[-1]
    assert (last.previous_status, last.new_status) == (S.TASK_STATUS_PENDING, S.TASK_STATUS_RUNNING)


@pytest.mark.parametrize(
    ("path", "requested", "allowed"),
    [
        (
            [S.TASK_STATUS_RUNNING],
            S.TASK_STATUS_PENDING,
            {"COMPLETED", "FAILED", "CANCELLING", "CANCELLED"},
        ),
        ([S.TASK_STATUS_RUNNING, S.TASK_STATUS_COMPLETED], S.TASK_STATUS_RUNNING, set()),
        (
            [S.TASK_STATUS_RUNNING, S.TASK_STATUS_CANCELLING],
            S.TASK_STATUS_RUNNING,
            {"COMPLETED", "FAILED", "CANCELLED"},
        ),
    ],
    ids=["running-to-pending", "completed-to-running", "cancelling-to-running"],
)
def test_an_illegal_move_is_failed_precondition_listing_the_allowed_statuses_and_changes_nothing(
    stub: Any, path: list[int], requested: int, allowed: set[str]
) -> None:
    task = create(stub)
    before = walk(stub, task.task_id, *path)
    events_before = history(stub, task.task_id)
    error = rpc_error(
        lambda: move(stub, task.task_id, requested, actor="intruder"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    metadata = error_metadata(error)
    assert "allowed_next_statuses" in metadata, metadata
    assert status_names(metadata["allowed_next_statuses"]) == allowed
    assert get(stub, task.task_id) == before
    assert history(stub, task.task_id) == events_before


def test_error_info_given_with_a_failure_is_stored_on_the_task_and_in_the_event(
    stub: Any,
) -> None:
    task = create(stub)
    failed = stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(
            task_id=task.task_id,
            status=S.TASK_STATUS_FAILED,
            error_info={"message": "boom", "code": 7},
        )
    )
    assert dict(failed.error_info) == {"message": "boom", "code": 7}
    assert get(stub, task.task_id).error_info == failed.error_info
    event = history(stub, task.task_id)[-1]
    assert event.event_type == "STATUS_CHANGE"
    assert dict(event.event_data) == {"error_info": {"message": "boom", "code": 7}}


def test_result_summary_and_execution_details_are_stored_on_the_task_and_in_the_event(
    stub: Any,
) -> None:
    task = create(stub)
    running = stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(
            task_id=task.task_id,
            status=S.TASK_STATUS_RUNNING,
            execution_details={"flink_job_id": "a1b2"},
            progress_details={"pct": 0},
        )
    )
    assert dict(running.execution_details) == {"flink_job_id": "a1b2"}
    assert dict(running.progress_details) == {"pct": 0}
    completed = stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(
            task_id=task.task_id,
            status=S.TASK_STATUS_COMPLETED,
            result_summary={"rows": 42, "ok": True},
        )
    )
    assert dict(completed.result_summary) == {"rows": 42, "ok": True}
    # Details not given with a change are kept.
    assert completed.execution_details == running.execution_details
    assert get(stub, task.task_id) == completed
    to_running, to_completed = history(stub, task.task_id)[1:]
    assert to_running.event_data["execution_details"] == running.execution_details
    assert to_running.event_data["progress_details"] == running.progress_details
    assert set(to_running.event_data.keys()) == {"execution_details", "progress_details"}
    assert dict(to_completed.event_data) == {"result_summary": {"rows": 42, "ok": True}}


def test_the_actor_is_recorded_in_the_status_change_event(stub: Any) -> None:
    task = create(stub)
    move(stub, task.task_id, S.TASK_STATUS_SUBMITTED, actor="executor-7")
    move(stub, task.task_id, S.TASK_STATUS_RUNNING)
    submitted, running = history(stub, task.task_id)[1:]
    assert submitted.actor == "executor-7"
    assert running.actor == ""


@pytest.mark.parametrize("status", [S.TASK_STATUS_UNSPECIFIED, 99], ids=["unspecified", "99"])
def test_a_missing_or_unknown_status_is_invalid_argument_and_changes_nothing(
    stub: Any, status: int
) -> None:
    task = create(stub)
    error = rpc_error(lambda: move(stub, task.task_id, status), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"status"}
    assert get(stub, task.task_id) == task
    assert event_types(stub, task.task_id) == ["CREATED"]


def test_a_status_change_with_a_stale_etag_is_aborted_and_the_current_etag_succeeds(
    stub: Any,
) -> None:
    task = create(stub)
    submitted = move(stub, task.task_id, S.TASK_STATUS_SUBMITTED, etag=task.etag)
    error = rpc_error(
        lambda: move(stub, task.task_id, S.TASK_STATUS_RUNNING, etag=task.etag),
        grpc.StatusCode.ABORTED,
    )
    assert error_reason(error) == "ETAG_MISMATCH"
    assert get(stub, task.task_id) == submitted
    running = move(stub, task.task_id, S.TASK_STATUS_RUNNING, etag=submitted.etag)
    assert running.status == S.TASK_STATUS_RUNNING
    assert event_types(stub, task.task_id) == ["CREATED", "STATUS_CHANGE", "STATUS_CHANGE"]


def test_a_status_change_on_an_unknown_task_is_not_found(
    stub: Any, unique: Callable[[str], str]
) -> None:
    error = rpc_error(
        lambda: move(stub, unique("missing"), S.TASK_STATUS_RUNNING), grpc.StatusCode.NOT_FOUND
    )
    assert error_reason(error) == "TASK_NOT_FOUND"


# DeleteTask and UndeleteTask


def test_delete_sets_active_false_and_get_task_still_returns_the_task(
    stub: Any, unique: Callable[[str], str]
) -> None:
    task_type = unique("deletable")
    task = create(stub, task_type, task_name="soon gone")
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    assert not deleted.active
    assert deleted.etag != task.etag
    assert deleted.task_name == "soon gone" and deleted.status == task.status
    assert get(stub, task.task_id) == deleted
    assert event_types(stub, task.task_id) == ["CREATED", "DELETED"]
    listed = pb.ListTasksRequest(filter=pb.TaskFilter(task_types=[task_type]))
    assert list(stub.ListTasks(listed).tasks) == []
    listed.show_deleted = True
    assert [t.task_id for t in stub.ListTasks(listed).tasks] == [task.task_id]


def test_deleting_a_deleted_task_is_failed_precondition_and_writes_no_event(stub: Any) -> None:
    task = create(stub)
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    error = rpc_error(
        lambda: stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "TASK_ALREADY_DELETED"
    assert get(stub, task.task_id) == deleted
    assert event_types(stub, task.task_id) == ["CREATED", "DELETED"]


def test_undelete_restores_a_deleted_task_and_it_can_be_changed_again(stub: Any) -> None:
    task = create(stub, task_name="back")
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    restored = stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=task.task_id))
    assert restored.active
    assert restored.etag not in (task.etag, deleted.etag)
    assert restored.task_name == "back"
    assert get(stub, task.task_id) == restored
    renamed = stub.UpdateTask(
        pb.UpdateTaskRequest(
            task=pb.Task(task_id=task.task_id, task_name="renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["task_name"]),
        )
    )
    assert renamed.task_name == "renamed"
    assert move(stub, task.task_id, S.TASK_STATUS_RUNNING).status == S.TASK_STATUS_RUNNING
    assert event_types(stub, task.task_id) == [
        "CREATED",
        "DELETED",
        "UNDELETED",
        "UPDATED",
        "STATUS_CHANGE",
    ]


def test_undeleting_an_active_task_is_failed_precondition_and_writes_no_event(stub: Any) -> None:
    task = create(stub)
    error = rpc_error(
        lambda: stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=task.task_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "TASK_NOT_DELETED"
    assert get(stub, task.task_id) == task
    assert event_types(stub, task.task_id) == ["CREATED"]


def test_delete_with_a_stale_etag_is_aborted_and_the_task_stays_active(stub: Any) -> None:
    task = create(stub)
    submitted = move(stub, task.task_id, S.TASK_STATUS_SUBMITTED)
    error = rpc_error(
        lambda: stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id, etag=task.etag)),
        grpc.StatusCode.ABORTED,
    )
    assert error_reason(error) == "ETAG_MISMATCH"
    assert get(stub, task.task_id) == submitted
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id, etag=submitted.etag))
    assert not deleted.active


def test_a_status_change_on_a_deleted_task_is_failed_precondition_and_changes_nothing(
    stub: Any,
) -> None:
    task = create(stub)
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    rpc_error(
        lambda: move(stub, task.task_id, S.TASK_STATUS_RUNNING),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert get(stub, task.task_id) == deleted
    assert event_types(stub, task.task_id) == ["CREATED", "DELETED"]


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, task_id: stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id)),
        lambda stub, task_id: stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=task_id)),
    ],
    ids=["delete", "undelete"],
)
def test_deleting_or_undeleting_an_unknown_task_is_not_found(
    stub: Any, unique: Callable[[str], str], call: Callable[[Any, str], pb.Task]
) -> None:
    missing = unique("missing")
    error = rpc_error(lambda: call(stub, missing), grpc.StatusCode.NOT_FOUND)
    assert error_reason(error) == "TASK_NOT_FOUND"
    rpc_error(lambda: get(stub, missing), grpc.StatusCode.NOT_FOUND)
