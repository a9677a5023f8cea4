"""Webhook notifications through real servers on real databases, to real HTTP receivers on
127.0.0.1: what is delivered is signed as Standard Webhooks and verified with the standard's
own verifier; each event a webhook hears reaches it at least once, in order per task, across
failures, 410s, SIGKILL and replicas; nothing is sent to a private address by default."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from resinkit_grpc.client import (
    AsyncTaskClient,
    Delivery,
    DeliveryState,
    TaskClient,
    TaskStatus,
)
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.notify.secrets import new_secret
from tests.receivers import Answer, Received, Receiver, always
from tests.rpc import rpc_error, violated_fields
from tests.servers import ServerProcess, run_cli

FAST = (
    "--webhook-allow-private",
    "--webhook-poll-interval",
    "0.2",
    "--webhook-retry-schedule",
    "100ms,100ms,100ms",
)


def config(*hooks: dict[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"webhooks": list(hooks)})
    return value


def create(stub: Any, hooks: struct_pb2.Struct, **fields: Any) -> pb.Task:
    task: pb.Task = stub.CreateTask(
        pb.CreateTaskRequest(
            task=pb.Task(task_type="flink_sql", notification_config=hooks, **fields)
        )
    )
    return task


def move(stub: Any, task_id: str, *statuses: int) -> None:
    for status in statuses:
        stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=task_id, status=status))


def deliveries(stub: Any, task_id: str = "", *states: int) -> list[pb.Delivery]:
    found: list[pb.Delivery] = []
    token = ""
    while True:
        page = stub.ListDeliveries(
            pb.ListDeliveriesRequest(task_id=task_id, states=states, page_token=token)
        )
        found.extend(page.deliveries)
        token = page.next_page_token
        if not token:
            return found


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def secrets_file(tmp_path: Path) -> tuple[Path, str]:
    secret = new_secret()
    path = tmp_path / "webhook-secrets.toml"
    path.write_text(f'[[secrets]]\nid = "team-a"\nsecret = "{secret}"\n')
    return path, secret


def test_a_status_change_is_delivered_signed_with_the_task_as_the_event_left_it(
    start_server: Callable[..., ServerProcess], secrets_file: tuple[Path, str]
) -> None:
    path, secret = secrets_file
    server = start_server(*FAST, "--webhook-secrets-file", str(path))
    stub = server.stub()
    with Receiver() as receiver:
        hooks = config(
            {
                "url": receiver.url,
                "event_types": ["STATUS_CHANGE"],
                "statuses": ["TASK_STATUS_FAILED", "TASK_STATUS_RUNNING"],
                "secret_id": "team-a",
            }
        )
        task = create(stub, hooks, task_name="load orders")
        move(stub, task.task_id, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_FAILED)
        receiver.wait_for(lambda got: len(got) >= 2)
        time.sleep(0.5)  # nothing more may come: CREATED is not a STATUS_CHANGE
        got = list(receiver.requests)
    assert len(got) == 2
    verifier = Verifier(secret)
    bodies = [verifier.verify(request.body, request.headers) for request in got]
    assert [body["type"] for body in bodies] == ["task.status_change"] * 2
    events = [body["data"]["event"] for body in bodies]
    assert [event["newStatus"] for event in events] == ["TASK_STATUS_RUNNING", "TASK_STATUS_FAILED"]
    # The task as each event left it, not as it is when the delivery goes out.
    assert [body["data"]["task"]["status"] for body in bodies] == [
        "TASK_STATUS_RUNNING",
        "TASK_STATUS_FAILED",
    ]
    assert all(body["data"]["task"]["taskName"] == "load orders" for body in bodies)
    assert "notificationConfig" not in bodies[0]["data"]["task"]  # the BASIC view
    stored = {event.event_id: event for event in history_of(stub, task.task_id)}
    for request, event in zip(got, events, strict=True):
        assert int(event["eventId"]) in stored
        assert request.headers["webhook-id"] == f"msg_{event['eventId']}_0"
    # A receiver that holds another secret cannot be fooled.
    with pytest.raises(WebhookVerificationError, match="signature"):
        Verifier(new_secret()).verify(got[0].body, got[0].headers)
    listed = deliveries(stub, task.task_id)
    assert [d.state for d in listed] == [pb.DELIVERY_STATE_DELIVERED] * 2
    assert all(d.attempts == 1 and d.last_status_code == 200 for d in listed)
    # The history shows each event's deliveries beside it.
    shown = {e.event_id: list(e.deliveries) for e in history_of(stub, task.task_id)}
    assert sorted(d.delivery_id for ds in shown.values() for d in ds) == sorted(
        d.delivery_id for d in listed
    )


def history_of(stub: Any, task_id: str) -> list[pb.TaskEvent]:
    return list(stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task_id)).events)


def test_a_receiver_failing_three_times_gets_each_event_once_deduplicated_and_in_order(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The receiver fails each message's first three attempts. De-duplicated by webhook-id, it
    accepts every event exactly once, in event order: a later event never arrives before an
    earlier one has succeeded."""
    server = start_server(*FAST)
    stub = server.stub()
    attempts: dict[str, int] = {}

    def policy(request: Received, before: list[Received]) -> Answer:
        attempts[request.webhook_id] = attempts.get(request.webhook_id, 0) + 1
        return Answer(200 if attempts[request.webhook_id] > 3 else 503)

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url}))
        move(stub, task.task_id, pb.TASK_STATUS_SUBMITTED, pb.TASK_STATUS_RUNNING)
        receiver.wait_for(lambda got: sum(1 for n in attempts.values() if n > 3) >= 3)
        got = list(receiver.requests)
    accepted: list[str] = []
    seen: dict[str, int] = {}
    for request in got:
        seen[request.webhook_id] = seen.get(request.webhook_id, 0) + 1
        if seen[request.webhook_id] == 4:
            accepted.append(request.webhook_id)
    event_ids = [e.event_id for e in history_of(stub, task.task_id)]
    assert accepted == [f"msg_{event_id}_0" for event_id in event_ids]
    # In order: every attempt of a message comes after the previous message's success.
    order = [request.webhook_id for request in got]
    for earlier, later in itertools.pairwise(accepted):
        assert max(i for i, w in enumerate(order) if w == earlier) < min(
            i for i, w in enumerate(order) if w == later
        )
    listed = deliveries(stub, task.task_id)
    assert [(d.state, d.attempts) for d in listed] == [(pb.DELIVERY_STATE_DELIVERED, 4)] * 3


