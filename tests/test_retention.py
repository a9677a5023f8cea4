"""Expiry and retention through real servers on real databases: expired tasks fail exactly once
however many replicas scan; purges (the CLI and the periodic job) remove old ended tasks whole,
in batches, beside serving replicas; a watch whose position retention has passed ends
OUT_OF_RANGE, never with a silent gap, even when the purge lands in the middle of its replay."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from alembic.script import ScriptDirectory
from google.rpc import error_details_pb2
from sqlalchemy import Connection, create_engine, text, update
from sqlalchemy.pool import NullPool

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store import tasks as store_tasks
from resinkit_grpc.store.migrations import alembic_config
from tests.rpc import create, detail, error_reason, rpc_error
from tests.servers import ServerProcess, run_cli
from tests.watching import Watcher, matching

FAST = ("--heartbeat-interval", "0.2")
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
EXPIRY = ("--expire-tasks", "--expiry-interval", "0.05")


@contextmanager
def connect(database_url: str) -> Iterator[Connection]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def query(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with connect(database_url) as connection:
        return [dict(row) for row in connection.execute(text(sql), params).mappings()]


def all_events(database_url: str) -> list[dict[str, Any]]:
    """Every stored event with its task's type (joined: an orphan would be missing here)."""
    return query(
        database_url,
        "SELECT e.event_id, e.task_id, e.event_type, t.task_type FROM task_events e "
        "JOIN tasks t ON t.task_id = e.task_id ORDER BY e.event_id",
    )


def orphan_events(database_url: str) -> int:
    rows = query(
        database_url,
        "SELECT count(*) AS n FROM task_events e LEFT JOIN tasks t ON t.task_id = e.task_id "
        "WHERE t.task_id IS NULL",
    )
    return int(rows[0]["n"])


def horizon(database_url: str) -> int:
    return int(query(database_url, "SELECT purged_through_event_id AS h FROM log_horizon")[0]["h"])


def seed(database_url: str, prefix: str, doomed: int, kept: int) -> tuple[list[str], list[str]]:
    """Tasks written straight through the store, interleaved in the log: `doomed` ones that
    complete (purgeable once old) and `kept` ones left RUNNING. Returns both id lists."""
    doomed_ids, kept_ids = [], []
    with connect(database_url) as connection:
        for i in range(max(doomed, kept)):
            for kind, ids, count in (("doomed", doomed_ids, doomed), ("kept", kept_ids, kept)):
                if i >= count:
                    continue
                task_id = f"{prefix}-{kind}-{i}"
                new = store_tasks.NewTask(task_id=task_id, task_type=kind, created_by="seed")
                store_tasks.create_task(connection, new)
                final = TaskStatus.COMPLETED if kind == "doomed" else TaskStatus.RUNNING
                for status in (TaskStatus.RUNNING, final) if kind == "doomed" else (final,):
                    store_tasks.update_task_status(
                        connection, store_tasks.StatusChange(task_id, status, {})
                    )
                ids.append(task_id)
    return doomed_ids, kept_ids


def age(database_url: str, task_ids: list[str], hours: float = 2) -> None:
    """Makes these tasks look unchanged for `hours`, as if they had ended long ago."""
    with connect(database_url) as connection:
        connection.execute(
            update(store_tasks.tasks)
            .where(store_tasks.tasks.c.task_id.in_(task_ids))
            .values(updated_at=datetime.now(UTC) - timedelta(hours=hours))
        )


