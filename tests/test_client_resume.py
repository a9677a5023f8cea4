"""The client's retries and self-resuming watches against real servers that are killed,
stopped, restarted on the same port and database, switched between replicas, and that cut
off slow readers: every mutation acts exactly once, and a watch delivers exactly the rows of
ListTaskEvents, no event twice, none skipped."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from resinkit_grpc.client import (
    NO_RETRIES,
    RetryPolicy,
    ShuttingDown,
    TaskClient,
    TaskFilter,
    TaskStatus,
    TooManyWatchers,
    Watch,
)
from tests.servers import ServerProcess

FAST_HEARTBEAT = ("--heartbeat-interval", "0.2")
# Enough for a server to boot again (migrations checked, port bound) while calls wait.
PATIENT = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.3)
STEPS = (TaskStatus.SUBMITTED, TaskStatus.RUNNING, TaskStatus.COMPLETED)


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until `condition` holds: for state another thread changes without telling us."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Collector:
    """Reads a watch on a thread, recording every event id it delivers."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.ids: list[int] = []
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.watch:
                with self._changed:
                    self.ids.append(event.event_id)
                    self._changed.notify_all()
        except BaseException as error:
            self.error = error
        finally:
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, event_id: int, timeout: float = 60.0) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: (self.ids and self.ids[-1] >= event_id) or self.error is not None,
                timeout,
            )
        assert ok and self.error is None, (self.error, self.ids[-3:], event_id)

    def stop(self) -> None:
        self.watch.close()
        self._thread.join(10)


def history_ids(client: TaskClient, kind: str) -> list[int]:
    """The event ids of every task of `kind`, from ListTaskEvents."""
    return [
        event.event_id for event in client.iter_events(page_size=1000) if event.task_type == kind
    ]


@contextmanager
def writing(client: TaskClient, kind: str, tasks: int) -> Iterator[list[str]]:
    """Creates tasks on a thread and moves each to COMPLETED, at least `tasks` of them and on
    until the block ends (so that a restart inside it always meets writes, however fast the
    machine); the ids made so far."""
    made: list[str] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            while len(made) < tasks or not done.is_set():
                task = client.create_task(task_type=kind)
                for status in STEPS:
                    client.update_task_status(task.task_id, status)
                made.append(task.task_id)
        except BaseException as error:
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield made
    finally:
        done.set()
        writer.join(90)
    assert not failures, failures


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_mutations_across_a_restart_act_exactly_once(
    start_server: Callable[..., ServerProcess], signum: int
) -> None:
    address = free_address()
    first = start_server("--address", address)
    with TaskClient(address, retry=PATIENT) as client, writing(client, "resume-w", 30) as made:
        until(lambda: len(made) >= 3)
        first.stop(signum)  # calls in flight, and those that follow, fail UNAVAILABLE
        until(lambda: client.retries >= 2)  # the writer keeps calling a server that is down
        start_server("--address", address, database_url=first.database_url)
    with TaskClient(address) as client:
        stored = list(client.iter_tasks(TaskFilter(task_types=["resume-w"]), page_size=5))
        assert sorted(t.task_id for t in stored) == sorted(made)  # no duplicate, none lost
        assert {t.status for t in stored} == {TaskStatus.COMPLETED}
        for task_id in made:
            events = [(e.event_type, e.new_status) for e in client.iter_events(task_id)]
            assert events == [("CREATED", TaskStatus.PENDING)] + [
                ("STATUS_CHANGE", status) for status in STEPS
            ], task_id


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_watch_resumes_across_a_restart_without_loss_or_duplicate(
    start_server: Callable[..., ServerProcess], signum: int
) -> None:
    address = free_address()
    first = start_server("--address", address, *FAST_HEARTBEAT)
    with TaskClient(address, retry=PATIENT) as client:
        collector = Collector(client.watch(task_types=["resume-r"], after_event_id=0))
        fragile = TaskClient(address, retry=NO_RETRIES)
        single = Collector(fragile.watch(task_types=["resume-r"], after_event_id=0))
        with writing(client, "resume-r", 4):
            pass
        last = history_ids(client, "resume-r")[-1]
        collector.wait_for(last)
        single.wait_for(last)
        with writing(client, "resume-r", 8) as made:
            until(lambda: len(made) >= 1)
            first.stop(signum)
            start_server("--address", address, *FAST_HEARTBEAT, database_url=first.database_url)
        expected = history_ids(client, "resume-r")
        collector.wait_for(expected[-1])
        collector.stop()
        assert collector.ids == expected
        assert collector.watch.reconnects >= 1
        # Without retries the ending itself is raised; on SIGTERM it says where to resume.
        until(lambda: single.error is not None)
        if signum == signal.SIGTERM:
            assert isinstance(single.error, ShuttingDown)
            assert single.error.resume_after_event_id == single.ids[-1]
        fragile.close()


def test_a_watch_follows_the_next_replica_when_one_stops(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server(*FAST_HEARTBEAT)
    second = start_server(*FAST_HEARTBEAT, database_url=first.database_url)
    replicas = [first.address, second.address]
    with TaskClient(replicas, retry=PATIENT) as watcher, TaskClient(replicas) as writer:
        collector = Collector(watcher.watch(task_types=["replica"], after_event_id=0))
        with writing(writer, "replica", 4):
            pass
        collector.wait_for(history_ids(writer, "replica")[-1])
        with writing(writer, "replica", 8) as made:
            until(lambda: len(made) >= 1)
            first.stop()  # SHUTTING_DOWN, then refused connections: both move to the second
        expected = history_ids(writer, "replica")
        collector.wait_for(expected[-1])
        collector.stop()
        assert collector.ids == expected
        assert collector.watch.reconnects >= 1


def test_a_slow_reader_is_cut_off_and_the_watch_resumes_where_it_was(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--watch-buffer", "20", *FAST_HEARTBEAT)
    # No BDP probing: the flow-control window stays small, so an unread stream backs up.
    slow = TaskClient(server.address, options=[("grpc.http2.bdp_probe", 0)])
    with TaskClient(server.address) as writer, slow:
        writer.create_task(task_type="slow")
        watch = slow.watch(task_types=["slow"], after_event_id=0, timeout=90)
        ids = [next(watch).event_id]  # the stream is open; now it is not read for a while
        big = {"blob": "x" * 2000}
        for _ in range(150):
            task = writer.create_task(task_type="slow", submitted_configs=big)
            writer.update_task_status(task.task_id, TaskStatus.FAILED, error_info=big)
        expected = history_ids(writer, "slow")
        for event in watch:
            ids.append(event.event_id)
            if event.event_id == expected[-1]:
                break
        watch.close()
        assert ids == expected
        assert watch.reconnects >= 1  # it was cut off (SLOW_CONSUMER) and came back


def test_a_full_server_is_waited_for_and_then_watched(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-watchers", "1", *FAST_HEARTBEAT)
    with TaskClient(server.address) as client:
        client.create_task(task_type="full")
        holder = client.watch(task_types=["full"], after_event_id=0)
        next(holder)
        fragile = TaskClient(server.address, retry=NO_RETRIES)
        with fragile, pytest.raises(TooManyWatchers):
            next(fragile.watch(after_event_id=0))
        patient = client.watch(task_types=["full"], after_event_id=0, timeout=30)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(next(patient).event_id))
        reader.start()
        until(lambda: client.retries >= 1)  # refused, and trying again
        holder.close()
        reader.join(30)
        assert got == history_ids(client, "full")
        patient.close()