def test_a_delivery_that_exhausts_its_attempts_is_dead_and_redelivered_by_the_rpc(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    stub = server.stub()
    failing = threading.Event()
    failing.set()

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(500 if failing.is_set() else 204)

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url, "event_types": ["CREATED"]}))
        wait_until(
            lambda: [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DEAD]
        )
        (dead,) = deliveries(stub, task.task_id, pb.DELIVERY_STATE_DEAD)
        assert dead.attempts == 4 and dead.last_status_code == 500
        assert "last attempt" in dead.last_error
        assert receiver.count() == 4
        failing.clear()
        again = stub.RedeliverTask(pb.RedeliverTaskRequest(task_id=task.task_id))
        assert [d.delivery_id for d in again.deliveries] == [dead.delivery_id]
        wait_until(
            lambda: (
                [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DELIVERED]
            )
        )
        assert receiver.requests[-1].webhook_id == dead.webhook_id
        assert receiver.count() == 5


def test_410_gone_disables_the_webhook_for_the_task(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    stub = server.stub()
    with Receiver(always(410)) as gone, Receiver() as other:
        task = create(stub, config({"url": gone.url}, {"url": other.url}))
        gone.wait_for(lambda got: len(got) == 1)
        move(stub, task.task_id, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_COMPLETED)
        other.wait_for(lambda got: len(got) == 3)
        wait_until(
            lambda: all(
                d.state != pb.DELIVERY_STATE_PENDING for d in deliveries(stub, task.task_id)
            )
        )
        assert gone.count() == 1  # nothing after the 410
        states = {(d.url, d.state) for d in deliveries(stub, task.task_id)}
        assert states == {
            (gone.url, pb.DELIVERY_STATE_DISABLED),
            (other.url, pb.DELIVERY_STATE_DELIVERED),
        }


def test_private_addresses_are_refused_by_default(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--webhook-poll-interval", "0.2")
    stub = server.stub()
    for url in (
        "http://127.0.0.1:9/hook",
        "http://[::1]/x",
        "http://10.1.2.3/",
        "http://localhost/",
    ):
        error = rpc_error(
            lambda url=url: create(stub, config({"url": url})), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == {"task.notification_config.webhooks[0].url"}
        assert "--webhook-allow-private" in error.details()
    # A name that resolves to a private address is refused when the delivery resolves it.
    host = socket.gethostname()
    try:
        resolved = socket.gethostbyname(host)
    except OSError:
        pytest.skip(f"{host} does not resolve here")
    with Receiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1].split("/")[0]
        task = create(stub, config({"url": f"http://{host}:{port}/hook"}))
        # Settled, not only claimed: a claim counts the attempt before its outcome is written.
        wait_until(lambda: deliveries(stub, task.task_id)[0].last_error != "")
        (delivery,) = deliveries(stub, task.task_id)
        assert delivery.attempts >= 1
        assert delivery.last_error.startswith("refused:"), (resolved, delivery.last_error)
        assert receiver.count() == 0


def test_one_url_twice_is_refused_however_it_is_spelled(server: ServerProcess) -> None:
    stub = server.stub()
    hooks = config({"url": "https://Hooks.Example/a"}, {"url": "https://hooks.example:443/a"})
    error = rpc_error(lambda: create(stub, hooks), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"task.notification_config.webhooks[1].url"}


@pytest.mark.parametrize(
    ("hooks", "field"),
    [
        ({"url": "ftp://x.example/"}, "webhooks[0].url"),
        ({"url": "https://x.example/", "colour": "red"}, "webhooks[0].colour"),
        ({"url": "https://x.example/", "event_types": ["EXPLODED"]}, "webhooks[0].event_types"),
        ({"url": "https://x.example/", "statuses": ["FAILED"]}, "webhooks[0].statuses"),
        ({"url": "https://x.example/", "secret_id": "nobody"}, "webhooks[0].secret_id"),
        ({"event_types": ["CREATED"]}, "webhooks[0].url"),
        ({"url": "https://x.example/", "statuses": []}, "webhooks[0].statuses"),
        ({"url": "http://2130706433/"}, "webhooks[0].url"),
        ({"url": "http://0x7f.1/"}, "webhooks[0].url"),
        ({"url": "http://[2002:7f00:1::]/"}, "webhooks[0].url"),
        ({"url": "http://[::ffff:10.0.0.1]/"}, "webhooks[0].url"),
    ],
)
def test_a_bad_notification_config_is_invalid_argument_naming_the_field(
    server: ServerProcess, hooks: dict[str, Any], field: str
) -> None:
    stub = server.stub()
    error = rpc_error(lambda: create(stub, config(hooks)), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {f"task.notification_config.{field}"}
    task = create(stub, config({"url": "https://hooks.example/ok"}))
    mask_error = rpc_error(
        lambda: stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=pb.Task(task_id=task.task_id, notification_config=config(hooks)),
                update_mask={"paths": ["notification_config"]},
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(mask_error) == {f"task.notification_config.{field}"}


def test_a_server_killed_mid_delivery_delivers_it_after_restart(
    start_server: Callable[..., ServerProcess],
) -> None:
    """SIGKILL while the receiver holds the request: the attempt's lease runs out and the
    restarted server makes it again. At least once; none lost."""
    held = threading.Event()
    first = start_server(*FAST, "--webhook-timeout", "1")
    stub = first.stub()

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(200, hold=held if not before else None)

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url, "event_types": ["CREATED"]}))
        receiver.wait_for(lambda got: len(got) == 1)
        first.send(signal.SIGKILL)
        first.process.wait(10)  # type: ignore[union-attr]
        held.set()
        second = start_server(*FAST, "--webhook-timeout", "1", database_url=first.database_url)
        receiver.wait_for(lambda got: len(got) == 2, timeout=30)
        stub = second.stub()
        wait_until(
            lambda: (
                [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DELIVERED]
            )
        )
        assert {r.webhook_id for r in receiver.requests} == {
            deliveries(stub, task.task_id)[0].webhook_id
        }


def test_two_replicas_never_make_the_same_attempt(
    backend: str, start_server: Callable[..., ServerProcess]
) -> None:
    """Two replicas on one PostgreSQL database, both looking every 50 ms, and a receiver that
    always succeeds at once: every message arrives exactly once (a second send of it could
    only come from a second claim of its one attempt)."""
    if backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    fast = (*FAST, "--webhook-poll-interval", "0.05", "--metrics-address", "127.0.0.1:0")
    first = start_server(*fast)
    second = start_server(*fast, database_url=first.database_url)
    stubs = [first.stub(), second.stub()]
    with Receiver() as receiver:
        hooks = config({"url": receiver.url})
        made = []
        for number in range(30):
            stub = stubs[number % 2]
            task = create(stub, hooks)
            move(stubs[(number + 1) % 2], task.task_id, pb.TASK_STATUS_RUNNING)
            made.append(task.task_id)
        receiver.wait_for(lambda got: len(got) >= 60, timeout=60)
        wait_until(lambda: not deliveries(stubs[0], "", pb.DELIVERY_STATE_PENDING), timeout=30)
        time.sleep(0.5)
        ids = [request.webhook_id for request in receiver.requests]
    assert len(ids) == 60
    assert len(set(ids)) == 60, [i for i in ids if ids.count(i) > 1]
    listed = deliveries(stubs[1])
    assert {d.webhook_id for d in listed} == set(ids)
    assert all(d.attempts == 1 and d.state == pb.DELIVERY_STATE_DELIVERED for d in listed)
    counted = [delivered_metric(server) for server in (first, second)]
    assert sum(counted) == 60, counted


def delivered_metric(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith('resinkit_webhook_attempts_total{outcome="delivered"}'):
            return float(line.split()[-1])
    raise AssertionError("no resinkit_webhook_attempts_total in /metrics")


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_readme_receiver_verifies_and_prints_what_it_gets(
    backend: str, start_server: Callable[..., ServerProcess], secrets_file: tuple[Path, str]
) -> None:
    """The receiver example of the README's "Notifications" section, run as it is written (its
    secret and port filled in): it verifies the signature and prints the task it got."""
    if backend != "sqlite":
        pytest.skip("the example does not depend on the backend")
    path, secret = secrets_file
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Notifications", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = code.replace('"whsec_..."', repr(secret)).replace("port=8080", f"port={port}")
    assert repr(secret) in code and f"port={port}" in code
    example = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        server = start_server(*FAST, "--webhook-secrets-file", str(path))
        stub = server.stub()
        wait_until(lambda: listening(port), timeout=30)
        url = f"http://127.0.0.1:{port}/resinkit"
        task = create(stub, config({"url": url, "secret_id": "team-a"}))
        forged = create(stub, config({"url": url}))  # unsigned: refused with 400
        wait_until(
            lambda: (
                {d.state for d in deliveries(stub, task.task_id)} == {pb.DELIVERY_STATE_DELIVERED}
                and any(d.last_status_code == 400 for d in deliveries(stub, forged.task_id))
            ),
            timeout=30,
        )
    finally:
        example.terminate()
        output, _ = example.communicate(timeout=10)
    assert f"{task.task_id} TASK_STATUS_PENDING" in output, output
    assert forged.task_id not in output


# What a receiver answers each attempt: success, a failure to retry, or 410 Gone.
ANSWERS = st.sampled_from([200, 204, 500, 503, 410])


@given(
    moves=st.integers(min_value=0, max_value=3),
    answers=st.lists(st.lists(ANSWERS, min_size=3, max_size=3), min_size=4, max_size=4),
)
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_each_event_ends_as_its_answers_say_and_in_order(
    hook_server: ServerProcess, moves: int, answers: list[list[int]]
) -> None:
    """For any answers a receiver gives (per event, per attempt): each event's delivery ends
    DELIVERED at its first 2xx, DISABLED at a 410 (and every later event of the task is then
    DISABLED, never sent), DEAD after three failures; its attempts are the requests the receiver
    got for it; and no attempt of an event comes before the last attempt of an earlier one."""
    stub = hook_server.stub()
    sent: dict[str, int] = {}
    first_event: list[int] = []
    known = threading.Event()

    def policy(request: Received, before: list[Received]) -> Answer:
        known.wait(10)  # the task's first event id, which the test learns after CreateTask
        event_index = int(request.webhook_id.split("_")[1]) - first_event[0]
        attempt = sent.get(request.webhook_id, 0)
        sent[request.webhook_id] = attempt + 1
        return Answer(answers[event_index][attempt])

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url}))
        first_event.append(event_ids(stub, task.task_id)[0])
        known.set()
        walk = [pb.TASK_STATUS_SUBMITTED, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_COMPLETED]
        move(stub, task.task_id, *walk[:moves])
        order = [f"msg_{event_id}_0" for event_id in event_ids(stub, task.task_id)]
        # Nothing else writes to this server: the task's events have consecutive ids.
        assert order == [f"msg_{first_event[0] + i}_0" for i in range(moves + 1)]
        wait_until(
            lambda: all(
                d.state != pb.DELIVERY_STATE_PENDING for d in deliveries(stub, task.task_id)
            ),
            timeout=30,
        )
        got = [request.webhook_id for request in receiver.requests]
    listed = {d.webhook_id: d for d in deliveries(stub, task.task_id)}
    disabled = False
    for index, message in enumerate(order):
        if disabled:
            # Queued before the 410: DISABLED; after it: never queued. Never sent either way.
            assert message not in got
            assert message not in listed or listed[message].state == pb.DELIVERY_STATE_DISABLED
            continue
        delivery = listed[message]
        tried = answers[index][: got.count(message)]
        assert delivery.attempts == len(tried) >= 1
        if tried[-1] in (200, 204):
            assert delivery.state == pb.DELIVERY_STATE_DELIVERED
            assert all(a in (500, 503) for a in tried[:-1])
        elif tried[-1] == 410:
            assert delivery.state == pb.DELIVERY_STATE_DISABLED
            disabled = True
        else:
            assert len(tried) == 3 and delivery.state == pb.DELIVERY_STATE_DEAD
    positions = {message: [i for i, m in enumerate(got) if m == message] for message in order}
    sent_messages = [m for m in order if positions[m]]
    for earlier, later in itertools.pairwise(sent_messages):
        assert max(positions[earlier]) < min(positions[later])


