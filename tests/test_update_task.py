"""UpdateTask through a real server: field masks, etags, no-op updates and UPDATED events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import (
    create,
    error_reason,
    get,
    history,
    new_task,
    rpc_error,
    violated_fields,
)

MUTABLE_FIELDS = {
    "task_name",
    "description",
    "priority",
    "tags",
    "notification_config",
    "expires_at",
    "progress_details",
    "execution_details",
}


def update(stub: Any, task: pb.Task, *paths: str) -> pb.Task:
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    return stub.UpdateTask(pb.UpdateTaskRequest(task=task, update_mask=mask))


def changes(task_id: str, etag: str = "", **fields: Any) -> pb.Task:
    """A Task message naming `task_id` with only `fields` set (Struct fields from dicts)."""
    task = new_task(fields.pop("task_type", ""), **fields)
    task.task_id = task_id
    task.etag = etag
    return task


def changed_fields(event: pb.TaskEvent) -> list[str]:
    assert event.event_type == "UPDATED"
    return sorted(event.event_data["fields"])


def test_an_explicit_mask_changes_only_the_masked_fields_and_returns_the_new_values(
    stub: Any,
) -> None:
    before = create(stub, task_name="before", description="kept", priority=1, tags=["a"])
    after = update(
        stub,
        changes(before.task_id, task_name="after", description="ignored", priority=9, tags=["b"]),
        "task_name",
        "priority",
    )
    assert (after.task_name, after.priority) == ("after", 9)
    assert (after.description, list(after.tags)) == ("kept", ["a"])
    assert after.updated_at.ToDatetime() > before.updated_at.ToDatetime()
    assert after.created_at == before.created_at
    assert after.etag and after.etag != before.etag
    assert after.status == before.status and after.task_type == before.task_type
    assert get(stub, before.task_id) == after


def test_struct_and_timestamp_fields_are_updated_through_the_mask(stub: Any) -> None:
    before = create(stub, notification_config={"webhooks": [{"url": "https://old.example/hook"}]})
    expires = timestamp_pb2.Timestamp(seconds=4_102_444_800)  # 2100-01-01T00:00:00Z
    wanted = changes(
        before.task_id,
        notification_config={
            "webhooks": [{"url": "https://new.example/hook", "statuses": ["TASK_STATUS_FAILED"]}]
        },
        execution_details={"flink_job_id": "a1b2"},
    )
    wanted.expires_at.CopyFrom(expires)
    after = update(stub, wanted, "notification_config", "expires_at", "execution_details")
    assert json_format.MessageToDict(after.notification_config) == {
        "webhooks": [{"url": "https://new.example/hook", "statuses": ["TASK_STATUS_FAILED"]}]
    }
    assert after.execution_details["flink_job_id"] == "a1b2"
    assert after.expires_at == expires
    assert get(stub, before.task_id) == after


def test_an_empty_mask_updates_the_mutable_fields_that_are_set(stub: Any) -> None:
    before = create(stub, task_name="n1", description="d", priority=3, tags=["x"])
    after = update(
        stub,
        changes(before.task_id, task_name="n2", tags=["y"], progress_details={"pct": 50}),
    )
    assert (after.task_name, list(after.tags)) == ("n2", ["y"])
    assert dict(after.progress_details) == {"pct": 50}
    # Fields left at their default in the request are not touched.
    assert (after.description, after.priority) == ("d", 3)
    events = history(stub, before.task_id)
    assert [event.event_type for event in events] == ["CREATED", "UPDATED"]
    assert changed_fields(events[-1]) == ["progress_details", "tags", "task_name"]


def test_a_star_mask_updates_every_mutable_field_and_clears_the_unset_ones(
    stub: Any, unique: Callable[[str], str]
) -> None:
    before = create(
        stub,
        task_name="full",
        description="described",
        priority=5,
        tags=["t1", "t2"],
        notification_config={"webhooks": [{"url": "https://a.example/hook"}]},
        execution_details={"job": "j"},
        progress_details={"pct": 10},
        submitted_configs={"sql": "SELECT 1", "task_timeout_seconds": 600},
    )
    assert before.HasField("expires_at")
    after = update(stub, changes(before.task_id, task_name="only"), "*")
    assert after.task_name == "only"
    assert (after.description, after.priority, list(after.tags)) == ("", 0, [])
    for cleared in ("notification_config", "execution_details", "progress_details", "expires_at"):
        assert not after.HasField(cleared), cleared
    # Immutable fields are not part of `*`.
    assert after.submitted_configs == before.submitted_configs
    assert after.task_type == before.task_type and after.created_by == before.created_by
    assert get(stub, before.task_id) == after
    assert changed_fields(history(stub, before.task_id)[-1]) == sorted(MUTABLE_FIELDS)


@pytest.mark.parametrize("path", ["status", "task_type", "created_at", "bogus"])
def test_a_mask_naming_a_field_that_cannot_be_updated_is_invalid_argument(
    stub: Any, path: str
) -> None:
    before = create(stub, task_name="untouched")
    wanted = changes(before.task_id, task_name="changed", task_type="other")
    wanted.status = pb.TASK_STATUS_RUNNING
    wanted.created_at.GetCurrentTime()
    error = rpc_error(
        lambda: update(stub, wanted, "task_name", path), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"update_mask"}
    assert get(stub, before.task_id) == before
    assert [event.event_type for event in history(stub, before.task_id)] == ["CREATED"]


def test_a_star_mixed_with_other_paths_is_invalid_argument(stub: Any) -> None:
    before = create(stub, task_name="untouched")
    error = rpc_error(
        lambda: update(stub, changes(before.task_id, task_name="changed"), "*", "task_name"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"update_mask"}
    assert get(stub, before.task_id) == before


def test_a_stale_etag_is_aborted_and_changes_nothing(stub: Any) -> None:
    created = create(stub, task_name="v1")
    current = update(stub, changes(created.task_id, task_name="v2"), "task_name")
    error = rpc_error(
        lambda: update(
            stub, changes(created.task_id, etag=created.etag, task_name="v3"), "task_name"
        ),
        grpc.StatusCode.ABORTED,
    )
    assert error_reason(error) == "ETAG_MISMATCH"
    assert get(stub, created.task_id) == current
    assert [event.event_type for event in history(stub, created.task_id)] == [
        "CREATED",
        "UPDATED",
    ]


def test_the_current_etag_is_accepted(stub: Any) -> None:
    created = create(stub, task_name="v1")
    first = update(stub, changes(created.task_id, etag=created.etag, task_name="v2"), "task_name")
    second = update(stub, changes(created.task_id, etag=first.etag, task_name="v3"), "task_name")
    assert (first.task_name, second.task_name) == ("v2", "v3")
    assert len({created.etag, first.etag, second.etag}) == 3
    assert get(stub, created.task_id) == second


def test_an_update_that_changes_nothing_returns_the_task_unchanged_and_writes_no_event(
    stub: Any,
) -> None:
    created = create(stub, task_name="same", priority=2, tags=["t"], progress_details={"p": 1})
    again = update(
        stub,
        changes(
            created.task_id,
            etag=created.etag,
            task_name="same",
            priority=2,
            tags=["t"],
            progress_details={"p": 1},
        ),
        "task_name",
        "priority",
        "tags",
        "progress_details",
    )
    assert again == created
    assert get(stub, created.task_id) == created
    assert [event.event_type for event in history(stub, created.task_id)] == ["CREATED"]


def test_updating_an_unknown_task_is_not_found(stub: Any, unique: Callable[[str], str]) -> None:
    missing = unique("missing")
    error = rpc_error(
        lambda: update(stub, changes(missing, task_name="x"), "task_name"),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_reason(error) == "TASK_NOT_FOUND"
    rpc_error(lambda: get(stub, missing), grpc.StatusCode.NOT_FOUND)


def test_updating_a_deleted_task_is_failed_precondition_and_changes_nothing(stub: Any) -> None:
    created = create(stub, task_name="before")
    deleted = stub.DeleteTask(pb.DeleteTaskRequest(task_id=created.task_id))
    rpc_error(
        lambda: update(stub, changes(created.task_id, task_name="after"), "task_name"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert get(stub, created.task_id) == deleted
    assert [event.event_type for event in history(stub, created.task_id)] == [
        "CREATED",
        "DELETED",
    ]


def test_each_effective_update_writes_one_updated_event_listing_exactly_the_changed_fields(
    stub: Any,
) -> None:
    task = create(stub, task_name="a", priority=1, description="d")
    # priority is named but already 1: only task_name changes.
    update(stub, changes(task.task_id, task_name="b", priority=1), "task_name", "priority")
    update(stub, changes(task.task_id, description="e", tags=["new"]), "description", "tags")
    update(stub, changes(task.task_id, task_name="b"), "task_name")  # no change: no event
    update(stub, changes(task.task_id, priority=7), "priority")
    events = history(stub, task.task_id)
    assert [event.event_type for event in events] == ["CREATED", "UPDATED", "UPDATED", "UPDATED"]
    assert [changed_fields(event) for event in events[1:]] == [
        ["task_name"],
        ["description", "tags"],
        ["priority"],
    ]
    assert all(event.task_id == task.task_id for event in events)
    assert [event.event_id for event in events] == sorted({event.event_id for event in events})
