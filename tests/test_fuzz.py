"""A property-based fuzz of every RPC, with requests derived from the message descriptors
(tests/fuzzing.py), so a new field or method is fuzzed without an edit here.

Every TaskService method and grpc.health.v1.Health/Check gets arbitrary and adversarial
messages, and undecodable bytes. Whatever it is sent, the server:

- never answers INTERNAL, UNKNOWN or DATA_LOSS (nor UNIMPLEMENTED, UNAVAILABLE); its errors carry a
  google.rpc.Status of the same code, INVALID_ARGUMENT names fields of the request, and the
  trailers stay far below gRPC's 16 KiB;
- writes exactly one event with each change, and nothing when it refuses (checked around every
  request);
- keeps its database consistent (checked by SQL after each method: every task's events replay
  to the task as stored, starting with its one CREATED event; every event's task exists);
- stays SERVING, and logs no ERROR and no traceback.

RESINKIT_FUZZ_EXAMPLES sets the examples per method and kind (default 25, a CI-sized run); the
number of requests tried is printed at the end of the module.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resinkit_grpc.api import parse
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import EventType, TaskStatus, can_transition
from resinkit_grpc.store.models import MutationRequest, Task, TaskEvent
from tests.fuzzing import Pools, Requests, corrupted, edge_cases
from tests.rpc import create
from tests.servers import ServerProcess

EXAMPLES = int(os.environ.get("RESINKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# Long runs get the time they need (pytest.ini gives a test 120 s).
TIMEOUT = max(120, EXAMPLES * 3)

TASK_SERVICE = pb.DESCRIPTOR.services_by_name["TaskService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
METHODS = [*TASK_SERVICE.methods, HEALTH.methods_by_name["Check"]]

# A stream is read this long, or to its first heartbeat, then cancelled.
WATCH_SECONDS = 0.5
UNARY_SECONDS = 30.0
# gRPC drops trailers over 16 KiB; what an error takes must stay far below.
MAX_TRAILER_BYTES = 16 * 1024
MAX_DETAILS_LENGTH = 1024
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
}
# What ends a stream we cut short ourselves.
OUR_ENDINGS = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# Exception text that must never reach a caller.
LEAKS = re.compile(r"Traceback|\b\w+(Error|Exception)\b|sqlalchemy|psycopg|sqlite3|File \"")
TOO_LARGE = "Received message larger than max"

# Requests sent, by method and outcome (the server's code, or OK), on the module's current
# backend: the figure a long run quotes.
tried: collections.Counter[tuple[str, str]] = collections.Counter()


def method_id(method: MethodDescriptor) -> str:
    return method.name if method.containing_service is TASK_SERVICE else f"Health.{method.name}"


@dataclass
class Target:
    """The server under fuzz: a channel to it and a direct line to its database."""

    server: ServerProcess
    channel: grpc.Channel
    engine: sqlalchemy.Engine
    requests: Requests


@pytest.fixture(scope="module")
def target(server: ServerProcess, stub: Any) -> Iterator[Target]:
    engine = sqlalchemy.create_engine(server.database_url)
    tried.clear()
    try:
        yield Target(server, server.channel(), engine, Requests(seed(stub)))
    finally:
        engine.dispose()


def seed(stub: Any) -> Pools:
    """Tasks in every state for mutations to hit, and real page tokens of several queries."""
    pools = Pools(
        event_types=[e.value for e in EventType],
        order_by=[
            f"{f}{d}" for f in ("created_at", "updated_at", "priority") for d in ("", " desc")
        ],
        request_ids=["fuzz-request-1", "fuzz-request-2"],
    )
    names = ["plain", "100%_done", "a\\b", "it's", 'say "hi"', "--x;/*", "\u202e\u00e9"]
    for n, name in enumerate(names):
        task = create(
            stub,
            f"fuzz_type_{n % 3}",
            task_id=f"fuzz-seed-{n}",
            task_name=name,
            tags=[f"tag-{n % 2}", "%", "_"],
            priority=n,
            submitted_configs={"n": n},
        )
        pools.task_ids.append(task.task_id)
    ids = pools.task_ids
    stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=ids[1], status=pb.TASK_STATUS_RUNNING))
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=ids[2], status=pb.TASK_STATUS_COMPLETED)
    )
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=ids[3], status=pb.TASK_STATUS_CANCELLING)
    )
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=ids[4]))
    stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=ids[5], description="changed")))
    pools.task_types = sorted({f"fuzz_type_{n}" for n in range(3)})
    pools.tags = ["tag-0", "tag-1", "%", "_"]
    pools.etags = [f'W/"{n}"' for n in (1, 2, 3)]
    pools.page_tokens = sorted(set(_real_tokens(stub, ids)))
    assert len(pools.page_tokens) >= 6, pools.page_tokens
    return pools


def _real_tokens(stub: Any, ids: list[str]) -> Iterator[str]:
    queries = [
        pb.ListTasksRequest(page_size=1),
        pb.ListTasksRequest(page_size=2, order_by="priority"),
        pb.ListTasksRequest(page_size=1, order_by="updated_at", show_deleted=True),
        pb.ListTasksRequest(page_size=1, filter=pb.TaskFilter(tags_any=["tag-0"])),
        pb.ListTasksRequest(page_size=1, view=pb.TASK_VIEW_FULL),
    ]
    for query in queries:
        yield stub.ListTasks(query).next_page_token
    for task_id in ("", ids[1]):
        yield stub.ListTaskEvents(
            pb.ListTaskEventsRequest(task_id=task_id, page_size=1)
        ).next_page_token
    yield stub.ListTaskEvents(
        pb.ListTaskEventsRequest(page_size=1, event_types=["CREATED"])
    ).next_page_token


# One request ------------------------------------------------------------------------------


def send(target: Target, method: MethodDescriptor, request: Message | bytes) -> None:
    """Sends one request (a message, or raw bytes as they are) and checks what comes back,
    and what it wrote."""
    before = counts(target.engine)
    error = call(target.channel, method, request)
    tried[method_id(method), "OK" if error is None else error.code().name] += 1
    after = counts(target.engine)
    if error is not None:
        check_error(method, error, raw=isinstance(request, bytes))
    check_writes(method, before, after, failed=error is not None)


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message | bytes) -> Any:
    """The RpcError the call ended with, or None. Streams are read to their first heartbeat
    (or a few messages) and cancelled; streaming requests are sent as a stream of one."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = isinstance(request, bytes)
    serialize = None if raw else message_class(method.input_type).SerializeToString
    deserialize = message_class(method.output_type).FromString
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    stub = kind(path, request_serializer=serialize, response_deserializer=deserialize)
    argument = iter([request]) if method.client_streaming else request
    try:
        if not method.server_streaming:
            stub(argument, timeout=UNARY_SECONDS)
            return None
        stream = stub(argument, timeout=WATCH_SECONDS)
        try:
            for seen, response in enumerate(stream):
                if seen >= 4 or response.WhichOneof("kind") == "heartbeat":
                    break
        finally:
            stream.cancel()
    except grpc.RpcError as error:
        return error
    return None