def purge(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("purge", "--database-url", database_url, *args)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_expired_tasks_fail_exactly_once_when_two_replicas_scan_one_database(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server(*EXPIRY)
    second = start_server(*EXPIRY, database_url=first.database_url)
    stub = first.stub()
    timeout = {"task_timeout_seconds": 0.6}
    due = [create(stub, submitted_configs=timeout).task_id for _ in range(30)]
    for task_id in due[:10]:  # expiry fails them from any non-terminal status
        stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(task_id=task_id, status=pb.TASK_STATUS_RUNNING)
        )
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=due[10], status=pb.TASK_STATUS_CANCELLING)
    )
    # Left alone: one that ends first, one deleted, one given more time, one without expiry.
    ended = create(stub, submitted_configs=timeout).task_id
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=ended, status=pb.TASK_STATUS_COMPLETED)
    )
    deleted = create(stub, submitted_configs=timeout).task_id
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=deleted))
    extended = create(stub, submitted_configs=timeout)
    extended.expires_at.FromSeconds(int(time.time()) + 3600)
    stub.UpdateTask(pb.UpdateTaskRequest(task=extended, update_mask={"paths": ["expires_at"]}))
    forever = create(stub).task_id

    def all_failed() -> bool:
        return all(
            second.stub().GetTask(pb.GetTaskRequest(task_id=t)).status == pb.TASK_STATUS_FAILED
            for t in due
        )

    wait_until(all_failed)
    time.sleep(0.3)  # both replicas scan a few more times: nothing more may happen
    for task_id in due:
        task = stub.GetTask(pb.GetTaskRequest(task_id=task_id))
        assert task.status == pb.TASK_STATUS_FAILED
        assert task.error_info["reason"] == "EXPIRED"
        assert "expired" in task.error_info["message"]
        assert task.HasField("finished_at")
    changes = query(
        first.database_url,
        "SELECT task_id, new_status, actor, event_data FROM task_events "
        "WHERE event_type = 'STATUS_CHANGE' AND new_status = 'FAILED'",
    )
    assert sorted(row["task_id"] for row in changes) == sorted(due)  # once each
    for row in changes:
        data = row["event_data"]
        data = json.loads(data) if isinstance(data, str) else data
        assert row["actor"] == "system"
        assert data["reason"] == "EXPIRED"
        assert data["error_info"]["reason"] == "EXPIRED"
    for task_id, status in (
        (ended, pb.TASK_STATUS_COMPLETED),
        (deleted, pb.TASK_STATUS_PENDING),
        (extended.task_id, pb.TASK_STATUS_PENDING),
        (forever, pb.TASK_STATUS_PENDING),
    ):
        assert stub.GetTask(pb.GetTaskRequest(task_id=task_id)).status == status
    assert "expired" in first.log() + second.log()


def test_purge_dry_run_changes_nothing_and_purge_removes_old_ended_tasks_whole(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    url = server.database_url
    doomed, kept = seed(url, "cli", doomed=25, kept=5)
    stub = server.stub()
    gone = create(stub, "gone").task_id  # a soft-deleted task is purged too, whatever its status
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=gone))
    age(url, [*doomed, *kept, gone])  # kept ones too: they are RUNNING, never purged
    fresh = create(stub, "fresh").task_id  # ended, but recently: kept
    stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=fresh, status=pb.TASK_STATUS_FAILED))
    before = all_events(url)

    dry = purge(url, "--older-than", "1h", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would purge 26 tasks and 77 events not changed since ")
    assert all_events(url) == before and horizon(url) == 0

    # Batches of 4: seven write transactions, beside a live watcher and a serving replica.
    watcher = Watcher(stub)
    watcher.wait_live()
    done = purge(url, "--older-than", "1h", "--purge-batch-size", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged 26 tasks and 77 events not changed since ")
    for task_id in [*doomed, gone]:
        rpc_error(
            lambda t=task_id: stub.GetTask(pb.GetTaskRequest(task_id=t)), grpc.StatusCode.NOT_FOUND
        )
    for task_id in [*kept, fresh]:
        assert len(stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=task_id)).events) >= 2
    assert orphan_events(url) == 0
    purged_ids = {row["event_id"] for row in before} - {row["event_id"] for row in all_events(url)}
    assert horizon(url) == max(purged_ids)
    # A live watcher is past the horizon: untouched, it goes on.
    after = create(stub, "after").task_id
    watcher.wait_for(lambda w: any(e.task_id == after for e in w.events))
    assert watcher.error is None
    watcher.stop()
    again = purge(url, "--older-than", "1h")
    assert again.stdout.startswith("purged 0 tasks and 0 events"), again.stdout


def test_purge_refuses_bad_durations_and_unmigrated_databases(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for bad in ([], ["--older-than", "30"], ["--older-than", "0"]):
        result = purge(url, *bad)
        assert result.returncode == 2, (bad, result.stderr)
    result = purge(url, "--older-than", "30d")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "resinkit-grpc: error: the database is at revision none (empty), behind this "
        f"version's {HEAD}: run `resinkit-grpc migrate upgrade` first"
    ]
    for flag, value in (
        ("--retention", "12"),
        ("--retention", "0.5s"),
        ("--purge-batch-size", "0"),
    ):
        result = run_cli("migrate", "--database-url", url, flag, value)
        assert result.returncode != 0
        assert flag in result.stderr.strip().splitlines()[-1]


