"""What open consoles cost the gRPC API: N console streams (GET /api/events with no filter,
as the task table's page opens it: every event reaches every stream) held by a client process
of their own, resuming by Last-Event-ID as the page does when the server ends one."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from benchmarks.machine import cpu_seconds

OPEN_TIMEOUT = 60.0
# The streams' filter (the table page of everything: none); RESINKIT_BENCH_CONSOLE_QUERY=?type=x
# measures consoles that receive nothing.
QUERY = os.environ.get("RESINKIT_BENCH_CONSOLE_QUERY", "")


@dataclass
class ConsoleLoad:
    streams: int
    events: int  # events received, over every stream
    heartbeats: int
    reconnects: int  # streams the server ended (SLOW_CONSUMER, ...) and the client resumed
    client_cpu_seconds: float  # what reading them cost this machine (it shares the cores)


def _hold(url: str, streams: int, ready: Any, stop: Any, results: Any) -> None:
    results.put(asyncio.run(_streams(url, streams, ready, stop)))


async def _streams(url: str, streams: int, ready: Any, stop: Any) -> dict[str, int]:
    tally = {"events": 0, "heartbeats": 0, "reconnects": 0}
    opened = 0
    all_open = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        last: str | None = None
        first = True
        while True:
            headers = {"Last-Event-ID": last} if last is not None else {}
            async with session.get(url + "api/events" + QUERY, headers=headers) as response:
                assert response.status == 200, response.status
                if first:
                    first = False
                    opened += 1
                    if opened == streams:
                        all_open.set()
                # Counted in C (bytes.count), as cheaply as a client can: the figure is what
                # the server pays, and this client shares the machine with it.
                tail = b""
                async for chunk in response.content.iter_any():
                    tally["events"] += chunk.count(b"event: task_event\n")
                    tally["heartbeats"] += chunk.count(b"event: heartbeat\n")
                    tail = (tail + chunk)[-512:]
                    if b"event: purged\n" in chunk:
                        return
                last = _last_id(tail) or last
            tally["reconnects"] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(streams)]
        await asyncio.wait_for(all_open.wait(), OPEN_TIMEOUT)
        ready.set()
        # The stop flag is a process-shared Event: waited for on a thread, not polled.
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tally


def _last_id(tail: bytes) -> str | None:
    """The last complete `id:` line of a stream's last bytes."""
    lines = tail.split(b"\n")[:-1]
    for line in reversed(lines):
        if line.startswith(b"id: "):
            return line[4:].decode()
    return None


class OpenConsoles:
    """`with OpenConsoles(url, 100) as load:` holds 100 live streams open inside the block."""

    def __init__(self, console_url: str, streams: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.streams = streams
        self._ready = context.Event()
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_hold,
            args=(console_url, streams, self._ready, self._stop, self._results),
            daemon=True,
        )
        self.load: ConsoleLoad | None = None

    def __enter__(self) -> OpenConsoles:
        self._process.start()
        if not self._ready.wait(OPEN_TIMEOUT):
            self._process.kill()
            raise RuntimeError(f"{self.streams} console streams did not open")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._process.pid is not None
        client_cpu = cpu_seconds(self._process.pid)
        self._stop.set()
        tally = self._results.get(timeout=OPEN_TIMEOUT)
        tally["client_cpu_seconds"] = round(client_cpu, 2)
        self._process.join(OPEN_TIMEOUT)
        self.load = ConsoleLoad(self.streams, **tally)