def query_count(database_url: str, table: str) -> int:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def event_ids(stub: Any, task_id: str) -> list[int]:
    return [event.event_id for event in history_of(stub, task_id)]


@pytest.fixture(scope="module")
def hook_server(backend: str, databases: Any, module_dir: Path) -> Any:
    process = ServerProcess(
        databases.new_url(backend, module_dir),
        module_dir,
        "--webhook-allow-private",
        "--webhook-poll-interval",
        "0.1",
        "--webhook-retry-schedule",
        "50ms,50ms",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def test_retention_leaves_a_task_whose_deliveries_are_still_tried(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--webhook-allow-private", "--webhook-retry-schedule", "1h")
    stub = server.stub()
    with Receiver(always(503)) as receiver:
        task = create(stub, config({"url": receiver.url, "event_types": ["STATUS_CHANGE"]}))
        move(stub, task.task_id, pb.TASK_STATUS_FAILED)
        receiver.wait_for(lambda got: len(got) == 1)
    wait_until(lambda: deliveries(stub, task.task_id)[0].attempts == 1)
    time.sleep(1.1)
    purged = run_cli("purge", "--database-url", server.database_url, "--older-than", "1s")
    assert purged.returncode == 0, purged.stderr
    assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).task_id == task.task_id
    assert [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_PENDING]


def test_retention_purges_a_task_with_its_deliveries(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    stub = server.stub()
    with Receiver() as receiver:
        task = create(stub, config({"url": receiver.url}))
        move(stub, task.task_id, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_FAILED)
        wait_until(
            lambda: (
                [d.state for d in deliveries(stub, task.task_id)]
                == [pb.DELIVERY_STATE_DELIVERED] * 3
            )
        )
    time.sleep(1.1)
    purged = run_cli("purge", "--database-url", server.database_url, "--older-than", "1s")
    assert purged.returncode == 0, purged.stderr
    rpc_error(
        lambda: stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)), grpc.StatusCode.NOT_FOUND
    )
    assert deliveries(stub) == [] or all(d.task_id != task.task_id for d in deliveries(stub))


