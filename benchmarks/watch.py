"""Commit-to-delivery latency of WatchTaskEvents with many concurrent watchers, and the
server's memory while they are open."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from typing import Any

import grpc

from benchmarks.machine import cpu_seconds, rss_mib
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc

WATCHERS_PER_PROCESS = 500


@dataclass
class WatchResult:
    watchers: int
    rate: float  # events written per second, each delivered to every watcher
    events: int
    deliveries: int
    p50_ms: float
    p99_ms: float
    server_rss_mib: float
    # Server CPU while the events were written and delivered, per delivery.
    server_cpu_us_per_delivery: float
    across_replicas: bool = False  # written through one replica, watched on another


_ready: Any = None


def _init(ready: Any) -> None:
    global _ready
    _ready = ready


def run_watchers(address: str, streams: int, task_type: str, events: int) -> list[float]:
    """One client process: `streams` watchers of `task_type`, each until it has `events`
    events; returns every delivery's latency (receipt time - the event's commit timestamp)."""
    return asyncio.run(_watch(address, streams, task_type, events))


async def _watch(address: str, streams: int, task_type: str, events: int) -> list[float]:
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.TaskServiceStub(channel)
    request = pb.WatchTaskEventsRequest(task_types=[task_type], event_types=["CREATED"])
    calls = [stub.WatchTaskEvents(request) for _ in range(streams)]
    for call in calls:
        assert (await call.read()).HasField("heartbeat")  # live from here
    _ready.release()  # tell the writer this process's watchers are live
    latencies: list[float] = []

    async def drain(call: Any) -> None:
        received = 0
        while received < events:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if response.HasField("event"):
                stamp = response.event.timestamp
                latencies.append((time.time() - stamp.seconds - stamp.nanos / 1e9) * 1000)
                received += 1
        call.cancel()

    await asyncio.wait_for(asyncio.gather(*(drain(call) for call in calls)), 120)
    await channel.close()
    return latencies


def run(
    address: str,
    server_pid: int,
    counts: tuple[int, ...],
    *,
    events: int,
    rate: float,
    write_address: str | None = None,
) -> list[WatchResult]:
    """Watchers on `address`; the events are written there too, or through `write_address`
    (another replica of the same database: delivery then crosses replicas, through the
    database's NOTIFY and the watching replica's tail)."""
    context = multiprocessing.get_context("spawn")
    results = []
    channel = grpc.insecure_channel(write_address or address)
    stub = pb_grpc.TaskServiceStub(channel)
    for count in counts:
        task_type = f"watchbench-{count}-{time.monotonic_ns()}"
        shares = [
            min(WATCHERS_PER_PROCESS, count - i) for i in range(0, count, WATCHERS_PER_PROCESS)
        ]
        ready = context.Semaphore(0)
        with context.Pool(len(shares), initializer=_init, initargs=(ready,)) as pool:
            pending = pool.starmap_async(
                run_watchers, [(address, n, task_type, events) for n in shares]
            )
            for _ in shares:
                if not ready.acquire(timeout=120):
                    raise RuntimeError("watchers did not become live")
            rss = rss_mib(server_pid)
            cpu_before = cpu_seconds(server_pid)
            interval = 1 / rate
            next_at = time.perf_counter()
            for _ in range(events):
                stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type=task_type)))
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
            rss = max(rss, rss_mib(server_pid))
            latencies = sorted(ms for part in pending.get(180) for ms in part)
            cpu = cpu_seconds(server_pid) - cpu_before
        results.append(
            WatchResult(
                watchers=count,
                rate=rate,
                events=events,
                deliveries=len(latencies),
                p50_ms=statistics.median(latencies),
                p99_ms=latencies[int(len(latencies) * 0.99)],
                server_rss_mib=rss,
                server_cpu_us_per_delivery=cpu / len(latencies) * 1e6,
                across_replicas=write_address is not None,
            )
        )
    channel.close()
    return results
