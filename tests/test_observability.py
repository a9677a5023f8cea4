"""What an operator sees: /metrics scraped after known traffic, counted by method and code the
way go-grpc-middleware counts, the service's own figures beside them, and one access-log line
per RPC, in text or JSON."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.observe.rpcs import GO_CODE_NAMES
from resinkit_grpc.security.tokens import new_token
from tests.rpc import create, rpc_error
from tests.servers import ServerProcess
from tests.test_migrations import HEAD

SERVICE = "resinkit.v1.TaskService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def handled(samples: Samples, method: str, code: str, service: str = SERVICE) -> float:
    kind = "server_stream" if method in ("WatchTaskEvents", "Watch") else "unary"
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_type=kind,
        grpc_service=service,
        grpc_method=method,
        grpc_code=code,
    )


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.fixture
def observed(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--metrics-address", "127.0.0.1:0")


def test_every_method_and_code_is_there_at_zero_before_any_call(observed: ServerProcess) -> None:
    samples = scrape(observed)
    methods = {
        (labels["grpc_service"], labels["grpc_method"])
        for labels in labelled(samples, "grpc_server_started_total")
    }
    task_methods = {m.name for m in pb.DESCRIPTOR.services_by_name["TaskService"].methods}
    assert {(SERVICE, name) for name in task_methods} <= methods
    assert ("grpc.health.v1.Health", "Check") in methods
    assert ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo") in methods
    codes = labelled(samples, "grpc_server_handled_total")
    assert len(codes) == len(methods) * len(GO_CODE_NAMES)
    for name in task_methods:
        for code in GO_CODE_NAMES.values():
            assert handled(samples, name, code) == 0
    assert value(samples, "resinkit_schema_info", revision=HEAD) == 1
    assert value(samples, "resinkit_watch_streams") == 0


def test_counters_follow_the_traffic_by_method_and_code(observed: ServerProcess) -> None:
    stub = observed.stub()
    before = scrape(observed)
    made = [create(stub) for _ in range(3)]
    for _ in range(2):
        rpc_error(
            lambda: stub.GetTask(pb.GetTaskRequest(task_id="missing")), grpc.StatusCode.NOT_FOUND
        )
    rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id="not an id!")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    stub.GetTask(pb.GetTaskRequest(task_id=made[0].task_id))
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=made[0].task_id, status=pb.TASK_STATUS_COMPLETED)
    )
    # A watch that replays the task's two events and ends with it (until_terminal).
    watched = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(
                task_ids=[made[0].task_id], after_event_id=0, until_terminal=True
            ),
            timeout=10,
        )
    )
    events_sent = sum(1 for message in watched if message.HasField("event"))
    assert events_sent == 2
    health_pb2_grpc.HealthStub(observed.channel()).Check(health_pb2.HealthCheckRequest())
    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def handled_delta(method: str, code: str, service: str = SERVICE) -> float:
        return handled(after, method, code, service) - handled(before, method, code, service)

    assert handled_delta("CreateTask", "OK") == 3
    assert handled_delta("GetTask", "NotFound") == 2
    assert handled_delta("GetTask", "InvalidArgument") == 1
    assert handled_delta("GetTask", "OK") == 1
    assert handled_delta("UpdateTaskStatus", "OK") == 1
    assert handled_delta("WatchTaskEvents", "OK") == 1
    assert handled_delta("Check", "OK", "grpc.health.v1.Health") == 1
    unary = {"grpc_type": "unary", "grpc_service": SERVICE}
    assert delta("grpc_server_started_total", grpc_method="GetTask", **unary) == 4
    assert delta("grpc_server_msg_received_total", grpc_method="GetTask", **unary) == 4
    assert delta("grpc_server_msg_sent_total", grpc_method="GetTask", **unary) == 1  # OK only
    stream = {"grpc_type": "server_stream", "grpc_service": SERVICE}
    sent = delta("grpc_server_msg_sent_total", grpc_method="WatchTaskEvents", **stream)
    assert sent == len(watched)
    histogram = delta("grpc_server_handling_seconds_count", grpc_method="GetTask", **unary)
    assert histogram == 4
    assert delta("resinkit_watch_events_delivered_total") == events_sent
    assert delta("resinkit_watch_streams_ended_total", reason="FINISHED") == 1
    commits = delta("resinkit_writer_batch_size_count")
    writes = delta("resinkit_writer_batch_size_sum")
    assert 1 <= commits <= writes and writes >= 4  # three creates and a status change
    assert value(after, "resinkit_database_up") == 1


def test_open_watches_and_the_tail_are_visible(observed: ServerProcess) -> None:
    stub = observed.stub()
    stream = stub.WatchTaskEvents(pb.WatchTaskEventsRequest(), timeout=30)
    assert next(stream).HasField("heartbeat")
    created = create(stub)
    assert next(stream).event.task_id == created.task_id
    samples = scrape(observed)
    assert value(samples, "resinkit_watch_streams") == 1
    assert value(samples, "resinkit_tail_lag_events") == 0
    assert value(samples, "resinkit_tail_position") >= 1
    assert value(samples, "resinkit_db_pool_connections_in_use", pool="writer") >= 0
    stream.cancel()
    deadline = time.monotonic() + 10
    while value(scrape(observed), "resinkit_watch_streams") != 0:
        assert time.monotonic() < deadline, "the cancelled watch is still counted"
        time.sleep(0.05)
    after = scrape(observed)
    assert handled(after, "WatchTaskEvents", "Canceled") == 1


def test_calls_refused_before_any_handler_are_counted_and_logged(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    token, entry = new_token("ops-ann", "reader")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(entry)
    server = start_server(
        "--metrics-address",
        "127.0.0.1:0",
        "--auth-tokens-file",
        str(tokens),
        "--log-format",
        "json",
    )
    stub = server.stub()
    rpc_error(lambda: stub.GetTask(pb.GetTaskRequest(task_id="x")), grpc.StatusCode.UNAUTHENTICATED)
    metadata = (("authorization", f"Bearer {token}"),)
    rpc_error(
        lambda: stub.CreateTask(
            pb.CreateTaskRequest(task=pb.Task(task_type="t")), metadata=metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id="x"), metadata=metadata),
        grpc.StatusCode.NOT_FOUND,
    )
    # A call is counted as it ends on the server, which may be just after its status reached
    # the client.
    wanted = (("GetTask", "Unauthenticated"), ("CreateTask", "PermissionDenied"))
    wanted += (("GetTask", "NotFound"),)
    deadline = time.monotonic() + 10
    while not all(handled(samples := scrape(server), *call) for call in wanted):
        assert time.monotonic() < deadline, "the calls are not all counted"
        time.sleep(0.05)
    assert [handled(samples, *call) for call in wanted] == [1, 1, 1]
    assert server.stop() == 0
    lines = access_lines(server)
    assert [
        (line["method"].rsplit("/", 1)[-1], line["code"], line["principal"]) for line in lines
    ] == [
        ("GetTask", "UNAUTHENTICATED", None),
        ("CreateTask", "PERMISSION_DENIED", None),
        ("GetTask", "NOT_FOUND", "ops-ann"),
    ]
    assert token not in server.log()


def access_lines(server: ServerProcess) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in parsed if line["logger"] == "resinkit_grpc.access"]


def test_json_logs_are_one_object_per_line_with_every_field(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--log-format", "json")
    stub = server.stub()
    secret = "Sekr3tValue-9f2"
    made = create(stub, task_name=secret, submitted_configs={"password": secret})
    stub.GetTask(pb.GetTaskRequest(task_id=made.task_id))
    rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id=f"{secret}-missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert server.stop() == 0
    log = server.log()
    lines = [line for line in log.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    for line in parsed:
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
        assert line["timestamp"].endswith("+00:00")
    access = [line for line in parsed if line["logger"] == "resinkit_grpc.access"]
    assert [(a["method"], a["code"]) for a in access] == [
        ("/resinkit.v1.TaskService/CreateTask", "OK"),
        ("/resinkit.v1.TaskService/GetTask", "OK"),
        ("/resinkit.v1.TaskService/GetTask", "NOT_FOUND"),
    ]
    for line in access:
        assert line["level"] == "INFO"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        assert line["principal"] is None
    assert secret not in log


def test_text_access_lines_name_method_code_duration_and_peer(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    stub = server.stub()
    rpc_error(lambda: stub.GetTask(pb.GetTaskRequest(task_id="gone")), grpc.StatusCode.NOT_FOUND)
    assert server.stop() == 0
    line = next(line for line in server.log().splitlines() if "resinkit_grpc.access" in line)
    words = line.split("resinkit_grpc.access: ", 1)[1].split()
    assert words[0] == "/resinkit.v1.TaskService/GetTask" and words[1] == "NOT_FOUND"
    assert float(words[2]) > 0 and words[3] == "ms"
    assert words[4].startswith("peer=ipv4:127.0.0.1:") and words[5] == "principal=-"


def test_a_metrics_address_that_is_taken_is_one_line(
    observed: ServerProcess, start_server: Callable[..., ServerProcess]
) -> None:
    taken = observed.metrics_url.split("/")[2]
    with pytest.raises(RuntimeError, match=f"cannot serve metrics on {taken}"):
        start_server("--metrics-address", taken)