def test_the_secrets_file_is_reread_when_it_changes(
    start_server: Callable[..., ServerProcess], secrets_file: tuple[Path, str]
) -> None:
    """A rotation: the file gains a second secret for the id (both sign), then loses the old."""
    path, old = secrets_file
    server = start_server(*FAST, "--webhook-secrets-file", str(path))
    stub = server.stub()
    new = new_secret()
    with Receiver() as receiver:
        hooks = config({"url": receiver.url, "event_types": ["CREATED"], "secret_id": "team-a"})
        create(stub, hooks)
        receiver.wait_for(lambda got: len(got) == 1)
        path.write_text(
            f'[[secrets]]\nid = "team-a"\nsecret = "{old}"\n'
            f'[[secrets]]\nid = "team-a"\nsecret = "{new}"\n'
        )
        time.sleep(0.6)  # the file is looked at twice a second at most
        create(stub, hooks)
        receiver.wait_for(lambda got: len(got) == 2)
        path.write_text(f'[[secrets]]\nid = "team-a"\nsecret = "{new}"\n')
        time.sleep(0.6)
        create(stub, hooks)
        receiver.wait_for(lambda got: len(got) == 3)
        first, both, last = receiver.requests
    assert len(both.headers["webhook-signature"].split()) == 2
    for request, secret, signed in (
        (first, old, True),
        (first, new, False),
        (both, old, True),
        (both, new, True),
        (last, new, True),
        (last, old, False),
    ):
        try:
            Verifier(secret).verify(request.body, request.headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        assert verified is signed


def test_the_python_client_lists_and_redelivers(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    failing = threading.Event()
    failing.set()

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(500 if failing.is_set() else 200)

    with Receiver(policy) as receiver, TaskClient(server.address) as client:
        hooks = {"webhooks": [{"url": receiver.url}]}
        task = client.create_task(task_type="flink_sql", notification_config=hooks)
        client.update_task_status(task.task_id, TaskStatus.RUNNING)
        wait_until(
            lambda: len(client.list_deliveries(task.task_id, states=[DeliveryState.DEAD])) == 2
        )
        dead = client.list_deliveries(states=[DeliveryState.DEAD]).items
        assert {d.task_id for d in dead} == {task.task_id} and all(d.attempts == 4 for d in dead)
        assert dead[0].last_status_code == 500 and dead[0].next_attempt_at is None
        failing.clear()
        (first,) = client.redeliver_task(task.task_id)[:1]
        assert first.state is DeliveryState.PENDING and first.attempts == 0
        wait_until(
            lambda: all(
                d.state is DeliveryState.DELIVERED for d in client.list_deliveries(task.task_id)
            )
        )
        # The iterators page for you, one delivery per page here.
        paged = list(client.iter_deliveries(task.task_id, page_size=1))
        assert paged == client.list_deliveries(task.task_id).items and len(paged) == 2

        async def through_asyncio() -> list[Delivery]:
            async with AsyncTaskClient(server.address) as aio:
                return [d async for d in aio.iter_deliveries(task.task_id, page_size=1)]

        assert asyncio.run(through_asyncio()) == paged
        history = client.list_task_events(task.task_id).items
        assert [d.state for event in history for d in event.deliveries] == [
            DeliveryState.DELIVERED
        ] * 2
        assert history[0].deliveries[0].delivered_at is not None
        # Nothing is dead any more: the admin redelivery finds nothing to do.
        assert client.redeliver_events(1, history[-1].event_id) == 0


def test_metrics_count_attempts_by_outcome_and_show_the_queue(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        "1h",
        "--metrics-address",
        "127.0.0.1:0",
    )
    stub = server.stub()
    with Receiver(always(503)) as failing, Receiver() as fine:
        create(stub, config({"url": failing.url}))
        create(stub, config({"url": fine.url}))
        failing.wait_for(lambda got: len(got) == 1)
        fine.wait_for(lambda got: len(got) == 1)
        time.sleep(0.3)

        def scraped() -> dict[str, float]:
            with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
                lines = response.read().decode().splitlines()
            return {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in lines
                if line.startswith("resinkit_webhook_") and not line.startswith("#")
            }

        wait_until(lambda: scraped().get('resinkit_webhook_attempts_total{outcome="retry"}') == 1)
        figures = scraped()
    assert figures['resinkit_webhook_attempts_total{outcome="delivered"}'] == 1
    assert figures['resinkit_webhook_attempts_total{outcome="dead"}'] == 0
    assert figures["resinkit_webhook_attempt_seconds_count"] == 2
    assert figures["resinkit_webhook_pending_deliveries"] == 1
    assert 0 < figures["resinkit_webhook_oldest_pending_age_seconds"] < 60


def test_batch_created_tasks_get_their_deliveries_and_their_configs_checked(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    stub = server.stub()
    with Receiver() as receiver:
        heard = pb.Task(task_type="flink_sql", notification_config=config({"url": receiver.url}))
        quiet = pb.Task(task_type="flink_sql")
        made = stub.BatchCreateTasks(
            pb.BatchCreateTasksRequest(
                requests=[
                    pb.CreateTaskRequest(task=heard),
                    pb.CreateTaskRequest(task=quiet),
                    pb.CreateTaskRequest(task=heard),
                ]
            )
        ).tasks
        receiver.wait_for(lambda got: len(got) == 2)
        got = [request.json()["data"]["task"]["taskId"] for request in receiver.requests]
    assert sorted(got) == sorted([made[0].task_id, made[2].task_id])
    assert deliveries(stub, made[1].task_id) == []
    # Each item's config is checked as CreateTask checks it (a private address here).
    strict = start_server("--webhook-poll-interval", "0.2").stub()
    private = pb.Task(
        task_type="flink_sql", notification_config=config({"url": "http://10.0.0.1/"})
    )
    error = rpc_error(
        lambda: strict.BatchCreateTasks(
            pb.BatchCreateTasksRequest(
                requests=[pb.CreateTaskRequest(task=quiet), pb.CreateTaskRequest(task=private)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"requests[1].task.notification_config.webhooks[0].url"}
