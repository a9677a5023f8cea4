"""`resinkit-grpc tasks ...`: the command line for people and shell scripts, built on the
Python client only (resinkit_grpc.client), so it loads no server code.

It sits beside cli.py rather than inside the client package: the client is a library with no
opinion about terminals; this is one of its users, like any other program.

Exit codes: 0 done, 1 an error (one line on stderr: `resinkit-grpc: error: MESSAGE (REASON)`;
for `wait`, also a task that ended FAILED or CANCELLED or was deleted), 2 a usage error,
3 `wait --timeout` passed, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resinkit_grpc import tasks_output as out
from resinkit_grpc.client import (
    ClientError,
    DeliveryState,
    RetryPolicy,
    Task,
    TaskClient,
    TaskEvent,
    TaskFilter,
    TaskStatus,
    TaskView,
    WaitTimeout,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# watch and wait follow a stream: they reconnect through about two minutes of failures in a
# row (a server restart, a replica switch) before giving up.
FOLLOWING = RetryPolicy(max_attempts=120, initial_backoff=0.1, max_backoff=2.0)
HELP = "call a server: create, get, list, update, status, delete, undelete, events, watch, wait"
DEFAULT_LIMIT = 100
DEFAULT_PAGE_SIZE = 100


class UsageError(Exception):
    """A command line the parser accepted but that makes no sense (exit 2)."""


# --- argument types ---


def status_name(text: str) -> TaskStatus:
    """RUNNING, running or TASK_STATUS_RUNNING."""
    name = text.strip().upper().removeprefix("TASK_STATUS_")
    if name not in TaskStatus.__members__:
        choices = ", ".join(TaskStatus.__members__)
        raise argparse.ArgumentTypeError(f"{text!r} is not a status (one of {choices})")
    return TaskStatus(name)


def delivery_state(text: str) -> DeliveryState:
    """DEAD, dead or DELIVERY_STATE_DEAD."""
    name = text.strip().upper().removeprefix("DELIVERY_STATE_")
    if name not in DeliveryState.__members__:
        choices = ", ".join(DeliveryState.__members__)
        raise argparse.ArgumentTypeError(f"{text!r} is not a delivery state (one of {choices})")
    return DeliveryState(name)


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline, or read from a file as @PATH (@- reads stdin)."""
    if text.startswith("@"):
        path = text[1:]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object ({...})")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value


# --- the parser ---


def _shared_flags(*, timeout: bool) -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    _add_shared_flags(shared, timeout=timeout)
    return shared


def _add_shared_flags(shared: argparse.ArgumentParser, *, timeout: bool) -> None:
    """Connection and output flags, taken before the command or after it. SUPPRESS: a flag
    absent after the command leaves alone what was given before it."""
    given = argparse.SUPPRESS
    connection = shared.add_argument_group("connection")
    connection.add_argument(
        "--address",
        default=given,
        help="HOST:PORT of the server, comma-separated for replicas "
        "[RESINKIT_ADDRESS, default 127.0.0.1:50051]",
    )
    connection.add_argument(
        "--token", default=given, help="bearer token (prefer the variable) [RESINKIT_TOKEN]"
    )
    connection.add_argument(
        "--ca-cert", default=given, help="TLS: CA certificate (PEM file) [RESINKIT_CA_CERT]"
    )
    connection.add_argument(
        "--client-cert",
        default=given,
        help="mutual TLS: client certificate (PEM file) [RESINKIT_CLIENT_CERT]",
    )
    connection.add_argument(
        "--client-key",
        default=given,
        help="mutual TLS: client key (PEM file) [RESINKIT_CLIENT_KEY]",
    )
    if timeout:
        connection.add_argument(
            "--timeout",
            type=seconds,
            default=given,
            help="seconds each call may take (default 30)",
        )
    shared.add_argument(
        "--json",
        action="store_true",
        default=given,
        help="JSON for scripts: one object per line (list, events, watch), else one object",
    )