def check_error(method: MethodDescriptor, error: Any, *, raw: bool) -> None:
    code = error.code()
    details = error.details() or ""
    where = f"{method_id(method)} -> {code.name}: {details[:300]!r}"
    assert code not in FORBIDDEN, where
    trailers = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers)
    assert size < MAX_TRAILER_BYTES, f"{where}: {size} bytes of trailers"
    assert len(details) <= MAX_DETAILS_LENGTH, f"{where}: {len(details)} characters of details"
    assert not LEAKS.search(details), where
    if method.server_streaming and code in OUR_ENDINGS:
        return  # we cut the stream short (or it waited for a task yet to be created)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and TOO_LARGE in details:
        return  # gRPC itself refused a request over --max-receive-message-bytes
    if method.containing_service is not TASK_SERVICE:
        return  # Health answers plain statuses ("unknown service")
    status = rpc_status.from_call(error)
    assert status is not None, f"{where}: no google.rpc.Status in the trailers"
    assert status.code == code.value[0], where
    reasons = [_unpack(d, error_details_pb2.ErrorInfo) for d in status.details]
    assert any(info is not None and info.reason for info in reasons), f"{where}: no ErrorInfo"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = [_unpack(d, error_details_pb2.BadRequest) for d in status.details]
        violations = [v for b in bad if b is not None for v in b.field_violations]
        assert violations, f"{where}: no BadRequest field violation"
        known = {f.name for f in method.input_type.fields} | {"request"}
        for violation in violations:
            top = re.split(r"[.\[]", violation.field)[0]
            assert top in known, f"{where}: names {violation.field!r}, not a request field"
            assert violation.description, where


