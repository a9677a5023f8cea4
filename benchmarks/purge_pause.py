"""How long a purge makes concurrent writes wait: CreateTask latency from client threads while
100,000 old ended tasks (3 events each) are purged, by `resinkit-grpc purge` (another process)
or by the server's own --retention job.

    python -m benchmarks.purge_pause --database-url sqlite:////tmp/p.db --mode cli
    python -m benchmarks.purge_pause --database-url postgresql+psycopg://... --mode server
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store.migrations import migrate
from resinkit_grpc.store.models import Task, TaskEvent
from tests.servers import ServerProcess

CHUNK = 5000


def build(url: str, size: int) -> None:
    engine = create_engine(url)
    migrate(engine)
    old = datetime.now(UTC) - timedelta(days=2)
    with engine.begin() as connection:
        for start in range(0, size, CHUNK):
            ids = [f"old-{i:07d}" for i in range(start, min(start + CHUNK, size))]
            connection.execute(
                insert(Task),
                [
                    {
                        "task_id": task_id,
                        "task_type": "flink_sql",
                        "status": "COMPLETED",
                        "priority": 0,
                        "created_at": old,
                        "updated_at": old,
                        "finished_at": old,
                        "submitted_configs": {"sql": "INSERT INTO t SELECT 1"},
                        "created_by": "bench",
                        "active": True,
                        "version": 3,
                    }
                    for task_id in ids
                ],
            )
            connection.execute(
                insert(TaskEvent),
                [
                    {
                        "task_id": task_id,
                        "event_type": kind,
                        "new_status": status,
                        "timestamp": old,
                        "actor": "bench",
                    }
                    for task_id in ids
                    for kind, status in (
                        ("CREATED", "PENDING"),
                        ("STATUS_CHANGE", "RUNNING"),
                        ("STATUS_CHANGE", "COMPLETED"),
                    )
                ],
            )
    if engine.dialect.name == "postgresql":
        # As autovacuum would soon: without statistics the planner scans task_events whole.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
    engine.dispose()


def write_load(stub: object, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        began = time.monotonic()
        stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="load")))  # type: ignore[attr-defined]
        samples.append((began, time.monotonic() - began))


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99)]
    return (
        f"{len(ordered)} calls, p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--mode", choices=("cli", "server"), default="cli")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    built = time.monotonic()
    build(args.database_url, args.tasks)
    print(f"built {args.tasks} tasks in {time.monotonic() - built:.1f} s", flush=True)
    extra: tuple[str, ...] = ()
    if args.mode == "server":
        extra = ("--retention", "1d", "--retention-interval", "4")
    workdir = Path("/tmp")
    server = ServerProcess(
        args.database_url, workdir, *extra, "--purge-batch-size", str(args.batch)
    ).start()
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=write_load, args=(server.stub(), stop, samples))
        for _ in range(args.clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(3)  # the baseline
    if args.mode == "cli":
        purge_began = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "resinkit_grpc",
                "purge",
                "--database-url",
                args.database_url,
                "--older-than",
                "1d",
                "--purge-batch-size",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        purge_ended = time.monotonic()
        print(result.stdout.strip())
    else:
        engine = create_engine(args.database_url)
        purge_began = purge_ended = 0.0
        while True:
            with engine.connect() as connection:
                left = connection.execute(
                    text("SELECT count(*) FROM tasks WHERE task_id LIKE 'old-%'")
                ).scalar_one()
            now = time.monotonic()
            if left < args.tasks and not purge_began:
                purge_began = now - 0.05
            if left == 0:
                purge_ended = now
                break
            time.sleep(0.05)
        engine.dispose()
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    server.stop()
    baseline = [lat for began, lat in samples if began < purge_began and began > started + 0.5]
    during = [lat for began, lat in samples if purge_began <= began <= purge_ended]
    seconds = purge_ended - purge_began
    print(
        f"purge ({args.mode}, batches of {args.batch}): {args.tasks} tasks in {seconds:.1f} s, "
        f"{args.tasks / seconds:,.0f} tasks/s ({3 * args.tasks / seconds:,.0f} events/s)"
    )
    print(f"CreateTask before the purge: {summary(baseline)}")
    print(f"CreateTask during the purge: {summary(during)}")


if __name__ == "__main__":
    main()
