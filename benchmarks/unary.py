"""Unary throughput, latency and server CPU per call, each method against the empty RPC
(grpc.health.v1.Health/Check) of the same server in the same run."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.machine import cpu_seconds
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc

METHODS = ("Health/Check", "CreateTask", "GetTask", "ListTasks", "UpdateTaskStatus")
WALK = (
    pb.TASK_STATUS_SUBMITTED,
    pb.TASK_STATUS_VALIDATING,
    pb.TASK_STATUS_PREPARING,
    pb.TASK_STATUS_BUILDING,
    pb.TASK_STATUS_RUNNING,
    pb.TASK_STATUS_COMPLETED,
)
LIST_REQUEST = pb.ListTasksRequest(
    filter=pb.TaskFilter(task_types=["flink_sql"], statuses=[pb.TASK_STATUS_PENDING]), page_size=50
)


@dataclass
class ClientJob:
    address: str
    method: str
    warmup: float
    duration: float
    concurrency: int
    task_ids: list[str] = field(default_factory=list)
    # CreateTask+webhook: the URL of each created task's one webhook.
    webhook_url: str = ""


@dataclass
class ClientResult:
    calls: int  # measured calls (after the warm-up)
    total_calls: int  # every call, warm-up included (for CPU per call)
    latencies_ms: list[float]
    created: list[str]
    errors: int


@dataclass
class MethodResult:
    method: str
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float
    errors: int
    round_rates: list[float]  # calls/s in each round, in order


def run_client(job: ClientJob) -> ClientResult:
    """One client process: `concurrency` calls in flight for warm-up + duration seconds."""
    return asyncio.run(_load(job))


async def _load(job: ClientJob) -> ClientResult:
    channel = grpc.aio.insecure_channel(job.address)
    stub = pb_grpc.TaskServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    await channel.channel_ready()
    result = ClientResult(0, 0, [], [], 0)
    start = time.perf_counter()
    measure_from, stop_at = start + job.warmup, start + job.warmup + job.duration
    ids = itertools.cycle(job.task_ids) if job.task_ids else iter(())

    def calls() -> Iterator[Callable[[], Awaitable[Any]]]:
        if job.method == "Health/Check":
            request = health_pb2.HealthCheckRequest()
            while True:
                yield lambda: health.Check(request)
        elif job.method == "CreateTask":
            while True:
                task = pb.Task(task_type="flink_sql", task_name="bench", tags=["bench"])
                task.submitted_configs.update({"sql": "INSERT INTO t SELECT 1", "parallelism": 2})
                yield lambda task=task: _created(stub.CreateTask(pb.CreateTaskRequest(task=task)))
        elif job.method == "CreateTask+webhook":
            while True:
                task = pb.Task(task_type="flink_sql", task_name="bench", tags=["bench"])
                task.submitted_configs.update({"sql": "INSERT INTO t SELECT 1", "parallelism": 2})
                task.notification_config.update(
                    {"webhooks": [{"url": job.webhook_url, "event_types": ["CREATED"]}]}
                )
                yield lambda task=task: _created(stub.CreateTask(pb.CreateTaskRequest(task=task)))
        elif job.method == "GetTask":
            for task_id in ids:
                yield lambda task_id=task_id: stub.GetTask(pb.GetTaskRequest(task_id=task_id))
        elif job.method == "ListTasks":
            while True:
                yield lambda: stub.ListTasks(LIST_REQUEST)

    async def _created(call: Awaitable[pb.Task]) -> None:
        result.created.append((await call).task_id)

    async def worker(source: Iterator[Callable[[], Awaitable[Any]]]) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            try:
                make = next(source)
            except StopIteration:
                return
            began = time.perf_counter()
            try:
                await make()
            except grpc.RpcError:
                result.errors += 1
                continue
            result.total_calls += 1
            if began >= measure_from:
                result.calls += 1
                result.latencies_ms.append((time.perf_counter() - began) * 1000)

    if job.method == "UpdateTaskStatus":
        # Each worker walks whole tasks, so that every transition is legal.
        sources = [_walks(job.task_ids[i :: job.concurrency], stub) for i in range(job.concurrency)]
    else:
        shared = calls()
        sources = [shared] * job.concurrency
    await asyncio.gather(*(worker(source) for source in sources))
    await channel.close()
    return result


def _walks(task_ids: list[str], stub: Any) -> Iterator[Callable[[], Awaitable[Any]]]:
    for task_id in task_ids:
        for status in WALK:
            request = pb.UpdateTaskStatusRequest(task_id=task_id, status=status)
            yield lambda request=request: stub.UpdateTaskStatus(request)


@dataclass
class Tally:
    """One method's calls over every round it ran."""

    seconds: float = 0.0
    calls: int = 0
    total_calls: int = 0
    cpu_seconds: float = 0.0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    round_rates: list[float] = field(default_factory=list)

    def figures(self, method: str) -> MethodResult:
        latencies = sorted(self.latencies_ms)
        return MethodResult(
            method=method,
            per_second=self.calls / self.seconds if self.seconds else float("nan"),
            p50_ms=statistics.median(latencies) if latencies else float("nan"),
            p99_ms=latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            cpu_us_per_call=(
                self.cpu_seconds / self.total_calls * 1e6 if self.total_calls else float("nan")
            ),
            errors=self.errors,
            round_rates=self.round_rates,
        )


def measure(
    pool: Any,
    address: str,
    server_pid: int,
    method: str,
    tally: Tally,
    *,
    clients: int,
    concurrency: int,
    warmup: float,
    duration: float,
    task_ids: list[str],
    webhook_url: str = "",
) -> list[str]:
    """Runs `clients` client processes against one method for one round, adds what they saw to
    `tally`, and returns the ids created (CreateTask)."""
    shares = [task_ids[i::clients] for i in range(clients)] if task_ids else [[]] * clients
    jobs = [
        ClientJob(address, method, warmup, duration, concurrency, share, webhook_url)
        for share in shares
    ]
    cpu_before = cpu_seconds(server_pid)
    results: list[ClientResult] = pool.map(run_client, jobs)
    tally.cpu_seconds += cpu_seconds(server_pid) - cpu_before
    tally.seconds += duration
    tally.round_rates.append(sum(result.calls for result in results) / duration)
    for result in results:
        tally.calls += result.calls
        tally.total_calls += result.total_calls
        tally.errors += result.errors
        tally.latencies_ms.extend(result.latencies_ms)
    return [task_id for r in results for task_id in r.created]


def run(
    address: str,
    server_pid: int,
    *,
    clients: int,
    concurrency: int,
    warmup: float,
    duration: float,
    rounds: int,
) -> list[MethodResult]:
    """Every method, `rounds` times in turn for duration/rounds seconds each: the empty RPC
    and the methods meet the same moments of a noisy machine, so their ratios hold."""
    tallies = {method: Tally() for method in METHODS}
    created: list[str] = []  # every task created so far (GetTask reads them)
    fresh: list[str] = []  # created and not yet walked through its statuses
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        for _ in range(rounds):
            for method in METHODS:
                ids = {"GetTask": created, "UpdateTaskStatus": fresh}.get(method, [])
                made = measure(
                    pool,
                    address,
                    server_pid,
                    method,
                    tallies[method],
                    clients=clients,
                    concurrency=concurrency,
                    warmup=warmup,
                    duration=duration / rounds,
                    task_ids=list(ids),
                )
                if method == "UpdateTaskStatus":
                    fresh = []  # walked (or partly walked): never offered again
                created.extend(made)
                fresh.extend(made)
    return [tallies[method].figures(method) for method in METHODS]
