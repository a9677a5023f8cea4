"""The service's own metrics, beside the grpc_server_* ones: watch streams, deliveries and
cut-offs, the writer, the connection pools, the tail and the schema.

Values the store and the watch core keep anyway (counts, positions, queue sizes) are read when
Prometheus scrapes, by a collector: the hot paths pay nothing for them. Only the writer's batch
histograms are observed as batches commit (once per batch, not per call)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from resinkit_grpc.store import events
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.items import EndReason
from resinkit_grpc.watch.watches import Watches

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, float("inf"))
COMMIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"),
)  # fmt: skip


class ServiceCollector(Collector):
    def __init__(self, database: Database, watches: Watches, revision: str) -> None:
        self._db = database
        self._watches = watches
        self._revision = revision

    def collect(self) -> Iterator[Any]:
        watches = self._watches
        yield GaugeMetricFamily(
            "resinkit_watch_streams", "WatchTaskEvents streams open.", value=watches.active
        )
        yield CounterMetricFamily(
            "resinkit_watch_events_delivered",
            "Events handed to WatchTaskEvents streams (each stream counts its own).",
            value=watches.delivered,
        )
        ended = CounterMetricFamily(
            "resinkit_watch_streams_ended",
            "WatchTaskEvents streams the server ended, by reason (SLOW_CONSUMER: cut off).",
            labels=["reason"],
        )
        for reason in EndReason:
            ended.add_metric([reason.name], watches.endings[reason])
        yield ended
        yield CounterMetricFamily(
            "resinkit_tail_commit_watch_restarts",
            "Times the tail's commit watcher (LISTEN, or SQLite's data_version poll) failed and "
            "was restarted.",
            value=watches.tail.commit_watch_restarts,
        )
        position = watches.tail.position
        yield GaugeMetricFamily(
            "resinkit_tail_position", "The last event_id the tail has read.", value=position
        )
        try:
            last = self._db.run_read(events.last_event_id)
        except Exception as error:  # the database is down: say so, and skip the lag
            log.debug("metrics: cannot read the log's end: %s", type(error).__name__)
            yield GaugeMetricFamily("resinkit_database_up", "Whether the database answers.", 0)
        else:
            yield GaugeMetricFamily("resinkit_database_up", "Whether the database answers.", 1)
            yield GaugeMetricFamily(
                "resinkit_tail_lag_events",
                "Events committed to the table that the tail has not read yet.",
                value=max(0, last - position),
            )
        yield GaugeMetricFamily(
            "resinkit_writer_queue_depth",
            "Writes waiting for the writer thread.",
            value=self._db.writer.queued(),
        )
        pools = GaugeMetricFamily(
            "resinkit_db_pool_connections_in_use",
            "Database connections checked out of each pool.",
            labels=["pool"],
        )
        for name, engine in (
            ("writer", self._db.writer_engine),
            ("reader", self._db.reader_engine),
        ):
            checked_out = getattr(engine.pool, "checkedout", None)
            if checked_out is not None:
                pools.add_metric([name], checked_out())
        yield pools
        yield InfoMetricFamily(
            "resinkit_schema", "The database's schema revision.", value={"revision": self._revision}
        )


def register(
    registry: CollectorRegistry, database: Database, watches: Watches, revision: str
) -> None:
    registry.register(ServiceCollector(database, watches, revision))
    batch_size = Histogram(
        "resinkit_writer_batch_size",
        "Writes committed together in one transaction.",
        buckets=BATCH_SIZE_BUCKETS,
        registry=registry,
    )
    commit_seconds = Histogram(
        "resinkit_writer_commit_seconds",
        "Time one write transaction took, from BEGIN to COMMIT.",
        buckets=COMMIT_BUCKETS,
        registry=registry,
    )

    def observed(size: int, seconds: float) -> None:
        batch_size.observe(size)
        commit_seconds.observe(seconds)

    database.writer.on_batch = observed
