"""The `resinkit-grpc` command: `serve` runs the server, `migrate` only upgrades the database.

Every option also reads a RESINKIT_* environment variable; a flag wins over the variable."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy.exc import DBAPIError

from resinkit_grpc.config import Settings
from resinkit_grpc.server import ServerError, serve
from resinkit_grpc.store.engine import DatabaseURLError, create_engines
from resinkit_grpc.store.migrations import SchemaTooNew, migrate

DEFAULTS = Settings()

# (flag, Settings field, type, help). The environment variable is RESINKIT_<FIELD>.
OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--address", "address", str, "HOST:PORT to listen on (port 0 picks a free one)"),
    (
        "--database-url",
        "database_url",
        str,
        "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://...",
    ),
    ("--grace-period", "grace_period", float, "seconds in-flight RPCs get to finish on shutdown"),
    ("--read-threads", "read_threads", int, "threads running read transactions"),
    (
        "--loop-read-budget",
        "loop_read_budget",
        float,
        "SQLite: milliseconds a read may run on the event loop before it moves to a read thread",
    ),
    (
        "--sqlite-busy-timeout",
        "sqlite_busy_timeout",
        float,
        "SQLite: seconds to wait for another process's write lock",
    ),
    (
        "--sqlite-synchronous",
        "sqlite_synchronous",
        str,
        "SQLite: NORMAL (fast, WAL) or FULL (fsync every commit)",
    ),
    (
        "--pool-timeout",
        "pool_timeout",
        float,
        "PostgreSQL: seconds to wait for a pooled connection",
    ),
    (
        "--heartbeat-interval",
        "heartbeat_interval",
        float,
        "WatchTaskEvents: seconds between heartbeats",
    ),
    ("--max-watchers", "max_watchers", int, "WatchTaskEvents: concurrent streams allowed"),
    (
        "--watch-buffer",
        "watch_buffer",
        int,
        "WatchTaskEvents: events buffered per stream before a slow reader is cut off",
    ),
    (
        "--watch-buffer-bytes",
        "watch_buffer_bytes",
        int,
        "WatchTaskEvents: bytes of events buffered per stream before a slow reader is cut off",
    ),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
]


def env_name(field: str) -> str:
    return f"RESINKIT_{field.upper()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resinkit-grpc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "migrate the database, then serve gRPC"),
        ("migrate", "upgrade the database to this version's schema and exit"),
    ):
        command = commands.add_parser(name, help=help_text)
        for flag, field, kind, help_line in OPTIONS:
            default = getattr(DEFAULTS, field)
            command.add_argument(
                flag,
                dest=field,
                type=kind,
                default=None,
                help=f"{help_line} [{env_name(field)}, default {default}]",
            )
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    values: dict[str, Any] = {}
    kinds = {field: kind for _, field, kind, _ in OPTIONS}
    for item in fields(Settings):
        given = getattr(args, item.name, None)
        if given is None and env_name(item.name) in environ:
            raw = environ[env_name(item.name)]
            try:
                given = kinds[item.name](raw)
            except ValueError:
                message = f"resinkit-grpc: error: {env_name(item.name)}={raw!r} is not valid"
                raise SystemExit(message) from None
        if given is not None:
            values[item.name] = given
    settings = Settings(**values)
    if settings.sqlite_synchronous.upper() not in ("NORMAL", "FULL"):
        raise SystemExit("resinkit-grpc: error: --sqlite-synchronous must be NORMAL or FULL")
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from(args, dict(os.environ))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for diagnosing a stuck server.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        if args.command == "migrate":
            writer, reader = create_engines(settings)
            print(f"database at revision {migrate(writer)}")
            writer.dispose()
            reader.dispose()
        else:
            asyncio.run(serve(settings))
    except (DatabaseURLError, SchemaTooNew, ServerError) as exc:
        sys.exit(f"resinkit-grpc: error: {exc}")
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        sys.exit(f"resinkit-grpc: error: cannot use the database: {reason}")


if __name__ == "__main__":
    main()
