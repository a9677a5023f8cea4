"""TLS and mutual TLS through real servers, with certificates the tests make: plaintext is
refused by a TLS server, a client certificate from another CA is refused, the caller's identity
comes from its certificate, the server certificate rotates without a restart, and a bad file
stops the boot with one line."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from tests.certificates import Authority, Issued
from tests.rpc import history
from tests.servers import ServerProcess, run_cli


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "test-ca")


@pytest.fixture
def channels() -> Iterator[Callable[..., Any]]:
    opened: list[grpc.Channel] = []

    def stub(address: str, root: Path | None, client: Issued | None = None) -> Any:
        if root is None:
            channel = grpc.insecure_channel(address)
        else:
            key, certificate = client.pair() if client else (None, None)
            credentials = grpc.ssl_channel_credentials(root.read_bytes(), key, certificate)
            channel = grpc.secure_channel(address, credentials)
        opened.append(channel)
        return pb_grpc.TaskServiceStub(channel)

    yield stub
    for channel in opened:
        channel.close()


def reachable(stub: Any) -> grpc.StatusCode:
    try:
        stub.ListTasks(pb.ListTasksRequest(page_size=1), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def test_a_tls_server_speaks_tls_only(
    start_server: Callable[..., ServerProcess], ca: Authority, channels: Callable[..., Any]
) -> None:
    issued = ca.server()
    server = start_server("--tls-cert", str(issued.certificate), "--tls-key", str(issued.key))
    assert reachable(channels(server.address, ca.path)) == grpc.StatusCode.OK
    assert reachable(channels(server.address, None)) == grpc.StatusCode.UNAVAILABLE
    other = Authority(ca.directory, "other-ca")
    assert reachable(channels(server.address, other.path)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_takes_the_callers_identity_from_its_certificate(
    start_server: Callable[..., ServerProcess], ca: Authority, channels: Callable[..., Any]
) -> None:
    issued = ca.server()
    server = start_server(
        "--tls-cert",
        str(issued.certificate),
        "--tls-key",
        str(issued.key),
        "--tls-client-ca",
        str(ca.path),
    )
    runner = ca.issue("flink-runner", dns=("flink-runner.jobs",))
    stub = channels(server.address, ca.path, runner)
    made = stub.CreateTask(
        pb.CreateTaskRequest(
            task=pb.Task(task_type="mtls", created_by="somebody-else"), actor="somebody-else"
        )
    )
    assert made.created_by == "flink-runner.jobs"  # the SAN, not what the request said
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(
            task_id=made.task_id, status=pb.TASK_STATUS_RUNNING, actor="somebody-else"
        )
    )
    assert {e.actor for e in history(stub, made.task_id)} == {"flink-runner.jobs"}
    common_name_only = ca.issue("cn-only")
    named = channels(server.address, ca.path, common_name_only).CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type="mtls"))
    )
    assert named.created_by == "cn-only"
    # No client certificate, or one from another CA: refused at the handshake.
    assert reachable(channels(server.address, ca.path)) == grpc.StatusCode.UNAVAILABLE
    stranger = Authority(ca.directory, "stranger-ca").issue("intruder")
    assert reachable(channels(server.address, ca.path, stranger)) == grpc.StatusCode.UNAVAILABLE


def test_the_server_certificate_rotates_without_a_restart(
    start_server: Callable[..., ServerProcess],
    ca: Authority,
    channels: Callable[..., Any],
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    certificate, key = live / "server.crt", live / "server.key"
    first = ca.server("first")
    shutil.copy(first.certificate, certificate)
    shutil.copy(first.key, key)
    server = start_server("--tls-cert", str(certificate), "--tls-key", str(key))
    assert reachable(channels(server.address, ca.path)) == grpc.StatusCode.OK
    successor = Authority(tmp_path, "successor-ca")
    second = successor.server("second")
    time.sleep(0.01)  # a new modification time
    for source, target in ((second.key, key), (second.certificate, certificate)):
        staged = target.with_suffix(".new")
        shutil.copy(source, staged)
        os.replace(staged, target)  # as a secret manager swaps files in place
    # New connections get the new certificate: only the new CA's clients trust it now.
    assert reachable(channels(server.address, successor.path)) == grpc.StatusCode.OK
    assert reachable(channels(server.address, ca.path)) == grpc.StatusCode.UNAVAILABLE
    assert server.stop() == 0


@pytest.mark.parametrize("problem", ["garbage", "mismatched key", "missing"])
def test_a_bad_certificate_file_is_one_line_and_a_non_zero_exit(
    problem: str, ca: Authority, tmp_path: Path
) -> None:
    issued = ca.server()
    certificate, key = issued.certificate, issued.key
    if problem == "garbage":
        certificate.write_text("not a certificate")
    elif problem == "mismatched key":
        key = ca.server("another").key
    else:
        certificate = tmp_path / "nowhere.crt"
    result = run_cli(
        "serve",
        "--address",
        "127.0.0.1:0",
        "--database-url",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--tls-cert",
        str(certificate),
        "--tls-key",
        str(key),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resinkit-grpc: error: cannot use the cert")
    assert not (tmp_path / "x.db").exists()


def test_plaintext_beyond_loopback_is_warned_about_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    local = start_server()
    wide = start_server("--address", "0.0.0.0:0")
    assert create_works(wide)
    local.stop()
    wide.stop()
    assert "serving plaintext" not in local.log()
    assert wide.log().count("serving plaintext") == 1


def create_works(server: ServerProcess) -> bool:
    stub = server.stub()
    return bool(stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="w"))).task_id)
