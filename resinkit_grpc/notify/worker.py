"""The delivery worker of one replica: claims due deliveries (store/deliveries.py), sends each
attempt with aiohttp, and settles it: DELIVERED on a 2xx, DISABLED on 410 Gone, else tried
again on the schedule (notify/schedule.py) until its last attempt fails and it is DEAD.

It looks for due deliveries when this process commits one (a wake-up), when an attempt of its
own ends, and every --webhook-poll-interval seconds (which finds what other replicas queued and
retries falling due). Looking is a read; only a find is followed by the claiming write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from resinkit_grpc.api.status import log_unexpected
from resinkit_grpc.config import Settings
from resinkit_grpc.errors import ResinkitError
from resinkit_grpc.notify.guard import GuardedResolver, RefusedAddress, check_url
from resinkit_grpc.notify.metrics import DeliveryMetrics
from resinkit_grpc.notify.payload import UnknownSecret, body, headers
from resinkit_grpc.notify.schedule import Schedule, parse_schedule, retry_after_seconds
from resinkit_grpc.notify.secrets import WebhookSecrets
from resinkit_grpc.store import deliveries
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.deliveries import (
    DEAD,
    DELIVERED,
    DISABLED,
    PENDING,
    Attempt,
    Outcome,
)

log = logging.getLogger(__name__)

# Of a response, at most this much is read (then the connection is let go).
MAX_RESPONSE_BYTES = 64 * 1024
# After a wake-up, how long to let more commits gather before looking (one look and one claim
# then serve them all, instead of one per commit).
GATHER_SECONDS = 0.005
# Due deliveries one look reads at most.
MAX_LOOK = 1000


class DeliveryWorker:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        secrets: WebhookSecrets,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self._db = database
        self._settings = settings
        self._secrets = secrets
        self._metrics = metrics
        self._schedule = Schedule(parse_schedule(settings.webhook_retry_schedule))
        self._timeout = settings.webhook_timeout
        # Longer than any attempt can take (the request's timeout, then settling it), so that a
        # claim runs out only when its worker is gone.
        self._lease = timedelta(seconds=2 * settings.webhook_timeout + 5)
        self._token = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._seen = deliveries.Enqueued.last
        self._in_flight: set[asyncio.Task[None]] = set()
        self._hosts: dict[asyncio.Task[None], str] = {}  # the host of each attempt in flight
        # Attempts that ended and are not yet recorded, and the task recording them.
        self._ended: list[tuple[Attempt, Outcome, datetime]] = []
        self._settling: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            limit=settings.webhook_concurrency,
            limit_per_host=settings.webhook_per_host,
            resolver=None if settings.webhook_allow_private else GuardedResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # No proxies from the environment, no cookies kept between receivers.
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._db.on_commit(self._committed, wanted=self._queued_since)
        self._runner = asyncio.create_task(self._run(), name="webhook-deliveries")

    def _queued_since(self) -> bool:  # on the writer thread
        return deliveries.Enqueued.last != self._seen

    def _committed(self) -> None:
        self._seen = deliveries.Enqueued.last
        self._wake.set()

    async def close(self, grace: float) -> None:
        """Stops claiming; attempts in flight get `grace` seconds to finish (those cut off are
        made again once their lease runs out, by whichever replica gets there first)."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            # wait(), not `await self._runner` under suppress(CancelledError): that would
            # also swallow a cancellation of close() itself.
            await asyncio.wait([self._runner])
        if self._in_flight:
            _, cut = await asyncio.wait(self._in_flight, timeout=grace)
            for task in cut:
                task.cancel()
            if cut:
                await asyncio.wait(cut)
        if self._settling is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace, 1.0)):
                    await self._settling
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            more = False
            try:
                more = await self._claim_some()
            except ResinkitError as error:  # the database is away: next time
                log.warning("could not claim webhook deliveries: %s", error.message)
            except Exception as error:  # a bug: logged, and the worker goes on
                log_unexpected("webhook deliveries", error)
            if more:
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the wake-up does (a commit during shutdown), and close() would wait for
            # this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.webhook_poll_interval):
                    await self._wake.wait()
            # Let the commits of a busy moment gather: one look then claims them together.
            await asyncio.sleep(GATHER_SECONDS)

    async def _claim_some(self) -> bool:
        """Claims and starts what is due, as far as there is room; whether there may be more."""
        room = self._settings.webhook_concurrency - len(self._in_flight)
        if room <= 0:
            return False
        now = utcnow()
        # More than there is room for: those of hosts at their --webhook-per-host are passed
        # over, so one slow host never takes every slot (nor times out waiting for its own).
        found = await self._db.read(deliveries.find_due, now, min(4 * room, MAX_LOOK))
        chosen: list[int] = []
        hosts = Counter(self._hosts.values())
        for delivery_id, url in found:
            host = _host(url)
            if len(chosen) < room and hosts[host] < self._settings.webhook_per_host:
                chosen.append(delivery_id)
                hosts[host] += 1
        if not chosen:
            return False
        claimed = await self._db.write(
            deliveries.claim, chosen, now, now + self._lease, self._token
        )
        for attempt in claimed:
            task = asyncio.create_task(self._deliver(attempt), name="webhook-attempt")
            self._in_flight.add(task)
            self._hosts[task] = _host(attempt.url)
            task.add_done_callback(self._attempt_ended)
        return len(chosen) == room

    def _attempt_ended(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._hosts.pop(task, None)

    async def _deliver(self, attempt: Attempt) -> None:
        began = time.monotonic()
        try:
            outcome = await self._send(attempt)
        except Exception as error:  # a bug: the attempt fails (on the schedule), never hangs
            log_unexpected("webhook attempt", error)
            outcome = self._failed(attempt, None, "the attempt failed in the server", None)
        if self._metrics is not None:
            self._metrics.attempted(outcome.state, time.monotonic() - began)
        self._ended.append((attempt, outcome, utcnow()))
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(self._settle(), name="webhook-settle")

    async def _settle(self) -> None:
        """Records the attempts that ended: all that ended meanwhile in one write, one write at
        a time; then looks for what they let through (room, and each task's next delivery)."""
        while self._ended:
            batch, self._ended = self._ended, []
            try:
                settled = await self._db.write(deliveries.settle_all, batch, self._token)
            except ResinkitError as error:
                # Unsettled, their leases run out and the attempts are made again.
                log.warning("could not record %d webhook deliveries: %s", len(batch), error.message)
                continue
            except Exception as error:  # a bug: logged; the leases run out, as above
                log_unexpected("webhook settle", error)
                continue
            for (attempt, outcome, _), ours in zip(batch, settled, strict=True):
                if not ours:
                    log.warning(
                        "webhook delivery %s: its claim ran out before the attempt ended; "
                        "another worker has it",
                        attempt.message_id,
                    )
                elif outcome.state != DELIVERED:
                    log.info(
                        "webhook delivery %s to %s, attempt %d: %s (%s)",
                        attempt.message_id,
                        attempt.url,
                        attempt.attempt,
                        outcome.state,
                        outcome.error,
                    )
            if not self._closing:
                self._wake.set()

    async def _send(self, attempt: Attempt) -> Outcome:
        assert self._session is not None
        now = utcnow()
        status: int | None = None
        retry_after = None
        try:
            if not self._settings.webhook_allow_private:
                check_url(attempt.url)
            text = body(attempt)
            sent = headers(attempt, text, self._secrets, now)
            async with self._session.post(
                attempt.url, data=text.encode(), headers=sent, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), utcnow())
                await response.content.read(MAX_RESPONSE_BYTES)
        except UnknownSecret as missing:
            error = f"the server holds no webhook secret {str(missing)[:60]!r}"
        except RefusedAddress as refused:
            error = f"refused: {refused}"
        except TimeoutError:
            error = f"no response within {self._timeout:g} s"
        except aiohttp.ClientConnectorError as failed:
            cause = failed.os_error
            if isinstance(cause, RefusedAddress):
                error = f"refused: {cause}"
            else:
                error = f"cannot connect: {cause.strerror or type(cause).__name__}"
        except aiohttp.ClientError as failed:
            error = f"request failed: {_describe(failed)}"
        else:
            if 200 <= status < 300:
                return Outcome(DELIVERED, status)
            if status == 410:
                return Outcome(DISABLED, status, "410 Gone: the webhook is disabled for this task")
            error = f"HTTP {status}"
        return self._failed(attempt, status, error, retry_after)

    def _failed(
        self, attempt: Attempt, status: int | None, error: str, retry_after: float | None
    ) -> Outcome:
        """A failed attempt: the next on the schedule, or DEAD after the last."""
        delay = self._schedule.after_failure(attempt.attempt, retry_after)
        if delay is None:
            return Outcome(DEAD, status, f"{error}; that was the last attempt")
        return Outcome(PENDING, status, error, utcnow() + timedelta(seconds=delay))


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _describe(error: Any) -> str:
    """A client error in a few words, without the receiver's text."""
    if isinstance(error, aiohttp.ClientResponseError):
        return f"HTTP {error.status}"
    return type(error).__name__
