"""Pure domain rules: task statuses, event types and the status transition table. No I/O."""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    """A task's status, stored as its name in `tasks.status`."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    VALIDATING = "VALIDATING"
    PREPARING = "PREPARING"
    BUILDING = "BUILDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class EventType(enum.StrEnum):
    """The kind of change a `task_events` row records."""

    CREATED = "CREATED"
    STATUS_CHANGE = "STATUS_CHANGE"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    UNDELETED = "UNDELETED"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# The forward pipeline; a task may skip steps but never move back.
PIPELINE = (
    TaskStatus.PENDING,
    TaskStatus.SUBMITTED,
    TaskStatus.VALIDATING,
    TaskStatus.PREPARING,
    TaskStatus.BUILDING,
    TaskStatus.RUNNING,
)
_STOP = (TaskStatus.CANCELLING, TaskStatus.CANCELLED, TaskStatus.FAILED)


def _transitions() -> dict[TaskStatus, tuple[TaskStatus, ...]]:
    table: dict[TaskStatus, tuple[TaskStatus, ...]] = {}
    for index, status in enumerate(PIPELINE):
        table[status] = (*PIPELINE[index + 1 :], TaskStatus.COMPLETED, *_STOP)
    # A job may finish on its own before a requested cancellation takes effect.
    table[TaskStatus.CANCELLING] = (TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.COMPLETED)
    for status in TERMINAL_STATUSES:
        table[status] = ()
    return table


# status -> the statuses it may move to next, in documentation order.
TRANSITIONS: dict[TaskStatus, tuple[TaskStatus, ...]] = _transitions()


def allowed_next(status: TaskStatus) -> tuple[TaskStatus, ...]:
    return TRANSITIONS[status]


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    return new in TRANSITIONS[current]