def _mutation_flags(parser: argparse.ArgumentParser, *, etag: bool = True) -> None:
    if etag:
        parser.add_argument("--etag", help="fail (ETAG_MISMATCH) if the task changed since")
    parser.add_argument("--actor", help="who makes the change, recorded on its event")
    parser.add_argument("--request-id", help="makes a retry of this exact change safe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `tasks` command's flags and sub-commands, on `parser` (cli.py's `tasks`, or a
    parser of its own)."""
    shared, wait_shared = _shared_flags(timeout=True), _shared_flags(timeout=False)
    _add_shared_flags(parser, timeout=True)  # the same flags before the command
    commands = parser.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        made = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[wait_shared if name == "wait" else shared],
        )
        made.set_defaults(run=run)
        return made

    create = command("create", "create a task (PENDING)", run_create)
    create.add_argument("--type", required=True, help="the task type")
    create.add_argument("--name", help="the task name")
    create.add_argument("--id", help="the task id (default: a generated UUIDv7)")
    create.add_argument("--description")
    create.add_argument("--tag", action="append", help="a tag (repeat for several)")
    create.add_argument("--priority", type=int)
    create.add_argument("--configs", type=json_object, help="submitted_configs: JSON or @FILE")
    create.add_argument("--created-by", help="the creator (the caller's identity wins)")
    _mutation_flags(create, etag=False)

    get = command("get", "show one task (soft-deleted ones too)", run_get)
    get.add_argument("task_id", metavar="ID")
    get.add_argument("--basic", action="store_true", help="leave out the large JSON fields")

    listing = command("list", "list tasks, newest first unless --order-by", run_list)
    listing.add_argument("--status", type=status_name, action="append", default=[])
    listing.add_argument("--type", action="append", default=[], help="task type")
    listing.add_argument("--tag-any", action="append", default=[], help="has any of these")
    listing.add_argument("--tag-all", action="append", default=[], help="has all of these")
    listing.add_argument("--creator", help="created_by")
    listing.add_argument("--name-contains", help="case-insensitive")
    listing.add_argument("--order-by", help="created_at, updated_at or priority, then asc or desc")
    _limit_flags(listing, "tasks")
    listing.add_argument("--deleted", action="store_true", help="soft-deleted tasks too")

    update = command("update", "change a task's name, description, priority or tags", run_update)
    update.add_argument("task_id", metavar="ID")
    update.add_argument("--name")
    update.add_argument("--description")
    update.add_argument("--priority", type=int)
    update.add_argument("--tag", action="append", help="the new tags (repeat for several)")
    update.add_argument("--clear-tags", action="store_true", help="remove every tag")
    _mutation_flags(update)

    status = command("status", "move a task to STATUS (RUNNING or TASK_STATUS_RUNNING)", run_status)
    status.add_argument("task_id", metavar="ID")
    status.add_argument("status", type=status_name, metavar="STATUS")
    status.add_argument("--error", type=json_object, help="error_info: JSON or @FILE")
    status.add_argument("--result", type=json_object, help="result_summary: JSON or @FILE")
    status.add_argument("--details", type=json_object, help="execution_details: JSON or @FILE")
    status.add_argument("--progress", type=json_object, help="progress_details: JSON or @FILE")
    _mutation_flags(status)

    delete = command("delete", "soft-delete a task", run_delete)
    delete.add_argument("task_id", metavar="ID")
    _mutation_flags(delete)
    undelete = command("undelete", "restore a soft-deleted task", run_undelete)
    undelete.add_argument("task_id", metavar="ID")
    _mutation_flags(undelete, etag=False)

    events = command("events", "the stored events of a task (or of all), oldest first", run_events)
    events.add_argument("task_id", nargs="?", metavar="ID")
    events.add_argument("--event-type", action="append", default=[], help="e.g. STATUS_CHANGE")
    _limit_flags(events, "events")

    sent = command(
        "deliveries", "the webhook deliveries of a task (or of all), oldest first", run_deliveries
    )
    sent.add_argument("task_id", nargs="?", metavar="ID")
    sent.add_argument(
        "--state",
        type=delivery_state,
        action="append",
        default=[],
        help="PENDING, DELIVERED, DEAD or DISABLED (repeat for several)",
    )
    _limit_flags(sent, "deliveries")
    again = command("redeliver", "send a task's dead and disabled deliveries again", run_redeliver)
    again.add_argument("task_id", metavar="ID")
    again_range = command(
        "redeliver-events",
        "send the dead deliveries of the events FIRST..LAST again (admin)",
        run_redeliver_events,
    )
    again_range.add_argument("first_event_id", type=count, metavar="FIRST")
    again_range.add_argument("last_event_id", type=count, metavar="LAST")

    watch = command("watch", "print events as they commit, until Ctrl-C", run_watch)
    watch.add_argument("--task", action="append", default=[], help="a task id")
    watch.add_argument("--type", action="append", default=[], help="a task type")
    watch.add_argument("--event-type", action="append", default=[], help="e.g. STATUS_CHANGE")
    watch.add_argument(
        "--after", type=count, help="replay the stored events after this event id first"
    )
    watch.add_argument(
        "--until-terminal",
        action="store_true",
        help="with one --task: stop once it is COMPLETED, FAILED, CANCELLED or deleted",
    )

    wait = command(
        "wait", "wait for a task to end: exit 0 COMPLETED, 1 FAILED or CANCELLED", run_wait
    )
    wait.add_argument("task_id", metavar="ID")
    wait.add_argument(
        "--timeout", type=seconds, dest="wait_timeout", help="give up (exit 3) after S seconds"
    )


def _limit_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit",
        type=count,
        default=DEFAULT_LIMIT,
        help=f"print at most N {what} (default {DEFAULT_LIMIT}; 0: all)",
    )
    parser.add_argument(
        "--page-size",
        type=count,
        default=DEFAULT_PAGE_SIZE,
        help=f"{what} fetched per call (default {DEFAULT_PAGE_SIZE}, at most 1000)",
    )


# --- running a command ---


def client_from(args: argparse.Namespace, retry: RetryPolicy | None = None) -> TaskClient:
    """The client of the flags given, else RESINKIT_* variables (TaskClient.from_env)."""
    names = {
        "address": "address",
        "token": "token",
        "ca_cert": "root_certificates",
        "client_cert": "client_certificate",
        "client_key": "client_key",
        "timeout": "timeout",
    }
    overrides: dict[str, Any] = {
        keyword: getattr(args, flag) for flag, keyword in names.items() if hasattr(args, flag)
    }
    if retry is not None:
        overrides["retry"] = retry
    return TaskClient.from_env(**overrides)


def fail(message: str, reason: str) -> int:
    sys.stderr.write(f"resinkit-grpc: error: {one_line(message)} ({reason})\n")
    return EXIT_ERROR


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: ClientError) -> str:
    message = error.message or error.code.name
    named = "; ".join(f"{v.field}: {v.description}" for v in error.field_violations)
    return f"{message} [{named}]" if named and named not in message else message


def run(args: argparse.Namespace) -> int:
    """Runs the parsed command; returns the exit code."""
    try:
        try:
            code: int = args.run(args)
        finally:
            sys.stdout.flush()
    except UsageError as error:
        sys.stderr.write(f"resinkit-grpc tasks {args.tasks_command}: error: {error}\n")
        return EXIT_USAGE
    except WaitTimeout:
        fail(f"task {args.task_id} did not end within {args.wait_timeout:g} s", "WAIT_TIMEOUT")
        return EXIT_TIMEOUT
    except ClientError as error:
        return fail(describe(error), error.reason)
    except OSError as error:
        if isinstance(error, BrokenPipeError):  # `... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        return fail(f"{error.filename or ''}: {error.strerror or error}", "OS_ERROR")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """`resinkit-grpc tasks ARGS` without the server's parser (see command.py)."""
    parser = argparse.ArgumentParser(prog="resinkit-grpc tasks", description=HELP)
    add_arguments(parser)
    sys.exit(run(parser.parse_args(argv)))


