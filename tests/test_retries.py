"""Retry-safe mutations (AIP-155) and who made each change, through real servers: a mutation
retried with its request_id returns the first call's outcome and changes nothing, from any
server process on the database; every event names its actor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, history, rpc_error, violated_fields
from tests.servers import ServerProcess

MUTATIONS: list[tuple[str, Callable[[str, str], Any]]] = [
    (
        "UpdateTask",
        lambda task_id, rid: pb.UpdateTaskRequest(
            task=pb.Task(task_id=task_id, priority=7), request_id=rid, actor="ann"
        ),
    ),
    (
        "UpdateTaskStatus",
        lambda task_id, rid: pb.UpdateTaskStatusRequest(
            task_id=task_id, status=pb.TASK_STATUS_RUNNING, request_id=rid, actor="ann"
        ),
    ),
    (
        "DeleteTask",
        lambda task_id, rid: pb.DeleteTaskRequest(task_id=task_id, request_id=rid, actor="ann"),
    ),
]


def test_a_retried_mutation_returns_the_first_outcome_and_changes_nothing(
    stub: Any, unique: Callable[[str], str]
) -> None:
    for method, build in MUTATIONS:
        task = create(stub)
        request_id = unique("retry")
        first = getattr(stub, method)(build(task.task_id, request_id))
        events = len(history(stub, task.task_id))
        if method != "DeleteTask":  # someone else changes the task in between
            stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=9)))
        again = getattr(stub, method)(build(task.task_id, request_id))
        assert again == first, method  # the same task, etag included
        later = history(stub, task.task_id)
        assert len(later) == events + (0 if method == "DeleteTask" else 1), method
        assert later[1].actor == "ann", method


def test_undelete_is_retry_safe_too(stub: Any, unique: Callable[[str], str]) -> None:
    task = create(stub)
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    request = pb.UndeleteTaskRequest(task_id=task.task_id, request_id=unique("u"), actor="bo")
    first = stub.UndeleteTask(request)
    assert stub.UndeleteTask(request) == first  # not FAILED_PRECONDITION: not done again
    assert [e.actor for e in history(stub, task.task_id)][-1] == "bo"


def test_a_request_id_reused_for_another_request_is_invalid_argument(
    stub: Any, unique: Callable[[str], str]
) -> None:
    task = create(stub)
    request_id = unique("reuse")
    stub.UpdateTask(
        pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=1), request_id=request_id)
    )
    error = rpc_error(
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=task.task_id, priority=2), request_id=request_id
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "request_id" in violated_fields(error)
    assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).priority == 1


def test_every_event_names_who_made_the_change(stub: Any) -> None:
    made = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type="who", created_by="svc"), actor="cy")
    )
    stub.UpdateTask(
        pb.UpdateTaskRequest(task=pb.Task(task_id=made.task_id, priority=4), actor="di")
    )
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=made.task_id, status=pb.TASK_STATUS_RUNNING, actor="ed")
    )
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=made.task_id, actor="fay"))
    stub.UndeleteTask(pb.UndeleteTaskRequest(task_id=made.task_id, actor="gus"))
    actors = [(e.event_type, e.actor) for e in history(stub, made.task_id)]
    assert actors == [
        ("CREATED", "cy"),
        ("UPDATED", "di"),
        ("STATUS_CHANGE", "ed"),
        ("DELETED", "fay"),
        ("UNDELETED", "gus"),
    ]
    plain = create(stub, created_by="svc")
    assert history(stub, plain.task_id)[0].actor == "svc"  # no actor: the creator


def test_two_servers_given_one_request_id_at_once_act_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server()
    second = start_server(database_url=first.database_url)
    stubs = [first.stub(), second.stub()]
    for round_number in range(10):
        task = create(stubs[0])
        request = pb.UpdateTaskStatusRequest(
            task_id=task.task_id,
            status=pb.TASK_STATUS_RUNNING,
            request_id=f"both-{round_number}",
        )
        answers = at_once([stubs[n % 2] for n in range(4)], request)
        assert all(answer == answers[0] for answer in answers), answers
        changes = [e for e in history(stubs[1], task.task_id) if e.event_type == "STATUS_CHANGE"]
        assert len(changes) == 1


def at_once(stubs: list[Any], request: pb.UpdateTaskStatusRequest) -> list[Any]:
    """Sends `request` through every stub at the same moment; the answers (or errors)."""
    answers: list[Any] = []
    start = threading.Barrier(len(stubs))

    def call(stub: Any) -> None:
        start.wait()
        try:
            answers.append(stub.UpdateTaskStatus(request))
        except grpc.RpcError as error:
            answers.append(error)

    threads = [threading.Thread(target=call, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_request_ids_are_forgotten_after_the_retention_window(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--request-id-retention", "0.0005")  # 1.8 s
    stub = server.stub()
    task = create(stub)
    stub.UpdateTask(
        pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=1), request_id="kept")
    )
    assert kept_ids(server.database_url) == 1
    deadline = time.monotonic() + 10
    while kept_ids(server.database_url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kept_ids(server.database_url) == 0


def kept_ids(database_url: str) -> int:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(text("SELECT count(*) FROM mutation_requests")).scalar_one()
            )
    finally:
        engine.dispose()
