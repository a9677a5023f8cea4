"""The `resinkit-grpc` command: `serve` runs the server, `migrate` moves the database between
schema revisions (an operator's step), `purge` removes what retention would, `tokens new` makes
a bearer token, `tasks` calls a server (tasks_cli.py).

Every option also reads a RESINKIT_* environment variable; a flag wins over the variable."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from resinkit_grpc import tasks_cli
from resinkit_grpc.config import Settings
from resinkit_grpc.notify.schedule import schedule_problem
from resinkit_grpc.notify.secrets import SecretsError
from resinkit_grpc.observe import logs
from resinkit_grpc.observe.tracing import TracingUnavailable
from resinkit_grpc.security.tls import TLSError
from resinkit_grpc.security.tokens import TokensError, new_token
from resinkit_grpc.server import ServerError, serve
from resinkit_grpc.store import migrations
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.engine import DatabaseURLError, create_engines, parse_url
from resinkit_grpc.store.events import serialize_appends
from resinkit_grpc.store.migrations import (
    MigrationBroken,
    MigrationRefused,
    SchemaBehind,
    SchemaTooNew,
    require_head,
)
from resinkit_grpc.store.retention import count_purgeable, purge_batch

DEFAULTS = Settings()


def between(low: float, high: float) -> Callable[[Any], str | None]:
    """A number within [low, high] (finite: NaN and infinities are refused)."""

    def check(value: Any) -> str | None:
        if math.isfinite(value) and low <= value <= high:
            return None
        return f"must be between {_number(low)} and {_number(high)}"

    return check


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value.upper() in choices else f"must be one of {', '.join(choices)}"

    return check


def host_and_port(value: Any) -> str | None:
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and int(port) <= 65535:
        return None
    return "must be HOST:PORT (port 0 to 65535)"


def boolean(text: str) -> bool:
    """A switch: given as a flag (no value), or in its environment variable as true/false."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def any_text(value: Any) -> str | None:
    return None


def non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RETENTION_SECONDS = 36500 * 86400  # a hundred years


def duration(text: str) -> float:
    """Seconds in a duration such as `30d`, `12h`, `90m`, `3600s` (a unit is required, so
    that `30` is never read as seconds when days were meant); `0` alone means off."""
    cleaned = text.strip().lower()
    if cleaned == "0":
        return 0.0
    number, unit = cleaned[:-1], cleaned[-1:]
    if unit not in DURATION_UNITS or not number:
        raise ValueError(text)
    return float(number) * DURATION_UNITS[unit]


def retention_range(value: Any) -> str | None:
    if value == 0 or (math.isfinite(value) and 1 <= value <= MAX_RETENTION_SECONDS):
        return None
    return "must be 0 (off) or a duration from 1s to 36500d, such as 30d, 12h, 90m or 3600s"


@dataclass(frozen=True)
class Option:
    flag: str
    field: str  # the Settings field; the environment variable is RESINKIT_<FIELD>
    kind: Callable[[str], Any]
    help: str
    check: Callable[[Any], str | None]  # None when the value is in range, else why not
    serve_only: bool = False  # `migrate` takes every other option (they share an environment)