def _unpack(packed: Any, kind: type[Any]) -> Any:
    if not packed.Is(kind.DESCRIPTOR):
        return None
    message = kind()
    packed.Unpack(message)
    return message


@dataclass(frozen=True)
class Counts:
    tasks: int
    events: int
    versions: int
    kept_requests: int


def counts(engine: sqlalchemy.Engine) -> Counts:
    tasks, events, requests = Task.__table__, TaskEvent.__table__, MutationRequest.__table__
    with engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.select(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(tasks).scalar_subquery(),
                sqlalchemy.select(sqlalchemy.func.count()).select_from(events).scalar_subquery(),
                sqlalchemy.select(
                    sqlalchemy.func.coalesce(sqlalchemy.func.sum(tasks.c.version), 0)
                ).scalar_subquery(),
                sqlalchemy.select(sqlalchemy.func.count()).select_from(requests).scalar_subquery(),
            )
        ).one()
    return Counts(*(int(value) for value in row))


def check_writes(method: MethodDescriptor, before: Counts, after: Counts, *, failed: bool) -> None:
    """A refused request writes nothing; any other writes at most one task and exactly one
    event per change (a task's version counts its events); a batch create writes tasks, each
    with its one CREATED event, and nothing else."""
    where = f"{method_id(method)}: {before} -> {after}"
    if failed:
        assert after == before, f"{where}: a refused request wrote"
        return
    events = after.events - before.events
    if method.name == "BatchCreateTasks":
        assert after.tasks - before.tasks == events == after.versions - before.versions, where
        assert 0 <= events <= parse.MAX_BATCH_SIZE, where
        assert after.kept_requests == before.kept_requests, where
        return
    assert events in (0, 1), where
    assert after.versions - before.versions == events, where
    assert 0 <= after.tasks - before.tasks <= events, where
    assert 0 <= after.kept_requests - before.kept_requests <= 1, where


# The database and the server --------------------------------------------------------------


def inconsistencies(connection: sqlalchemy.Connection) -> list[str]:
    """What is wrong with the stored tasks and events: every task's events, in event_id
    order, must start with its one CREATED event and replay to the task as stored."""
    tasks_table, events_table = Task.__table__, TaskEvent.__table__
    tasks = {row.task_id: row for row in connection.execute(sqlalchemy.select(tasks_table))}
    events = connection.execute(
        sqlalchemy.select(events_table).order_by(events_table.c.event_id)
    ).all()
    kept = connection.execute(sqlalchemy.select(MutationRequest.__table__.c.task_id)).all()
    problems = [f"event {e.event_id}: task {e.task_id!r} does not exist" for e in events]
    problems = [p for p, e in zip(problems, events, strict=True) if e.task_id not in tasks]
    problems += [
        f"kept request of missing task {k.task_id!r}" for k in kept if k.task_id not in tasks
    ]
    by_task: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        by_task[event.task_id].append(event)
    for task_id, task in tasks.items():
        problems += [f"task {task_id!r}: {p}" for p in _replay(task, by_task[task_id])]
    return problems


