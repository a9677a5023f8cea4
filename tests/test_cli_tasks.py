"""`resinkit-grpc tasks`, run as the real command against real servers: every command's table
and JSON output, its exit codes, `watch` following events across a server restart, and the
README's examples of "The command line" run as written."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from resinkit_grpc import cli
from resinkit_grpc.client import DeliveryState, RetryPolicy, TaskClient, TaskStatus
from tests.receivers import Answer, Received, Receiver
from tests.servers import ServerProcess, run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
# A fixed zone east of UTC, without tzdata: local times must differ from UTC ones.
ZONE = "XST-5:30"
ZONE_OFFSET = timedelta(hours=5, minutes=30)
COMMAND = (sys.executable, "-m", "resinkit_grpc", "tasks")
PATIENT = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.3)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[TaskClient]:
    with TaskClient(server.address) as made:
        yield made


def tasks(address: str, *args: str, columns: int = 200, **env: str) -> Any:
    """`resinkit-grpc tasks ARGS` against the server at `address`."""
    return run_cli("tasks", *args, RESINKIT_ADDRESS=address, COLUMNS=str(columns), **env)


def ok(result: Any, stderr: str = "") -> str:
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr == stderr
    return str(result.stdout)


def one_json(result: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(ok(result))
    return value


def json_lines(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(result).splitlines()]


def detail(text: str) -> dict[str, str]:
    """A task shown for people: `label  value` lines."""
    pairs = (re.fullmatch(r"(\S+(?: \S+)?)\s{2,}(.*)", line) for line in text.splitlines())
    return {found[1]: found[2] for found in pairs if found}


def rows(text: str) -> list[dict[str, str]]:
    """A table's rows by header; columns start where their header starts."""
    header, *lines = text.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    ends = [*starts[1:], None]
    return [
        {name: line[a:b].strip() for name, a, b in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


def error_line(result: Any, code: int, reason: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    line = str(result.stderr).strip()
    assert line.startswith("resinkit-grpc: error: ") and line.endswith(f"({reason})"), line
    assert "\n" not in line and "Traceback" not in line
    return line


def local(stamp: str) -> datetime:
    """A JSON timestamp (UTC) as the XST-5:30 wall clock the tables show."""
    return datetime.fromisoformat(stamp).replace(tzinfo=None) + ZONE_OFFSET


def test_each_single_task_command_prints_a_table_or_one_json_object(
    server: ServerProcess, unique: Callable[[str], str]
) -> None:
    task_id = unique("cli-one")
    made = one_json(
        tasks(
            server.address,
            "create",
            "--type=cli-one",
            f"--id={task_id}",
            "--name=orders rollup",
            "--tag=team-a",
            "--tag=nightly",
            "--priority=3",
            '--configs={"sql": "INSERT INTO t", "n": 2}',
            "--request-id=cli-one-request",
            "--json",
        )
    )
    assert made["task_id"] == task_id and made["status"] == "PENDING"
    assert (made["task_name"], made["priority"], made["tags"]) == (
        "orders rollup",
        3,
        ["team-a", "nightly"],
    )
    assert made["submitted_configs"] == {"sql": "INSERT INTO t", "n": 2}
    assert made["created_at"].endswith("Z") and made["finished_at"] is None
    assert list(made)[:3] == ["task_id", "task_type", "status"]

    shown = detail(ok(tasks(server.address, "get", task_id, TZ=ZONE)))
    assert (shown["id"], shown["type"], shown["status"]) == (task_id, "cli-one", "PENDING")
    assert shown["tags"] == "team-a, nightly" and shown["priority"] == "3"
    assert json.loads(shown["configs"]) == {"sql": "INSERT INTO t", "n": 2}
    created = local(made["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
    assert re.fullmatch(rf"{created} \((just now|\d+ s ago)\)", shown["created"]), shown
    basic = one_json(tasks(server.address, "--json", "get", task_id, "--basic"))
    assert basic["submitted_configs"] is None and basic["etag"] == made["etag"]

    updated = one_json(
        tasks(server.address, "update", task_id, "--priority=7", "--tag=team-b", "--json")
    )
    assert (updated["priority"], updated["tags"]) == (7, ["team-b"])
    stale = tasks(server.address, "update", task_id, "--name=x", f"--etag={made['etag']}")
    error_line(stale, 1, "ETAG_MISMATCH")

    running = one_json(
        tasks(server.address, "status", task_id, "running", '--details={"job": "a1"}', "--json")
    )
    assert running["status"] == "RUNNING" and running["execution_details"] == {"job": "a1"}
    completing = ("status", task_id, "TASK_STATUS_COMPLETED", '--result={"rows": 7}')
    done = detail(ok(tasks(server.address, *completing)))
    assert done["status"] == "COMPLETED" and json.loads(done["result"]) == {"rows": 7}
    assert "finished" in done
    backwards = error_line(
        tasks(server.address, "status", task_id, "PENDING"), 1, "INVALID_STATUS_TRANSITION"
    )
    assert "cannot move" in backwards

    deleted = one_json(tasks(server.address, "delete", task_id, "--actor=ops", "--json"))
    assert deleted["active"] is False
    assert detail(ok(tasks(server.address, "get", task_id)))["active"] == "no (deleted)"
    error_line(tasks(server.address, "delete", task_id), 1, "TASK_ALREADY_DELETED")
    restored = detail(ok(tasks(server.address, "undelete", task_id)))
    assert restored["active"] == "yes"
    error_line(tasks(server.address, "get", unique("cli-missing")), 1, "TASK_NOT_FOUND")


def test_list_walks_pages_filters_and_fits_the_terminal(
    server: ServerProcess, client: TaskClient, unique: Callable[[str], str]
) -> None:
    kind = unique("cli-list")
    made = [
        client.create_task(
            task_type=kind,
            task_name=f"a rather long name for task number {n}",
            priority=n,
            tags=["even" if n % 2 == 0 else "odd", "all"],
            created_by="cli-lister" if n < 3 else "someone",
        )
        for n in range(7)
    ]
    client.update_task_status(made[6].task_id, TaskStatus.RUNNING)
    client.delete_task(made[5].task_id)

    by_priority = json_lines(
        tasks(
            server.address,
            "list",
            f"--type={kind}",
            "--order-by=priority desc",
            "--limit=5",
            "--page-size=2",  # three pages for five tasks
            "--json",
        )
    )
    assert [t["priority"] for t in by_priority] == [6, 4, 3, 2, 1]  # 5 is deleted
    assert by_priority[0]["task_id"] == made[6].task_id and by_priority[0]["status"] == "RUNNING"

    everything = tasks(server.address, "list", f"--type={kind}", "--deleted", "--limit=0")
    listed = rows(ok(everything))
    assert [r["ID"] for r in listed] == [t.task_id for t in reversed(made)]  # newest first
    assert listed[1]["STATUS"] == "PENDING (deleted)" and listed[0]["STATUS"] == "RUNNING"
    assert listed[0]["NAME"] == "a rather long name for task number 6"
    assert listed[0]["TAGS"] == "even,all" and listed[0]["PRI"] == "6"
    assert re.fullmatch(r"(just now|\d+ s ago) \(\d\d:\d\d:\d\d\)", listed[0]["UPDATED"])

    narrow = tasks(server.address, "list", f"--type={kind}", "--limit=3", columns=80)
    lines = ok(narrow, "(more tasks than --limit 3: raise it, or 0 for all)\n").splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines)
    assert "…" in lines[1] and made[6].task_id in lines[1]  # free text gives way, ids stay

    filtered = json_lines(
        tasks(
            server.address,
            "list",
            f"--type={kind}",
            "--tag-any=even",
            "--tag-all=all",
            "--tag-all=even",
            "--creator=cli-lister",
            "--name-contains=NUMBER",
            "--status=pending",
            "--json",
        )
    )
    assert sorted(t["priority"] for t in filtered) == [0, 2]
    assert ok(tasks(server.address, "list", "--type", unique("cli-none"))) == "(no tasks)\n"


def test_events_print_the_stored_history_and_watch_replays_it_to_the_end(
    server: ServerProcess, client: TaskClient, unique: Callable[[str], str]
) -> None:
    task = client.create_task(task_type="cli-events", task_id=unique("cli-events"))
    client.update_task_status(task.task_id, TaskStatus.RUNNING, actor="executor-7")
    client.update_task_status(task.task_id, TaskStatus.FAILED, error_info={"why": "oom"})
    history = list(client.iter_events(task.task_id))

    listed = json_lines(tasks(server.address, "events", task.task_id, "--json", "--page-size=1"))
    assert [e["event_id"] for e in listed] == [e.event_id for e in history]
    assert [e["event_type"] for e in listed] == ["CREATED", "STATUS_CHANGE", "STATUS_CHANGE"]
    assert listed[2]["previous_status"] == "RUNNING" and listed[2]["new_status"] == "FAILED"
    assert listed[2]["event_data"]["error_info"] == {"why": "oom"}
    assert listed[0]["timestamp"] == history[0].timestamp.isoformat().replace("+00:00", "Z")

    shown = rows(ok(tasks(server.address, "events", task.task_id, "--event-type=status_change")))
    assert [r["EVENT"] for r in shown] == [str(e.event_id) for e in history[1:]]
    assert shown[0]["STATUS"] == "PENDING → RUNNING" and shown[0]["ACTOR"] == "executor-7"
    assert json.loads(shown[1]["DATA"])["error_info"] == {"why": "oom"}
    assert shown[0]["TASK"] == task.task_id
    first = json_lines(tasks(server.address, "events", task.task_id, "--limit=1", "--json"))
    assert [e["event_id"] for e in first] == [history[0].event_id]

    # The task is FAILED: its watch replays the history, then ends by itself.
    watched = tasks(
        server.address, "watch", f"--task={task.task_id}", "--after=0", "--until-terminal"
    )
    assert [r["EVENT"] for r in rows(ok(watched))] == [str(e.event_id) for e in history]


def test_wait_exits_0_when_completed_1_when_failed_cancelled_or_deleted_3_on_timeout(
    server: ServerProcess, client: TaskClient
) -> None:
    failed = client.create_task(task_type="cli-wait")
    client.update_task_status(failed.task_id, TaskStatus.FAILED, error_info={"why": "oom"})
    result = tasks(server.address, "wait", failed.task_id)
    line = error_line(result, 1, "TASK_FAILED")
    assert f"task {failed.task_id} ended FAILED" in line
    assert detail(result.stdout)["status"] == "FAILED"  # stdout still shows the task

    cancelled = client.create_task(task_type="cli-wait")
    client.update_task_status(cancelled.task_id, TaskStatus.CANCELLED)
    result = tasks(server.address, "wait", cancelled.task_id, "--json")
    error_line(result, 1, "TASK_CANCELLED")
    assert json.loads(result.stdout)["status"] == "CANCELLED"

    deleted = client.create_task(task_type="cli-wait")
    client.delete_task(deleted.task_id)
    result = tasks(server.address, "wait", deleted.task_id)
    assert "was deleted while PENDING" in error_line(result, 1, "TASK_DELETED")

    pending = client.create_task(task_type="cli-wait")
    result = tasks(server.address, "wait", pending.task_id, "--timeout=0.5", "--json")
    assert "did not end within 0.5 s" in error_line(result, 3, "WAIT_TIMEOUT")
    assert result.stdout == ""

    waiting = subprocess.Popen(
        [*COMMAND, "wait", pending.task_id, "--json"],
        env={**os.environ, "RESINKIT_ADDRESS": server.address},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # it is waiting on its watch
    assert waiting.poll() is None
    client.update_task_status(pending.task_id, TaskStatus.COMPLETED, result_summary={"rows": 1})
    out, err = waiting.communicate(timeout=30)
    assert (waiting.returncode, err) == (0, "")
    assert json.loads(out)["result_summary"] == {"rows": 1}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "required"),
        (("frobnicate",), "invalid choice"),
        (("status", "job", "bogus"), "is not a status"),
        (("update", "job"), "nothing to change"),
        (("watch", "--until-terminal"), "exactly one --task"),
        (("create", "--type=t", "--configs=[1]"), "must be a JSON object"),
        (("list", "--limit=-1"), "must be 0 or more"),
    ],
)
def test_a_usage_error_exits_2_and_says_why(args: tuple[str, ...], says: str) -> None:
    result = run_cli("tasks", *args, RESINKIT_ADDRESS="127.0.0.1:1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class Lines:
    """The stdout lines of a running process, read on a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[dict[str, Any]] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)

    def until(self, event_id: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen or self.seen[-1]["event_id"] < event_id:
            self.seen.append(json.loads(self._queue.get(timeout=deadline - time.monotonic())))


def test_watch_follows_events_live_across_a_server_restart_and_exits_130_on_ctrl_c(
    start_server: Callable[..., ServerProcess],
) -> None:
    address = free_address()
    first = start_server("--address", address, "--heartbeat-interval", "0.2")
    kind = "cli-watch"

    def history() -> list[int]:
        return [e.event_id for e in writer.iter_events() if e.task_type == kind]

    def work(tasks_made: int) -> None:
        for _ in range(tasks_made):
            task = writer.create_task(task_type=kind)
            writer.update_task_status(task.task_id, TaskStatus.RUNNING)

    with TaskClient(address, retry=PATIENT) as writer:
        work(1)  # before the watch starts: replayed (--after 0)
        watch = subprocess.Popen(
            [*COMMAND, "watch", "--json", "--type", kind, "--after", "0"],
            env={**os.environ, "RESINKIT_ADDRESS": address},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None and watch.stderr is not None
        lines = Lines(watch.stdout)
        try:
            work(2)
            lines.until(history()[-1])
            first.stop()
            start_server(
                "--address", address, "--heartbeat-interval", "0.2", database_url=first.database_url
            )
            work(2)
            expected = history()
            lines.until(expected[-1])
            assert watch.poll() is None
        finally:
            watch.send_signal(signal.SIGINT)
            code = watch.wait(30)
        assert code == 130, watch.stderr.read()
        assert watch.stderr.read() == ""
        assert [e["event_id"] for e in lines.seen] == expected  # none twice, none missed
        stored = {e.event_id: e for e in writer.iter_events()}
        for event in lines.seen:
            assert event["task_id"] == stored[event["event_id"]].task_id
            assert event["event_type"] == stored[event["event_id"]].event_type


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## The command line") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [
        shlex.split(line, comments=True)
        for block in blocks
        for line in block.splitlines()
        if line.startswith("resinkit-grpc tasks ")
    ]


def test_the_readme_examples_run_as_written(server: ServerProcess) -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    documented = {words[2] for words in commands}
    assert documented >= {"create", "get", "list", "update", "status", "delete"}
    assert documented >= {"undelete", "events", "watch", "wait"}
    for words in commands:
        result = run_cli(*words[1:], RESINKIT_ADDRESS=server.address)
        assert result.returncode == 0, (words, result.stderr)


def test_the_server_command_takes_tasks_too(server: ServerProcess) -> None:
    """`resinkit_grpc.cli.main` (and `resinkit-grpc --help`) know `tasks` as well."""
    assert "tasks" in cli.build_parser().format_help()
    with pytest.raises(SystemExit) as ended:
        cli.main(["tasks", "--address", server.address, "get", "cli-no-such-task"])
    assert ended.value.code == 1


def test_the_tasks_command_loads_no_server_code() -> None:
    program = (
        "import sys\n"
        "from resinkit_grpc.command import main\n"
        "try:\n    main(['tasks', 'list', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    loaded = shown.splitlines()[-1].split()
    ours = {name for name in loaded if name.startswith("resinkit_grpc")}
    client_side = {"resinkit_grpc.command", "resinkit_grpc.tasks_cli", "resinkit_grpc.tasks_output"}
    allowed = ("resinkit_grpc.client", "resinkit_grpc.gen")
    assert ours - {"resinkit_grpc", "resinkit_grpc.rules"} - client_side == {
        name for name in ours if name.startswith(allowed)
    }
    assert "sqlalchemy" not in loaded


def test_deliveries_and_redeliver_show_and_resend_a_tasks_webhooks(
    start_server: Callable[..., ServerProcess], unique: Callable[[str], str]
) -> None:
    server = start_server(
        "--webhook-allow-private",
        "--webhook-retry-schedule",
        "none",
        "--webhook-poll-interval",
        "0.1",
    )
    answers = [503]

    def policy(request: Received, before: list[Received]) -> Answer:
        return Answer(answers[0])

    with Receiver(policy) as receiver, TaskClient(server.address) as client:
        task = client.create_task(
            task_type="cli-hooks",
            task_id=unique("cli-hooks"),
            notification_config={"webhooks": [{"url": receiver.url}]},
        )
        deadline = time.monotonic() + 20
        while not client.list_deliveries(task.task_id, states=[DeliveryState.DEAD]).items:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = rows(ok(tasks(server.address, "deliveries", task.task_id, "--state", "dead")))
        assert [(r["TASK"], r["STATE"], r["TRIES"], r["HTTP"]) for r in shown] == [
            (task.task_id, "DEAD", "1", "503")
        ]
        answers[0] = 204
        again = json_lines(tasks(server.address, "redeliver", task.task_id, "--json"))
        assert [(d["state"], d["attempts"]) for d in again] == [("PENDING", 0)]
        receiver.wait_for(lambda got: len(got) == 2)
        while client.list_deliveries(task.task_id).items[0].state is not DeliveryState.DELIVERED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (listed,) = json_lines(tasks(server.address, "deliveries", task.task_id, "--json"))
        assert listed["state"] == "DELIVERED" and listed["webhook_id"] == again[0]["webhook_id"]
        history = json_lines(tasks(server.address, "events", task.task_id, "--json"))
        assert history[0]["deliveries"][0]["state"] == "DELIVERED"
        done = tasks(server.address, "redeliver-events", "1", str(history[-1]["event_id"]))
        assert ok(done).startswith("0 dead deliveries")
        refused = tasks(server.address, "deliveries", "--state", "lost")
        assert refused.returncode == 2 and "not a delivery state" in refused.stderr
