"""The Python client (resinkit_grpc.client) against real servers: conversions both ways, every
RPC, paging, wait(), a typed error for every reason the server sends, tokens, TLS and
from_env(), the asyncio twin, and the README's examples run as written."""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2
from grpc_status import rpc_status

from resinkit_grpc.api import status as server_status
from resinkit_grpc.client import (
    NO_RETRIES,
    AsyncTaskClient,
    ClientError,
    DeadlineExceeded,
    EtagMismatch,
    EventsPurged,
    InternalError,
    InvalidArgument,
    InvalidTransition,
    Overloaded,
    PermissionDenied,
    RetryPolicy,
    ShuttingDown,
    SlowConsumer,
    StorageUnavailable,
    TaskAlreadyDeleted,
    TaskAlreadyExists,
    TaskClient,
    TaskDeleted,
    TaskFilter,
    TaskNotDeleted,
    TaskNotFound,
    TaskStatus,
    TaskView,
    TooManyWatchers,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from resinkit_grpc.client.errors import BY_REASON, from_rpc_error
from resinkit_grpc.client.watch import WatchCursor
from resinkit_grpc.errors import DeadlineExceeded as ServerDeadline
from resinkit_grpc.errors import Overloaded as ServerOverloaded
from resinkit_grpc.errors import StorageUnavailable as ServerStorageUnavailable
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import allowed_next
from resinkit_grpc.security.tokens import new_token
from resinkit_grpc.watch.items import Ended, EndReason
from tests.certificates import Authority
from tests.servers import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[TaskClient]:
    with TaskClient(server.address) as made:
        yield made


FAILED = ["TASK_STATUS_FAILED"]


def test_a_task_goes_round_trip_as_plain_python_values(
    client: TaskClient, unique: Callable[[str], str]
) -> None:
    expires = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
    made = client.create_task(
        task_type="client-crud",
        task_id=unique("crud"),
        task_name="orders rollup",
        priority=3,
        tags=["team-a", "nightly"],
        submitted_configs={"sql": "INSERT ...", "parallelism": 4, "ratio": 0.5, "on": [True]},
        notification_config={"webhooks": [{"url": "https://hooks.example/x", "statuses": FAILED}]},
        expires_at=expires,
        actor="ann",
    )
    assert made.status is TaskStatus.PENDING and made.active
    assert made.submitted_configs == {
        "sql": "INSERT ...",
        "parallelism": 4,
        "ratio": 0.5,
        "on": [True],
    }
    assert isinstance(made.submitted_configs["parallelism"], int)
    assert made.notification_config == {
        "webhooks": [{"url": "https://hooks.example/x", "statuses": FAILED}]
    }
    assert made.tags == ("team-a", "nightly")
    assert made.expires_at == expires
    assert made.created_at is not None and made.created_at.tzinfo is UTC
    assert client.get_task(made.task_id) == made
    assert client.get_task(made.task_id, view=TaskView.BASIC).submitted_configs is None

    running = client.update_task_status(
        made.task_id, TaskStatus.RUNNING, execution_details={"job": "a1"}, actor="bo"
    )
    assert running.status is TaskStatus.RUNNING and running.started_at is not None
    updated = client.update_task(made.task_id, priority=9, tags=[], etag=running.etag)
    assert (updated.priority, updated.tags) == (9, ())
    done = client.update_task_status(made.task_id, "COMPLETED", result_summary={"rows": 10})
    assert done.is_terminal and done.finished_at is not None
    assert done.result_summary == {"rows": 10}
    assert not client.delete_task(made.task_id).active
    assert client.undelete_task(made.task_id, actor="cy").active

    events = client.list_task_events(made.task_id)
    assert not events.next_page_token
    assert [(e.event_type, e.actor) for e in events] == [
        ("CREATED", "ann"),
        ("STATUS_CHANGE", "bo"),
        ("UPDATED", None),
        ("STATUS_CHANGE", None),
        ("DELETED", None),
        ("UNDELETED", "cy"),
    ]
    change = events.items[1]
    assert (change.previous_status, change.new_status) == (TaskStatus.PENDING, TaskStatus.RUNNING)
    assert change.event_data["execution_details"] == {"job": "a1"}
    assert events.items[2].event_data == {"fields": ["priority", "tags"]}
    assert all(e.timestamp.tzinfo is UTC for e in events)


def test_iter_tasks_and_iter_events_walk_every_page(
    client: TaskClient, unique: Callable[[str], str]
) -> None:
    kind = unique("client-pages")
    made = [client.create_task(task_type=kind, priority=i % 3) for i in range(7)]
    for task in made[:5]:
        client.update_task_status(task.task_id, TaskStatus.SUBMITTED)
    first = client.list_tasks(TaskFilter(task_types=[kind]), page_size=2)
    assert len(first) == 2 and first.next_page_token
    listed = list(
        client.iter_tasks(TaskFilter(task_types=[kind]), page_size=2, order_by="created_at asc")
    )
    assert [t.task_id for t in listed] == [t.task_id for t in made]
    submitted = client.iter_tasks(
        TaskFilter(task_types=[kind], statuses=[TaskStatus.SUBMITTED]), page_size=2
    )
    assert {t.task_id for t in submitted} == {t.task_id for t in made[:5]}
    since = client.iter_tasks(
        TaskFilter(task_types=[kind], created_after=made[3].created_at), page_size=1
    )
    assert {t.task_id for t in since} == {t.task_id for t in made[3:]}

    every = list(client.iter_events(page_size=3))
    ours = [e for e in every if e.task_type == kind]
    assert len(ours) == 12
    assert [e.event_id for e in every] == sorted({e.event_id for e in every})
    changes = list(client.iter_events(made[0].task_id, event_types=["STATUS_CHANGE"], page_size=1))
    assert [e.new_status for e in changes] == [TaskStatus.SUBMITTED]


def test_wait_returns_the_task_once_it_is_terminal(
    client: TaskClient, unique: Callable[[str], str]
) -> None:
    task = client.create_task(task_type="client-wait")

    def finish() -> None:
        for status in (TaskStatus.RUNNING, TaskStatus.FAILED):
            client.update_task_status(task.task_id, status, error_info={"why": "oom"})

    worker = threading.Thread(target=finish)
    worker.start()
    done = client.wait(task.task_id, timeout=20)
    worker.join()
    assert done.status is TaskStatus.FAILED and done.error_info == {"why": "oom"}
    assert client.wait(task.task_id, timeout=5) == done  # already terminal: at once

    pending = client.create_task(task_type="client-wait")
    with pytest.raises(WaitTimeout):
        client.wait(pending.task_id, timeout=0.5)
    with pytest.raises(TaskNotFound):
        client.wait(unique("never"), timeout=5)

    later = unique("later")
    creator = threading.Timer(
        0.2,
        lambda: client.update_task_status(
            client.create_task(task_type="client-wait", task_id=later).task_id, "CANCELLED"
        ),
    )
    creator.start()
    assert client.wait(later, timeout=20, wait_for_creation=True).status is TaskStatus.CANCELLED
    creator.join()
    deleted = client.create_task(task_type="client-wait")
    client.delete_task(deleted.task_id)
    assert not client.wait(deleted.task_id, timeout=5).active  # deleted ends the wait too


def test_every_reason_the_server_sends_is_a_typed_error(
    client: TaskClient, unique: Callable[[str], str]
) -> None:
    with pytest.raises(TaskNotFound) as missing:
        client.get_task("no-such-task")
    assert missing.value.task_id == "no-such-task"
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert missing.value.reason == "TASK_NOT_FOUND"

    task = client.create_task(task_type="client-errors", task_id=unique("err"))
    with pytest.raises(TaskAlreadyExists):
        client.create_task(task_type="client-errors", task_id=task.task_id)
    client.update_task(task.task_id, priority=1)
    with pytest.raises(EtagMismatch):
        client.update_task(task.task_id, priority=2, etag=task.etag)

    client.update_task_status(task.task_id, TaskStatus.RUNNING)
    with pytest.raises(InvalidTransition) as illegal:
        client.update_task_status(task.task_id, TaskStatus.PENDING)
    assert illegal.value.current_status is TaskStatus.RUNNING
    assert illegal.value.requested_status is TaskStatus.PENDING
    assert illegal.value.allowed_next_statuses == allowed_next(TaskStatus.RUNNING)
    client.update_task_status(task.task_id, TaskStatus.COMPLETED)
    with pytest.raises(InvalidTransition) as final:
        client.update_task_status(task.task_id, TaskStatus.FAILED)
    assert final.value.allowed_next_statuses == ()

    with pytest.raises(InvalidArgument) as bad:
        client.create_task(task_type="", task_id="not valid!", priority=1)
    assert {v.field for v in bad.value.field_violations} == {"task_id", "task.task_type"}
    with pytest.raises(InvalidArgument) as bad_page:
        client.list_tasks(page_size=-1)
    assert [v.field for v in bad_page.value.field_violations] == ["page_size"]

    with pytest.raises(TaskNotDeleted):
        client.undelete_task(task.task_id)
    client.delete_task(task.task_id)
    with pytest.raises(TaskAlreadyDeleted):
        client.delete_task(task.task_id)
    with pytest.raises(TaskDeleted) as deleted:
        client.update_task(task.task_id, priority=5)
    assert deleted.value.code == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(DeadlineExceeded):
        # A deadline already past: how soon a tiny one fires depends on the machine's load.
        client.list_tasks(timeout=-1)
    with TaskClient("127.0.0.1:1", retry=RetryPolicy(max_attempts=2)) as nowhere:
        with pytest.raises(Unavailable) as refused:
            nowhere.get_task("x")
        assert refused.value.outcome is None  # no server said anything


def rpc_error_carrying(status: Any) -> grpc.RpcError:
    """An RpcError as a call would raise it, carrying `status` (a google.rpc.Status)."""
    converted = rpc_status.to_status(status)

    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return converted.code

        def details(self) -> str:
            return converted.details

        def trailing_metadata(self) -> Any:
            return converted.trailing_metadata

    return Failed()


def test_the_statuses_only_a_failing_server_sends_are_typed_too() -> None:
    """Reasons that need a broken database or an overloaded writer to happen for real, made by
    the server's own status mapping."""
    unknown = from_rpc_error(
        rpc_error_carrying(
            server_status.to_status(ServerStorageUnavailable("down", outcome_unknown=True))
        )
    )
    assert isinstance(unknown, StorageUnavailable) and unknown.outcome == "UNKNOWN"
    assert unknown.retry_delay == pytest.approx(0.2)
    busy = from_rpc_error(rpc_error_carrying(server_status.to_status(ServerOverloaded("busy"))))
    assert isinstance(busy, Overloaded) and busy.retry_delay == 1.0
    assert busy.outcome == "NOT_COMMITTED"
    late = from_rpc_error(rpc_error_carrying(server_status.to_status(ServerDeadline("late"))))
    assert isinstance(late, DeadlineExceeded) and late.reason == "DEADLINE_EXCEEDED"
    assert isinstance(
        from_rpc_error(rpc_error_carrying(server_status.internal_error())), InternalError
    )
    for reason, kind in (
        (EndReason.SLOW_CONSUMER, SlowConsumer),
        (EndReason.SHUTTING_DOWN, ShuttingDown),
        (EndReason.TOO_MANY_WATCHERS, TooManyWatchers),
    ):
        ending = server_status.watch_ending(Ended(reason, 41))
        error = from_rpc_error(rpc_error_carrying(ending))
        assert isinstance(error, kind) and error.resume_after_event_id == 41
    purged = server_status.watch_ending(Ended(EndReason.EVENTS_PURGED, 41, purged_through=90))
    gone = from_rpc_error(rpc_error_carrying(purged))
    assert isinstance(gone, EventsPurged) and gone.code == grpc.StatusCode.OUT_OF_RANGE
    assert (gone.purged_through_event_id, gone.oldest_retained_event_id) == (90, 91)
    # Every reason the server can send has its class (the list is the server's own).
    sent = {
        "INVALID_ARGUMENT", "TASK_NOT_FOUND", "TASK_ALREADY_EXISTS", "ETAG_MISMATCH",
        "INVALID_STATUS_TRANSITION", "TASK_DELETED", "TASK_ALREADY_DELETED", "TASK_NOT_DELETED",
        "STORAGE_UNAVAILABLE", "OVERLOADED", "DEADLINE_EXCEEDED", "INTERNAL", "SHUTTING_DOWN",
        "UNAUTHENTICATED", "PERMISSION_DENIED", *(reason.value for reason in EndReason),
    }  # fmt: skip
    assert sent - {"FINISHED"} <= set(BY_REASON)
    plain = from_rpc_error(
        rpc_error_carrying(server_status.pack_status(code_pb2.UNAVAILABLE, "x", []))
    )
    assert type(plain) is Unavailable and plain.reason == "UNAVAILABLE"
    assert isinstance(plain, ClientError)


def test_a_retry_waits_at_least_what_the_server_asks() -> None:
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
    asked = Overloaded(grpc.StatusCode.UNAVAILABLE, "busy", retry_delay=1.0)
    plain = Unavailable(grpc.StatusCode.UNAVAILABLE, "down")
    rng = random.Random(1)
    assert all(policy.delay(n, asked, rng) >= 1.0 for n in range(5))
    assert all(0 <= policy.delay(n, plain, rng) <= 0.02 for n in range(5))


def test_a_watch_cursor_never_delivers_an_event_at_or_below_its_position() -> None:
    cursor = WatchCursor(position=5)
    seen = []
    arrivals = [(4, "event"), (5, "event"), (6, "event"), (9, "heartbeat"), (8, "event")]
    for event_id, kind in [*arrivals, (10, "event")]:
        if kind == "heartbeat":
            response = pb.WatchTaskEventsResponse(heartbeat=pb.Heartbeat(event_id=event_id))
        else:
            response = pb.WatchTaskEventsResponse(event=pb.TaskEvent(event_id=event_id))
        event = cursor.accept(response)
        if event is not None:
            seen.append(event.event_id)
    assert seen == [6, 10] and cursor.position == 10 and cursor.live
    assert cursor.request().after_event_id == 10


def test_tokens_are_sent_and_refusals_are_typed(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    reader, reader_entry = new_token("reader-bot", "reader")
    writer, writer_entry = new_token("writer-bot", "writer")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(reader_entry + "\n" + writer_entry)
    server = start_server("--auth-tokens-file", str(tokens))
    with TaskClient(server.address, token=writer) as client:
        made = client.create_task(task_type="client-auth", created_by="mallory")
        assert made.created_by == "writer-bot"
    with TaskClient(server.address, token=reader) as client:
        assert client.get_task(made.task_id).task_id == made.task_id
        with pytest.raises(PermissionDenied) as denied:
            client.delete_task(made.task_id)
        assert denied.value.reason == "PERMISSION_DENIED"
    with TaskClient(server.address) as client, pytest.raises(Unauthenticated):
        client.get_task(made.task_id)
    with TaskClient(server.address, token="bad") as client, pytest.raises(Unauthenticated):
        next(client.watch(after_event_id=0))


def test_mutual_tls_and_from_env(
    start_server: Callable[..., ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = Authority(tmp_path, "ca")
    server_pair, runner = authority.server(), authority.issue("runner-7")
    server = start_server(
        "--tls-cert", str(server_pair.certificate), "--tls-key", str(server_pair.key),
        "--tls-client-ca", str(authority.path),
    )  # fmt: skip
    with TaskClient(
        server.address,
        root_certificates=authority.path,
        client_certificate=runner.certificate.read_bytes(),
        client_key=str(runner.key),
    ) as client:
        assert client.create_task(task_type="client-tls").created_by == "runner-7"
    monkeypatch.setenv("RESINKIT_ADDRESS", server.address)
    monkeypatch.setenv("RESINKIT_CA_CERT", str(authority.path))
    monkeypatch.setenv("RESINKIT_CLIENT_CERT", str(runner.certificate))
    monkeypatch.setenv("RESINKIT_CLIENT_KEY", str(runner.key))
    with TaskClient.from_env(timeout=10) as client:
        assert client.list_tasks().items[0].task_type == "client-tls"
    monkeypatch.delenv("RESINKIT_CLIENT_CERT")
    monkeypatch.delenv("RESINKIT_CLIENT_KEY")
    with TaskClient.from_env(retry=NO_RETRIES) as client, pytest.raises(ClientError):
        client.list_tasks()  # the server wants a client certificate


def test_the_asyncio_client_has_the_same_calls_and_watch(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncTaskClient(server.address) as client:
            task = await client.create_task(task_type="client-aio", tags=["x"])
            assert (await client.get_task(task.task_id)) == task
            with pytest.raises(TaskNotFound):
                await client.get_task("no-such-task")
            waiting = asyncio.create_task(client.wait(task.task_id, timeout=20))
            for status in (TaskStatus.RUNNING, TaskStatus.COMPLETED):
                await client.update_task_status(task.task_id, status)
            assert (await waiting).status is TaskStatus.COMPLETED
            listed = [
                t.task_id
                async for t in client.iter_tasks(TaskFilter(task_types=["client-aio"]), page_size=1)
            ]
            assert listed == [task.task_id]
            events = [e async for e in client.iter_events(task.task_id, page_size=1)]
            watched = []
            async with client.watch(
                task_ids=[task.task_id], after_event_id=0, until_terminal=True
            ) as watch:
                async for event in watch:
                    watched.append(event)
            assert watched == events and len(events) == 3
            with pytest.raises(WaitTimeout):
                await client.wait((await client.create_task(task_type="client-aio")).task_id, 0.3)

    asyncio.run(scenario())


def readme_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Calling it from Python") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_examples_run_as_written(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = readme_examples()
    assert len(examples) >= 3
    monkeypatch.setenv("RESINKIT_ADDRESS", server.address)
    namespace: dict[str, Any] = {}
    for example in examples:
        exec(
            compile(example.replace("127.0.0.1:50051", server.address), "README", "exec"), namespace
        )


def test_update_task_needs_a_field_and_timestamps_must_be_aware(client: TaskClient) -> None:
    with pytest.raises(ValueError, match="at least one field"):
        client.update_task("anything")
    with pytest.raises(ValueError, match="aware"):
        client.create_task(task_type="client-naive", expires_at=datetime(2030, 1, 1))
    aware = datetime.now(UTC) + timedelta(days=1)
    made = client.create_task(task_type="client-naive", expires_at=aware.astimezone())
    assert made.expires_at == aware


def test_the_client_knows_the_server_only_through_its_stubs() -> None:
    """Importing the client loads the generated stubs and the status enum, nothing of the
    server (no store, no SQLAlchemy), so it installs and runs where the server never does."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, resinkit_grpc.client; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ours = {name for name in loaded if name.startswith("resinkit_grpc")}
    allowed = ("resinkit_grpc.client", "resinkit_grpc.gen")
    assert ours - {"resinkit_grpc", "resinkit_grpc.rules"} == {
        name for name in ours if name.startswith(allowed)
    }
    assert "sqlalchemy" not in loaded


def test_the_asyncio_client_takes_exactly_the_sync_clients_arguments() -> None:
    """The two clients are written twice (def and async def): their signatures may not drift."""
    public = [n for n in vars(TaskClient) if not n.startswith("_") and n not in {"close"}]
    assert {"create_task", "wait", "watch", "iter_tasks", "from_env"} <= set(public)
    for name in public:
        sync_signature = inspect.signature(getattr(TaskClient, name))
        async_signature = inspect.signature(getattr(AsyncTaskClient, name))
        assert list(sync_signature.parameters) == list(async_signature.parameters), name
        for parameter in sync_signature.parameters.values():
            twin = async_signature.parameters[parameter.name]
            assert (parameter.default, parameter.kind) == (twin.default, twin.kind), name
