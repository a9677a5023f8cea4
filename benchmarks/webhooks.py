"""Webhook notifications: what one webhook costs CreateTask (its ratio to the empty RPC, with
and without, in the same rounds), and how many deliveries a second one server sends to a local
receiver (an aiohttp server in a process of its own, answering 204 at once)."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import unary
from tests.servers import ServerProcess

METHODS = ("Health/Check", "CreateTask", "CreateTask+webhook")


@dataclass
class WebhookResult:
    empty_per_second: float
    create_ratio: float  # CreateTask / Health/Check
    create_with_webhook_ratio: float  # CreateTask with one webhook / Health/Check
    create_cpu_us: float
    create_with_webhook_cpu_us: float
    # Deliveries received while the clients created tasks, per second of that load.
    delivered_under_load_per_second: float
    # Once creating stopped: the backlog's deliveries per second until it was empty.
    drain_per_second: float
    delivered: int
    drain_seconds: float


def _receive(port: int, count: Any, last: Any, ready: Any) -> None:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        with count.get_lock():
            count.value += 1
        last.value = time.monotonic()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.post("/hook", hook)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def run(
    workdir: Path, settings: dict[str, Any], server_args: tuple[str, ...] = ()
) -> WebhookResult:
    context = multiprocessing.get_context("spawn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    count, last, ready = context.Value("q", 0), context.Value("d", 0.0), context.Event()
    receiver = context.Process(target=_receive, args=(port, count, last, ready), daemon=True)
    receiver.start()
    assert ready.wait(30), "the receiver did not start"
    url = f"http://127.0.0.1:{port}/hook"
    server = ServerProcess(
        f"sqlite:///{workdir / 'webhooks.db'}",
        workdir,
        "--webhook-allow-private",
        "--log-level",
        "WARNING",
        *server_args,
    ).start()
    pid = server.process.pid  # type: ignore[union-attr]
    tallies = {method: unary.Tally() for method in METHODS}
    made = 0
    loaded = 0.0
    delivered_under_load = 0
    try:
        with context.Pool(settings["clients"]) as pool:
            for _ in range(settings["rounds"]):
                for method in METHODS:
                    before = count.value
                    began = time.monotonic()
                    created = unary.measure(
                        pool,
                        server.address,
                        pid,
                        method,
                        tallies[method],
                        clients=settings["clients"],
                        concurrency=settings["concurrency"],
                        warmup=settings["warmup"],
                        duration=settings["duration"] / settings["rounds"],
                        task_ids=[],
                        webhook_url=url,
                    )
                    if method == "CreateTask+webhook":
                        made += len(created)
                        loaded += time.monotonic() - began
                        delivered_under_load += count.value - before
        stopped = time.monotonic()
        at_stop = count.value
        deadline = stopped + 600
        while count.value < made and time.monotonic() < deadline:
            time.sleep(0.05)
        drain_seconds = max(last.value - stopped, 1e-9)
    finally:
        server.stop()
        receiver.kill()
    empty, create, hooked = (tallies[m].figures(m) for m in METHODS)
    return WebhookResult(
        empty_per_second=empty.per_second,
        create_ratio=create.per_second / empty.per_second,
        create_with_webhook_ratio=hooked.per_second / empty.per_second,
        create_cpu_us=create.cpu_us_per_call,
        create_with_webhook_cpu_us=hooked.cpu_us_per_call,
        delivered_under_load_per_second=delivered_under_load / loaded if loaded else 0.0,
        drain_per_second=(count.value - at_stop) / drain_seconds,
        delivered=count.value,
        drain_seconds=drain_seconds,
    )