def test_periodic_retention_on_two_replicas_purges_each_task_once_and_leaves_no_orphan(
    start_server: Callable[..., ServerProcess],
) -> None:
    retention = ("--retention", "1s", "--retention-interval", "0.1", "--purge-batch-size", "3")
    first = start_server(*FAST, *retention)
    second = start_server(*FAST, *retention, database_url=first.database_url)
    url = first.database_url
    live = Watcher(second.stub())
    live.wait_live()
    doomed, kept = seed(url, "periodic", doomed=40, kept=4)
    wait_until(lambda: not query(url, "SELECT task_id FROM tasks WHERE task_type = 'doomed'"))
    assert {row["task_id"] for row in query(url, "SELECT task_id FROM tasks")} == set(kept)
    assert orphan_events(url) == 0

    def logged() -> int:  # what the replicas say they purged (written once a run is over)
        lines = (first.log() + second.log()).splitlines()
        return sum(
            int(line.split("purged ")[1].split()[0]) for line in lines if "retention purged" in line
        )

    wait_until(lambda: logged() >= len(doomed))
    time.sleep(0.3)
    assert logged() == len(doomed)  # each task once, by whichever replica got it
    # The live watcher saw every event as it committed and is not affected by the purge.
    assert [e.task_id for e in live.events if e.event_type == "CREATED"] == [
        t for pair in zip(doomed, kept, strict=False) for t in pair
    ] + doomed[len(kept) :]
    assert live.error is None
    live.stop()


def test_a_watch_from_below_the_horizon_is_out_of_range_with_the_horizon_in_its_details(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST)
    url = server.database_url
    stub = server.stub()
    doomed, kept = seed(url, "horizon", doomed=6, kept=2)
    age(url, doomed)
    assert purge(url, "--older-than", "1h").returncode == 0
    purged_through = horizon(url)
    assert purged_through > 0

    for request in (
        {"after_event_id": 0},
        {"after_event_id": purged_through - 1, "event_types": ["CREATED"]},
        {"task_ids": [kept[0]], "after_event_id": 0, "until_terminal": True},
        {
            "task_ids": [doomed[-1]],
            "after_event_id": 0,
            "wait_for_creation": True,
            "until_terminal": True,
        },
    ):
        watcher = Watcher(stub, **request)
        watcher.done.wait(10)
        assert watcher.error is not None, request
        assert watcher.error.code() == grpc.StatusCode.OUT_OF_RANGE, request
        assert not watcher.events, request
        info = detail(watcher.error, error_details_pb2.ErrorInfo)
        assert info.reason == "EVENTS_PURGED"
        assert info.metadata["purged_through_event_id"] == str(purged_through)
        assert info.metadata["oldest_retained_event_id"] == str(purged_through + 1)
        assert info.metadata["after_event_id"] == str(request["after_event_id"])
        assert "resume_after_event_id" not in info.metadata  # resuming there would skip

    # A purged task watched until terminal, without waiting for it: it is simply gone.
    rpc_error(
        lambda: next(
            stub.WatchTaskEvents(
                pb.WatchTaskEventsRequest(
                    task_ids=[doomed[0]], after_event_id=0, until_terminal=True
                )
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # Recovery, as the README says: list the task's history (a stored task is never purged in
    # part), then watch from the listed position; or watch everything from the horizon.
    listed = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=kept[0])).events
    assert listed[0].event_type == "CREATED" and listed[0].event_id < purged_through
    watcher = Watcher(stub, task_ids=[kept[0]], after_event_id=listed[0].event_id)
    watcher.wait_live()
    assert watcher.ids() == [e.event_id for e in listed[1:]]
    watcher.stop()
    create(stub, "later")
    watcher = Watcher(stub, after_event_id=purged_through)
    watcher.wait_live()
    assert watcher.ids() == matching(all_events(url), after=purged_through)
    watcher.stop()


class SlowWatcher:
    """Reads a WatchTaskEvents stream slowly (a pause every few events), so that the server's
    replay waits on it between pages and a purge can land in the middle of it."""

    def __init__(self, stub: Any, pause: float, **request: Any) -> None:
        self.request = request
        self.call = stub.WatchTaskEvents(pb.WatchTaskEventsRequest(**request))
        self.ids: list[int] = []
        self.live = False
        self.error: grpc.RpcError | None = None
        self._pause = pause
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                if response.HasField("event"):
                    self.ids.append(response.event.event_id)
                    if len(self.ids) % 20 == 0:
                        time.sleep(self._pause)
                else:
                    self.live = True
                    self.call.cancel()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive()


@pytest.mark.parametrize("seed_value", [1, 2])
def test_a_purge_during_a_replay_never_leaves_a_silent_gap(
    start_server: Callable[..., ServerProcess], seed_value: int
) -> None:
    """Watchers replay a log of 1,300 events slowly while a purge removes half the tasks in
    small batches. Each stream must be exactly the log as it stood before the purge (its
    filter's share), in order, up to where it ended; and a stream that ends before going live
    must end OUT_OF_RANGE, never as if it had everything. A purge ahead of a replay's position
    is the attack: events it removed before the replay read them must not just vanish."""
    rng = random.Random(seed_value)
    server = start_server(*FAST, "--watch-buffer", "100000")
    url = server.database_url
    doomed, kept = seed(url, f"race{seed_value}", doomed=300, kept=200)
    age(url, doomed)
    log = all_events(url)
    filters: list[dict[str, Any]] = [
        {},
        {"task_types": ["doomed"]},
        {"task_types": ["kept"]},
        {"event_types": ["STATUS_CHANGE"]},
        {"task_ids": [kept[-1]]},
    ]
    stub = server.stub()
    purging = subprocess.Popen(
        [sys.executable, "-m", "resinkit_grpc", "purge", "--database-url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RESINKIT_RETENTION": "1h", "RESINKIT_PURGE_BATCH_SIZE": "7"},
    )
    watchers = []
    deadline = time.monotonic() + 1.5  # the purge's interpreter starts meanwhile
    while time.monotonic() < deadline or purging.poll() is None:
        request = dict(rng.choice(filters), after_event_id=rng.choice([0, 0, log[100]["event_id"]]))
        watchers.append(SlowWatcher(stub, rng.choice([0.002, 0.01]), **request))
        time.sleep(rng.uniform(0.02, 0.15))
    out, err = purging.communicate(30)
    assert purging.returncode == 0, err
    assert out.startswith("purged 300 tasks")
    ended_out_of_range = 0
    for watcher in watchers:
        watcher.join()
        request = watcher.request
        expected = matching(
            log,
            after=request["after_event_id"],
            task_ids=request.get("task_ids", ()),
            task_types=request.get("task_types", ()),
            event_types=request.get("event_types", ()),
        )
        if watcher.error is None:
            assert watcher.live
            assert watcher.ids == expected, request  # the whole of it: nothing was lost
            continue
        assert watcher.error.code() == grpc.StatusCode.OUT_OF_RANGE, watcher.error
        assert error_reason(watcher.error) == "EVENTS_PURGED"
        ended_out_of_range += 1
        # Exactly the log up to where it got: no event it should have had is missing.
        got_to = watcher.ids[-1] if watcher.ids else request["after_event_id"]
        assert watcher.ids == [i for i in expected if i <= got_to], request
        info = detail(watcher.error, error_details_pb2.ErrorInfo)
        assert int(info.metadata["after_event_id"]) >= got_to
    assert ended_out_of_range > 0, "no replay met the purge: the test attacked nothing"
    assert orphan_events(url) == 0


def migrate_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", *args, "--database-url", database_url)


def test_a_downgrade_that_would_forget_the_horizon_is_refused(
    new_database_url: Callable[[], str],
) -> None:
    """Found by review: down to 0003 and up again restarted the horizon at 0, and a replay from
    below it then came back complete, the purged events silently missing."""
    url = new_database_url()
    assert migrate_cli(url, "upgrade").returncode == 0
    doomed, _ = seed(url, "dg", doomed=3, kept=2)
    age(url, doomed)
    assert purge(url, "--older-than", "1h").returncode == 0
    before = horizon(url)
    assert before > 0
    refused = migrate_cli(url, "downgrade", "0003")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"resinkit-grpc: error: cannot migrate to '0003': events up to event_id {before} "
        )
    )
    assert horizon(url) == before  # nothing changed, the table still there