def _replay(task: Any, events: list[Any]) -> Iterator[str]:
    if not events or events[0].event_type != EventType.CREATED:
        yield "its first event is not CREATED"
        return
    created = events[0]
    if created.new_status != TaskStatus.PENDING or created.previous_status is not None:
        yield "CREATED does not record PENDING"
    if created.timestamp != task.created_at:
        yield "created_at is not its CREATED event's timestamp"
    status, active, started, finished = TaskStatus.PENDING, True, False, False
    for event in events[1:]:
        match event.event_type:
            case EventType.STATUS_CHANGE:
                new = TaskStatus(event.new_status)
                if not active or event.previous_status != status or not can_transition(status, new):
                    yield f"event {event.event_id}: illegal {event.previous_status} -> {new}"
                status = new
                started = started or new is TaskStatus.RUNNING
                finished = finished or new.is_terminal
            case EventType.UPDATED:
                if not active or not (event.event_data or {}).get("fields"):
                    yield f"event {event.event_id}: UPDATED a deleted task, or nothing"
            case EventType.DELETED | EventType.UNDELETED as kind:
                if active != (kind == EventType.DELETED):
                    yield f"event {event.event_id}: {kind} of a task that was not"
                active = kind == EventType.UNDELETED
            case other:
                yield f"event {event.event_id}: {other!r} (a second CREATED, or unknown)"
    if (task.status, bool(task.active)) != (status, active):
        yield f"stored {task.status}/active={task.active}, its events say {status}/{active}"
    if task.version != len(events):
        yield f"version {task.version} but {len(events)} events"
    if task.updated_at != events[-1].timestamp:
        yield "updated_at is not its last event's timestamp"
    if (task.started_at is not None, task.finished_at is not None) != (started, finished):
        yield "started_at / finished_at disagree with its status changes"


def check_server(target: Target) -> None:
    with target.engine.connect() as connection:
        problems = inconsistencies(connection)
    assert not problems, "\n".join(problems[:20])
    log = target.server.log()
    bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not bad, "\n".join(bad[:20]) + "\n" + log[-4000:]
    health = target.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    for service in ("", TASK_SERVICE.full_name):
        answer = health(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def message_class(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)


# The fuzz ---------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_no_request_breaks_the_server(target: Target, method: MethodDescriptor) -> None:
    @FUZZ
    @given(request=target.requests.of(method.input_type))
    def fuzz(request: Message) -> None:
        send(target, method, request)

    fuzz()
    check_server(target)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_no_bytes_break_the_server(target: Target, method: MethodDescriptor) -> None:
    """Undecodable payloads: random bytes, and real requests cut short, changed or extended
    (some still decode, and are then answered like any other request)."""
    encoded = target.requests.of(method.input_type).map(lambda m: m.SerializeToString())
    payloads = st.one_of(
        st.binary(max_size=300),
        st.builds(corrupted, encoded, st.integers(0, 10**6), st.integers(0, 10**6)),
    )

    @FUZZ
    @given(payload=payloads)
    def fuzz(payload: bytes) -> None:
        send(target, method, payload)

    fuzz()
    check_server(target)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_every_field_at_its_edges(target: Target, method: MethodDescriptor) -> None:
    """Each field of a plausible request, one at a time and at any depth, at the edges of its
    type: what random examples reach only now and then, on every run."""
    for path, request in edge_cases(method.input_type, target.requests.pools):
        try:
            send(target, method, request)
        except AssertionError as failure:
            raise AssertionError(f"{path} at an edge: {failure}") from None
    check_server(target)


def test_the_consistency_check_sees_a_broken_database(target: Target) -> None:
    """Not vacuous: a version its events do not explain and a task without its CREATED event
    are reported (inside a transaction that is rolled back)."""
    tasks, events = Task.__table__, TaskEvent.__table__
    with target.engine.connect() as connection, connection.begin() as transaction:
        connection.execute(
            tasks.update().where(tasks.c.task_id == "fuzz-seed-0").values(version=99)
        )
        connection.execute(
            events.delete().where(
                events.c.task_id == "fuzz-seed-6", events.c.event_type == "CREATED"
            )
        )
        problems = inconsistencies(connection)
        transaction.rollback()
    assert any("fuzz-seed-0" in p and "version 99" in p for p in problems), problems
    assert any("fuzz-seed-6" in p and "CREATED" in p for p in problems), problems
    with target.engine.connect() as connection:
        assert not inconsistencies(connection)


def test_the_server_is_still_serving_and_consistent(
    target: Target, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    check_server(target)
    total = sum(tried.values())
    by_method: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (method, outcome), count in tried.items():
        by_method[method][outcome] += count
    with capsys.disabled():
        print(
            f"\nfuzz on {backend}: {total} requests tried ({EXAMPLES} examples per method and kind)"
        )
        for method, outcomes in sorted(by_method.items()):
            print(f"  {method}: " + ", ".join(f"{o} {n}" for o, n in outcomes.most_common()))
    assert total >= len(METHODS) * 2 * min(EXAMPLES, 5)
