"""Correctness under concurrency: many writers, one or two server processes on one SQLite file.

Every writer thread owns the tasks it creates, so the last state it was acknowledged and the
events its calls must have written are known exactly; what the server holds afterwards is
compared against that. A shared counter, incremented by read-modify-write guarded by the etag,
checks that concurrent writers never lose each other's updates.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create, error_reason
from tests.rpc import history as paged_history
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow

S = pb.TaskStatus
CALL_TIMEOUT = 30.0


def history(stub: Any, task_id: str) -> list[pb.TaskEvent]:
    return paged_history(stub, task_id, timeout=CALL_TIMEOUT)


# Legal walks along the documented transition table; each writer picks one per task.
STATUS_PATHS = (
    (S.TASK_STATUS_SUBMITTED, S.TASK_STATUS_RUNNING, S.TASK_STATUS_COMPLETED),
    (
        S.TASK_STATUS_SUBMITTED,
        S.TASK_STATUS_VALIDATING,
        S.TASK_STATUS_PREPARING,
        S.TASK_STATUS_BUILDING,
        S.TASK_STATUS_RUNNING,
        S.TASK_STATUS_CANCELLING,
        S.TASK_STATUS_CANCELLED,
    ),
    (S.TASK_STATUS_RUNNING, S.TASK_STATUS_FAILED),
    (S.TASK_STATUS_PREPARING, S.TASK_STATUS_CANCELLING, S.TASK_STATUS_COMPLETED),
)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def tasks_of_type(stub: Any, task_type: str) -> list[pb.Task]:
    """Every stored task of `task_type`, deleted or not, in the FULL view."""
    found: list[pb.Task] = []
    token = ""
    while True:
        page = stub.ListTasks(
            pb.ListTasksRequest(
                filter=pb.TaskFilter(task_types=[task_type]),
                show_deleted=True,
                view=pb.TASK_VIEW_FULL,
                page_size=1000,
                page_token=token,
            ),
            timeout=CALL_TIMEOUT,
        )
        found.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return found


def describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


@dataclass
class OwnedTask:
    """A task one writer created, the last state it was acknowledged, and the events
    (type, new status) its acknowledged calls wrote, in order."""

    last: pb.Task
    path: list[int]
    expected_events: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Writer:
    """One thread's mix of CreateTask / UpdateTaskStatus / UpdateTask (and, with a counter
    task, etag-guarded increments) until `deadline`, recording every acknowledgement."""

    stub: Any
    task_type: str
    name: str
    deadline: float
    counter_id: str | None = None
    owned: dict[str, OwnedTask] = field(default_factory=dict)
    increments: int = 0
    calls: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        rng = random.Random(self.name)
        serial = 0
        while time.monotonic() < self.deadline:
            serial += 1
            choice = rng.random()
            try:
                if not self.owned or choice < 0.25:
                    self._create(f"{self.name}-t{serial}", rng)
                elif self.counter_id is not None and choice < 0.35:
                    self._increment()
                else:
                    owned = self.owned[rng.choice(list(self.owned))]
                    if owned.path and rng.random() < 0.5:
                        self._move(owned)
                    else:
                        self._rename(owned, serial)
            except grpc.RpcError as error:
                self.failures.append(describe(error))
            self.calls += 1

    def _create(self, task_id: str, rng: random.Random) -> None:
        task = create(self.stub, self.task_type, task_id=task_id, task_name=task_id)
        owned = OwnedTask(task, list(rng.choice(STATUS_PATHS)))
        owned.expected_events.append(("CREATED", S.TASK_STATUS_PENDING))
        self.owned[task_id] = owned

    def _move(self, owned: OwnedTask) -> None:
        status = owned.path[0]
        owned.last = self.stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(
                task_id=owned.last.task_id, status=status, actor=self.name, etag=owned.last.etag
            ),
            timeout=CALL_TIMEOUT,
        )
        owned.path.pop(0)
        owned.expected_events.append(("STATUS_CHANGE", status))

    def _rename(self, owned: OwnedTask, serial: int) -> None:
        # A name and priority never used before: every rename is an effective update.
        change = pb.Task(
            task_id=owned.last.task_id,
            task_name=f"{owned.last.task_id}-n{serial}",
            priority=serial,
            etag=owned.last.etag,
        )
        owned.last = self.stub.UpdateTask(
            pb.UpdateTaskRequest(task=change, update_mask=mask("task_name", "priority")),
            timeout=CALL_TIMEOUT,
        )
        owned.expected_events.append(("UPDATED", S.TASK_STATUS_UNSPECIFIED))

    def _increment(self) -> None:
        """Read, add one, write back with the etag read; retry when someone else won."""
        assert self.counter_id is not None
        while True:
            current = self.stub.GetTask(
                pb.GetTaskRequest(task_id=self.counter_id), timeout=CALL_TIMEOUT
            )
            change = pb.Task(
                task_id=self.counter_id, priority=current.priority + 1, etag=current.etag
            )
            try:
                self.stub.UpdateTask(
                    pb.UpdateTaskRequest(task=change, update_mask=mask("priority")),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.ABORTED:
                    continue
                raise
            self.increments += 1
            return


def run_writers(writers: list[Writer]) -> None:
    with ThreadPoolExecutor(len(writers)) as pool:
        for future in [pool.submit(writer.run) for writer in writers]:
            future.result()


def assert_strictly_increasing(events: list[pb.TaskEvent]) -> None:
    ids = [event.event_id for event in events]
    assert all(a < b for a, b in itertools.pairwise(ids)), ids


def assert_server_holds_exactly_what_was_acknowledged(
    stub: Any, task_type: str, writers: list[Writer], counter: pb.Task
) -> None:
    """The table holds exactly the acknowledged tasks in their last acknowledged state, each
    with one event per acknowledged mutation, and the counter holds every increment."""
    owned = {task_id: task for writer in writers for task_id, task in writer.owned.items()}
    stored = {task.task_id: task for task in tasks_of_type(stub, task_type)}
    assert set(stored) == {*owned, counter.task_id}, "stored tasks differ from acknowledged ones"
    for task_id, task in owned.items():
        assert stored[task_id] == task.last, f"{task_id} lost its last acknowledged state"
        events = history(stub, task_id)
        assert [(event.event_type, event.new_status) for event in events] == (
            task.expected_events
        ), f"{task_id} has a history that differs from its acknowledged mutations"
        assert_strictly_increasing(events)
    increments = sum(writer.increments for writer in writers)
    assert increments > 0, "the workload never incremented the counter"
    assert stored[counter.task_id].priority == increments, "an acknowledged increment was lost"
    events = history(stub, counter.task_id)
    assert [event.event_type for event in events] == ["CREATED"] + ["UPDATED"] * increments
    assert_strictly_increasing(events)


def test_sixteen_writers_on_one_server_lose_nothing_and_never_fail(
    server: ServerProcess, unique: Callable[[str], str]
) -> None:
    task_type = unique("mix")
    counter = create(server.stub(), task_type, task_id=unique("counter"))
    deadline = time.monotonic() + 2.5
    writers = [
        Writer(server.stub(), task_type, unique("w"), deadline, counter.task_id) for _ in range(16)
    ]
    run_writers(writers)
    assert [failure for writer in writers for failure in writer.failures] == []
    assert sum(writer.calls for writer in writers) > 16 * 10, "the workload barely ran"
    assert_server_holds_exactly_what_was_acknowledged(server.stub(), task_type, writers, counter)


def test_two_server_processes_on_one_sqlite_file_lose_no_write_and_never_fail(
    start_server: Callable[..., ServerProcess], unique: Callable[[str], str]
) -> None:
    first = start_server()
    second = start_server(database_url=first.database_url)
    task_type = unique("two-processes")
    counter = create(first.stub(), task_type, task_id=unique("counter"))
    deadline = time.monotonic() + 2.5
    writers = [
        Writer(process.stub(), task_type, unique("w"), deadline, counter.task_id)
        for process in (first, second)
        for _ in range(4)
    ]
    run_writers(writers)
    assert [failure for writer in writers for failure in writer.failures] == []
    for process in (first, second):
        assert_server_holds_exactly_what_was_acknowledged(
            process.stub(), task_type, writers, counter
        )


def race_updates(stubs: list[Any], task: pb.Task, name: str) -> list[pb.Task | grpc.RpcError]:
    """Every stub renames `task` with its current etag at the same moment."""
    start = threading.Barrier(len(stubs))

    def attempt(index: int) -> pb.Task | grpc.RpcError:
        change = pb.Task(task_id=task.task_id, task_name=f"{name}-w{index}", etag=task.etag)
        start.wait(CALL_TIMEOUT)
        try:
            updated: pb.Task = stubs[index].UpdateTask(
                pb.UpdateTaskRequest(task=change, update_mask=mask("task_name")),
                timeout=CALL_TIMEOUT,
            )
            return updated
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(len(stubs)) as pool:
        return list(pool.map(attempt, range(len(stubs))))


def test_concurrent_updates_with_the_same_etag_let_exactly_one_win(server: ServerProcess) -> None:
    task = create(server.stub(), task_name="contended")
    stubs = [server.stub() for _ in range(8)]
    rounds = 5
    for round_number in range(rounds):
        outcomes = race_updates(stubs, task, f"r{round_number}")
        winners = [outcome for outcome in outcomes if isinstance(outcome, pb.Task)]
        losers = [outcome for outcome in outcomes if isinstance(outcome, grpc.RpcError)]
        assert len(winners) == 1, [describe(loser) for loser in losers]
        assert [(loser.code(), error_reason(loser)) for loser in losers] == [
            (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
        ] * (len(stubs) - 1)
        task = winners[0]
        assert server.stub().GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task
    events = history(server.stub(), task.task_id)
    assert [event.event_type for event in events] == ["CREATED"] + ["UPDATED"] * rounds


def test_concurrent_creates_with_the_same_request_id_create_one_task(
    server: ServerProcess, unique: Callable[[str], str]
) -> None:
    task_type = unique("idempotent")
    request_id = unique("req")
    callers = 8
    stubs = [server.stub() for _ in range(callers)]
    start = threading.Barrier(callers)

    def create_once(index: int) -> pb.Task:
        start.wait(CALL_TIMEOUT)
        return create(stubs[index], task_type, request_id=request_id, task_name="once")

    with ThreadPoolExecutor(callers) as pool:
        created = list(pool.map(create_once, range(callers)))
    assert {task.task_id for task in created} == {created[0].task_id}
    assert all(task == created[0] for task in created)
    assert [task.task_id for task in tasks_of_type(server.stub(), task_type)] == [
        created[0].task_id
    ]
    events = history(server.stub(), created[0].task_id)
    assert [event.event_type for event in events] == ["CREATED"]