OPTIONS = [
    Option(
        "--address",
        "address",
        str,
        "HOST:PORT to listen on (port 0 picks a free one)",
        host_and_port,
    ),
    Option(
        "--tls-cert",
        "tls_cert",
        str,
        "TLS: the server's certificate chain (PEM file); with --tls-key, TLS only",
        any_text,
    ),
    Option("--tls-key", "tls_key", str, "TLS: the server's private key (PEM file)", any_text),
    Option(
        "--tls-client-ca",
        "tls_client_ca",
        str,
        "mutual TLS: clients must present a certificate signed by this CA (PEM file)",
        any_text,
    ),
    Option(
        "--auth-tokens-file",
        "auth_tokens_file",
        str,
        "bearer tokens and their roles (TOML); every call then needs one (health aside)",
        any_text,
    ),
    Option(
        "--auth-reflection",
        "auth_reflection",
        boolean,
        "with --auth-tokens-file: reflection needs a token too",
        any_text,
    ),
    Option(
        "--database-url",
        "database_url",
        str,
        "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://...",
        non_empty,
    ),
    Option(
        "--grace-period",
        "grace_period",
        float,
        "seconds in-flight RPCs get to finish on shutdown (0 to 3600)",
        between(0, 3600),
    ),
    Option(
        "--read-threads",
        "read_threads",
        int,
        "threads running read transactions (1 to 64)",
        between(1, 64),
    ),
    Option(
        "--loop-read-budget",
        "loop_read_budget",
        float,
        "SQLite: milliseconds a read may run on the event loop before it moves to a read "
        "thread (0 to 1000)",
        between(0, 1000),
    ),
    Option(
        "--sqlite-busy-timeout",
        "sqlite_busy_timeout",
        float,
        "SQLite: seconds to wait for another process's write lock (0 to 3600)",
        between(0, 3600),
    ),
    Option(
        "--sqlite-synchronous",
        "sqlite_synchronous",
        str,
        "SQLite: NORMAL (fast, WAL) or FULL (fsync every commit)",
        one_of("NORMAL", "FULL"),
    ),
    Option(
        "--max-queued-writes",
        "max_queued_writes",
        int,
        "writes waiting for the writer beyond which new ones are refused (UNAVAILABLE, "
        "OVERLOADED) (1 to 1000000)",
        between(1, 1_000_000),
    ),
    Option(
        "--max-concurrent-rpcs",
        "max_concurrent_rpcs",
        int,
        "RPCs in progress at once, streams included, beyond which new ones are refused "
        "(RESOURCE_EXHAUSTED) (1 to 1000000)",
        between(1, 1_000_000),
    ),
    Option(
        "--max-receive-message-bytes",
        "max_receive_message_bytes",
        int,
        "the largest request accepted, in bytes (65536 to 67108864)",
        between(64 * 1024, 64 * 1024 * 1024),
    ),
    Option(
        "--pool-timeout",
        "pool_timeout",
        float,
        "PostgreSQL: seconds to wait for a pooled connection (0.1 to 3600)",
        between(0.1, 3600),
    ),
    Option(
        "--heartbeat-interval",
        "heartbeat_interval",
        float,
        "WatchTaskEvents: seconds between heartbeats (0.001 to 3600)",
        between(0.001, 3600),
    ),
    Option(
        "--max-watchers",
        "max_watchers",
        int,
        "WatchTaskEvents: concurrent streams allowed (1 to 100000)",
        between(1, 100_000),
    ),
    Option(
        "--max-watchers-per-principal",
        "max_watchers_per_principal",
        int,
        "WatchTaskEvents: concurrent streams one authenticated principal may hold (0: no "
        "limit) (0 to 100000)",
        between(0, 100_000),
    ),
    Option(
        "--watch-buffer",
        "watch_buffer",
        int,
        "WatchTaskEvents: events buffered per stream before a slow reader is cut off "
        "(10 to 1000000)",
        between(10, 1_000_000),
    ),
    Option(
        "--watch-buffer-bytes",
        "watch_buffer_bytes",
        int,
        "WatchTaskEvents: bytes of events buffered per stream before a slow reader is cut off "
        "(65536 to 1073741824)",
        between(64 * 1024, 1024**3),
    ),
    Option(
        "--request-id-retention",
        "request_id_retention",
        float,
        "hours a mutation's request_id is kept for retries (0.0001 to 8760)",
        between(0.0001, 8760),
    ),
    Option(
        "--no-migrate",
        "no_migrate",
        boolean,
        "do not migrate at boot: a database behind this code's schema stops the server, naming "
        "`resinkit-grpc migrate upgrade`",
        any_text,
        serve_only=True,
    ),
    Option(
        "--expire-tasks",
        "expire_tasks",
        boolean,
        "fail (FAILED, reason EXPIRED, actor system) live tasks whose expires_at has passed",
        any_text,
    ),
    Option(
        "--expiry-interval",
        "expiry_interval",
        float,
        "with --expire-tasks: seconds between scans for expired tasks (0.05 to 86400)",
        between(0.05, 86400),
    ),
    Option(
        "--retention",
        "retention",
        duration,
        "purge tasks that ended or were deleted and have not changed for this long, with "
        "their events (30d, 12h, 90m, 3600s; 0: off)",
        retention_range,
    ),
    Option(
        "--retention-interval",
        "retention_interval",
        float,
        "with --retention: seconds between purges (0.05 to 86400)",
        between(0.05, 86400),
    ),
    Option(
        "--purge-batch-size",
        "purge_batch_size",
        int,
        "tasks purged per write transaction (1 to 10000)",
        between(1, 10_000),
    ),
    Option(
        "--log-level",
        "log_level",
        str,
        "DEBUG, INFO, WARNING or ERROR",
        one_of("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Option(
        "--log-format",
        "log_format",
        str,
        "text (lines for people) or json (one object per line)",
        one_of("TEXT", "JSON"),
    ),
    Option(
        "--metrics-address",
        "metrics_address",
        str,
        "HOST:PORT of a Prometheus endpoint (/metrics); off when empty",
        lambda value: None if value == "" else host_and_port(value),
        serve_only=True,
    ),
    Option(
        "--console-address",
        "console_address",
        str,
        "HOST:PORT of the web console (HTTP, HTTPS with --tls-cert); off when empty",
        lambda value: None if value == "" else host_and_port(value),
        serve_only=True,
    ),
    Option(
        "--otel",
        "otel",
        boolean,
        "OpenTelemetry traces (pip install 'resinkit-grpc[otel]'), set up by the OTEL_* variables",
        any_text,
        serve_only=True,
    ),
    Option(
        "--webhook-secrets-file",
        "webhook_secrets_file",
        str,
        "webhook signing secrets (TOML: [[secrets]] id, secret), re-read when it changes",
        any_text,
        serve_only=True,
    ),
    Option(
        "--webhook-allow-private",
        "webhook_allow_private",
        boolean,
        "deliver webhooks to loopback, private and link-local addresses too",
        any_text,
        serve_only=True,
    ),
    Option(
        "--webhook-timeout",
        "webhook_timeout",
        float,
        "seconds one webhook delivery attempt may take (0.1 to 300)",
        between(0.1, 300),
        serve_only=True,
    ),
    Option(
        "--webhook-retry-schedule",
        "webhook_retry_schedule",
        str,
        "pauses after each failed delivery attempt (5s,5m,30m,...; none: no retries)",
        schedule_problem,
        serve_only=True,
    ),
    Option(
        "--webhook-concurrency",
        "webhook_concurrency",
        int,
        "webhook delivery attempts in flight at once in this replica (1 to 1000)",
        between(1, 1000),
        serve_only=True,
    ),
    Option(
        "--webhook-per-host",
        "webhook_per_host",
        int,
        "webhook delivery attempts in flight at once to one host (1 to 1000)",
        between(1, 1000),
        serve_only=True,
    ),
    Option(
        "--webhook-poll-interval",
        "webhook_poll_interval",
        float,
        "seconds between looks for due webhook deliveries, besides wake-ups (0.05 to 60)",
        between(0.05, 60),
        serve_only=True,
    ),
]


def env_name(field: str) -> str:
    return f"RESINKIT_{field.upper()}"


def _add_options(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    for option in OPTIONS:
        if option.serve_only and not serving:
            continue
        default = getattr(DEFAULTS, option.field)
        described = f"{option.help} [{env_name(option.field)}, default {default}]"
        # SUPPRESS: an option absent here leaves alone what an enclosing command parsed.
        if option.kind is boolean:
            parser.add_argument(
                option.flag,
                dest=option.field,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=described,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.field,
                type=option.kind,
                default=argparse.SUPPRESS,
                help=described,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resinkit-grpc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser(
        "serve", help="migrate the database (unless --no-migrate), then serve gRPC"
    )
    _add_options(serve_command, serving=True)
    migrate_command = commands.add_parser(
        "migrate",
        help="move the database between schema revisions, then exit (alone: upgrade to head)",
    )
    _add_options(migrate_command, serving=False)
    steps = migrate_command.add_subparsers(dest="migrate_command", required=False)
    upgrade = steps.add_parser("upgrade", help="upgrade to REV (default: this code's head)")
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REV")
    downgrade = steps.add_parser(
        "downgrade", help="downgrade to REV (`base`: empty); what later revisions hold is lost"
    )
    downgrade.add_argument("revision", metavar="REV")
    steps.add_parser("current", help="the revision the database is at, and whether it is head")
    steps.add_parser("history", help="every revision this code knows, oldest first")
    for step in (upgrade, downgrade, *(steps.choices[name] for name in ("current", "history"))):
        _add_options(step, serving=False)
    purge = commands.add_parser(
        "purge", help="purge tasks that ended or were deleted long ago, with their events"
    )
    _add_options(purge, serving=False)
    purge.add_argument(
        "--older-than",
        type=duration,
        default=None,
        help="purge tasks not changed for this long (30d, 12h, 90m, 3600s) [default: --retention]",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="only count what would be purged; change nothing"
    )
    tokens = commands.add_parser("tokens", help="make bearer tokens for --auth-tokens-file")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    new = token_commands.add_parser(
        "new", help="print a fresh token once, and the entry that grants it"
    )
    new.add_argument("--principal", required=True, help="who holds the token")
    new.add_argument("--role", required=True, choices=("reader", "writer", "admin"))
    tasks_cli.add_arguments(commands.add_parser("tasks", help=tasks_cli.HELP))
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """The Settings of flags, else environment variables, else defaults; a value out of its
    documented range stops the command with one line naming the flag or variable."""
    values: dict[str, Any] = {}
    serving = args.command == "serve"
    for option in OPTIONS:
        if option.serve_only and not serving:
            continue
        given = getattr(args, option.field, None)
        source = option.flag
        if given is None and env_name(option.field) in environ:
            source = env_name(option.field)
            raw = environ[source]
            try:
                given = option.kind(raw)
            except ValueError:
                raise SystemExit(f"resinkit-grpc: error: {source}={raw!r} is not valid") from None
        if given is None:
            continue
        problem = option.check(given)
        if problem is not None:
            raise SystemExit(f"resinkit-grpc: error: {source} {problem} (got {given!r})")
        values[option.field] = given
    settings = Settings(**values)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("resinkit-grpc: error: --tls-cert and --tls-key go together")
    if settings.auth_reflection and not settings.auth_tokens_file:
        raise SystemExit("resinkit-grpc: error: --auth-reflection needs --auth-tokens-file")
    if settings.tls_client_ca and not settings.tls_cert:
        raise SystemExit("resinkit-grpc: error: --tls-client-ca needs --tls-cert and --tls-key")
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "tasks":  # the command itself goes straight there (command.py)
        sys.exit(tasks_cli.run(args))
    if args.command == "tokens":
        token, entry = new_token(args.principal, args.role)
        print(f"token: {token}")
        print(f"\nShown once: give it to {args.principal}. Add this to the tokens file:\n")
        print(entry, end="")
        return
    settings = settings_from(args, dict(os.environ))
    if args.command == "purge":
        older_than = settings.retention if args.older_than is None else args.older_than
        if retention_range(older_than) is not None or not older_than:
            sys.stderr.write(
                "resinkit-grpc purge: error: --older-than needs a duration from 1s to 36500d "
                "(or set --retention)\n"
            )
            sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for diagnosing a stuck server.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        if args.command == "migrate":
            run_migrate(
                args.migrate_command or "upgrade", getattr(args, "revision", "head"), settings
            )
        elif args.command == "purge":
            print(purge_old_tasks(settings, older_than, dry_run=args.dry_run))
        else:
            asyncio.run(serve(settings))
    except (
        DatabaseURLError,
        MigrationBroken,
        MigrationRefused,
        SchemaBehind,
        SchemaTooNew,
        ServerError,
        TLSError,
        TracingUnavailable,
        TokensError,
        SecretsError,
    ) as exc:
        sys.exit(f"resinkit-grpc: error: {exc}")
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        sys.exit(f"resinkit-grpc: error: cannot use the database: {reason}")


def purge_old_tasks(settings: Settings, older_than: float, *, dry_run: bool) -> str:
    """`resinkit-grpc purge`: what the periodic --retention job does, once, to its end, in
    batches of --purge-batch-size tasks (each a short write transaction of its own, taking
    the same locks as every server's writes, so it is safe beside serving replicas). Returns
    the line that says what was, or would be, purged."""
    writer, reader = create_engines(settings)
    try:
        require_head(writer)
        before = utcnow() - timedelta(seconds=older_than)
        since = f"not changed since {before.isoformat(timespec='seconds')}"
        if dry_run:
            with reader.begin() as connection:
                found_tasks, found_events = count_purgeable(connection, before)
            return f"would purge {found_tasks} tasks and {found_events} events {since}"
        purged_tasks = purged_events = 0
        after = None
        while True:
            began = time.monotonic()
            with writer.begin() as connection:
                serialize_appends(connection)
                batch = purge_batch(connection, before, settings.purge_batch_size, after)
            if batch.last is None:
                break
            purged_tasks += batch.tasks
            purged_events += batch.events
            after = batch.last
            # As long again with the lock free: SQLite's busy handler polls other writers at
            # intervals that grow with their wait (up to 100 ms), and a purge that took the
            # lock again at once would starve them for seconds (measured: 4.7 s).
            time.sleep(time.monotonic() - began)
        return (
            f"purged {purged_tasks} tasks and {purged_events} events {since}; "
            f"events up to event_id {batch.purged_through} may be gone"
        )
    finally:
        writer.dispose()
        reader.dispose()


def run_migrate(step: str, revision: str, settings: Settings) -> None:
    """`resinkit-grpc migrate STEP`: prints what it did or found."""
    head = ", ".join(migrations.heads())
    if step == "history":
        for name, doc in migrations.history():
            marker = " (head)" if name in head.split(", ") else ""
            print(f"{name}{marker}  {doc.splitlines()[0] if doc else ''}")
        return
    url = parse_url(settings.database_url)
    looking = step == "current" and url.get_backend_name() == "sqlite"
    if looking and not Path(url.database or "").exists():  # looking must not create the file
        print(f"no database at {url.database}: revision none (empty), head {head}")
        return
    writer, reader = create_engines(settings)
    try:
        if step == "current":
            at = ", ".join(migrations.current(writer))
            where = "head" if at == head else f"behind head {head}"
            print(f"database at revision {at or 'none (empty)'} ({where})")
        else:
            moved = migrations.migrate(writer, target=revision, downgrade=step == "downgrade")
            print(f"database at revision {moved}")
    finally:
        writer.dispose()
        reader.dispose()


if __name__ == "__main__":
    main()
