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
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine, insert

from benchmarks.progress import Progress
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from resinkit_grpc.store import name_index
from resinkit_grpc.store.filter_indexes import SQLITE_BACKFILL
from resinkit_grpc.store.migrations import alembic_config, migrate
from resinkit_grpc.store.tasks import tasks


def _moment(index: int) -> Timestamp:
    """When the bench data's task `index` was created (1 ms apart from 2026-01-01)."""
    stamp = Timestamp()
    stamp.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=index))
    return stamp


# name -> (filter, order_by). Dense shapes are also paged to `depth`; sparse ones have fewer
# pages, and their deep page is the last one there is.
SHAPES: dict[str, tuple[pb.TaskFilter, str]] = {
    "no filter": (pb.TaskFilter(), ""),
    "tags_any": (pb.TaskFilter(tags_any=["team-7"]), ""),  # 1 task in 10
    "name_contains": (pb.TaskFilter(name_contains="NIGHTLY"), ""),  # 1 task in 5
    "rare tag": (pb.TaskFilter(tags_any=["rare-tag"]), "priority desc"),  # 10 tasks
    "name, 1 match": (pb.TaskFilter(name_contains="NEEDLE"), ""),
    "name, 111 matches+priority desc": (pb.TaskFilter(name_contains="LOAD 1234"), "priority desc"),
    "name+status+updated asc": (  # 1,111 names, a quarter of them RUNNING
        pb.TaskFilter(name_contains="load 123", statuses=[pb.TASK_STATUS_RUNNING]),
        "updated_at asc",
    ),
    "statuses+updated desc": (
        pb.TaskFilter(statuses=[pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_FAILED]),
        "updated_at desc",
    ),
    "status+priority asc": (pb.TaskFilter(statuses=[pb.TASK_STATUS_PENDING]), "priority asc"),
    "type+updated asc": (pb.TaskFilter(task_types=["flink_sql"]), "updated_at asc"),
    "creator+priority desc": (pb.TaskFilter(created_by="user-7"), "priority desc"),
    "rare creator": (pb.TaskFilter(created_by="rare-user"), "updated_at desc"),
    "tags_all+priority asc": (pb.TaskFilter(tags_all=["team-7", "env-1"]), "priority asc"),
    "created range": (
        pb.TaskFilter(
            created_after=Timestamp(
                seconds=int(datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp())
            ),
            created_before=Timestamp(
                seconds=int(datetime(2026, 1, 1, 0, 10, tzinfo=UTC).timestamp())
            ),
        ),
        "",
    ),
}
FIRST_PAGE_MAX_MS = 10.0
BATCH = 20_000
# Sparse data for the sparse shapes: 10 tasks in 1,000,000 carry the rare tag, 10 the rare
# creator, one the needle's name.
RARE_EVERY = 100_000
RARE_TAG = "rare-tag"
RARE_CREATOR = "rare-user"
NEEDLE = "the one needle in the haystack"
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED")


@dataclass
class DepthResult:
    filter: str
    order_by: str
    first_page_ms: float
    deep_page_ms: float
    depth: int  # the page measured as deep (fewer than asked when fewer pages match)

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
                        "task_name": NEEDLE
                        if i == size // 2
                        else f"{'nightly' if i % 5 == 0 else 'adhoc'} load {i}",
                        "status": rng.choice(STATUSES),
                        "priority": rng.randint(0, 9),
                        "created_at": moment,
                        "updated_at": moment,
                        "submitted_configs": {"sql": f"INSERT INTO t{i % 100} SELECT 1"},
                        "created_by": RARE_CREATOR if i % RARE_EVERY == 3 else f"user-{i % 50}",
                        "tags": [f"team-{i % 10}", f"env-{i % 3}"]
                        + ([RARE_TAG] if i % RARE_EVERY == 1 else []),
                        "active": True,
                        "version": 1,
                    }
                )
            connection.execute(insert(tasks), rows)
            progress.advance(len(rows))
        # Inserted around the service: their task_tags rows and name index too (see
        # store/filter_indexes.py and store/name_index.py).
        connection.exec_driver_sql(SQLITE_BACKFILL)
        name_index.rebuild(connection)
    progress.close()
    engine.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    building.rename(path)
    return path


