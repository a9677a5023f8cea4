"""WatchTaskEvents through real servers: every watcher's stream equals the matching rows of
task_events, in order, across replay, live delivery, resumes, processes and cut-offs."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from tests.rpc import create, detail, error_reason, rpc_error, violated_fields
from tests.servers import ServerProcess
from tests.watching import Watcher, matching, resume_point, table_events

FAST_HEARTBEAT = ("--heartbeat-interval", "0.2")
PIPELINE = [pb.TASK_STATUS_SUBMITTED, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_COMPLETED]


def churn(stub: Any, task_type: str, tasks: int, seed: int) -> list[str]:
    """Creates tasks and moves each through a few changes; returns their ids."""
    rng = random.Random(seed)
    ids = []
    for _ in range(tasks):
        task = create(stub, task_type, tags=[f"t{rng.randint(0, 3)}"])
        ids.append(task.task_id)
        for status in PIPELINE[: rng.randint(0, 3)]:
            stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=task.task_id, status=status))
        if rng.random() < 0.3:
            stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=7)))
    return ids


def last_event_id(server: ServerProcess) -> int:
    return table_events(server.database_url)[-1]["event_id"]


def run_writers(writers: list[tuple[Any, str]], tasks: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def write(stub: Any, task_type: str, seed: int) -> None:
        made = churn(stub, task_type, tasks, seed)
        with lock:
            ids.extend(made)

    threads = [
        threading.Thread(target=write, args=(stub, task_type, seed))
        for seed, (stub, task_type) in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return ids


def test_concurrent_writers_and_filtered_watchers_see_exactly_the_table(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST_HEARTBEAT)
    stub = server.stub()
    seed_task = create(stub, "cdc")
    filters: list[dict[str, Any]] = [
        {},
        {"task_types": ["flink_sql"]},
        {"event_types": ["STATUS_CHANGE"]},
        {"task_types": ["cdc"], "event_types": ["CREATED", "UPDATED"]},
        {"task_ids": [seed_task.task_id]},
    ]
    live = [Watcher(stub, **f) for f in filters]
    replaying = [Watcher(stub, after_event_id=0, **f) for f in filters]
    for watcher in live + replaying:
        watcher.wait_live()
    start = max(w.heartbeats[0] for w in live)
    run_writers([(server.stub(), "flink_sql"), (server.stub(), "cdc")] * 2, tasks=15)
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=seed_task.task_id, status=pb.TASK_STATUS_FAILED)
    )
    rows = table_events(server.database_url)
    end = rows[-1]["event_id"]
    for f, watcher in zip(filters * 2, live + replaying, strict=True):
        watcher.wait_position(end)
        watcher.stop()
        after = start if watcher in live else 0
        assert watcher.ids() == matching(rows, after=after, **f), f
    assert len(live[0].ids()) > 100


def test_resuming_from_any_position_replays_exactly_the_rest(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST_HEARTBEAT)
    stub = server.stub()
    run_writers([(stub, "flink_sql")], tasks=300)  # > 2 replay pages of events
    recorded = Watcher(stub, after_event_id=0)
    recorded.wait_position(last_event_id(server))
    recorded.stop()
    full = recorded.ids()
    assert full == matching(table_events(server.database_url))
    # Keep writing while clients resume, so that replays hand over to live feeds under load.
    more = threading.Thread(target=run_writers, args=([(server.stub(), "cdc")], 40))
    more.start()
    positions = sorted({0, 1, 499, 500, 501, len(full) // 2, *random.sample(full, 12), full[-1]})
    for position in positions:
        resumed = Watcher(stub, after_event_id=position)
        resumed.wait_position(full[-1])
        resumed.stop()
        expected = [event_id for event_id in full if event_id > position]
        assert resumed.ids()[: len(expected)] == expected, position
    more.join(60)
    rows = table_events(server.database_url)
    for cut in (3, 500, 777):  # disconnect mid-replay, then resume from the last event seen
        first = Watcher(stub, after_event_id=0)
        first.wait_for(lambda w, cut=cut: len(w.events) >= cut)
        first.stop()
        seen = first.ids()
        second = Watcher(stub, after_event_id=seen[-1])
        second.wait_position(rows[-1]["event_id"])
        second.stop()
        assert seen + second.ids() == matching(rows), cut


def test_events_written_by_another_process_on_the_same_file_arrive(
    start_server: Callable[..., ServerProcess],
) -> None:
    watched = start_server(*FAST_HEARTBEAT)
    other = start_server(database_url=watched.database_url)
    watcher = Watcher(watched.stub())
    watcher.wait_live()
    task = create(other.stub(), "written-elsewhere")
    other.stub().UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_RUNNING)
    )
    watcher.wait_for(lambda w: len(w.events) >= 2)
    watcher.stop()
    assert [(e.task_id, e.event_type) for e in watcher.events] == [
        (task.task_id, "CREATED"),
        (task.task_id, "STATUS_CHANGE"),
    ]


def test_until_terminal_ends_with_ok_after_the_terminal_event(server: ServerProcess) -> None:
    stub = server.stub()
    task = create(stub)
    watcher = Watcher(stub, task_ids=[task.task_id], until_terminal=True)
    watcher.wait_live()
    for status in (pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_CANCELLING, pb.TASK_STATUS_CANCELLED):
        stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(task_id=task.task_id, status=status))
    assert watcher.done.wait(10)
    assert watcher.error is None and watcher.call.code() == grpc.StatusCode.OK
    assert [e.new_status for e in watcher.events] == [
        pb.TASK_STATUS_RUNNING,
        pb.TASK_STATUS_CANCELLING,
        pb.TASK_STATUS_CANCELLED,
    ]


def test_until_terminal_on_a_finished_task_ends_right_after_the_replay(
    server: ServerProcess,
) -> None:
    stub = server.stub()
    task = create(stub)
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_COMPLETED)
    )
    replayed = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(
                task_ids=[task.task_id], until_terminal=True, after_event_id=0
            ),
            timeout=10,
        )
    )
    assert [r.event.event_type for r in replayed] == ["CREATED", "STATUS_CHANGE"]
    live_only = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(task_ids=[task.task_id], until_terminal=True), timeout=10
        )
    )
    assert live_only == []


def test_until_terminal_ends_even_when_the_filter_hides_the_terminal_event(
    server: ServerProcess,
) -> None:
    stub = server.stub()
    task = create(stub)
    watcher = Watcher(stub, task_ids=[task.task_id], until_terminal=True, event_types=["UPDATED"])
    watcher.wait_live()
    stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=3)))
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_FAILED)
    )
    assert watcher.done.wait(10) and watcher.error is None
    assert [e.event_type for e in watcher.events] == ["UPDATED"]


def test_idle_streams_get_heartbeats_carrying_the_latest_position(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST_HEARTBEAT)
    stub = server.stub()
    watcher = Watcher(stub, task_types=["nothing-matches-this"])
    watcher.wait_live()
    task = create(stub)
    end = last_event_id(server)
    watcher.wait_for(lambda w: len(w.heartbeats) >= 3 and w.heartbeats[-1] == end)
    watcher.stop()
    assert watcher.events == []
    assert task.task_id and watcher.heartbeats == sorted(watcher.heartbeats)


def cut_off_resumably(server: ServerProcess, stub: Any, stream: Any, start: int) -> list[int]:
    """Reads `stream` (live since `start`) to its end, which must be SLOW_CONSUMER with the
    last event received (or `start`) as resume point; resuming from it must give exactly the
    rest of the table. Returns the events the stream carried."""
    received: list[int] = []
    with pytest.raises(grpc.RpcError) as ended:
        for response in stream:
            if response.HasField("event"):
                received.append(response.event.event_id)
    error = ended.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "SLOW_CONSUMER"
    resume = resume_point(error)
    assert resume == (received[-1] if received else start)
    rest = Watcher(stub, after_event_id=resume)
    # Up to 200 MB of events to carry (the large-event test): slow on a busy machine.
    rest.wait_position(last_event_id(server), timeout=90)
    rest.stop()
    rows = table_events(server.database_url)
    assert received + rest.ids() == matching(rows, after=start)
    return received


def test_a_slow_consumer_is_cut_off_resumably_and_loses_nothing(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--watch-buffer", "20", *FAST_HEARTBEAT)
    stub = server.stub()
    # No BDP probing: the flow-control window stays small, so an unread stream backs up.
    channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    slow = pb_grpc.TaskServiceStub(channel)
    stream = slow.WatchTaskEvents(pb.WatchTaskEventsRequest())
    first = next(stream)
    assert first.HasField("heartbeat")
    big = {"blob": "x" * 2000}
    for _ in range(400):
        task = create(stub, submitted_configs=big)
        stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(
                task_id=task.task_id, status=pb.TASK_STATUS_FAILED, error_info=big
            )
        )
    cut_off_resumably(server, stub, stream, first.heartbeat.event_id)
    channel.close()


def test_watchers_beyond_the_limit_are_refused_and_cancelling_frees_a_slot(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-watchers", "2")
    stub = server.stub()
    held = [Watcher(stub), Watcher(stub)]
    for watcher in held:
        watcher.wait_live()
    refused = Watcher(stub)
    assert refused.done.wait(10)
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(refused.error) == "TOO_MANY_WATCHERS"
    held[0].stop()
    replacement = Watcher(stub)
    replacement.wait_for(lambda w: bool(w.heartbeats) or w.done.is_set())
    assert replacement.error is None and replacement.heartbeats
    replacement.stop()
    held[1].stop()


def test_shutdown_ends_streams_with_unavailable_and_a_resume_point(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    stub = server.stub()
    task = create(stub)
    watcher = Watcher(stub, after_event_id=0)
    watcher.wait_for(lambda w: len(w.events) == 1 and bool(w.heartbeats))
    server.send(signal.SIGTERM)
    assert watcher.done.wait(10)
    assert server.wait(20) == 0
    assert watcher.error is not None
    assert watcher.error.code() == grpc.StatusCode.UNAVAILABLE
    assert watcher.resume_after() == watcher.events[-1].event_id
    assert watcher.events[0].task_id == task.task_id


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_event_id": -1}, "after_event_id"),
        ({"until_terminal": True}, "until_terminal"),
        ({"until_terminal": True, "task_ids": ["a", "b"]}, "until_terminal"),
        ({"event_types": ["EXPLODED"]}, "event_types"),
        ({"task_ids": ["not valid!"]}, "task_ids[0]"),
        ({"task_types": ["nul\x00"]}, "task_types"),
        ({"task_ids": ["a"], "wait_for_creation": True}, "wait_for_creation"),
    ],
)
def test_malformed_watch_requests_are_invalid_argument(
    stub: Any, request_fields: dict[str, Any], field: str
) -> None:
    error = rpc_error(
        lambda: list(stub.WatchTaskEvents(pb.WatchTaskEventsRequest(**request_fields), timeout=10)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in violated_fields(error)


def test_unknown_task_ids_are_fine_and_see_the_task_once_created(server: ServerProcess) -> None:
    stub = server.stub()
    watcher = Watcher(stub, task_ids=["created-later-0001"])
    watcher.wait_live()
    create(stub, task_id="created-later-0001")
    watcher.wait_for(lambda w: len(w.events) == 1)
    watcher.stop()
    assert watcher.events[0].event_type == "CREATED"


def test_a_thousand_watchers_do_not_starve_unary_calls(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-watchers", "1100")

    async def scenario() -> None:
        channel = grpc.aio.insecure_channel(server.address)
        stub = pb_grpc.TaskServiceStub(channel)
        task = await stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(task_type="hot")))
        calls = [
            stub.WatchTaskEvents(pb.WatchTaskEventsRequest(task_ids=[task.task_id]))
            for _ in range(1000)
        ]
        for call in calls:  # every stream is live once its first heartbeat arrives
            assert (await call.read()).HasField("heartbeat")
        for _ in range(20):
            await asyncio.wait_for(stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)), timeout=5)
        await stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=1)))
        firsts = await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), 30)
        assert {r.event.event_type for r in firsts} == {"UPDATED"}
        for call in calls:
            call.cancel()
        await channel.close()

    asyncio.run(scenario())


def test_resuming_beyond_the_end_of_the_log_does_not_stall_later_watchers(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(*FAST_HEARTBEAT)
    stub = server.stub()
    create(stub)
    ahead = Watcher(stub, after_event_id=10**9)  # the first subscriber, far past the log
    ahead.wait_live()
    ahead.stop()
    later = Watcher(stub, after_event_id=0)
    later.wait_live()
    task = create(stub)
    later.wait_for(lambda w: task.task_id in {e.task_id for e in w.events})
    later.stop()
    assert later.ids() == matching(table_events(server.database_url))


def test_until_terminal_replays_more_than_a_page_before_it_ends(server: ServerProcess) -> None:
    stub = server.stub()
    task = create(stub)
    for priority in range(1, 601):  # more events than one replay page (500)
        stub.UpdateTask(pb.UpdateTaskRequest(task=pb.Task(task_id=task.task_id, priority=priority)))
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_COMPLETED)
    )
    replayed = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(
                task_ids=[task.task_id], until_terminal=True, after_event_id=0
            ),
            timeout=30,
        )
    )
    kinds = [r.event.event_type for r in replayed]
    assert kinds == ["CREATED", *["UPDATED"] * 600, "STATUS_CHANGE"]


def test_a_refused_live_only_watch_carries_no_resume_point(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-watchers", "1")
    stub = server.stub()
    held = Watcher(stub)
    held.wait_live()
    refused = Watcher(stub)
    assert refused.done.wait(10) and refused.error is not None
    info = detail(refused.error, error_details_pb2.ErrorInfo)
    assert info.reason == "TOO_MANY_WATCHERS"
    assert "resume_after_event_id" not in info.metadata
    held.stop()


def test_no_event_ever_follows_a_heartbeat_that_claimed_it(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The reproduction of the heartbeat race: heartbeats every 2 ms while three writers commit
    as fast as they can, so timer expiries and queued events meet in the same event-loop turn
    thousands of times. A heartbeat at H promises every matching event up to H was sent."""
    server = start_server("--heartbeat-interval", "0.002")
    watchers = [Watcher(server.stub()) for _ in range(8)]
    for watcher in watchers:
        watcher.wait_live()
    start = min(w.heartbeats[0] for w in watchers)
    # Counts, not a duration: how many commits a second a machine makes varies (fsync, load).
    # At least 600 events, and on until every stream has had 100 heartbeats among them.
    wanted = itertools.count()

    def attacking() -> bool:
        made = next(wanted)
        return made < 600 or (made < 6000 and any(len(w.heartbeats) <= 100 for w in watchers))

    def write() -> None:
        stub = server.stub()
        while attacking():
            create(stub, "race")

    writers = [threading.Thread(target=write) for _ in range(3)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(120)
    end = last_event_id(server)
    rows = table_events(server.database_url)
    for watcher in watchers:
        watcher.wait_position(end)
        watcher.stop()
    for watcher in watchers:
        assert watcher.events_after_a_heartbeat_that_claimed_them() == []
        first = watcher.heartbeats[0]
        assert watcher.ids() == matching(rows, after=first)
    # The attack really interleaved: many heartbeats among many events on every stream.
    assert end - start >= 600, end - start
    assert all(len(w.heartbeats) > 100 for w in watchers), [len(w.heartbeats) for w in watchers]


def test_until_terminal_on_an_unknown_task_is_not_found(stub: Any) -> None:
    error = rpc_error(
        lambda: list(
            stub.WatchTaskEvents(
                pb.WatchTaskEventsRequest(task_ids=["never-created-42"], until_terminal=True),
                timeout=10,
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_reason(error) == "TASK_NOT_FOUND"


def test_until_terminal_with_wait_for_creation_follows_a_task_created_later(
    server: ServerProcess,
) -> None:
    stub = server.stub()
    watcher = Watcher(stub, task_ids=["born-later-7"], until_terminal=True, wait_for_creation=True)
    watcher.wait_live()
    create(stub, task_id="born-later-7")
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id="born-later-7", status=pb.TASK_STATUS_FAILED)
    )
    assert watcher.done.wait(10)
    assert watcher.error is None and watcher.call.code() == grpc.StatusCode.OK
    assert [e.event_type for e in watcher.events] == ["CREATED", "STATUS_CHANGE"]


def test_deleting_a_watched_task_ends_its_until_terminal_stream(server: ServerProcess) -> None:
    """A deleted task refuses every change until it is undeleted: its watch ends with the
    DELETED event instead of hanging."""
    stub = server.stub()
    task = create(stub)
    watcher = Watcher(stub, task_ids=[task.task_id], until_terminal=True)
    watcher.wait_live()
    stub.UpdateTaskStatus(
        pb.UpdateTaskStatusRequest(task_id=task.task_id, status=pb.TASK_STATUS_RUNNING)
    )
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id))
    assert watcher.done.wait(10)
    assert watcher.error is None and watcher.call.code() == grpc.StatusCode.OK
    assert [e.event_type for e in watcher.events] == ["STATUS_CHANGE", "DELETED"]
    # Watching it again: it is deleted already, so the stream ends right after the replay...
    again = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(task_ids=[task.task_id], until_terminal=True), timeout=10
        )
    )
    assert again == []
    # ... and a replay from the start ends at the DELETED event, as the live stream did.
    replayed = list(
        stub.WatchTaskEvents(
            pb.WatchTaskEventsRequest(
                task_ids=[task.task_id], until_terminal=True, after_event_id=0
            ),
            timeout=10,
        )
    )
    assert [r.event.event_type for r in replayed] == ["CREATED", "STATUS_CHANGE", "DELETED"]


