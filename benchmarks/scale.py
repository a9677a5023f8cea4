"""ListTasks at depth: the first page and a page far down, on a large database, for several
filters. Keyset pagination should make both cost the same."""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import create_engine, insert

from benchmarks.progress import Progress
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from resinkit_grpc.store.migrations import alembic_config, migrate
from resinkit_grpc.store.tasks import tasks

FILTERS: dict[str, pb.TaskFilter] = {
    "no filter": pb.TaskFilter(),
    "tags_any": pb.TaskFilter(tags_any=["team-7"]),  # 1 task in 10
    "name_contains": pb.TaskFilter(name_contains="NIGHTLY"),  # 1 task in 5
}
BATCH = 20_000
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED")


@dataclass
class DepthResult:
    filter: str
    first_page_ms: float
    deep_page_ms: float
    depth: int

    @property
    def ratio(self) -> float:
        return self.deep_page_ms / self.first_page_ms


def cached_database(cache_dir: Path, size: int) -> Path:
    """A migrated SQLite database of `size` tasks, built once and kept for later runs."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    path = cache_dir / f"bench-{size}-tasks-rev{head}.db"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = path.with_suffix(f".building-{os.getpid()}")
    engine = create_engine(f"sqlite:///{building}")
    migrate(engine)
    rng = random.Random(7)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    progress = Progress(f"building {size:,} tasks", size)
    with engine.begin() as connection:
        for start in range(0, size, BATCH):
            rows = []
            for i in range(start, min(start + BATCH, size)):
                moment = base + timedelta(milliseconds=i)
                rows.append(
                    {
                        "task_id": f"task-{i:08d}",
                        "task_type": ("flink_sql", "flink_cdc_pipeline")[i % 2],
                        "task_name": f"{'nightly' if i % 5 == 0 else 'adhoc'} load {i}",
                        "status": rng.choice(STATUSES),
                        "priority": rng.randint(0, 9),
                        "created_at": moment,
                        "updated_at": moment,
                        "submitted_configs": {"sql": f"INSERT INTO t{i % 100} SELECT 1"},
                        "created_by": f"user-{i % 50}",
                        "tags": [f"team-{i % 10}", f"env-{i % 3}"],
                        "active": True,
                        "version": 1,
                    }
                )
            connection.execute(insert(tasks), rows)
            progress.advance(len(rows))
    progress.close()
    engine.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    building.rename(path)
    return path


def run(address: str, depth: int, repeats: int) -> list[DepthResult]:
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.TaskServiceStub(channel)
    results = []
    for name, task_filter in FILTERS.items():
        request = pb.ListTasksRequest(filter=task_filter, page_size=50)
        progress = Progress(f"paging {name} to page {depth}", depth)
        token = ""
        for _ in range(depth - 1):
            page = pb.ListTasksRequest(filter=task_filter, page_size=50, page_token=token)
            token = stub.ListTasks(page).next_page_token
            progress.advance()
            assert token, f"fewer than {depth} pages match {name}"
        progress.close()
        deep_request = pb.ListTasksRequest(filter=task_filter, page_size=50, page_token=token)
        assert len(stub.ListTasks(deep_request).tasks) == 50
        first, deep = _medians_ms(stub, (request, deep_request), repeats)
        results.append(DepthResult(name, first, deep, depth))
    channel.close()
    return results


def _medians_ms(stub: Any, requests: tuple[pb.ListTasksRequest, ...], repeats: int) -> list[float]:
    """Median latency of each request, the requests taking turns so that both meet the same
    machine (caches, neighbours) and only their own cost differs."""
    samples: list[list[float]] = [[] for _ in requests]
    for request in requests:
        stub.ListTasks(request)  # warm the page cache and the connection
    for _ in range(repeats):
        for index, request in enumerate(requests):
            began = time.perf_counter()
            stub.ListTasks(request)
            samples[index].append((time.perf_counter() - began) * 1000)
    return [statistics.median(times) for times in samples]