# --- output ---


def now() -> datetime:
    return datetime.now(UTC)


def width() -> int:
    return shutil.get_terminal_size().columns


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def show_task(args: argparse.Namespace, task: Task) -> None:
    lines = [out.as_json(task)] if wants_json(args) else out.task_detail(task, now())
    print("\n".join(lines))


def show_many(
    args: argparse.Namespace,
    items: Iterable[Any],
    layout: out.Layout,
    to_row: Callable[[Any, datetime], list[str]],
    what: str,
) -> None:
    """Up to --limit items: as JSON lines (printed as the pages arrive), or one table. A table
    that was cut short says so on stderr."""
    limit = args.limit or None
    if wants_json(args):
        for item in itertools.islice(items, limit):
            print(out.as_json(item))
        return
    taken = list(itertools.islice(items, None if limit is None else limit + 1))
    more = limit is not None and len(taken) > limit
    taken = taken[:limit]
    if not taken:
        print(f"(no {what})")
        return
    at = now()
    rows = [to_row(item, at) for item in taken]
    print("\n".join(out.table(layout, rows, width())))
    if more:
        sys.stderr.write(f"(more {what} than --limit {limit}: raise it, or 0 for all)\n")


def page_size(args: argparse.Namespace) -> int:
    wanted = min(args.page_size or 1000, 1000)
    return min(wanted, args.limit + 1) if args.limit else wanted


# --- the commands, one function each ---