def test_a_watcher_of_large_events_is_cut_off_by_bytes_and_memory_stays_bounded(
    start_server: Callable[..., ServerProcess],
) -> None:
    """--watch-buffer-bytes bounds what an unread stream holds, however few events that is."""
    server = start_server("--watch-buffer-bytes", "2000000", "--watch-buffer", "100000")
    stub = server.stub()
    channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    slow = pb_grpc.TaskServiceStub(channel)
    stream = slow.WatchTaskEvents(pb.WatchTaskEventsRequest())
    first = next(stream)
    assert first.HasField("heartbeat")
    rss_before = server.rss_bytes()
    quarter = {"blob": "x" * 250_000}  # four details of a status change: 1 MB an event
    for _ in range(100):  # 100 MB of event_data in all, unread by the slow watcher
        task = create(stub)
        stub.UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(
                task_id=task.task_id,
                status=pb.TASK_STATUS_FAILED,
                error_info=quarter,
                result_summary=quarter,
                execution_details=quarter,
                progress_details=quarter,
            )
        )
    grown = server.rss_bytes() - rss_before
    received = cut_off_resumably(server, stub, stream, first.heartbeat.event_id)
    assert len(received) < 20  # cut off long before the 200 events were written
    # Handling 1 MB requests at all costs the server some 10 to 20 MB here; holding what
    # the slow stream did not read would cost 100 MB.
    assert grown < 50_000_000, grown
    channel.close()
