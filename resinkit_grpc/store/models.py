"""The schema: SQLAlchemy 2 typed models. Alembic migrations are checked against these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from resinkit_grpc.rules import TaskStatus
from resinkit_grpc.store.types import JSONString, UTCDateTime

# Named constraints, so that batch migrations on SQLite (which rebuild tables) can find them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite keeps booleans as 0/1; the partial indexes must use the very predicate queries use.
SQLITE_ACTIVE_ONLY = text("active = 1")
POSTGRES_ACTIVE_ONLY = text("active")

STATUS_NAMES = ", ".join(f"'{s.value}'" for s in TaskStatus)
TERMINAL_NAMES = ", ".join(f"'{s.value}'" for s in TaskStatus if s.is_terminal)
# Live tasks that have not ended: what expiry scans. The very text queries use (see
# store/expiry.py), so that both databases recognize the partial index as usable.
SQLITE_OPEN = text(f"active = 1 AND status NOT IN ({TERMINAL_NAMES})")
POSTGRES_OPEN = text(f"active AND status NOT IN ({TERMINAL_NAMES})")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Task(Base):
    """One row per task. Column names are those of the task store this service replaces."""

    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(Text, primary_key=True)
    task_type: Mapped[str] = mapped_column(Text)
    task_name: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default=TaskStatus.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_configs: Mapped[dict[str, Any]] = mapped_column(JSONString)
    error_info: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    result_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    execution_details: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    progress_details: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    created_by: Mapped[str] = mapped_column(Text)
    notification_config: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    tags: Mapped[list[str] | None] = mapped_column(JSONString)
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    # Added by this service: the idempotency key of CreateTask, and a counter behind the etag.
    request_id: Mapped[str | None] = mapped_column(Text, unique=True)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))

    __table_args__ = (
        CheckConstraint(f"status IN ({STATUS_NAMES})", name="status"),
        # Partial (live tasks only) and ending in the default sort order, so that a page of one
        # status or one type walks the index in order instead of sorting every match.
        Index(
            "ix_tasks_status",
            "status",
            "created_at",
            "task_id",
            sqlite_where=SQLITE_ACTIVE_ONLY,
            postgresql_where=POSTGRES_ACTIVE_ONLY,
        ),
        Index(
            "ix_tasks_task_type",
            "task_type",
            "created_at",
            "task_id",
            sqlite_where=SQLITE_ACTIVE_ONLY,
            postgresql_where=POSTGRES_ACTIVE_ONLY,
        ),
        # Keyset pagination walks these: one per sort order, task_id breaking ties.
        Index("ix_tasks_created_at", "created_at", "task_id"),
        Index("ix_tasks_updated_at", "updated_at", "task_id"),
        Index("ix_tasks_priority", "priority", "task_id"),
        Index("ix_tasks_created_by", "created_by"),
        Index("ix_tasks_expires_at", "expires_at"),
        # Expiry's scan: only tasks that may still expire, so that ended ones (which keep
        # their expires_at) never make it slower.
        Index(
            "ix_tasks_open_expires_at",
            "expires_at",
            sqlite_where=SQLITE_OPEN,
            postgresql_where=POSTGRES_OPEN,
        ),
    )


class TaskEvent(Base):
    """One row per change; `event_id` is the global order of events and the watch cursor."""

    __tablename__ = "task_events"

    # AUTOINCREMENT on SQLite: an id is never handed out twice, even after the largest row is
    # purged, so a watcher resuming after it cannot skip a new event that reused it.
    event_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(Text, ForeignKey("tasks.task_id"))
    event_type: Mapped[str] = mapped_column(Text)
    event_data: Mapped[dict[str, Any] | None] = mapped_column(JSONString)
    previous_status: Mapped[str | None] = mapped_column(String(16))
    new_status: Mapped[str | None] = mapped_column(String(16))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_task_events_task_id", "task_id", "event_id"),
        Index("ix_task_events_timestamp", "timestamp"),
        Index("ix_task_events_event_type", "event_type"),
        {"sqlite_autoincrement": True},
    )


class ServiceSecret(Base):
    """Secrets every replica must share, e.g. the key that signs page tokens. Made at first boot."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MutationRequest(Base):
    """A mutation done under a request_id, kept so that a retry gets its outcome back (see
    store/requests.py); forgotten after the retention window."""

    __tablename__ = "mutation_requests"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # SHA-256 of the method and what it was asked: a reused id with another request is refused.
    fingerprint: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str] = mapped_column(Text)
    # The task as the first call returned it.
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_mutation_requests_created_at", "created_at"),)


class LogHorizon(Base):
    """One row: how far retention has purged the event log. Every event with an id above
    `purged_through_event_id` is still stored; below it, events of purged tasks are gone, so a
    watch that resumes from there would miss them (it is refused: OUT_OF_RANGE)."""

    __tablename__ = "log_horizon"

    # Always 1: the table holds one row, made by the migration.
    singleton: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The largest event_id any purge has removed (0: nothing purged yet). Never goes down.
    purged_through_event_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # When a purge last moved it.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("singleton = 1", name="singleton"),)


# The states of a webhook delivery (store/deliveries.py).
DELIVERY_STATES = ("PENDING", "DELIVERED", "DEAD", "DISABLED")
_DELIVERY_STATE_NAMES = ", ".join(f"'{state}'" for state in DELIVERY_STATES)


class WebhookDelivery(Base):
    """The outbox: one row per event and webhook that hears it, written in the event's own
    transaction (so neither exists without the other), then claimed, sent and settled by the
    delivery workers of every replica (notify/worker.py)."""

    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str] = mapped_column(Text, ForeignKey("tasks.task_id"))
    url: Mapped[str] = mapped_column(Text)
    secret_id: Mapped[str | None] = mapped_column(Text)
    # The webhook-id header: the same on every attempt, so receivers de-duplicate on it.
    message_id: Mapped[str] = mapped_column(Text)
    # The task's BASIC columns as this event left them (the body's data.task).
    task_snapshot: Mapped[dict[str, Any]] = mapped_column(JSONString)
    state: Mapped[str] = mapped_column(String(16), server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # PENDING: when the next attempt is due.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A worker's claim of the attempt in progress: until when, and whose (the claim token).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(f"state IN ({_DELIVERY_STATE_NAMES})", name="state"),
        # A task's deliveries in event order: its history, ListDeliveries, and the rule that a
        # receiver gets a task's events in order (an earlier pending one holds later ones).
        Index("ix_webhook_deliveries_task_id", "task_id", "event_id"),
        # What workers scan: pending deliveries by due time.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            sqlite_where=text("state = 'PENDING'"),
            postgresql_where=text("state = 'PENDING'"),
        ),
        # What holds a delivery back: the pending ones of its task and URL (see
        # deliveries._DUE), found among pending rows alone however long the task's history.
        Index(
            "ix_webhook_deliveries_pending",
            "task_id",
            "url",
            "event_id",
            sqlite_where=text("state = 'PENDING'"),
            postgresql_where=text("state = 'PENDING'"),
        ),
        # Redelivery by event-id range (admin).
        Index("ix_webhook_deliveries_event_id", "event_id"),
        {"sqlite_autoincrement": True},
    )


class DisabledWebhook(Base):
    """A task's webhook that answered 410 Gone: nothing more is sent to it for that task until
    RedeliverTask re-enables it."""

    __tablename__ = "disabled_webhooks"

    task_id: Mapped[str] = mapped_column(Text, ForeignKey("tasks.task_id"), primary_key=True)
    url: Mapped[str] = mapped_column(Text, primary_key=True)
    disabled_at: Mapped[datetime] = mapped_column(UTCDateTime)
