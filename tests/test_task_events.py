"""ListTaskEvents through a real server: a task's history, filters, pages and page tokens."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, error_reason, rpc_error, violated_fields

Unique = Callable[[str], str]


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def data(event: pb.TaskEvent) -> dict[str, Any]:
    return json_format.MessageToDict(event.event_data)


def move(stub: Any, task_id: str, status: int, **fields: Any) -> pb.Task:
    return stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task_id, status=status, **fields)
    )


def update(stub: Any, task: pb.Task, *paths: str) -> pb.Task:
    return stub.UpdateTask(
        pb.UpdateTaskRequest(task=task, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )


def event_pages(stub: Any, request: pb.ListTaskEventsRequest) -> list[list[pb.TaskEvent]]:
    """Every page of `request`, following next_page_token to the last page (the one without)."""
    pages: list[list[pb.TaskEvent]] = []
    while True:
        response = stub.ListTaskEvents(request)
        pages.append(list(response.events))
        if not response.next_page_token:
            return pages
        assert len(pages) < 500, "paging does not end"
        following = pb.ListTaskEventsRequest()
        following.CopyFrom(request)
        following.page_token = response.next_page_token
        request = following


def history(stub: Any, task_id: str = "", **fields: Any) -> list[pb.TaskEvent]:
    fields.setdefault("page_size", 1000)
    request = pb.ListTaskEventsRequest(task_id=task_id, **fields)
    return [event for page in event_pages(stub, request) for event in page]


def types_of(events: list[pb.TaskEvent]) -> list[str]:
    return [event.event_type for event in events]


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def lived_a_full_life(stub: Any, task_id: str) -> None:
    """Create, four status changes, an update, delete and undelete: eight events."""
    create(stub, "flink_sql", task_id=task_id, created_by="alice", task_name="nightly")
    move(stub, task_id, pb.TASK_STATUS_SUBMITTED, actor="scheduler")
    move(
        stub,
        task_id,
        pb.TASK_STATUS_RUNNING,
        actor="executor-7",
        execution_details=struct({"flink_job_id": "a1b2"}),
    )
    update(stub, pb.Task(task_id=task_id, priority=5, tags=["team-a"]), "priority", "tags")
    move(
        stub,
        task_id,
        pb.TASK_STATUS_COMPLETED,
        actor="executor-7",
        result_summary=struct({"rows": 42}),
    )
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id))
    stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=task_id))


LIFE = [
    "CREATED",
    "STATUS_CHANGE",
    "STATUS_CHANGE",
    "UPDATED",
    "STATUS_CHANGE",
    "DELETED",
    "UNDELETED",
]


# History


def test_a_tasks_history_lists_every_change_in_order_with_increasing_event_ids(
    stub: Any, unique: Unique
) -> None:
    task_id = unique("life")
    lived_a_full_life(stub, task_id)
    events = history(stub, task_id)
    assert types_of(events) == LIFE
    assert strictly_increasing([event.event_id for event in events])
    assert {event.task_id for event in events} == {task_id}
    assert {event.task_type for event in events} == {"flink_sql"}
    stamps = [event.timestamp.ToDatetime() for event in events]
    assert stamps == sorted(stamps)


def test_the_created_event_records_the_initial_status_the_creator_and_the_time(
    stub: Any, unique: Unique
) -> None:
    task = create(stub, "flink_cdc_pipeline", task_id=unique("born"), created_by="bob")
    (event,) = history(stub, task.task_id)
    assert event.event_type == "CREATED"
    assert event.new_status == pb.TASK_STATUS_PENDING
    assert event.previous_status == pb.TASK_STATUS_UNSPECIFIED
    assert event.actor == "bob"
    assert event.task_type == "flink_cdc_pipeline"
    assert event.timestamp == task.created_at


def test_status_change_events_record_previous_and_new_status_and_the_actor(
    stub: Any, unique: Unique
) -> None:
    task_id = unique("moves")
    lived_a_full_life(stub, task_id)
    changes = history(stub, task_id, event_types=["STATUS_CHANGE"])
    assert [(e.previous_status, e.new_status, e.actor) for e in changes] == [
        (pb.TASK_STATUS_PENDING, pb.TASK_STATUS_SUBMITTED, "scheduler"),
        (pb.TASK_STATUS_SUBMITTED, pb.TASK_STATUS_RUNNING, "executor-7"),
        (pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_COMPLETED, "executor-7"),
    ]
    final = stub.GetTask(pb.GetTaskRequest(task_id=task_id))
    assert changes[-1].timestamp == final.finished_at


def test_status_change_event_data_holds_the_details_given_with_the_change(
    stub: Any, unique: Unique
) -> None:
    failed = create(stub, task_id=unique("fails")).task_id
    move(stub, failed, pb.TASK_STATUS_SUBMITTED)
    move(
        stub,
        failed,
        pb.TASK_STATUS_FAILED,
        error_info=struct({"code": "OOM", "message": "out of memory", "retryable": False}),
        progress_details=struct({"percent": 40}),
    )
    completed = create(stub, task_id=unique("completes")).task_id
    move(stub, completed, pb.TASK_STATUS_COMPLETED, result_summary=struct({"rows": 42}))
    failed_events = history(stub, failed, event_types=["STATUS_CHANGE"])
    assert [data(event) for event in failed_events] == [
        {},
        {
            "error_info": {"code": "OOM", "message": "out of memory", "retryable": False},
            "progress_details": {"percent": 40},
        },
    ]
    (completion,) = history(stub, completed, event_types=["STATUS_CHANGE"])
    assert data(completion) == {"result_summary": {"rows": 42}}
    assert completion.actor == ""


def test_the_updated_event_lists_exactly_the_changed_fields(stub: Any, unique: Unique) -> None:
    task_id = unique("edited")
    create(stub, task_id=task_id, task_name="nightly", priority=1, tags=["a"])
    edit = pb.Task(task_id=task_id, task_name="nightly", priority=3, tags=["a"])
    edit.progress_details.update({"percent": 5})
    update(stub, edit, "task_name", "priority", "tags", "progress_details")
    # An update that changes nothing writes no event.
    update(stub, edit, "task_name", "priority", "tags", "progress_details")
    events = history(stub, task_id)
    assert types_of(events) == ["CREATED", "UPDATED"]
    (updated,) = history(stub, task_id, event_types=["UPDATED"])
    assert sorted(data(updated)) == ["fields"]
    assert sorted(data(updated)["fields"]) == ["priority", "progress_details"]
    assert updated.previous_status == pb.TASK_STATUS_UNSPECIFIED
    assert updated.new_status == pb.TASK_STATUS_UNSPECIFIED


def test_a_deleted_tasks_history_is_still_listed(stub: Any, unique: Unique) -> None:
    task_id = create(stub, task_id=unique("gone")).task_id
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id))
    assert types_of(history(stub, task_id)) == ["CREATED", "DELETED"]


# Filters


@pytest.mark.parametrize(
    "event_types",
    [
        ["STATUS_CHANGE"],
        ["DELETED", "UNDELETED"],
        ["CREATED", "UPDATED"],
        ["UPDATED", "UPDATED"],
        [],
    ],
)
def test_the_event_types_filter_keeps_only_events_of_those_types(
    stub: Any, unique: Unique, event_types: list[str]
) -> None:
    task_id = unique("typed")
    lived_a_full_life(stub, task_id)
    everything = history(stub, task_id)
    wanted = [event for event in everything if not event_types or event.event_type in event_types]
    assert history(stub, task_id, event_types=event_types) == wanted
    assert types_of(wanted) == [t for t in LIFE if not event_types or t in event_types]


@pytest.mark.parametrize("event_types", [["EXPLODED"], ["CREATED", "created"], [""]])
def test_an_unknown_event_type_is_invalid_argument(
    stub: Any, unique: Unique, event_types: list[str]
) -> None:
    task_id = create(stub, task_id=unique("known")).task_id
    request = pb.ListTaskEventsRequest(task_id=task_id, event_types=event_types)
    error = rpc_error(lambda: stub.ListTaskEvents(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"event_types"}


def test_the_history_of_an_unknown_task_is_not_found(stub: Any, unique: Unique) -> None:
    request = pb.ListTaskEventsRequest(task_id=unique("never-created"))
    error = rpc_error(lambda: stub.ListTaskEvents(request), grpc.StatusCode.NOT_FOUND)
    assert error_reason(error) == "TASK_NOT_FOUND"


def test_a_malformed_task_id_is_invalid_argument(stub: Any) -> None:
    request = pb.ListTaskEventsRequest(task_id="bad id!")
    error = rpc_error(lambda: stub.ListTaskEvents(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"task_id"}


def test_without_a_task_id_the_events_of_every_task_are_listed_in_event_id_order(
    stub: Any, unique: Unique
) -> None:
    first, second = unique("all-one"), unique("all-two")
    create(stub, task_id=first)
    create(stub, task_id=second)
    move(stub, second, pb.TASK_STATUS_RUNNING)
    move(stub, first, pb.TASK_STATUS_RUNNING)
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=second))
    everything = history(stub)
    assert strictly_increasing([event.event_id for event in everything])
    ours = [(e.task_id, e.event_type) for e in everything if e.task_id in (first, second)]
    assert ours == [
        (first, "CREATED"),
        (second, "CREATED"),
        (second, "STATUS_CHANGE"),
        (first, "STATUS_CHANGE"),
        (second, "DELETED"),
    ]
    by_task = {event.event_id for event in history(stub, first) + history(stub, second)}
    assert by_task == {event.event_id for event in everything if event.task_id in (first, second)}


def test_without_a_task_id_the_event_types_filter_still_applies(stub: Any, unique: Unique) -> None:
    task_id = unique("all-deleted")
    create(stub, task_id=task_id)
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id))
    deletions = history(stub, event_types=["DELETED"])
    assert set(types_of(deletions)) == {"DELETED"}
    assert task_id in {event.task_id for event in deletions}


# Pages


def test_paging_through_a_history_returns_every_event_exactly_once(
    stub: Any, unique: Unique
) -> None:
    task_id = unique("paged")
    lived_a_full_life(stub, task_id)
    request = pb.ListTaskEventsRequest(task_id=task_id, page_size=2)
    pages = event_pages(stub, request)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [event for page in pages for event in page] == history(stub, task_id)


def test_paging_through_every_tasks_events_returns_each_exactly_once(
    stub: Any, unique: Unique
) -> None:
    lived_a_full_life(stub, unique("paged-all"))
    whole = history(stub)
    pages = event_pages(stub, pb.ListTaskEventsRequest(page_size=3))
    paged = [event for page in pages for event in page]
    assert [event.event_id for event in paged] == [event.event_id for event in whole]
    assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3


def test_page_size_zero_means_fifty_events(stub: Any, unique: Unique) -> None:
    task_id = create(stub, task_id=unique("chatty")).task_id
    for priority in range(1, 51):
        update(stub, pb.Task(task_id=task_id, priority=priority), "priority")
    first = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task_id))
    assert len(first.events) == 50 and first.next_page_token
    rest = stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=task_id, page_token=first.next_page_token)
    )
    assert types_of(list(rest.events)) == ["UPDATED"] and rest.next_page_token == ""


def test_a_negative_page_size_is_invalid_argument(stub: Any) -> None:
    request = pb.ListTaskEventsRequest(page_size=-5)
    error = rpc_error(lambda: stub.ListTaskEvents(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"page_size"}


def test_a_page_token_is_only_valid_for_the_task_and_event_types_it_was_issued_for(
    stub: Any, unique: Unique
) -> None:
    task_id, other = unique("token-a"), unique("token-b")
    lived_a_full_life(stub, task_id)
    lived_a_full_life(stub, other)
    token = stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=task_id, page_size=2)
    ).next_page_token
    assert token
    others = {
        "another task": pb.ListTaskEventsRequest(task_id=other),
        "every task": pb.ListTaskEventsRequest(),
        "an event type filter": pb.ListTaskEventsRequest(
            task_id=task_id, event_types=["STATUS_CHANGE"]
        ),
    }
    for name, request in others.items():
        request.page_token = token
        error = rpc_error(
            lambda r=request: stub.ListTaskEvents(r), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == {"page_token"}, name
    resumed = stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=task_id, page_size=100, page_token=token)
    )
    assert types_of(list(resumed.events)) == LIFE[2:]


def test_tampered_and_garbage_event_page_tokens_are_invalid_argument(
    stub: Any, unique: Unique
) -> None:
    task_id = unique("tampered")
    lived_a_full_life(stub, task_id)
    token = stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=task_id, page_size=1)
    ).next_page_token
    create(stub, "flink_sql")
    list_tasks_token = stub.ListTasks(
        pb.ListTasksRequest(filter=pb.TaskFilter(task_types=["flink_sql"]), page_size=1)
    ).next_page_token
    assert list_tasks_token
    payload = token.partition(".")[0]
    flipped = "B" if token[len(payload) // 2] == "A" else "A"
    bad_tokens = [
        token[: len(payload) // 2] + flipped + token[len(payload) // 2 + 1 :],
        payload,
        "garbage",
        "ü.ß",
        list_tasks_token,
    ]
    for bad in bad_tokens:
        request = pb.ListTaskEventsRequest(task_id=task_id, page_token=bad)
        error = rpc_error(
            lambda r=request: stub.ListTaskEvents(r), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == {"page_token"}, bad
