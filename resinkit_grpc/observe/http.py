"""The metrics endpoint: Prometheus text at http://HOST:PORT/metrics, served by
prometheus-client's own HTTP server on a thread of its own (a scrape never waits for the event
loop, and the event loop never waits for a scrape)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)


def new_registry() -> CollectorRegistry:
    """A registry of this server's own (not the module-global one), with the process, Python
    and GC collectors the Prometheus client libraries usually export."""
    # No *_created series beside every counter: noise to most dashboards. (Process-wide; this
    # process exports nothing else.)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsEndpoint:
    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, _, port = address.rpartition(":")
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=registry
        )
        self.address = f"{host}:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