PG_ROWS = """
INSERT INTO tasks (task_id, task_type, task_name, status, priority, created_at, updated_at,
                   submitted_configs, created_by, tags, active, version)
SELECT 'task-' || lpad(i::text, 8, '0'),
       CASE WHEN i % 2 = 0 THEN 'flink_sql' ELSE 'flink_cdc_pipeline' END,
       CASE WHEN i = :size / 2 THEN :needle
            WHEN i % 5 = 0 THEN 'nightly load ' || i ELSE 'adhoc load ' || i END,
       (ARRAY['PENDING', 'RUNNING', 'COMPLETED', 'FAILED'])[1 + floor(random() * 4)::int],
       floor(random() * 10)::int,
       :base + i * interval '1 millisecond',
       :base + i * interval '1 millisecond',
       jsonb_build_object('sql', 'INSERT INTO t' || (i % 100) || ' SELECT 1'),
       CASE WHEN i % :rare = 3 THEN :rare_creator ELSE 'user-' || (i % 50) END,
       jsonb_build_array('team-' || (i % 10), 'env-' || (i % 3))
         || CASE WHEN i % :rare = 1 THEN jsonb_build_array(CAST(:rare_tag AS text))
                 ELSE '[]'::jsonb END,
       true, 1
FROM generate_series(:start, :stop - 1) AS i
"""


def cached_postgres_database(admin_url: str, size: int) -> tuple[str, float | None]:
    """A PostgreSQL database of `size` tasks like cached_database's, kept on that server for
    later runs; made with bulk SQL at revision 0004, then migrated to head (so that the run
    also times migration 0006 on a populated database). Returns its URL and how long that
    migration took (None when the database was there already)."""
    import psycopg
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    name = f"resinkit_bench_{size}_rev{head}"
    admin = make_url(admin_url)
    url = admin.set(database=name).render_as_string(hide_password=False)
    raw = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(raw, autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return url, None
        building = f"{name}_building"
        connection.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{building}"')
    engine = create_engine(admin.set(database=building))
    migrate(engine, target="0004")
    progress = Progress(f"building {size:,} tasks on PostgreSQL", size)
    values = {
        "size": size,
        "needle": NEEDLE,
        "base": datetime(2026, 1, 1, tzinfo=UTC),
        "rare": RARE_EVERY,
        "rare_creator": RARE_CREATOR,
        "rare_tag": RARE_TAG,
    }
    step = 100_000
    for start in range(0, size, step):
        with engine.begin() as connection:
            connection.execute(
                text(PG_ROWS), {**values, "start": start, "stop": min(start + step, size)}
            )
        progress.advance(min(step, size - start))
    progress.close()
    began = time.perf_counter()
    migrate(engine)
    migration_seconds = time.perf_counter() - began
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE tasks"))
    engine.dispose()
    with psycopg.connect(raw, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    return url, migration_seconds


def run(address: str, depth: int, repeats: int, size: int) -> list[DepthResult]:
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.TaskServiceStub(channel)
    results = []
    shapes = dict(SHAPES)
    span = pb.TaskFilter(
        created_after=_moment(size * 3 // 10), created_before=_moment(size * 6 // 10)
    )
    shapes["created range"] = (span, "")
    for name, (task_filter, order_by) in shapes.items():
        request = pb.ListTasksRequest(filter=task_filter, page_size=50, order_by=order_by)
        progress = Progress(f"paging {name} to page {depth}", depth)
        token, reached, last = "", 1, request
        for _ in range(depth - 1):
            page = pb.ListTasksRequest(
                filter=task_filter, page_size=50, order_by=order_by, page_token=token
            )
            token = stub.ListTasks(page).next_page_token
            progress.advance()
            if not token:
                break
            reached += 1
            last = pb.ListTasksRequest(
                filter=task_filter, page_size=50, order_by=order_by, page_token=token
            )
        progress.close()
        assert stub.ListTasks(request).tasks, f"nothing matches {name}"
        first, deep = _medians_ms(stub, (request, last), repeats)
        results.append(DepthResult(name, order_by, first, deep, reached))
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
