"""Delivery metrics (with --metrics-address): attempts by outcome and their latency, observed as
attempts end; the queue (pending deliveries, the oldest one's age), read when Prometheus
scrapes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from resinkit_grpc.store import deliveries
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.database import Database

log = logging.getLogger(__name__)

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, float("inf"))
OUTCOMES = {
    deliveries.DELIVERED: "delivered",
    deliveries.PENDING: "retry",
    deliveries.DEAD: "dead",
    deliveries.DISABLED: "disabled",
}


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry, database: Database) -> None:
        self._attempts = Counter(
            "resinkit_webhook_attempts",
            "Webhook delivery attempts this replica made, by outcome (retry: failed, to be "
            "tried again; dead: failed for the last time; disabled: 410 Gone).",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES.values():
            self._attempts.labels(outcome)
        self._seconds = Histogram(
            "resinkit_webhook_attempt_seconds",
            "Time one webhook delivery attempt took, from its request to its answer.",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        registry.register(_QueueCollector(database))

    def attempted(self, state: str, seconds: float) -> None:
        self._attempts.labels(OUTCOMES[state]).inc()
        self._seconds.observe(seconds)


class _QueueCollector(Collector):
    def __init__(self, database: Database) -> None:
        self._db = database

    def collect(self) -> Iterator[Any]:
        try:
            queue = self._db.run_read(deliveries.queue_state)
        except Exception as error:  # the database is down: resinkit_database_up says so
            log.debug("metrics: cannot read the delivery queue: %s", type(error).__name__)
            return
        yield GaugeMetricFamily(
            "resinkit_webhook_pending_deliveries",
            "Webhook deliveries not yet delivered, dead or disabled (every replica's).",
            value=queue.pending,
        )
        age = 0.0
        if queue.oldest_pending is not None:
            age = max(0.0, (utcnow() - queue.oldest_pending).total_seconds())
        yield GaugeMetricFamily(
            "resinkit_webhook_oldest_pending_age_seconds",
            "How long the oldest pending webhook delivery has waited (0: none pending).",
            value=age,
        )
