"""The server process: health, reflection, shutdown, persistence, and start-up failures."""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.rpc import create
from tests.servers import ServerProcess, run_cli


def health_status(server: ServerProcess, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_serving_for_the_server_and_the_task_service(server: ServerProcess) -> None:
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING
    assert (
        health_status(server, "resinkit.v1.TaskService") == health_pb2.HealthCheckResponse.SERVING
    )


def test_reflection_lists_and_describes_the_task_service(server: ServerProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="resinkit.v1.TaskService"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {service.name for service in listed.list_services_response.service}
    assert {"resinkit.v1.TaskService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_tasks_survive_a_restart(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    first = start_server()
    task = create(first.stub(), task_name="durable")
    assert first.stop() == 0
    second = start_server(database_url=first.database_url)
    assert second.stub().GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_finishes_in_flight_rpcs_and_exits_zero(
    start_server: Callable[..., ServerProcess], signum: int
) -> None:
    server = start_server()
    stub = server.stub()
    results: list[pb.Task] = []
    errors: list[BaseException] = []

    def write_many() -> None:
        try:
            for _ in range(200):
                results.append(create(stub))
        except grpc.RpcError as error:
            errors.append(error)

    writer = threading.Thread(target=write_many)
    writer.start()
    while len(results) < 20:
        pass
    server.send(signum)
    writer.join(30)
    assert server.wait() == 0
    # Every acknowledged create is stored. A call that arrives once shutdown has begun is refused
    # with UNAVAILABLE (never CANCELLED, which would leave the caller unsure): never accepted.
    assert len(results) + len(errors) <= 200 and len(results) >= 20
    assert all(
        isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAVAILABLE for e in errors
    ), [e.code() for e in errors if isinstance(e, grpc.RpcError)]
    restarted = start_server(database_url=server.database_url)
    for task in results:
        assert restarted.stub().GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "cannot parse database URL"),
        ("mysql://localhost/tasks", "unsupported database URL"),
        ("sqlite:////nonexistent-dir/sub/tasks.db", "cannot use the database"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot use the database"),
    ],
)
def test_a_bad_database_is_one_clear_line_and_a_non_zero_exit(url: str, expected: str) -> None:
    result = run_cli("serve", "--address", "127.0.0.1:0", "--database-url", url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resinkit-grpc: error: ")
    assert expected in lines[0]


def test_an_address_in_use_is_one_clear_line(server: ServerProcess, tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--address", server.address, "--database-url", f"sqlite:///{tmp_path / 'x.db'}"
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"resinkit-grpc: error: cannot listen on {server.address}"
    )


def test_environment_variables_configure_the_server_and_flags_win(tmp_path: Path) -> None:
    from_env = tmp_path / "from-env.db"
    from_flag = tmp_path / "from-flag.db"
    env = {"RESINKIT_DATABASE_URL": f"sqlite:///{from_env}"}
    result = run_cli("migrate", **env)
    assert result.returncode == 0, result.stderr
    assert from_env.exists() and not from_flag.exists()
    result = run_cli("migrate", "--database-url", f"sqlite:///{from_flag}", **env)
    assert result.returncode == 0, result.stderr
    assert from_flag.exists()


def test_an_invalid_environment_value_is_one_clear_line() -> None:
    result = run_cli("migrate", RESINKIT_READ_THREADS="many")
    assert result.returncode != 0
    assert (
        result.stderr.strip() == "resinkit-grpc: error: RESINKIT_READ_THREADS='many' is not valid"
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--heartbeat-interval", "0"),  # would busy-loop heartbeats
        ("--heartbeat-interval", "nan"),
        ("--watch-buffer", "0"),  # would cut every stream at its first event
        ("--watch-buffer-bytes", "100"),
        ("--log-level", "bogus"),
        ("--read-threads", "0"),
        ("--max-watchers", "-1"),
        ("--grace-period", "inf"),
        ("--pool-timeout", "0"),
        ("--sqlite-busy-timeout", "-5"),
        ("--loop-read-budget", "-1"),
        ("--sqlite-synchronous", "sometimes"),
        ("--address", "no-port"),
        ("--address", "127.0.0.1:70000"),
    ],
)
def test_a_setting_out_of_its_range_is_one_line_naming_the_flag(
    flag: str, value: str, tmp_path: Path
) -> None:
    result = run_cli("serve", flag, value, "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"resinkit-grpc: error: {flag} must be "), lines[0]
    assert not (tmp_path / "x.db").exists()  # refused before anything was touched


def test_a_setting_out_of_range_in_the_environment_names_the_variable() -> None:
    result = run_cli("migrate", RESINKIT_WATCH_BUFFER="0")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "resinkit-grpc: error: RESINKIT_WATCH_BUFFER must be between 10 and 1000000 (got 0)"
    )


def test_calls_racing_shutdown_are_done_or_refused_unavailable_with_nothing_written(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Four clients call as fast as they can while the server is told to stop, and go elsewhere
    0.2 s after their first refusal (as behind a load balancer): each call either succeeds (and
    its task is stored) or is UNAVAILABLE (and nothing was written), never CANCELLED."""
    server = start_server()
    outcomes: list[tuple[str, grpc.StatusCode]] = []
    lock = threading.Lock()
    started = threading.Barrier(5)

    def call_until_refused_for_a_while(worker: int) -> None:
        stub = server.stub()
        started.wait()
        refused_at = None
        for n in range(100_000):
            task_id = f"race-{worker}-{n}"
            try:
                create(stub, task_id=task_id)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                refused_at = refused_at or time.monotonic()
            with lock:
                outcomes.append((task_id, code))
            if refused_at and time.monotonic() - refused_at > 0.2:
                return

    workers = [threading.Thread(target=call_until_refused_for_a_while, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    started.wait()
    time.sleep(0.5)
    server.send(signal.SIGTERM)
    for worker in workers:
        worker.join(60)
    assert server.wait() == 0
    codes = collections.Counter(code for _, code in outcomes)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    restarted = start_server(database_url=server.database_url).stub()
    for task_id, code in outcomes:
        try:
            restarted.GetTask(pb.GetTaskRequest(task_id=task_id))
            stored = True
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            stored = False
        assert stored == (code == grpc.StatusCode.OK), (task_id, code)


def test_health_lists_every_service(server: ServerProcess) -> None:
    health = health_pb2_grpc.HealthStub(server.channel())
    listed = health.List(health_pb2.HealthListRequest())
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        "resinkit.v1.TaskService": health_pb2.HealthCheckResponse.SERVING,
    }


def test_an_open_health_watch_is_told_not_serving_and_does_not_hold_up_shutdown(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()  # --grace-period 5
    health = health_pb2_grpc.HealthStub(server.channel())
    stream = health.Watch(health_pb2.HealthCheckRequest(service="resinkit.v1.TaskService"))
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    began = time.monotonic()
    server.send(signal.SIGTERM)
    assert next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.wait() == 0
    assert time.monotonic() - began < 2.5, "shutdown waited for the health watch"


def test_every_setting_has_its_flag_and_every_flag_its_setting() -> None:
    from dataclasses import fields

    from resinkit_grpc.cli import OPTIONS
    from resinkit_grpc.config import Settings

    assert sorted(option.field for option in OPTIONS) == sorted(f.name for f in fields(Settings))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for option in OPTIONS:  # and each is documented, with its environment variable
        assert f"| `{option.flag}` | `RESINKIT_{option.field.upper()}` |" in readme, option.flag
