"""scripts/bench: start a real server on a temporary database and measure, in one run:
unary throughput against the empty RPC, watch delivery latency, ListTasks at depth, and the
cost of full durability. Prints a table; --json PATH writes every figure."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import machine, scale, unary, watch, webhooks
from benchmarks.consoles import OpenConsoles
from tests.databases import POSTGRES_ENV, Databases
from tests.servers import ServerProcess

# (figure, at least/most, target) per the performance issue.
UNARY_TARGETS = {
    "CreateTask": 0.5,
    "GetTask": 0.7,
    "UpdateTaskStatus": 0.5,
    "ListTasks": 0.2,
    # Tasks created per second, in batches of 100, against the empty RPC's calls per second.
    "BatchCreateTasks": 5.0,
}
DEEP_PAGE_MAX_RATIO = 1.5
WATCH_P50_ONE_MS = 5.0
WATCH_P50_ACROSS_MS = 10.0  # committed on one replica, delivered by another
WATCH_P99_THOUSAND_MS = 100.0
RSS_THOUSAND_MIB = 150.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under two minutes")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run that exercises every phase (for the test suite)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resinkit-grpc",
        help="where the large ListTasks database is kept between runs",
    )
    parser.add_argument(
        "--watch-rate",
        type=float,
        default=20.0,
        help="events per second written during the watch phase (each reaches every watcher)",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="more flags for the unary and watch phases' server, e.g. "
        "'--metrics-address 127.0.0.1:0' (to measure what metrics cost)",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL URL (postgresql+psycopg://USER@HOST/DB, a database we may CREATE "
        "DATABASE from): every phase then runs against fresh databases made there, dropped at "
        "the end (the durability phase is SQLite's and is skipped); default: SQLite files",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="with --database-url: start this many servers on the one database; unary clients "
        "take turns among them, and the watch phase also writes through one and watches on "
        "another",
    )
    parser.add_argument(
        "--consoles",
        type=int,
        default=0,
        help="after the unary phase, run it again in rounds measured with no console, with one "
        "console stream and with this many (the server then serves --console-address)",
    )
    parser.add_argument(
        "--phases",
        default="unary,watch,scale,durability,webhooks",
        help="comma-separated subset of unary,watch,scale,durability,webhooks,large-unary (the "
        "unary phase again, on a copy of the scale phase's 1,000,000-task database; not by "
        "default)",
    )
    return parser.parse_args()


def profile(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        return dict(
            duration=0.5,
            rounds=1,
            warmup=0.2,
            clients=1,
            concurrency=4,
            watchers=(1, 20),
            watch_events=5,
            tasks=5_000,
            depth=8,
            repeats=3,
        )
    if args.quick:
        return dict(
            duration=4.0,
            rounds=4,
            warmup=0.3,
            clients=2,
            concurrency=16,
            watchers=(1, 100, 1000),
            watch_events=30,
            tasks=100_000,
            depth=100,
            repeats=10,
        )
    return dict(
        duration=10.0,
        rounds=5,
        warmup=0.5,
        clients=2,
        concurrency=16,
        watchers=(1, 100, 1000),
        watch_events=100,
        tasks=1_000_000,
        depth=1000,
        repeats=20,
    )


def main() -> None:
    args = parse_args()
    settings = profile(args)
    if args.replicas > 1 and not args.database_url:
        sys.exit("--replicas needs --database-url: replicas share a PostgreSQL database")
    phases = set(args.phases.split(","))
    report: dict[str, Any] = {
        "machine": machine.describe(),
        "settings": settings,
        "server_args": args.server_args,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
    }
    started = time.monotonic()
    print(
        f"machine: {report['machine']['cores']} cores, {report['machine']['memory_gib']} GiB, "
        f"{report['machine']['cpu']}, Python {report['machine']['python']}"
    )
    report["backend"] = "postgresql" if args.database_url else "sqlite"
    databases = _postgres(args.database_url) if args.database_url else None
    with tempfile.TemporaryDirectory(prefix="resinkit-bench-") as tmp:
        workdir = Path(tmp)
        if phases & {"unary", "watch"}:
            url = (
                databases.new_url("postgresql", workdir)
                if databases
                else f"sqlite:///{workdir / 'bench.db'}"
            )
            servers = [
                ServerProcess(
                    url,
                    workdir,
                    "--max-watchers",
                    "1100",
                    "--log-level",
                    "WARNING",
                    # On PostgreSQL, how long each write transaction holds the append lock.
                    *(["--metrics-address", "127.0.0.1:0"] if databases else []),
                    *(("--console-address", "127.0.0.1:0") if args.consoles else ()),
                    *shlex.split(args.server_args),
                ).start()
                for _ in range(args.replicas)
            ]
            server = servers[0]
            pids = [s.process.pid for s in servers]  # type: ignore[union-attr]
            pid = pids[0]
            try:
                if "unary" in phases:
                    _phase(f"unary RPCs against Health/Check ({args.replicas} replica(s))")
                    results = unary.run(
                        [s.address for s in servers],
                        pids,
                        clients=settings["clients"],
                        concurrency=settings["concurrency"],
                        warmup=settings["warmup"],
                        duration=settings["duration"],
                        rounds=settings["rounds"],
                        metrics_urls=[s.metrics_url for s in servers if s.metrics_url],
                    )
                    report["unary"] = [asdict(r) for r in results]
                if "unary" in phases and args.consoles:
                    _phase(f"unary RPCs without and with {args.consoles} open consoles")
                    report["consoles"] = consoles(server, pid, settings, args.consoles)
                if "watch" in phases:
                    _phase("WatchTaskEvents delivery")
                    results_w = watch.run(
                        server.address,
                        pid,
                        settings["watchers"],
                        events=settings["watch_events"],
                        rate=args.watch_rate,
                    )
                    if len(servers) > 1:
                        _phase("WatchTaskEvents delivery across replicas")
                        results_w += watch.run(
                            servers[1].address,
                            pids[1],
                            settings["watchers"][:2],
                            events=settings["watch_events"],
                            rate=args.watch_rate,
                            write_address=server.address,
                        )
                    report["watch"] = [asdict(r) for r in results_w]
            finally:
                for each in servers:
                    each.stop()
        if "scale" in phases:
            _phase(f"ListTasks depth on {settings['tasks']:,} tasks")
            if args.database_url:
                scale_url, migration = scale.cached_postgres_database(
                    args.database_url, settings["tasks"]
                )
                report["scale_migration_seconds"] = migration
            else:
                scale_url = f"sqlite:///{scale.cached_database(args.cache_dir, settings['tasks'])}"
            server = ServerProcess(scale_url, workdir, "--log-level", "WARNING").start()
            try:
                depth = scale.run(
                    server.address, settings["depth"], settings["repeats"], settings["tasks"]
                )
                report["scale"] = [asdict(r) | {"ratio": r.ratio} for r in depth]
            finally:
                server.stop()
        if "large-unary" in phases:
            _phase(f"unary RPCs on a copy of the {settings['tasks']:,}-task database")
            report["large_unary"] = large_unary(args, settings, workdir)
        if "webhooks" in phases and databases is None:
            _phase("webhooks: CreateTask with one webhook, and deliveries to a local receiver")
            report["webhooks"] = asdict(
                webhooks.run(workdir, settings, tuple(shlex.split(args.server_args)))
            )
        if "durability" in phases and not args.smoke and databases is None:
            _phase("durability: CreateTask with synchronous=NORMAL vs FULL")
            report["durability"] = durability(workdir, settings)
    if databases is not None:
        databases.drop_all()
    report["seconds"] = round(time.monotonic() - started, 1)
    checks = print_table(report)
    report["targets"] = checks
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=_json_default))
        print(f"wrote {args.json}")


def large_unary(
    args: argparse.Namespace, settings: dict[str, Any], workdir: Path
) -> list[dict[str, Any]]:
    """The unary phase on a copy of the large database (its writes must not grow the cache):
    a file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL."""
    import shutil

    import psycopg
    from sqlalchemy.engine import make_url

    if args.database_url:
        source, _ = scale.cached_postgres_database(args.database_url, settings["tasks"])
        admin = make_url(args.database_url)
        raw = admin.set(drivername="postgresql").render_as_string(hide_password=False)
        copy = f"resinkit_bench_large_copy_{os.getpid()}"
        with psycopg.connect(raw, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{make_url(source).database}"')
        url = admin.set(database=copy).render_as_string(hide_password=False)
    else:
        path = workdir / "large.db"
        shutil.copyfile(scale.cached_database(args.cache_dir, settings["tasks"]), path)
        url, copy = f"sqlite:///{path}", ""
    server = ServerProcess(url, workdir, "--log-level", "WARNING").start()
    try:
        results = unary.run(
            server.address,
            server.process.pid,  # type: ignore[union-attr]
            clients=settings["clients"],
            concurrency=settings["concurrency"],
            warmup=settings["warmup"],
            duration=settings["duration"],
            rounds=settings["rounds"],
        )
    finally:
        server.stop()
        if copy:
            with psycopg.connect(raw, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
    return [asdict(r) for r in results]


def _postgres(url: str) -> Databases:
    """Fresh databases on the PostgreSQL server of `url`, made and dropped as the tests do."""
    os.environ[POSTGRES_ENV] = url
    found = Databases()
    if found.unavailable_reason:
        sys.exit(found.unavailable_reason)
    return found


def consoles(
    server: ServerProcess, pid: int, settings: dict[str, Any], streams: int
) -> dict[str, Any]:
    """The unary phase in rounds that alternate without consoles, with one console stream (the
    first listener: the tail reads the log once anybody watches) and with `streams`, so that
    all three meet the same moments of a noisy machine; each method's ratio against the empty
    RPC of the same round."""
    rounds: dict[str, list[list[dict[str, Any]]]] = {"without": [], "one": [], "with": []}
    loads = []
    for _ in range(settings["rounds"]):
        for condition in rounds:
            measure = lambda: unary.run(  # noqa: E731
                server.address,
                pid,
                clients=settings["clients"],
                concurrency=settings["concurrency"],
                warmup=settings["warmup"],
                duration=settings["duration"] / settings["rounds"],
                rounds=1,
            )
            if condition != "without":
                count = streams if condition == "with" else 1
                with OpenConsoles(server.console_url, count) as open_consoles:
                    results = measure()
                assert open_consoles.load is not None
                if condition == "with":
                    loads.append(asdict(open_consoles.load))
            else:
                results = measure()
            rounds[condition].append([asdict(r) for r in results])
    figures: dict[str, Any] = {"streams": streams, "loads": loads, "methods": {}}
    for method in unary.METHODS:
        row: dict[str, Any] = {}
        for condition, measured in rounds.items():
            rates = [next(r for r in rs if r["method"] == method)["per_second"] for rs in measured]
            empty = [
                next(r for r in rs if r["method"] == "Health/Check")["per_second"]
                for rs in measured
            ]
            ratios = [rate / base for rate, base in zip(rates, empty, strict=True) if base]
            cpu = [
                next(r for r in rs if r["method"] == method)["cpu_us_per_call"] for rs in measured
            ]
            row[condition] = {
                "per_second": sum(rates) / len(rates),
                "server_cpu_us_per_call": sum(cpu) / len(cpu),
                "ratio": sum(ratios) / len(ratios) if ratios else float("nan"),
                "round_ratios": ratios,
            }
        figures["methods"][method] = row
    return figures


def durability(workdir: Path, settings: dict[str, Any]) -> dict[str, float]:
    import multiprocessing

    rates = {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(settings["clients"]) as pool:
        for level in ("NORMAL", "FULL"):
            server = ServerProcess(
                f"sqlite:///{workdir / f'durable-{level}.db'}",
                workdir,
                "--sqlite-synchronous",
                level,
                "--log-level",
                "WARNING",
            ).start()
            try:
                tally = unary.Tally()
                unary.measure(
                    pool,
                    server.address,
                    server.process.pid,  # type: ignore[union-attr]
                    "CreateTask",
                    tally,
                    clients=settings["clients"],
                    concurrency=settings["concurrency"],
                    warmup=settings["warmup"],
                    duration=settings["duration"],
                    task_ids=[],
                )
                rates[level] = tally.figures("CreateTask").per_second
            finally:
                server.stop()
    return {
        "create_per_second_normal": rates["NORMAL"],
        "create_per_second_full": rates["FULL"],
        "full_over_normal": rates["FULL"] / rates["NORMAL"],
    }


def print_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float, limit: float, at_least: bool) -> str:
        ok = value >= limit if at_least else value <= limit
        checks.append(
            {"figure": name, "value": value, "target": limit, "at_least": at_least, "met": ok}
        )
        return f"{'>=' if at_least else '<='} {limit:g} {'ok' if ok else 'MISSED'}"

    for key, title in (("unary", ""), ("large_unary", " (on the large database)")):
        if key not in report:
            continue
        rows = report[key]
        if title:
            print(f"\nunary RPCs{title}")
        empty = next(r for r in rows if r["method"] == "Health/Check")
        print(
            f"\n{'method':<22}{'calls/s':>10}{'ratio':>8}{'rounds':>12}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU µs/call':>13}{'errors':>8}  target"
        )
        for r in rows:
            items = r.get("items_per_call", 1)
            ratio = r["per_second"] * items / empty["per_second"]
            # Each round's ratio against the empty RPC of the same round: how far the machine's
            # noise moved the figure within this run.
            by_round = [
                rate * items / base
                for rate, base in zip(r["round_rates"], empty["round_rates"], strict=True)
                if base
            ]
            r["round_ratios"] = by_round
            spread = f"{min(by_round):.2f}-{max(by_round):.2f}" if by_round else "-"
            target = UNARY_TARGETS.get(r["method"])
            name = r["method"] + (f" x{items}" if items > 1 else "")
            per = " (tasks/s / empty calls/s)" if items > 1 else ""
            verdict = check(f"{name} / empty RPC{per}", ratio, target, True) if target else ""
            print(
                f"{name:<22}{r['per_second']:>10.0f}{ratio:>8.2f}{spread:>12}"
                f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['cpu_us_per_call']:>13.0f}"
                f"{r['errors']:>8}  {verdict}"
            )
        held = [r for r in rows if r.get("mean_hold_ms") == r.get("mean_hold_ms")]  # not NaN
        if held:
            print(
                "\nwrite transactions, BEGIN to COMMIT (PostgreSQL holds the event-append lock "
                "throughout; with several replicas this includes waiting for it)"
            )
            for r in held:
                ceiling = r["mean_batch"] * r.get("items_per_call", 1) / r["mean_hold_ms"] * 1000
                print(
                    f"  {r['method']:<20} {r['mean_batch']:6.1f} operations per batch, "
                    f"{r['mean_hold_ms']:6.2f} ms each: the lock passes at most "
                    f"{ceiling:,.0f} writes/s at these batch sizes"
                )
    if "watch" in report:
        print(
            f"\n{'watchers':<10}{'events/s':>9}{'deliveries':>11}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU µs/deliv':>14}{'server RSS MiB':>16}  target"
        )
        for r in report["watch"]:
            verdicts = []
            if r.get("across_replicas"):
                if r["watchers"] == 1:
                    verdicts.append(
                        "p50 across replicas "
                        + check(
                            "watch p50 across replicas, 1 watcher (ms)",
                            r["p50_ms"],
                            WATCH_P50_ACROSS_MS,
                            False,
                        )
                    )
            elif r["watchers"] == 1:
                verdicts.append(
                    "p50 "
                    + check("watch p50, 1 watcher (ms)", r["p50_ms"], WATCH_P50_ONE_MS, False)
                )
            if r["watchers"] == 1000 and not r.get("across_replicas"):
                verdicts.append(
                    "p99 "
                    + check(
                        "watch p99, 1000 watchers (ms)", r["p99_ms"], WATCH_P99_THOUSAND_MS, False
                    )
                )
                verdicts.append(
                    "RSS "
                    + check(
                        "server RSS, 1000 watchers (MiB)",
                        r["server_rss_mib"],
                        RSS_THOUSAND_MIB,
                        False,
                    )
                )
            print(
                f"{str(r['watchers']) + (' x' if r.get('across_replicas') else ''):<10}"
                f"{r['rate']:>9.0f}{r['deliveries']:>11}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['server_cpu_us_per_delivery']:>14.1f}"
                f"{r['server_rss_mib']:>16.0f}  {'; '.join(verdicts)}"
            )
    if "consoles" in report:
        c = report["consoles"]
        print(
            f"\n{'':<18}{'no console':>26}{'one console':>26}{str(c['streams']) + ' consoles':>26}"
            f"{'':>10}\n{'method':<18}"
            + f"{'calls/s':>10}{'ratio':>8}{'CPU µs':>8}" * 3
            + f"{'N/one':>8}  target"
        )
        for method, row in c["methods"].items():
            cells = "".join(
                f"{row[k]['per_second']:>10.0f}{row[k]['ratio']:>8.2f}"
                f"{row[k]['server_cpu_us_per_call']:>8.0f}"
                for k in ("without", "one", "with")
            )
            target = UNARY_TARGETS.get(method)
            verdict = (
                check(
                    f"{method} / empty RPC, {c['streams']} consoles open",
                    row["with"]["ratio"],
                    target,
                    True,
                )
                if target
                else ""
            )
            print(
                f"{method:<18}{cells}{row['with']['ratio'] / row['one']['ratio']:>8.2f}  {verdict}"
            )
        events = sum(load["events"] for load in c["loads"])
        reconnects = sum(load["reconnects"] for load in c["loads"])
        client = sum(load["client_cpu_seconds"] for load in c["loads"])
        print(
            f"console streams received {events:,} events, resumed {reconnects} times; reading "
            f"them took the client process {client:.1f} s of CPU on the same cores"
        )
    if "scale" in report:
        print(
            f"\n{'ListTasks shape':<24}{'order_by':<16}{'first ms':>10}{'deep ms':>10}{'depth':>7}"
            f"{'deep/first':>12}  target (first <= {scale.FIRST_PAGE_MAX_MS:g} ms, "
            f"deep/first <= {DEEP_PAGE_MAX_RATIO:g})"
        )
        for r in report["scale"]:
            verdicts = [
                "first "
                + check(
                    f"first page ms, {r['filter']}",
                    r["first_page_ms"],
                    scale.FIRST_PAGE_MAX_MS,
                    False,
                )
            ]
            if r["depth"] > 1:
                verdicts.append(
                    "deep "
                    + check(
                        f"deep/first page, {r['filter']}",
                        r["ratio"],
                        DEEP_PAGE_MAX_RATIO,
                        False,
                    )
                )
            print(
                f"{r['filter']:<24}{r['order_by'] or 'created_at desc':<16}"
                f"{r['first_page_ms']:>10.2f}{r['deep_page_ms']:>10.2f}"
                f"{r['depth']:>7}{r['ratio']:>12.2f}  {'; '.join(verdicts)}"
            )
    if "webhooks" in report:
        w = report["webhooks"]
        print(
            f"\nwebhooks: CreateTask {w['create_ratio']:.2f} of the empty RPC "
            f"({w['create_cpu_us']:.0f} µs CPU/call), with one webhook "
            f"{w['create_with_webhook_ratio']:.2f} ({w['create_with_webhook_cpu_us']:.0f} µs); "
            f"delivered {w['delivered_under_load_per_second']:.0f}/s under that load, the backlog "
            f"at {w['drain_per_second']:.0f}/s ({w['delivered']} in all)"
        )
    if "durability" in report:
        d = report["durability"]
        print(
            f"\nCreateTask/s synchronous=NORMAL {d['create_per_second_normal']:.0f}, FULL "
            f"{d['create_per_second_full']:.0f} (FULL/NORMAL {d['full_over_normal']:.2f})"
        )
    print(f"\n{sum(c['met'] for c in checks)}/{len(checks)} targets met in {report['seconds']} s")
    return checks


def _phase(title: str) -> None:
    print(f"- {title}", file=sys.stderr, flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
