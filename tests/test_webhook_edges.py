"""Webhook deliveries at their edges, each test from an adversarial review of the first version
or from a failure seen in a run (each failed then): a receiver's odd Retry-After, bodies made by
other processes, redelivery beside a disabled webhook and beside an attempt in flight, a
shutdown racing a commit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from resinkit_grpc.config import Settings
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.notify.secrets import WebhookSecrets
from resinkit_grpc.notify.worker import DeliveryWorker
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.migrations import migrate
from tests.receivers import Answer, Received, Receiver
from tests.servers import ServerProcess
from tests.test_webhooks import FAST, config, create, deliveries, move, wait_until


def test_a_2xx_with_a_non_ascii_digit_retry_after_is_delivered_not_retried_forever(
    start_server: Callable[..., ServerProcess],
) -> None:
    """`Retry-After: ²` (U+00B2: str.isdigit() is True, float() refuses it) makes
    retry_after_seconds raise ValueError, which _send does not catch: the attempt is never
    settled, even after a 200. Its lease runs out, it is sent again, forever, and it holds every
    later delivery of the task to that URL."""
    server = start_server(*FAST, "--webhook-timeout", "0.5")  # lease: 2 * 0.5 + 5 = 6 s
    stub = server.stub()
    # Sent as the UTF-8 bytes C2 B2 (http.server encodes header values as Latin-1).
    bad = "\u00c2\u00b2"

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(200, headers={"Retry-After": bad})

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url, "event_types": ["CREATED"]}))
        receiver.wait_for(lambda got: len(got) >= 1)
        wait_until(
            lambda: (
                [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DELIVERED]
            ),
            timeout=10,
        )
        assert receiver.count() == 1


def test_the_body_is_the_same_bytes_when_another_process_makes_the_next_attempt() -> None:
    """The webhook-id is stable, and the docstring of payload.body promises the same text on
    every attempt. protobuf's upb Struct map iterates in a per-process hash order, and
    json.dumps keeps that order: a retry made by another replica (or after a restart) sends
    event_data's keys in another order, other bytes, another signature."""
    script = """
import json, sys
from datetime import UTC, datetime
from resinkit_grpc.notify.payload import body
from resinkit_grpc.store.deliveries import Attempt
now = datetime(2026, 12, 1, tzinfo=UTC)
from resinkit_grpc.store.deliveries import SNAPSHOT_COLUMNS
task = {name: None for name in SNAPSHOT_COLUMNS}
task.update({"task_id": "t1", "task_type": "flink_sql", "status": "FAILED", "priority": 0,
             "created_at": now, "updated_at": now, "active": True, "version": 3})
event = {"event_id": 7, "task_id": "t1", "task_type": "flink_sql",
         "event_type": "STATUS_CHANGE", "timestamp": now, "previous_status": "RUNNING",
         "new_status": "FAILED", "actor": "system",
         "event_data": {"reason": "EXPIRED", "error_info": {
             "reason": "EXPIRED", "message": "m", "expires_at": "x", "a": 1, "b": 2,
             "c": 3, "d": 4, "e": 5}}}
sys.stdout.write(body(Attempt(1, 1, "msg_7_0", "https://h.example/", None, task, event, now)))
"""
    bodies = {
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout
        for _ in range(6)
    }
    assert len(bodies) == 1, [json.loads(b)["data"]["event"]["eventData"] for b in bodies]


def test_redeliver_events_sends_nothing_to_a_webhook_that_answered_410(
    start_server: Callable[..., ServerProcess],
) -> None:
    """DisabledWebhook: 'nothing more is sent to it for that task until RedeliverTask
    re-enables it'. redeliver_range makes DEAD deliveries pending without looking at
    disabled_webhooks (settle's DISABLED path turns only PENDING ones DISABLED), so the admin
    RPC sends to a receiver that said 410 Gone."""
    server = start_server(*FAST)
    stub = server.stub()
    first: list[str] = []

    def policy(request: Received, before: list[Received]) -> Answer:
        if not first:
            first.append(request.webhook_id)
        return Answer(500 if request.webhook_id == first[0] else 410)

    with Receiver(policy) as receiver:
        task = create(stub, config({"url": receiver.url}))
        wait_until(
            lambda: [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DEAD]
        )
        move(stub, task.task_id, pb.TASK_STATUS_RUNNING)
        wait_until(
            lambda: (
                [d.state for d in deliveries(stub, task.task_id)]
                == [pb.DELIVERY_STATE_DEAD, pb.DELIVERY_STATE_DISABLED]
            )
        )
        after_410 = receiver.count()
        stub.RedeliverEvents(pb.RedeliverEventsRequest(first_event_id=1, last_event_id=10**9))
        time.sleep(1.5)
        assert receiver.count() == after_410, "sent to a webhook disabled by 410 Gone"


def test_redelivery_of_an_earlier_event_waits_for_the_later_one_in_flight(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Per task and URL, one delivery at a time, in event order. RedeliverTask makes a DEAD
    earlier delivery pending while a later one is in flight: _DUE's NOT EXISTS looks only at
    *earlier* pending deliveries, so the earlier one goes out at once, beside the later one."""
    server = start_server(*FAST)
    stub = server.stub()
    failing = threading.Event()
    failing.set()
    hold = threading.Event()
    ids: list[str] = []

    def policy(request: Received, before: list[Received]) -> Answer:
        if not ids:
            ids.append(request.webhook_id)
        if request.webhook_id == ids[0]:
            return Answer(500 if failing.is_set() else 200)
        return Answer(200, hold=hold)

    with Receiver(policy) as receiver:
        try:
            task = create(stub, config({"url": receiver.url}))
            wait_until(
                lambda: (
                    [d.state for d in deliveries(stub, task.task_id)] == [pb.DELIVERY_STATE_DEAD]
                )
            )
            move(stub, task.task_id, pb.TASK_STATUS_RUNNING)
            receiver.wait_for(lambda got: got[-1].webhook_id != ids[0])  # held in flight
            failing.clear()
            before = receiver.count()
            stub.RedeliverTask(pb.RedeliverTaskRequest(task_id=task.task_id))
            time.sleep(1.5)
            assert receiver.count() == before, "the earlier event went out beside the later one"
        finally:
            hold.set()


def test_close_returns_when_a_commit_wakes_the_worker_as_it_is_cancelled(tmp_path: Path) -> None:
    """Found in a full test run: a server ignored SIGTERM for 30 s. The worker's loop waited for
    its wake-up with asyncio.wait_for, which on Python 3.11 swallows a cancellation that arrives
    together with the wake-up (a commit during shutdown): close() cancelled the loop and waited
    for it forever. Here the commit's wake-up and close() meet in the same turn of the loop."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    settings = Settings(database_url=url, webhook_poll_interval=30.0)

    async def main() -> None:
        database = Database(settings)
        try:
            migrate(database.writer_engine)
            worker = DeliveryWorker(database, settings, WebhookSecrets(None))
            await worker.start()
            await asyncio.sleep(0.2)  # the loop has looked, found nothing, and waits
            for _ in range(3):
                worker._committed()  # what each commit that queued a delivery does
                closing = asyncio.create_task(worker.close(0))
                done, _ = await asyncio.wait({closing}, timeout=2.0)
                assert done, "close() still waits for the worker's loop"
                assert worker.in_flight == 0
                worker = DeliveryWorker(database, settings, WebhookSecrets(None))
                await worker.start()
                await asyncio.sleep(0.05)
            await worker.close(0)
        finally:
            await asyncio.to_thread(database.close)

    asyncio.run(main())
