"""Several server processes on one database: gap-free watches across replicas, migrations when
replicas boot together, and surviving dropped database connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.store import tasks as store_tasks
from tests.databases import Databases
from tests.rpc import create
from tests.servers import ServerProcess
from tests.test_watch import churn
from tests.watching import Watcher, matching, table_events

FAST_HEARTBEAT = ("--heartbeat-interval", "0.2")


def drop_connections(databases: Databases, server: ServerProcess) -> int:
    """Terminates every connection to the server's PostgreSQL database; how many there were."""
    database = server.database_url.rsplit("/", 1)[-1]
    admin = create_engine(
        databases.admin_url.render_as_string(hide_password=False), poolclass=NullPool
    )
    try:
        with admin.begin() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def hold_a_late_commit(database_url: str, started: threading.Event, seconds: float) -> str:
    """Creates a task (and its event) through the store itself, then keeps the transaction
    open: a commit that lands after others have started. Returns the task id."""
    engine = create_engine(database_url, poolclass=NullPool)
    new = store_tasks.NewTask(
        task_id=f"late-{time.monotonic_ns()}", task_type="late", created_by="test"
    )
    try:
        with engine.begin() as connection:
            store_tasks.create_task(connection, new)
            started.set()
            time.sleep(seconds)
    finally:
        engine.dispose()
    return new.task_id


def test_watchers_on_two_replicas_see_every_event_once_in_table_order(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server(*FAST_HEARTBEAT)
    second = start_server(*FAST_HEARTBEAT, database_url=first.database_url)
    watchers = [Watcher(first.stub(), after_event_id=0), Watcher(second.stub(), after_event_id=0)]
    for watcher in watchers:
        watcher.wait_live()
    writers = [(first.stub(), "flink_sql"), (second.stub(), "cdc")] * 2
    with ThreadPoolExecutor(len(writers) + 1) as pool:
        futures = [
            pool.submit(churn, stub, kind, 20, seed) for seed, (stub, kind) in enumerate(writers)
        ]
        # A transaction that takes its event id early and commits late, while others commit.
        started = threading.Event()
        late = pool.submit(hold_a_late_commit, first.database_url, started, 0.5)
        started.wait(10)
        for future in futures:
            future.result(120)
        late_task = late.result(30)
    rows = table_events(first.database_url)
    for watcher in watchers:
        watcher.wait_position(rows[-1]["event_id"])
        watcher.stop()
        assert watcher.ids() == matching(rows)
    assert late_task in {event.task_id for event in watchers[0].events}
    assert len(rows) > 100


def test_five_replicas_booting_together_migrate_once_and_all_serve(
    new_database_url: Callable[[], str], tmp_path: Any
) -> None:
    url = new_database_url()
    replicas = [ServerProcess(url, tmp_path) for _ in range(5)]
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda replica: replica.start(), replicas))
    try:
        for replica in replicas:
            health = health_pb2_grpc.HealthStub(replica.channel())
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        migrated = [replica for replica in replicas if "migrating database" in replica.log()]
        assert len(migrated) == 1
        task = create(replicas[0].stub())
        assert replicas[4].stub().GetTask(pb.GetTaskRequest(task_id=task.task_id)) == task
    finally:
        for replica in replicas:
            assert replica.stop() == 0


def test_dropped_database_connections_lose_no_acknowledged_write(
    backend: str, databases: Databases, start_server: Callable[..., ServerProcess]
) -> None:
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    server = start_server(*FAST_HEARTBEAT)
    watcher = Watcher(server.stub(), after_event_id=0)
    watcher.wait_live()
    acknowledged: list[pb.Task] = []
    failures: list[grpc.StatusCode] = []
    stop = threading.Event()

    def write(stub: Any) -> None:
        while not stop.is_set():
            try:
                acknowledged.append(create(stub, "survivor"))
            except grpc.RpcError as error:
                failures.append(error.code())

    threads = [threading.Thread(target=write, args=(server.stub(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            time.sleep(0.4)
            assert drop_connections(databases, server) > 0
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    # Calls caught by a dropped connection fail as UNAVAILABLE, never anything else...
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}
    # ...and calls after it succeed again.
    after = create(server.stub(), "survivor")
    stub = server.stub()
    for task in [*acknowledged, after]:
        assert stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).task_id == task.task_id
    rows = table_events(server.database_url)
    watcher.wait_position(rows[-1]["event_id"])
    watcher.stop()
    assert watcher.ids() == matching(rows)
    assert len(acknowledged) > 20


def test_reads_after_the_database_dropped_every_connection_succeed_at_once(
    backend: str, databases: Databases, start_server: Callable[..., ServerProcess]
) -> None:
    """PostgreSQL readers take no ping before a read (engine.py): a read that meets a pooled
    connection the server dropped runs again on a new one, so that no caller sees the drop."""
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    server = start_server("--loop-read-budget", "0")
    stub = server.stub()
    tasks = [create(stub, "reread") for _ in range(3)]
    ids = [task.task_id for task in tasks]

    def read_all() -> None:
        for task_id in ids:
            assert stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task_id == task_id
        listed = stub.ListTasks(pb.ListTasksRequest(filter=pb.TaskFilter(task_types=["reread"])))
        assert sorted(task.task_id for task in listed.tasks) == sorted(ids)
        both = stub.BatchGetTasks(pb.BatchGetTasksRequest(task_ids=ids))
        assert [task.task_id for task in both.tasks] == ids

    with ThreadPoolExecutor(8) as pool:  # every read thread takes a pooled connection
        for future in [pool.submit(read_all) for _ in range(16)]:
            future.result()
    assert drop_connections(databases, server) >= 2
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(read_all) for _ in range(16)]:
            future.result()  # an UNAVAILABLE would raise here
    assert "reading again on a new one" in server.log()
