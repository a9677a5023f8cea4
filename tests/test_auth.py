"""Bearer tokens and roles through real servers: every role on every RPC, refusals decided
before any task is looked up, the token's principal as the caller, a tokens file re-read when
it changes (a watcher whose token is removed is ended), and no token in any log line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.security.tokens import new_token
from resinkit_grpc.watched_file import RECHECK_SECONDS
from tests.rpc import error_reason
from tests.servers import ServerProcess, run_cli
from tests.watching import Watcher

ALLOWED, UNAUTHENTICATED, DENIED = "allowed", "UNAUTHENTICATED", "PERMISSION_DENIED"


class Tokens:
    """A tokens file the test writes, and the tokens it holds, by role."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_role: dict[str, str] = {}
        entries = []
        for role in ("reader", "writer", "admin"):
            token, entry = new_token(f"{role}-bot", role)
            self.by_role[role] = token
            entries.append(entry)
        self.path.write_text("\n".join(entries))


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(tmp_path / "tokens.toml")


def call(stub: Any, method: str, token: str | None) -> str:
    """Calls `method` with `token`; ALLOWED when the call got past authorization, whatever it
    then answered (a task that does not exist is NOT_FOUND, for one)."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    requests: dict[str, Any] = {
        "GetTask": pb.GetTaskRequest(task_id="no-such-task"),
        "ListTasks": pb.ListTasksRequest(page_size=1),
        "ListTaskEvents": pb.ListTaskEventsRequest(page_size=1),
        "CreateTask": pb.CreateTaskRequest(task=pb.Task(task_type="auth")),
        "BatchCreateTasks": pb.BatchCreateTasksRequest(
            requests=[pb.CreateTaskRequest(task=pb.Task(task_type="auth"))]
        ),
        "BatchGetTasks": pb.BatchGetTasksRequest(task_ids=["no-such-task"]),
        "UpdateTask": pb.UpdateTaskRequest(task=pb.Task(task_id="no-such-task", priority=1)),
        "UpdateTaskStatus": pb.UpdateTaskStatusRequest(
            task_id="no-such-task", status=pb.TASK_STATUS_RUNNING
        ),
        "DeleteTask": pb.DeleteTaskRequest(task_id="no-such-task"),
        "UndeleteTask": pb.UndeleteTaskRequest(task_id="no-such-task"),
    }
    try:
        if method == "WatchTaskEvents":
            stream = stub.WatchTaskEvents(
                pb.WatchTaskEventsRequest(after_event_id=0), metadata=metadata, timeout=10
            )
            next(stream)
            stream.cancel()
        else:
            getattr(stub, method)(requests[method], metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return UNAUTHENTICATED
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert error_reason(error) == "PERMISSION_DENIED"
            return DENIED
    return ALLOWED


READS = ("GetTask", "BatchGetTasks", "ListTasks", "ListTaskEvents", "WatchTaskEvents")
WRITES = (
    "CreateTask",
    "BatchCreateTasks",
    "UpdateTask",
    "UpdateTaskStatus",
    "DeleteTask",
    "UndeleteTask",
)


def test_every_role_on_every_rpc(
    start_server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    server = start_server("--auth-tokens-file", str(tokens.path))
    stub = server.stub()
    expected = {
        None: dict.fromkeys(READS + WRITES, UNAUTHENTICATED),
        "not-a-token": dict.fromkeys(READS + WRITES, UNAUTHENTICATED),
        "reader": {**dict.fromkeys(READS, ALLOWED), **dict.fromkeys(WRITES, DENIED)},
        "writer": dict.fromkeys(READS + WRITES, ALLOWED),
        "admin": dict.fromkeys(READS + WRITES, ALLOWED),
    }
    for who, methods in expected.items():
        token = tokens.by_role.get(who or "", who)
        got = {method: call(stub, method, token) for method in methods}
        assert got == methods, who
    # Health and reflection stay open by default: load balancers and grpcurl need them.
    health = health_pb2_grpc.HealthStub(server.channel())
    assert health.Check(health_pb2.HealthCheckRequest()).status == 1
    assert reflected_services(server, None)


def reflected_services(server: ServerProcess, token: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    metadata = [("authorization", f"Bearer {token}")] if token else []
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=10,
    )
    return [service.name for answer in answers for service in answer.list_services_response.service]


def test_reflection_needs_a_token_when_asked_to(
    start_server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    server = start_server("--auth-tokens-file", str(tokens.path), "--auth-reflection")
    with pytest.raises(grpc.RpcError) as refused:
        reflected_services(server, None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "resinkit.v1.TaskService" in reflected_services(server, tokens.by_role["reader"])


def test_the_tokens_principal_is_the_caller_whatever_the_request_names(
    start_server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    server = start_server("--auth-tokens-file", str(tokens.path))
    stub = server.stub()
    writer = [("authorization", f"Bearer {tokens.by_role['writer']}")]
    made = stub.CreateTask(
        pb.CreateTaskRequest(task=pb.Task(task_type="auth", created_by="mallory"), actor="mallory"),
        metadata=writer,
    )
    assert made.created_by == "writer-bot"
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(
            task_id=made.task_id, status=pb.TASK_STATUS_RUNNING, actor="mallory"
        ),
        metadata=writer,
    )
    page = stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=made.task_id),
        metadata=[("authorization", f"Bearer {tokens.by_role['reader']}")],
    )
    assert {event.actor for event in page.events} == {"writer-bot"}
    assert server.stop() == 0
    log = server.log()
    assert all(token not in log for token in tokens.by_role.values())


def test_the_tokens_file_is_reread_and_a_removed_token_ends_its_watch(
    start_server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    server = start_server("--auth-tokens-file", str(tokens.path), "--heartbeat-interval", "0.2")
    stub = server.stub()
    later, entry = new_token("late-bot", "reader")
    assert call(stub, "ListTasks", later) == UNAUTHENTICATED
    original = tokens.path.read_text()
    tokens.path.write_text(original + "\n" + entry)
    time.sleep(RECHECK_SECONDS + 0.1)  # the file is looked at twice a second at most
    watcher = Watcher(stub, metadata=[("authorization", f"Bearer {later}")])
    watcher.wait_live()  # the new token works, without a restart
    tokens.path.write_text(original)  # and now it is withdrawn
    assert watcher.done.wait(10), "the watch outlived its token"
    assert watcher.error is not None
    assert watcher.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call(stub, "ListTasks", later) == UNAUTHENTICATED


def test_tokens_new_prints_a_token_and_the_entry_that_grants_it(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    result = run_cli("tokens", "new", "--principal", "ci", "--role", "writer")
    assert result.returncode == 0, result.stderr
    token = next(
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("token:")
    )
    entry = result.stdout[result.stdout.index("[[tokens]]") :]
    assert token not in entry  # the file holds only its hash
    path = tmp_path / "tokens.toml"
    path.write_text(entry)
    server = start_server("--auth-tokens-file", str(path))
    assert call(server.stub(), "CreateTask", token) == ALLOWED


@pytest.mark.parametrize(
    "content",
    ['[[tokens]]\nprincipal = "x"\nrole = "boss"\nsha256 = "' + "a" * 64 + '"\n', "not toml ["],
)
def test_a_bad_tokens_file_is_one_line_at_boot(content: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    result = run_cli(
        "serve",
        "--address",
        "127.0.0.1:0",
        "--database-url",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--auth-tokens-file",
        str(path),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokens file" in lines[0], lines


def test_one_principal_may_hold_only_so_many_watches(
    start_server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    server = start_server(
        "--auth-tokens-file", str(tokens.path), "--max-watchers-per-principal", "2"
    )
    stub = server.stub()
    reader = [("authorization", f"Bearer {tokens.by_role['reader']}")]
    held = [Watcher(stub, metadata=reader) for _ in range(2)]
    for watcher in held:
        watcher.wait_live()
    refused = Watcher(stub, metadata=reader)
    assert refused.done.wait(10) and refused.error is not None
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(refused.error) == "TOO_MANY_WATCHERS"
    other = Watcher(stub, metadata=[("authorization", f"Bearer {tokens.by_role['writer']}")])
    other.wait_live()  # another principal is not held back
    held[0].stop()
    again = Watcher(stub, metadata=reader)
    again.wait_live()  # a slot freed by the first reader's stream
    for watcher in (held[1], other, again):
        watcher.stop()
