"""Domain exceptions. The store and the validators raise these; api/status.py alone turns them
into gRPC status codes with details."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resinkit_grpc.rules import TaskStatus


class ResinkitError(Exception):
    """Base of every error a caller may see; `message` is safe to show them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ResinkitError):
    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = tuple(violations)

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class TaskNotFound(ResinkitError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


class TaskAlreadyExists(ResinkitError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} already exists")
        self.task_id = task_id


class EtagMismatch(ResinkitError):
    def __init__(self, task_id: str, etag: str) -> None:
        super().__init__(f"task {task_id!r} has changed: etag {etag!r} is no longer current")
        self.task_id = task_id


class InvalidTransition(ResinkitError):
    def __init__(
        self,
        task_id: str,
        current: TaskStatus,
        requested: TaskStatus,
        allowed: Sequence[TaskStatus],
    ) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none (terminal status)"
        super().__init__(
            f"task {task_id!r} cannot move from {current} to {requested}; allowed: {allowed_text}"
        )
        self.task_id = task_id
        self.current = current
        self.requested = requested
        self.allowed = tuple(allowed)


class TaskStateConflict(ResinkitError):
    """The task exists but is in the wrong state for the call (deleted, not deleted, ...)."""

    def __init__(self, task_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.reason = reason


class StorageUnavailable(ResinkitError):
    """The database could not be reached or was too busy; the call may be retried."""