def run_create(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        task = client.create_task(
            task_type=args.type,
            task_id=args.id,
            task_name=args.name,
            description=args.description,
            priority=args.priority,
            tags=args.tag,
            submitted_configs=args.configs,
            created_by=args.created_by,
            request_id=args.request_id,
            actor=args.actor,
        )
    show_task(args, task)
    return EXIT_OK


def run_get(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        task = client.get_task(args.task_id, view=TaskView.BASIC if args.basic else None)
    show_task(args, task)
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    wanted = TaskFilter(
        statuses=args.status,
        task_types=args.type,
        created_by=args.creator,
        name_contains=args.name_contains,
        tags_any=args.tag_any,
        tags_all=args.tag_all,
    )
    with client_from(args) as client:
        tasks = client.iter_tasks(
            wanted, order_by=args.order_by, page_size=page_size(args), show_deleted=args.deleted
        )
        show_many(args, tasks, out.TASKS, out.task_row, "tasks")
    return EXIT_OK


def run_update(args: argparse.Namespace) -> int:
    if args.tag and args.clear_tags:
        raise UsageError("--tag and --clear-tags exclude each other")
    tags = [] if args.clear_tags else args.tag
    fields = {"task_name": args.name, "description": args.description, "priority": args.priority}
    if tags is None and all(value is None for value in fields.values()):
        raise UsageError("nothing to change: give --name, --description, --priority or --tag")
    with client_from(args) as client:
        task = client.update_task(
            args.task_id,
            **fields,
            tags=tags,
            etag=args.etag,
            request_id=args.request_id,
            actor=args.actor,
        )
    show_task(args, task)
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        task = client.update_task_status(
            args.task_id,
            args.status,
            error_info=args.error,
            result_summary=args.result,
            execution_details=args.details,
            progress_details=args.progress,
            actor=args.actor,
            etag=args.etag,
            request_id=args.request_id,
        )
    show_task(args, task)
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        task = client.delete_task(
            args.task_id, etag=args.etag, request_id=args.request_id, actor=args.actor
        )
    show_task(args, task)
    return EXIT_OK


def run_undelete(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        task = client.undelete_task(args.task_id, request_id=args.request_id, actor=args.actor)
    show_task(args, task)
    return EXIT_OK


def run_events(args: argparse.Namespace) -> int:
    event_types = [name.upper() for name in args.event_type]
    with client_from(args) as client:
        events = client.iter_events(
            args.task_id, event_types=event_types, page_size=page_size(args)
        )
        show_many(args, events, out.EVENTS, out.event_row, "events")
    return EXIT_OK


def run_deliveries(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        sent = client.iter_deliveries(args.task_id, states=args.state, page_size=page_size(args))
        show_many(args, sent, out.DELIVERIES, out.delivery_row, "deliveries")
    return EXIT_OK


def run_redeliver(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        again = client.redeliver_task(args.task_id)
    if wants_json(args):
        for delivery in again:
            print(out.as_json(delivery))
    else:
        print(f"{len(again)} deliveries of {args.task_id} will be sent again")
    return EXIT_OK


def run_redeliver_events(args: argparse.Namespace) -> int:
    if args.last_event_id < args.first_event_id:
        raise UsageError("LAST must be at least FIRST")
    with client_from(args) as client:
        count = client.redeliver_events(args.first_event_id, args.last_event_id)
    print(
        f"{count} dead deliveries of events {args.first_event_id}..{args.last_event_id} "
        "will be sent again"
    )
    return EXIT_OK


def run_watch(args: argparse.Namespace) -> int:
    if args.until_terminal and len(args.task) != 1:
        raise UsageError("--until-terminal needs exactly one --task")
    with client_from(args, FOLLOWING) as client:
        watch = client.watch(
            task_ids=args.task,
            task_types=args.type,
            event_types=[name.upper() for name in args.event_type],
            after_event_id=args.after,
            until_terminal=args.until_terminal,
        )
        with watch, _interrupt_closes(watch) as interrupted:
            print_events(args, watch)
    return EXIT_INTERRUPTED if interrupted.is_set() else EXIT_OK


@contextlib.contextmanager
def _interrupt_closes(watch: Any) -> Iterator[threading.Event]:
    """Ctrl-C closes the watch, which then ends as a stream the server ended would: a
    KeyboardInterrupt raised somewhere inside grpc's machinery may be lost there (and the
    command would go on watching). A second Ctrl-C interrupts as usual."""
    interrupted = threading.Event()

    def close(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        watch.close()

    previous = signal.signal(signal.SIGINT, close)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def print_events(args: argparse.Namespace, events: Iterator[TaskEvent]) -> None:
    """Each event as it arrives, flushed at once (a pipe would otherwise hold it back)."""
    widths: list[int] = []
    if not wants_json(args):
        widths = out.EVENTS.widths(out.WATCH_WIDTHS, width())
        print(out.row(out.EVENTS.headers, widths), flush=True)
    for event in events:
        if wants_json(args):
            line = out.as_json(event)
        else:
            line = out.row([out.one_line(c) for c in out.event_row(event, now())], widths)
        print(line, flush=True)


def run_wait(args: argparse.Namespace) -> int:
    with client_from(args, FOLLOWING) as client:
        task = client.wait(args.task_id, args.wait_timeout)
    show_task(args, task)
    if task.status is TaskStatus.COMPLETED:
        return EXIT_OK
    if task.status.is_terminal:
        return fail(f"task {task.task_id} ended {task.status.value}", f"TASK_{task.status.value}")
    return fail(f"task {task.task_id} was deleted while {task.status.value}", "TASK_DELETED")
