"""What the client hands out and takes in: plain Python values (dicts for JSON, aware UTC
datetimes, enums), never protobuf messages."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from resinkit_grpc.rules import TaskStatus

__all__ = [
    "Delivery",
    "DeliveryState",
    "Heartbeat",
    "Page",
    "Task",
    "TaskEvent",
    "TaskFilter",
    "TaskStatus",
    "TaskView",
]

T = TypeVar("T")


class TaskView(enum.Enum):
    """How much of a task a read returns: BASIC leaves out the large JSON fields."""

    BASIC = "BASIC"
    FULL = "FULL"


@dataclass(frozen=True)
class Task:
    """A task as the server returned it. JSON fields are None when the view left them out (or
    they were never set); timestamps are aware UTC datetimes."""

    task_id: str
    task_type: str
    status: TaskStatus
    task_name: str = ""
    description: str = ""
    priority: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    submitted_configs: dict[str, Any] | None = None
    error_info: dict[str, Any] | None = None
    result_summary: dict[str, Any] | None = None
    execution_details: dict[str, Any] | None = None
    progress_details: dict[str, Any] | None = None
    notification_config: dict[str, Any] | None = None
    created_by: str = ""
    tags: tuple[str, ...] = ()
    active: bool = True
    etag: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class DeliveryState(enum.Enum):
    """Where a webhook delivery stands (see the README's "Notifications")."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"
    DISABLED = "DISABLED"


@dataclass(frozen=True)
class Delivery:
    """One event sent to one webhook, with how its attempts went."""

    delivery_id: int
    task_id: str
    event_id: int
    url: str
    webhook_id: str
    state: DeliveryState
    attempts: int = 0
    secret_id: str | None = None
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class TaskEvent:
    """One row of the event log. `event_id` is its global position: resume watches from it."""

    event_id: int
    task_id: str
    event_type: str
    timestamp: datetime
    task_type: str = ""
    event_data: dict[str, Any] = field(default_factory=dict)
    previous_status: TaskStatus | None = None
    new_status: TaskStatus | None = None
    actor: str | None = None
    # Its webhook deliveries: filled in a task's history (list_task_events with a task_id).
    deliveries: tuple[Delivery, ...] = ()


@dataclass(frozen=True)
class Heartbeat:
    """A position a watch has passed: nothing at or below `event_id` is still to come."""

    event_id: int
    timestamp: datetime


@dataclass(frozen=True)
class TaskFilter:
    """Conditions a listed task meets (AND between fields; an empty field places none)."""

    statuses: Sequence[TaskStatus] = ()
    task_types: Sequence[str] = ()
    created_by: str | None = None
    name_contains: str | None = None
    tags_any: Sequence[str] = ()
    tags_all: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list call; an empty `next_page_token` marks the last page (a page may
    hold fewer items than asked for and still have a next one)."""

    items: list[T]
    next_page_token: str

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
