"""The one Settings object, built by the CLI from flags and RESINKIT_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1:50051"
    # TLS: the server's certificate chain and key (PEM); both, or neither (plaintext).
    tls_cert: str = ""
    tls_key: str = ""
    # Mutual TLS: client certificates must be signed by this CA (PEM); needs tls_cert/tls_key.
    tls_client_ca: str = ""
    # Bearer tokens (TOML: principal, role, sha256 of the token); empty: no token needed.
    auth_tokens_file: str = ""
    # With tokens: reflection needs one too (health never does).
    auth_reflection: bool = False
    database_url: str = "sqlite:///sqlite.db"
    # Do not migrate at boot (migrations are a deployment step): a database behind the code's
    # head then stops the server.
    no_migrate: bool = False
    # Seconds in-flight RPCs get to finish after SIGTERM/SIGINT.
    grace_period: float = 10.0
    # Threads running read transactions, each with its own connection (writes have one thread
    # and one connection of their own).
    read_threads: int = 4
    # SQLite: milliseconds a read may run on the event loop before it moves to a read thread
    # (0: every read goes to a read thread).
    loop_read_budget: float = 2.0
    # SQLite: how long a writer waits for another process's write lock, in seconds.
    sqlite_busy_timeout: float = 5.0
    # SQLite: NORMAL (WAL: durable against process crashes, may lose the last commits on power
    # loss) or FULL (fsync on every commit).
    sqlite_synchronous: str = "NORMAL"
    # Writes waiting for the writer beyond which a write is refused at once (UNAVAILABLE,
    # OVERLOADED, with RetryInfo): a retry storm is answered, not queued without end.
    max_queued_writes: int = 10_000
    # RPCs in progress at once (streams included) beyond which gRPC refuses new ones with
    # RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 5_000
    # The largest request gRPC accepts, in bytes (beyond it: RESOURCE_EXHAUSTED).
    max_receive_message_bytes: int = 4 * 1024 * 1024
    # PostgreSQL: seconds to wait for a pooled connection before the call is UNAVAILABLE.
    pool_timeout: float = 10.0
    # WatchTaskEvents.
    heartbeat_interval: float = 15.0
    max_watchers: int = 2000
    # WatchTaskEvents streams one authenticated principal may hold at once (0: no such limit).
    max_watchers_per_principal: int = 0
    watch_buffer: int = 1000
    # Bytes of events (their stored event_data plus a fixed overhead each) buffered per stream
    # before a slow reader is cut off; also the most one replay page or tail batch reads.
    watch_buffer_bytes: int = 4 * 1024 * 1024
    # Hours a mutation's request_id is kept (a retry within them gets the first outcome back).
    request_id_retention: float = 24.0
    # Expiry: fail (FAILED, reason EXPIRED, actor system) live tasks whose expires_at has passed
    # before they ended, scanning every expiry_interval seconds.
    expire_tasks: bool = False
    expiry_interval: float = 10.0
    # Retention, in seconds (0: off): tasks that ended or were deleted and have not changed for
    # this long are purged with their events, every retention_interval seconds, in batches of
    # at most purge_batch_size tasks (one write transaction each).
    retention: float = 0.0
    retention_interval: float = 600.0
    purge_batch_size: int = 500
    log_level: str = "INFO"
    # text (human-readable lines) or json (one object per line).
    log_format: str = "text"
    # HOST:PORT of the Prometheus endpoint (/metrics); empty: no metrics.
    metrics_address: str = ""
    # HOST:PORT of the web console (console/ package: pages, JSON API, live updates); empty: off.
    console_address: str = ""
    # OpenTelemetry traces (the otel extra), configured by the standard OTEL_* variables.
    otel: bool = False
    # Webhooks (notify/): the signing secrets (TOML: id, secret), re-read when the file changes.
    webhook_secrets_file: str = ""
    # Deliver to loopback, private and link-local addresses too (internal receivers, tests).
    webhook_allow_private: bool = False
    # Seconds one delivery attempt may take, connection included.
    webhook_timeout: float = 15.0
    # The pauses after each failed attempt (see notify/schedule.py); "none": no retries.
    webhook_retry_schedule: str = "5s,5m,30m,2h,5h,10h,10h"
    # Attempts in flight at once in this replica, and to any one host.
    webhook_concurrency: int = 64
    webhook_per_host: int = 16
    # Seconds between looks for due deliveries besides the wake-ups on commit.
    webhook_poll_interval: float = 1.0
