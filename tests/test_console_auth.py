"""The console with tokens, and with retention: every endpoint needs a bearer token, a reader
may read but not act (403, the gRPC API's PERMISSION_DENIED), a writer's actions are recorded
with its principal, and a stream resumed from a purged position is told to reload."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from tests.certificates import Authority
from tests.console_http import EventStream, call
from tests.databases import Databases
from tests.rpc import error_reason
from tests.servers import ServerProcess
from tests.test_auth import Tokens


@pytest.fixture(scope="module")
def tokens(module_dir: Path) -> Tokens:
    return Tokens(module_dir / "tokens.toml")


@pytest.fixture(scope="module")
def guarded(
    backend: str, databases: Databases, module_dir: Path, tokens: Tokens
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        databases.new_url(backend, module_dir),
        module_dir,
        "--console-address",
        "127.0.0.1:0",
        "--auth-tokens-file",
        str(tokens.path),
        "--retention",
        "1s",
        "--retention-interval",
        "0.1",
        "--heartbeat-interval",
        "0.2",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def authed(server: ServerProcess, token: str) -> Any:
    return pb_grpc.TaskServiceStub(server.channel()), [("authorization", f"Bearer {token}")]


def test_every_endpoint_needs_a_token_and_a_reader_may_not_act(
    guarded: ServerProcess, tokens: Tokens, unique: Callable[[str], str]
) -> None:
    base = guarded.console_url
    stub, writer = authed(guarded, tokens.by_role["writer"])
    task = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type=unique("auth"))), metadata=writer
    )
    reads = [
        "/api/session",
        "/api/tasks",
        "/api/counts",
        f"/api/tasks/{task.task_id}",
        f"/api/tasks/{task.task_id}/events",
    ]
    actions = [f"/api/tasks/{task.task_id}/{action}" for action in ("cancel", "delete", "undelete")]
    for path in reads + actions:
        method = "POST" if path in actions else "GET"
        for token in (None, "rk_not-a-token"):
            refused = call(base, method, path, {} if method == "POST" else None, token=token)
            assert refused.status == 401, (path, refused.body)
            assert refused.error["reason"] == "UNAUTHENTICATED"
            assert refused.headers["www-authenticate"] == "Bearer"
    reader = tokens.by_role["reader"]
    for path in reads:
        assert call(base, "GET", path, token=reader).status == 200, path
    session = call(base, "GET", "/api/session", token=reader).body
    assert session["auth"] is True and session["role"] == "reader" and session["can_write"] is False
    for path in actions:
        denied = call(base, "POST", path, {}, token=reader)
        assert denied.status == 403, denied.body
        assert denied.error["code"] == "PERMISSION_DENIED"
        assert denied.error["reason"] == "PERMISSION_DENIED"
    # The same refusal over gRPC.
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteTask(
            pb.DeleteTaskRequest(task_id=task.task_id),
            metadata=[("authorization", f"Bearer {reader}")],
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(caught.value) == "PERMISSION_DENIED"
    with EventStream(base, "", token=None) as stream:
        assert stream.status == 401
    with EventStream(base, f"task_id={task.task_id}", last_event_id="0", token=reader) as stream:
        assert stream.status == 200
        first = next(frame for frame in stream.frames() if frame.event == "task_event")
        assert first.data["event_type"] == "CREATED"


def test_a_writers_action_is_recorded_with_its_principal_whatever_the_body_names(
    guarded: ServerProcess, tokens: Tokens, unique: Callable[[str], str]
) -> None:
    base = guarded.console_url
    stub, writer = authed(guarded, tokens.by_role["writer"])
    task = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type=unique("actor"))), metadata=writer
    )
    reply = call(
        base,
        "POST",
        f"/api/tasks/{task.task_id}/cancel",
        {"actor": "someone-else"},
        token=tokens.by_role["writer"],
    )
    assert reply.status == 200 and reply.body["status"] == "TASK_STATUS_CANCELLED", reply.body
    events = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task.task_id), metadata=writer)
    assert events.events[-1].actor == "writer-bot"


def test_a_stream_resumed_from_a_purged_position_is_told_to_reload(
    guarded: ServerProcess, tokens: Tokens, unique: Callable[[str], str]
) -> None:
    base, token = guarded.console_url, tokens.by_role["reader"]
    stub, writer = authed(guarded, tokens.by_role["writer"])
    task = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type=unique("purge"))), metadata=writer
    )
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_COMPLETED),
        metadata=writer,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = call(base, "GET", f"/api/tasks/{task.task_id}", token=token)
        if reply.status == 404:
            break
        time.sleep(0.1)
    assert reply.status == 404, "retention did not purge the task"
    with EventStream(base, "", last_event_id="0", token=token) as stream:
        frames = list(stream.frames())
    assert [frame.event for frame in frames] == ["purged"]
    assert frames[0].id is None  # no position to resume from: what was purged is gone
    assert frames[0].data["error"]["code"] == "OUT_OF_RANGE"
    assert frames[0].data["error"]["reason"] == "EVENTS_PURGED"


def test_with_tls_the_console_speaks_https_with_the_same_certificate_and_mutual_tls_names_the_actor(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    ca = Authority(tmp_path, "console-ca")
    issued = ca.server()
    server = start_server(
        "--tls-cert",
        str(issued.certificate),
        "--tls-key",
        str(issued.key),
        "--tls-client-ca",
        str(ca.path),
        "--console-address",
        "127.0.0.1:0",
    )
    assert server.console_url.startswith("https://127.0.0.1:")
    runner = ca.issue("flink-runner", dns=("flink-runner.jobs",))
    credentials = grpc.ssl_channel_credentials(
        ca.path.read_bytes(), runner.key.read_bytes(), runner.certificate.read_bytes()
    )
    with grpc.secure_channel(server.address, credentials) as channel:
        stub = pb_grpc.TaskServiceStub(channel)
        task = stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="console-tls")))
        context = ssl.create_default_context(cafile=str(ca.path))
        context.load_cert_chain(runner.certificate, runner.key)
        reply = call(
            server.console_url,
            "POST",
            f"/api/tasks/{task.task_id}/cancel",
            {"actor": "somebody-else"},
            context=context,
        )
        assert reply.status == 200, reply.body
        events = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task.task_id)).events
        assert events[-1].actor == "flink-runner.jobs"
    # Without a client certificate the handshake is refused, as on the gRPC port.
    bare = ssl.create_default_context(cafile=str(ca.path))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        call(server.console_url, "GET", "/api/session", context=bare)
