"""The console's HTTP API against a real server process on SQLite and PostgreSQL, without a
browser: errors are JSON with the gRPC API's codes and reasons, bad input never 500s, the task
list pages with ListTasks' own tokens, actions go through the RPCs' operations, and the live
stream resumes by Last-Event-ID with no event lost or repeated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.console_http import EventStream, Frame, call
from tests.databases import Databases
from tests.receivers import Answer, Received, Receiver
from tests.rpc import create, error_reason
from tests.servers import ServerProcess

HEARTBEAT = "0.2"


@pytest.fixture(scope="module")
def console(backend: str, databases: Databases, module_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        databases.new_url(backend, module_dir),
        module_dir,
        "--console-address",
        "127.0.0.1:0",
        "--heartbeat-interval",
        HEARTBEAT,
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def grpc_stub(console: ServerProcess) -> Any:
    return console.stub()


def move(stub: Any, task_id: str, status: int) -> pb.Task:
    return stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=task_id, status=status))


def stored_event_ids(stub: Any, task_type: str) -> list[int]:
    """The event ids of every task of `task_type`, as the table holds them."""
    listed = stub.ListTasks(
        pb.ListTasksRequest(
            filter=pb.TaskFilter(task_types=[task_type]), show_deleted=True, page_size=1000
        )
    )
    ids: list[int] = []
    for task in listed.tasks:
        page = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task.task_id, page_size=1000))
        ids.extend(event.event_id for event in page.events)
    return sorted(ids)


def test_errors_are_json_with_the_code_and_reason_the_grpc_api_gives(
    console: ServerProcess, grpc_stub: Any, unique: Callable[[str], str]
) -> None:
    base = console.console_url
    done = create(grpc_stub, unique("errors"))
    move(grpc_stub, done.task_id, pb.TASK_STATUS_COMPLETED)
    other = create(grpc_stub, unique("errors"))
    issued = call(base, "GET", f"/api/tasks?type={other.task_type}&page_size=1").body
    cases: list[tuple[str, str, Any, dict[str, str], int, str, str]] = [
        ("GET", "/api/tasks?colour=red", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (
            "GET",
            "/api/tasks?status=SLEEPING",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        ("GET", "/api/tasks?page_size=-1", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("GET", "/api/tasks?page_size=x", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (
            "GET",
            "/api/tasks?page_token=garbage",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        # A token is valid only with the filter it was issued for, as in ListTasks.
        (
            "GET",
            f"/api/tasks?page_token={issued['next_page_token'] or 'x'}",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/api/tasks?created_after=yesterday",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/api/tasks?order_by=colour",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/api/counts?show_deleted=maybe",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        ("GET", "/api/tasks/no-such-task", None, {}, 404, "NOT_FOUND", "TASK_NOT_FOUND"),
        ("GET", "/api/tasks/bad%20id", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("GET", "/api/tasks/no-such-task/events", None, {}, 404, "NOT_FOUND", "TASK_NOT_FOUND"),
        (
            "GET",
            f"/api/tasks/{done.task_id}/events?page_token=zz",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        ("POST", "/api/tasks/no-such-task/cancel", {}, {}, 404, "NOT_FOUND", "TASK_NOT_FOUND"),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            {},
            {},
            400,
            "FAILED_PRECONDITION",
            "INVALID_STATUS_TRANSITION",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/undelete",
            {},
            {},
            400,
            "FAILED_PRECONDITION",
            "TASK_NOT_DELETED",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/delete",
            {"etag": "W/old"},
            {},
            409,
            "ABORTED",
            "ETAG_MISMATCH",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            "{not json",
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            "[1, 2]",
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            {"status": "RUNNING"},
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            {"colour": 1},
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/delete",
            {"actor": "x" * 200},
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            f"/api/tasks/{done.task_id}/cancel",
            b"\xff\xfe",
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        ("DELETE", "/api/tasks", None, {}, 405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED"),
        (
            "GET",
            f"/api/tasks/{done.task_id}/cancel",
            None,
            {},
            405,
            "UNIMPLEMENTED",
            "METHOD_NOT_ALLOWED",
        ),
        ("GET", "/api/nothing-here", None, {}, 404, "NOT_FOUND", "NOT_FOUND"),
        ("GET", "/api/events?after=-1", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (
            "GET",
            "/api/events",
            None,
            {"Last-Event-ID": "abc"},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/api/events?task_id=bad%20id",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/api/events?event_type=BOOM",
            None,
            {},
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        ("GET", "/api/events?token=abc", None, {}, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ]
    for method, path, body, headers, status, code, reason in cases:
        reply = call(base, method, path, body, headers)
        where = f"{method} {path}: {reply.body!r}"
        assert reply.status == status, where
        assert reply.headers["content-type"].startswith("application/json"), where
        assert reply.error["code"] == code, where
        assert reply.error["reason"] == reason, where
        assert reply.error["message"] and "Traceback" not in reply.error["message"], where
    # The same failures over gRPC carry the same reasons.
    for rpc, request, reason in [
        (grpc_stub.GetTask, pb.GetTaskRequest(task_id="no-such-task"), "TASK_NOT_FOUND"),
        (
            grpc_stub.UpdateTaskStatus,
            pb.UpdateTaskStatusRequest(task_id=done.task_id, status=pb.TASK_STATUS_CANCELLED),
            "INVALID_STATUS_TRANSITION",
        ),
        (grpc_stub.UndeleteTask, pb.UndeleteTaskRequest(task_id=done.task_id), "TASK_NOT_DELETED"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            rpc(request)
        assert error_reason(caught.value) == reason
    invalid = call(base, "GET", "/api/tasks?page_size=-1")
    assert invalid.error["field_violations"] == [
        {"field": "page_size", "description": "must be a whole number from 0 to 1000"}
    ]
    transition = call(base, "POST", f"/api/tasks/{done.task_id}/cancel", {})
    assert transition.error["metadata"]["current_status"] == "TASK_STATUS_COMPLETED"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=st.sampled_from(
        [
            "/api/tasks",
            "/api/counts",
            "/api/tasks/{id}",
            "/api/tasks/{id}/events",
            "/api/tasks/{id}/cancel",
            "/api/tasks/{id}/delete",
            "/api/tasks/{id}/undelete",
            "/api/session",
            "/api/x",
        ]
    ),
    task_id=st.text(min_size=0, max_size=20),
    query=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=4),
    body=st.one_of(
        st.none(),
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda value: json.dumps(value).encode()),
    ),
)
def test_bad_input_never_answers_500_and_always_explains_itself_in_json(
    console: ServerProcess,
    method: str,
    path: str,
    task_id: str,
    query: list[tuple[str, str]],
    body: bytes | None,
) -> None:
    import urllib.parse

    quoted = urllib.parse.quote(task_id, safe="") or "x"
    target = path.replace("{id}", quoted) + "?" + urllib.parse.urlencode(query)
    reply = call(console.console_url, method, target, body)
    assert reply.status < 500, (method, target, reply.body)
    if reply.status >= 400:
        assert set(reply.error) >= {"code", "reason", "message"}, reply.body


def test_the_list_pages_with_listtasks_tokens_and_counts_by_status(
    console: ServerProcess, grpc_stub: Any, unique: Callable[[str], str]
) -> None:
    base, kind = console.console_url, unique("paging")
    made = [create(grpc_stub, kind, tags=["a", f"n{i}"]) for i in range(5)]
    move(grpc_stub, made[0].task_id, pb.TASK_STATUS_RUNNING)
    move(grpc_stub, made[1].task_id, pb.TASK_STATUS_FAILED)
    seen: list[str] = []
    token = ""
    while True:
        reply = call(base, "GET", f"/api/tasks?type={kind}&page_size=2&page_token={token}")
        assert reply.status == 200, reply.body
        seen.extend(task["task_id"] for task in reply.body["tasks"])
        token = reply.body["next_page_token"]
        if not token:
            break
        # The console's token is ListTasks' own: gRPC takes it for the same filter.
        listed = grpc_stub.ListTasks(
            pb.ListTasksRequest(
                filter=pb.TaskFilter(task_types=[kind]), page_size=2, page_token=token
            )
        )
        assert (
            listed.tasks[0].task_id
            == call(base, "GET", f"/api/tasks?type={kind}&page_size=2&page_token={token}").body[
                "tasks"
            ][0]["task_id"]
        )
    assert seen == [task.task_id for task in reversed(made)]  # newest first
    first = call(base, "GET", f"/api/tasks?type={kind}&status=RUNNING&status=failed").body
    assert {task["task_id"] for task in first["tasks"]} == {made[0].task_id, made[1].task_id}
    assert first["tasks"][0]["status"] in ("TASK_STATUS_RUNNING", "TASK_STATUS_FAILED")
    tagged = call(base, "GET", f"/api/tasks?type={kind}&tag_all=a&tag_all=n3").body["tasks"]
    assert [task["task_id"] for task in tagged] == [made[3].task_id]
    counts = call(base, "GET", f"/api/counts?type={kind}&status=RUNNING").body
    assert counts == {"counts": {"PENDING": 3, "RUNNING": 1, "FAILED": 1}, "total": 5}


def test_actions_change_the_task_through_the_rpcs_operations_with_the_actor(
    console: ServerProcess, grpc_stub: Any, unique: Callable[[str], str]
) -> None:
    base = console.console_url
    task = create(grpc_stub, unique("actions"))
    reply = call(
        base,
        "POST",
        f"/api/tasks/{task.task_id}/cancel",
        {"status": "CANCELLING", "actor": "ops-ann"},
    )
    assert reply.status == 200 and reply.body["status"] == "TASK_STATUS_CANCELLING", reply.body
    assert (
        grpc_stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).status
        == pb.TASK_STATUS_CANCELLING
    )
    assert call(base, "POST", f"/api/tasks/{task.task_id}/delete", {}).body["active"] is False
    assert call(base, "POST", f"/api/tasks/{task.task_id}/undelete", {}).body["active"] is True
    history = grpc_stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task.task_id)).events
    assert [(e.event_type, e.actor) for e in history] == [
        ("CREATED", "system"),
        ("STATUS_CHANGE", "ops-ann"),
        ("DELETED", ""),
        ("UNDELETED", ""),
    ]
    shown = call(base, "GET", f"/api/tasks/{task.task_id}/events").body["events"]
    assert [event["event_id"] for event in shown] == [str(e.event_id) for e in history]
    # A request_id makes an action retry-safe, as in the RPC.
    again = {"status": "CANCELLED", "request_id": unique("req")}
    first = call(base, "POST", f"/api/tasks/{task.task_id}/cancel", again).body
    assert call(base, "POST", f"/api/tasks/{task.task_id}/cancel", again).body == first


def read_until(stream: EventStream, position: int, seen: list[int]) -> Frame | None:
    """Reads frames, appending event ids to `seen`, until one is at or past `position`."""
    for frame in stream.frames():
        if frame.event == "task_event":
            seen.append(int(frame.data["event_id"]))
        if frame.id is not None and int(frame.id) >= position:
            return frame
    return None


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(before=st.integers(1, 6), taken=st.integers(0, 12), during=st.integers(0, 6))
def test_a_stream_resumed_by_last_event_id_delivers_exactly_the_missed_events(
    console: ServerProcess,
    grpc_stub: Any,
    unique: Callable[[str], str],
    before: int,
    taken: int,
    during: int,
) -> None:
    """Events are written, a stream is read for `taken` frames and dropped, more are written
    while it is away, and the reconnect (Last-Event-ID: the last id seen) brings the rest."""
    base, kind = console.console_url, unique("resume")
    start = call(base, "GET", f"/api/tasks?type={kind}").body["log_position"]
    task = create(grpc_stub, kind)
    for _ in range(before):
        grpc_stub.UpdateTask(
            pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=_ + 1))
        )
    seen: list[int] = []
    last = start
    with EventStream(base, f"type={kind}", last_event_id=start) as stream:
        assert stream.status == 200
        for count, frame in enumerate(stream.frames()):
            if count >= taken:
                break
            if frame.event == "task_event":
                seen.append(int(frame.data["event_id"]))
            if frame.id is not None:
                last = frame.id
    for i in range(during):
        grpc_stub.UpdateTask(
            pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=100 + i))
        )
    stored = stored_event_ids(grpc_stub, kind)
    with EventStream(base, f"type={kind}", last_event_id=last) as resumed:
        assert read_until(resumed, stored[-1], seen) is not None
    assert seen == stored


def test_an_idle_stream_sends_heartbeats_carrying_its_position(
    console: ServerProcess, grpc_stub: Any, unique: Callable[[str], str]
) -> None:
    kind = unique("idle")
    with EventStream(console.console_url, f"type={kind}") as stream:
        began = time.monotonic()
        beats = []
        for frame in stream.frames():
            if frame.event == "heartbeat":
                beats.append(int(frame.id or -1))
            if len(beats) == 3:
                break
    assert min(beats) >= 0 and beats == sorted(beats)
    assert time.monotonic() - began < 5


def test_a_tasks_webhook_deliveries_are_listed_and_redelivered(
    start_server: Callable[..., ServerProcess],
) -> None:
    """ListDeliveries and RedeliverTask of one task, as the task page reads and acts on them."""
    failing = [True]

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(500 if failing[0] else 204)

    server = start_server(
        "--console-address",
        "127.0.0.1:0",
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        "none",
        "--webhook-poll-interval",
        "0.1",
    )
    base, stub = server.console_url, server.stub()
    with Receiver(policy) as receiver:
        task = pb.Task(task_type="console-hooks")
        task.notification_config.update({"webhooks": [{"url": receiver.url}]})
        made = stub.CreateTask(pb.CreateTaskRequest(task=task))
        path = f"/api/tasks/{made.task_id}/deliveries"
        deadline = time.monotonic() + 20
        while [d["state"] for d in call(base, "GET", path).body["deliveries"]] != [
            "DELIVERY_STATE_DEAD"
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (dead,) = call(base, "GET", path).body["deliveries"]
        assert dead["url"] == receiver.url and dead["last_status_code"] == 500
        assert dead["attempts"] == 1 and dead["webhook_id"].startswith("msg_")
        failing[0] = False
        again = call(base, "POST", f"/api/tasks/{made.task_id}/redeliver", {})
        assert again.status == 200
        assert [d["state"] for d in again.body["deliveries"]] == ["DELIVERY_STATE_PENDING"]
        receiver.wait_for(lambda got: len(got) == 2)
    refused = call(base, "POST", f"/api/tasks/{made.task_id}/redeliver", {"all": True})
    assert refused.status == 400 and refused.body["error"]["code"] == "INVALID_ARGUMENT"
    missing = call(base, "GET", "/api/tasks/no-such-task/deliveries")
    assert missing.status == 404 and missing.body["error"]["reason"] == "TASK_NOT_FOUND"
    bad = call(base, "GET", f"{path}?page_size=-1")
    assert bad.status == 400 and bad.body["error"]["code"] == "INVALID_ARGUMENT"
