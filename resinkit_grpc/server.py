"""Builds and runs the aio server: migrations first, then TaskService, health and reflection;
on SIGTERM/SIGINT health goes NOT_SERVING and in-flight RPCs get a grace period."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from resinkit_grpc.api.gate import ShutdownGate, drain
from resinkit_grpc.api.health import Health
from resinkit_grpc.api.page_tokens import PageTokens
from resinkit_grpc.api.parse import WebhookRules
from resinkit_grpc.api.registration import add_health_service, add_task_service
from resinkit_grpc.api.servicer import TaskService
from resinkit_grpc.api.status import log_unexpected
from resinkit_grpc.config import Settings
from resinkit_grpc.errors import ResinkitError
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.notify.metrics import DeliveryMetrics
from resinkit_grpc.notify.secrets import WebhookSecrets
from resinkit_grpc.notify.worker import DeliveryWorker
from resinkit_grpc.observe import service as service_metrics
from resinkit_grpc.observe import tracing
from resinkit_grpc.observe.http import MetricsEndpoint, new_registry
from resinkit_grpc.observe.rpcs import Observer, RpcMetrics
from resinkit_grpc.security.auth import Authenticator
from resinkit_grpc.security.tls import CertificateFiles, ReloadingCredentials
from resinkit_grpc.security.tokens import TokenFile
from resinkit_grpc.store import name_index
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.database import Database
from resinkit_grpc.store.expiry import due_for_expiry, expire_tasks
from resinkit_grpc.store.migrations import migrate, require_head
from resinkit_grpc.store.requests import purge_requests
from resinkit_grpc.store.retention import purge_batch
from resinkit_grpc.store.tasks import load_or_create_secret
from resinkit_grpc.watch.watches import Watches

log = logging.getLogger(__name__)

# gen0 allocations before a collection (default 700), and how often older generations follow.
GC_THRESHOLDS = (50_000, 20, 100)
PURGE_INTERVAL_SECONDS = 600.0
# Tasks one expiry write moves at most (each with its event).
EXPIRY_BATCH = 100
# How often the SQLite name index takes in the log's new events (store/name_index.py): a page
# with name_contains also reads the events it has not taken in yet (about 10 µs each), so they
# stay few.
NAME_INDEX_INTERVAL_SECONDS = 0.1
NAME_INDEX_RETRY_SECONDS = 10.0
# Once the gate is closed, how long no call must arrive before the server stops.
GATE_QUIET_SECONDS = 0.1
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskService"].full_name


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        # Never share a port with another process: a second server on the same address fails.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
    ]


class ServerError(RuntimeError):
    """The server cannot start; the message is one line for the operator."""


class Server:
    """One running instance: the database, the gRPC server and its health status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tls: ReloadingCredentials | None = None
        if settings.tls_cert:  # TLSError: one line, before anything else is touched
            self.tls = ReloadingCredentials(
                CertificateFiles(
                    Path(settings.tls_cert),
                    Path(settings.tls_key),
                    Path(settings.tls_client_ca) if settings.tls_client_ca else None,
                )
            )
        authenticator = None
        self.tokens: TokenFile | None = None
        if settings.auth_tokens_file:  # TokensError: one line, before anything is touched
            tokens = self.tokens = TokenFile(Path(settings.auth_tokens_file))
            authenticator = Authenticator(tokens, protect_reflection=settings.auth_reflection)
        if settings.otel:
            tracing.available()  # one line without the extra, before anything is touched
        # SecretsError: one line, before anything is touched.
        self.webhook_secrets = WebhookSecrets(
            Path(settings.webhook_secrets_file) if settings.webhook_secrets_file else None
        )
        self.database = Database(settings)
        interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
        # Outermost: calls the gate or authentication refuse are counted and logged too.
        self.registry = new_registry() if settings.metrics_address else None
        rpc_metrics = None
        if self.registry is not None:
            rpc_metrics = RpcMetrics(
                self.registry,
                (
                    pb.DESCRIPTOR.services_by_name["TaskService"],
                    health_pb2.DESCRIPTOR.services_by_name["Health"],
                    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
                ),
            )
        interceptors.append(Observer(rpc_metrics, mutual_tls=bool(settings.tls_client_ca)))
        if settings.otel:  # a span per RPC, refused ones included, with its statements beneath
            engines = [self.database.writer_engine, self.database.reader_engine]
            interceptors.append(tracing.start(engines))
        self.gate = ShutdownGate()
        interceptors.append(self.gate)
        if authenticator is not None:
            interceptors.append(authenticator)
        self.health = Health()
        self.grpc_server = grpc.aio.server(
            options=server_options(settings),
            interceptors=interceptors,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.watches = Watches(self.database, settings)
        self.deliveries = DeliveryWorker(
            self.database,
            settings,
            self.webhook_secrets,
            None if self.registry is None else DeliveryMetrics(self.registry, self.database),
        )
        self.port = 0
        self.metrics: MetricsEndpoint | None = None
        self.console: Any = None  # console.app.Console, with --console-address
        self._purging: asyncio.Task[None] | None = None
        # Expiry and retention (see _expire_due_tasks, _purge_old_tasks), when switched on.
        self._jobs: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        check = require_head if self.settings.no_migrate else migrate
        revision = await asyncio.to_thread(check, self.database.writer_engine)
        log.info("database at revision %s", revision)
        secret = await self.database.write(load_or_create_secret, "page_tokens")
        await self.watches.start()
        page_tokens = PageTokens(bytes.fromhex(secret))
        service = TaskService(
            self.database,
            page_tokens,
            self.watches,
            mutual_tls=bool(self.settings.tls_client_ca),
            webhooks=WebhookRules(
                allow_private=self.settings.webhook_allow_private,
                known_secret=self.webhook_secrets.knows
                if self.webhook_secrets.configured
                else lambda _: False,
            ),
        )
        add_task_service(service, self.grpc_server)
        add_health_service(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        address = self.settings.address
        try:
            if self.tls is not None:
                self.port = self.grpc_server.add_secure_port(address, self.tls.credentials())
            else:
                self.port = self.grpc_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServerError(f"cannot listen on {address}") from exc
        if self.tls is None and not _loopback(address):
            log.warning(
                "serving plaintext on %s, beyond this machine: anyone who can reach it reads "
                "and changes every task; give --tls-cert and --tls-key",
                address,
            )
        await self.grpc_server.start()
        if self.registry is not None:
            service_metrics.register(self.registry, self.database, self.watches, revision)
            try:
                self.metrics = MetricsEndpoint(self.settings.metrics_address, self.registry)
            except OSError as exc:
                raise ServerError(
                    f"cannot serve metrics on {self.settings.metrics_address}"
                ) from exc
            print(f"metrics on http://{self.metrics.address}/metrics", flush=True)
        if self.settings.console_address:
            await self._start_console(page_tokens)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # Everything built so far lives as long as the server: keep it out of the cyclic
        # collector's way, and collect less often. Full collections walking every object
        # were the tail of watch delivery latency (and of unary p99) under load.
        self._purging = asyncio.create_task(self._purge_request_ids(), name="purge-request-ids")
        await self.deliveries.start()
        if self.settings.expire_tasks:
            self._jobs.append(asyncio.create_task(self._expire_due_tasks(), name="expiry"))
        if self.settings.retention:
            self._jobs.append(asyncio.create_task(self._purge_old_tasks(), name="retention"))
        if self.database.writer_engine.dialect.name == "sqlite":
            self._jobs.append(asyncio.create_task(self._index_names(), name="name-index"))
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        host = self.settings.address.rsplit(":", 1)[0]
        # Tests and scripts read this line to find the port when the address ends in :0.
        print(f"serving on {host}:{self.port}", flush=True)

    async def _start_console(self, page_tokens: PageTokens) -> None:
        # Imported here: a server without a console never loads its package.
        from resinkit_grpc.console.app import Access, Console, ssl_context

        settings = self.settings
        context = None
        if settings.tls_cert:
            context = ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.console = Console(
            settings.console_address,
            self.database,
            page_tokens,
            self.watches,
            Access(self.tokens, mutual_tls=bool(settings.tls_client_ca)),
            ssl_context=context,
            heartbeat_seconds=settings.heartbeat_interval,
        )
        try:
            await self.console.start()
        except OSError as exc:
            raise ServerError(f"cannot serve the console on {settings.console_address}") from exc
        print(f"console on {self.console.url}", flush=True)

    async def _purge_request_ids(self) -> None:
        """Forgets request ids older than --request-id-retention, a tenth of it at a time."""
        retention = timedelta(hours=self.settings.request_id_retention)
        while True:
            pause = min(PURGE_INTERVAL_SECONDS, retention.total_seconds() / 10)
            await asyncio.sleep(max(1.0, pause))
            try:
                # In chunks, each a short write transaction of its own: on PostgreSQL every
                # write transaction holds the event-append lock every replica's writes need.
                purged = 1
                while purged:
                    purged = await self.database.write(purge_requests, utcnow() - retention)
            except ResinkitError as error:  # the database is away: next time
                log.warning("could not purge request ids: %s", error.message)

    async def _expire_due_tasks(self) -> None:
        """Fails live tasks whose expires_at has passed (store/expiry.py), every
        --expiry-interval. Every replica runs it: the write re-checks each task, so a task
        two replicas find due moves once."""
        while True:
            await asyncio.sleep(self.settings.expiry_interval)
            try:
                while True:
                    due = await self.database.read(due_for_expiry, utcnow(), EXPIRY_BATCH)
                    if not due:
                        break
                    moved = await self.database.write(expire_tasks, due)
                    if moved:
                        log.info("expired %d tasks (now FAILED, reason EXPIRED)", len(moved))
                    if len(due) < EXPIRY_BATCH:
                        break
            except ResinkitError as error:  # the database is away: next time
                log.warning("could not expire tasks: %s", error.message)
            except Exception as error:  # a bug: logged, and the job goes on
                log_unexpected("expiry", error)

    async def _index_names(self) -> None:
        """Keeps SQLite's name index up with the event log (store/name_index.py), every
        NAME_INDEX_INTERVAL_SECONDS, in write transactions of at most CATCH_UP_BATCH events."""
        pause = NAME_INDEX_INTERVAL_SECONDS
        while True:
            await asyncio.sleep(pause)
            # After a failure, a while before the next attempt: pages stay right meanwhile (they
            # read the events the index has not taken in), and the log is not flooded.
            pause = NAME_INDEX_INTERVAL_SECONDS
            try:
                if not await self.database.read(name_index.behind):
                    continue
                while await self.database.write(name_index.catch_up) == name_index.CATCH_UP_BATCH:
                    pass
            except ResinkitError as error:  # the database is away: next time
                log.warning("could not index task names: %s", error.message)
                pause = NAME_INDEX_RETRY_SECONDS
            except Exception as error:  # a bug: logged, and the job goes on
                log_unexpected("name index", error)
                pause = NAME_INDEX_RETRY_SECONDS

    async def _purge_old_tasks(self) -> None:
        """Purges tasks that ended or were deleted more than --retention ago, with their
        events (store/retention.py), every --retention-interval: one batch of at most
        --purge-batch-size tasks per write, so other writes wait one batch at most. Every
        replica runs it; each batch decides what it deletes under the write lock."""
        retention = timedelta(seconds=self.settings.retention)
        while True:
            await asyncio.sleep(self.settings.retention_interval)
            purged_tasks = purged_events = 0
            try:
                before = utcnow() - retention
                after = None
                while True:
                    began = asyncio.get_running_loop().time()
                    batch = await self.database.write(
                        purge_batch, before, self.settings.purge_batch_size, after
                    )
                    if batch.last is None:
                        break
                    purged_tasks += batch.tasks
                    purged_events += batch.events
                    after = batch.last
                    # As long again for everybody else's writes: a purge takes half the
                    # writer's time at most, and no write waits for two batches in a row.
                    await asyncio.sleep(asyncio.get_running_loop().time() - began)
            except ResinkitError as error:
                log.warning("could not purge old tasks: %s", error.message)
            except Exception as error:
                log_unexpected("retention", error)
            if purged_tasks:
                log.info(
                    "retention purged %d tasks and %d events not changed since %s",
                    purged_tasks,
                    purged_events,
                    before.isoformat(timespec="seconds"),
                )

    async def stop(self) -> None:
        # From here every new call is UNAVAILABLE before it runs; calls already admitted go on.
        self.gate.closed = True
        await self.health.enter_graceful_shutdown()
        # Streams never finish on their own: end them (UNAVAILABLE, resumable) so that the
        # grace period is spent on unary RPCs.
        if self._purging is not None:
            self._purging.cancel()
        for job in self._jobs:
            job.cancel()
        await self.watches.close()
        if self.console is not None:
            await self.console.stop()
        # Attempts in flight may finish (else their leases run out and they are made again).
        await self.deliveries.close(
            min(self.settings.webhook_timeout, self.settings.grace_period / 2)
        )
        # New calls meet the gate (UNAVAILABLE) until they stop coming, rather than stop(),
        # which cancels what its transport accepted: half the grace period at most.
        began = asyncio.get_running_loop().time()
        await drain(self.gate, GATE_QUIET_SECONDS, self.settings.grace_period / 2)
        spent = asyncio.get_running_loop().time() - began
        log.info("watch streams ended; waiting for in-flight RPCs")
        await self.grpc_server.stop(max(0.0, self.settings.grace_period - spent))
        self._close_metrics()
        await asyncio.to_thread(self.database.close)
        if self.settings.otel:
            await asyncio.to_thread(tracing.stop)
        log.info("stopped")

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    async def release(self) -> None:
        """Frees what a failed start() had taken (threads, connections), quietly."""
        await self.watches.close()
        if self.console is not None:
            await self.console.stop()
        await self.deliveries.close(0)
        await self.grpc_server.stop(0)
        self._close_metrics()
        await asyncio.to_thread(self.database.close)


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(settings: Settings) -> None:
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await server.start()
    except BaseException:
        await server.release()
        raise
    await stopping.wait()
    log.info("shutting down: %.1f s grace for in-flight RPCs", settings.grace_period)
    await server.stop()
