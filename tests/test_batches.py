"""BatchCreateTasks and BatchGetTasks through a real server, on both backends: all or nothing,
the failing item named by its index, the order kept, responses bounded."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resinkit_grpc.client import AsyncTaskClient, TaskClient, TaskNotFound
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import detail, error_reason, rpc_error, violated_fields
from tests.servers import ServerProcess

_types = itertools.count()


@pytest.fixture(scope="module")
def engine(server: ServerProcess) -> Iterator[sqlalchemy.Engine]:
    found = sqlalchemy.create_engine(server.database_url)
    yield found
    found.dispose()


def stored(engine: sqlalchemy.Engine, task_type: str) -> tuple[int, int]:
    """(tasks, events) stored for tasks of this type, read by SQL."""
    with engine.connect() as connection:
        count = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM tasks WHERE task_type = :t"), {"t": task_type}
        ).scalar_one()
        events = connection.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM task_events e JOIN tasks t ON t.task_id = e.task_id "
                "WHERE t.task_type = :t"
            ),
            {"t": task_type},
        ).scalar_one()
    return int(count), int(events)


def item(task_type: str, **fields: Any) -> pb.CreateTaskRequest:
    task_id = fields.pop("task_id", "")
    request_id = fields.pop("request_id", "")
    configs = fields.pop("submitted_configs", None)
    request = pb.CreateTaskRequest(
        task=pb.Task(task_type=task_type, **fields), task_id=task_id, request_id=request_id
    )
    if configs is not None:
        request.task.submitted_configs.update(configs)
    return request


def index_of(error: grpc.RpcError) -> str:
    return str(detail(error, error_details_pb2.ErrorInfo).metadata["index"])


def test_a_batch_creates_every_task_in_order_each_with_its_created_event(
    stub: Any, engine: sqlalchemy.Engine, unique: Callable[[str], str]
) -> None:
    kind = unique("batch")
    requests = [item(kind, task_name=f"n{i}", priority=i) for i in range(5)]
    requests[2].task_id = unique("chosen")
    made = stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)).tasks
    assert [t.task_name for t in made] == [f"n{i}" for i in range(5)]
    assert made[2].task_id == requests[2].task_id
    assert all(t.status == pb.TASK_STATUS_PENDING and t.etag for t in made)
    got = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=[t.task_id for t in made])).tasks
    assert list(got) == list(made)
    # The events follow the order of the requests, one CREATED each.
    log = stub.ListTaskEvents(pb.ListTaskEventsRequest(page_size=1000)).events
    ours = [e for e in log if e.task_id in {t.task_id for t in made}]
    assert [e.task_id for e in ours] == [t.task_id for t in made]
    assert {e.event_type for e in ours} == {"CREATED"}
    assert stored(engine, kind) == (5, 5)


def test_request_ids_make_each_item_idempotent(stub: Any, unique: Callable[[str], str]) -> None:
    kind = unique("batch-retry")
    first_id = unique("req")
    once = stub.BatchCreateTasks(
        pb.BatchCreateTasksRequest(requests=[item(kind, request_id=first_id, task_name="a")])
    ).tasks[0]
    again = stub.BatchCreateTasks(
        pb.BatchCreateTasksRequest(
            requests=[item(kind, task_name="b"), item(kind, request_id=first_id, task_name="a")]
        )
    ).tasks
    assert again[1] == once
    assert again[0].task_name == "b"
    # CreateTask and BatchCreateTasks share the keys.
    assert stub.CreateTask(item(kind, request_id=first_id, task_name="a")) == once


@pytest.mark.parametrize("field", ["task_id", "request_id"])
def test_two_items_with_one_key_are_invalid(
    stub: Any, engine: sqlalchemy.Engine, unique: Callable[[str], str], field: str
) -> None:
    kind, key = unique("batch-dup"), unique("key")
    requests = [item(kind), item(kind, **{field: key}), item(kind), item(kind, **{field: key})]
    error = rpc_error(
        lambda: stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {f"requests[3].{field}"}
    assert index_of(error) == "3"
    assert stored(engine, kind) == (0, 0)


def test_a_taken_task_id_fails_the_whole_batch_naming_its_index(
    stub: Any, engine: sqlalchemy.Engine, unique: Callable[[str], str]
) -> None:
    kind, taken = unique("batch-taken"), unique("taken")
    stub.CreateTask(item("elsewhere", task_id=taken))
    requests = [item(kind), item(kind), item(kind, task_id=taken), item(kind)]
    error = rpc_error(
        lambda: stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error_reason(error) == "TASK_ALREADY_EXISTS"
    assert index_of(error) == "2"
    assert stored(engine, kind) == (0, 0)


def test_batch_sizes_are_bounded(stub: Any) -> None:
    for requests in ([], [item("bounded")] * 1001):
        error = rpc_error(
            lambda r=requests: stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=r)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"requests"}
    for ids in ([], ["x"] * 1001):
        error = rpc_error(
            lambda i=ids: stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=i)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"task_ids"}


# What can be wrong with one item, and the field its error names.
BAD_ITEMS: dict[str, tuple[Callable[[pb.CreateTaskRequest], None], str]] = {
    "no type": (lambda r: r.task.ClearField("task_type"), "task.task_type"),
    "bad id": (lambda r: setattr(r, "task_id", "-no"), "task_id"),
    "status": (lambda r: setattr(r.task, "status", pb.TASK_STATUS_RUNNING), "task.status"),
    "long name": (lambda r: setattr(r.task, "task_name", "n" * 300), "task.task_name"),
    "NUL tag": (lambda r: r.task.tags.append("a\x00"), "task.tags"),
    "timeout": (
        lambda r: r.task.submitted_configs.update({"task_timeout_seconds": -1}),
        "task.submitted_configs.task_timeout_seconds",
    ),
}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    size=st.integers(min_value=1, max_value=40),
    data=st.data(),
    bad=st.sampled_from(sorted(BAD_ITEMS)),
)
def test_one_bad_item_writes_nothing_and_names_its_index(
    stub: Any, engine: sqlalchemy.Engine, size: int, data: st.DataObject, bad: str
) -> None:
    kind = f"batch-prop-{next(_types)}"
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    requests = [item(kind, task_name=f"t{i}", tags=["x"]) for i in range(size)]
    spoil, field = BAD_ITEMS[bad]
    spoil(requests[index])
    error = rpc_error(
        lambda: stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {f"requests[{index}].{field}"}
    assert index_of(error) == str(index)
    assert stored(engine, kind) == (0, 0)


def test_a_batch_that_would_not_fit_a_response_is_refused_and_writes_nothing(
    stub: Any, engine: sqlalchemy.Engine, unique: Callable[[str], str]
) -> None:
    kind = unique("batch-huge")
    # About 3.6 MB of tasks: inside the 4 MiB a request may take, past what a response may.
    requests = [item(kind, submitted_configs={"blob": "x" * 450_000}) for _ in range(8)]
    error = rpc_error(
        lambda: stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"requests"}
    assert stored(engine, kind) == (0, 0)
    made = stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests[:6])).tasks
    assert len(made) == 6
    ids = [t.task_id for t in made] * 2
    error = rpc_error(
        lambda: stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=ids)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"task_ids"}
    basic = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=ids, view=pb.TASK_VIEW_BASIC))
    assert [t.task_id for t in basic.tasks] == ids
    assert not basic.tasks[0].HasField("submitted_configs")


def test_batch_get_keeps_the_order_asked_and_names_the_missing(
    stub: Any, unique: Callable[[str], str]
) -> None:
    kind = unique("batch-get")
    made = stub.BatchCreateTasks(
        pb.BatchCreateTasksRequest(requests=[item(kind, priority=i) for i in range(4)])
    ).tasks
    ids = [made[3].task_id, made[0].task_id, made[3].task_id, made[1].task_id]
    got = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=ids)).tasks
    assert [t.task_id for t in got] == ids
    missing = [unique("gone"), unique("gone")]
    asked = [made[2].task_id, missing[0], made[0].task_id, missing[1]]
    error = rpc_error(
        lambda: stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=asked)),
        grpc.StatusCode.NOT_FOUND,
    )
    info = detail(error, error_details_pb2.ErrorInfo)
    assert info.reason == "TASK_NOT_FOUND"
    assert info.metadata["missing_task_ids"].split(",") == missing
    assert detail(error, error_details_pb2.ResourceInfo).resource_name == missing[0]
    kept = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=asked, allow_missing=True)).tasks
    assert [t.task_id for t in kept] == [made[2].task_id, made[0].task_id]


def test_batch_get_checks_every_id(stub: Any) -> None:
    error = rpc_error(
        lambda: stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=["ok", "no way", "-x"])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"task_ids[1]", "task_ids[2]"}


def test_the_clients_create_and_get_batches(server: ServerProcess) -> None:
    items = [{"task_type": "batch-client", "task_name": f"c{i}", "tags": ["t"]} for i in range(3)]
    with TaskClient(server.address) as client:
        made = client.batch_create_tasks(items)
        assert [t.task_name for t in made] == ["c0", "c1", "c2"]
        ids = [t.task_id for t in reversed(made)]
        assert client.batch_get_tasks(ids) == list(reversed(made))
        with pytest.raises(TaskNotFound):
            client.batch_get_tasks([*ids, "no-such-task"])

    async def scenario() -> list[Any]:
        async with AsyncTaskClient(server.address) as client:
            return await client.batch_get_tasks(
                [made[0].task_id, "no-such-task"], allow_missing=True
            )

    assert asyncio.run(scenario()) == [made[0]]


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    first=st.lists(st.lists(st.sampled_from("abcd"), max_size=3), min_size=1, max_size=150),
    again=st.data(),
)
def test_a_batchs_events_are_exactly_its_new_tasks_in_the_order_of_its_items(
    stub: Any,
    engine: sqlalchemy.Engine,
    first: list[list[str]],
    again: st.DataObject,
) -> None:
    """Across the statements' chunks (up to 150 items): one CREATED event per new task, in
    item order, stored tags as asked; a second batch repeating some request_ids gets those
    tasks back and writes events for its new items only."""
    kind = f"batch-order-{next(_types)}"
    requests = [
        item(kind, task_name=f"a{i}", tags=tags, request_id=f"{kind}-{i}" if i % 3 else "")
        for i, tags in enumerate(first)
    ]
    made = stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests)).tasks
    assert [t.task_name for t in made] == [r.task.task_name for r in requests]
    assert [list(t.tags) for t in made] == [list(dict.fromkeys(tags)) for tags in first]
    repeated = again.draw(st.sets(st.sampled_from(range(len(first)))))
    second = [item(kind, task_name=f"b{i}") for i in range(again.draw(st.integers(0, 5)))]
    for i in sorted(repeated):
        second.insert(again.draw(st.integers(0, len(second))), requests[i])
    if second:
        answer = stub.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=second)).tasks
        by_request = {r.request_id: t for r, t in zip(requests, made, strict=True)}
        for asked, got in zip(second, answer, strict=True):
            if asked.request_id:
                assert got == by_request[asked.request_id]
    else:
        answer = []
    # Every item of the second batch with a request_id repeats one (the others are new tasks).
    new = [*made, *(t for r, t in zip(second, answer, strict=True) if not r.request_id)]
    with engine.connect() as connection:
        logged = connection.execute(
            sqlalchemy.text(
                "SELECT e.task_id, e.event_type FROM task_events e "
                "JOIN tasks t ON t.task_id = e.task_id WHERE t.task_type = :t ORDER BY e.event_id"
            ),
            {"t": kind},
        ).all()
        if connection.dialect.name == "sqlite":  # task_tags, filter_indexes.py
            indexed = connection.execute(
                sqlalchemy.text(
                    "SELECT g.task_id, g.tag FROM task_tags g JOIN tasks t "
                    "ON t.task_id = g.task_id WHERE t.task_type = :t"
                ),
                {"t": kind},
            ).all()
            assert sorted(indexed) == sorted((t.task_id, tag) for t in new for tag in t.tags)
    assert logged == [(t.task_id, "CREATED") for t in new]
    got = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=[t.task_id for t in new])).tasks
    assert list(got) == list(new)