def test_a_rebuilt_event_table_on_sqlite_never_hands_out_a_purged_id_again(
    new_database_url: Callable[[], str], backend: str
) -> None:
    """Found by review: batch mode copies task_events, and SQLite's AUTOINCREMENT restarts
    from the largest stored id, below the horizon when the newest events were purged. Every
    migration run raises it back."""
    if backend != "sqlite":
        pytest.skip("SQLite's sqlite_sequence; PostgreSQL sequences never go back")
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    url = new_database_url()
    assert migrate_cli(url, "upgrade").returncode == 0
    seed(url, "kept", doomed=0, kept=2)
    doomed, _ = seed(url, "newest", doomed=3, kept=0)  # the newest events of the log
    age(url, doomed)
    assert purge(url, "--older-than", "1h").returncode == 0
    purged_through = horizon(url)
    engine = create_engine(url, poolclass=NullPool)  # what a batch migration does
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        # As a migration must (reflection loses AUTOINCREMENT; see migrations.py).
        with Operations(MigrationContext.configure(connection)).batch_alter_table(
            "task_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    engine.dispose()
    sequence = query(url, "SELECT seq FROM sqlite_sequence WHERE name = 'task_events'")
    assert sequence[0]["seq"] < purged_through  # the rebuild did reset it
    assert migrate_cli(url, "upgrade").returncode == 0
    with connect(url) as connection:
        new = store_tasks.NewTask(task_id="after-rebuild", task_type="x", created_by="t")
        store_tasks.create_task(connection, new)
    first = query(
        url, "SELECT max(event_id) AS id FROM task_events WHERE task_id = 'after-rebuild'"
    )
    assert first[0]["id"] > purged_through
