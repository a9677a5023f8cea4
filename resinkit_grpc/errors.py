"""Domain exceptions. The store and the validators raise these; api/status.py alone turns them
into gRPC status codes with details."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resinkit_grpc.rules import TaskStatus

# An error must always reach its caller: gRPC refuses trailers over 16 KiB, and a status that
# echoes unbounded input would arrive as RESOURCE_EXHAUSTED "Stream removed" instead.
MAX_MESSAGE_LENGTH = 1024
MAX_VIOLATIONS = 20
MAX_FIELD_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 256
MAX_MISSING_NAMED = 20


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ResinkitError(Exception):
    """Base of every error a caller may see; `message` is safe to show them, and bounded."""

    # In a batch call, the item that failed (reported as ErrorInfo.metadata["index"]).
    index: int | None = None

    def __init__(self, message: str) -> None:
        message = bounded(message, MAX_MESSAGE_LENGTH)
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ResinkitError):
    """Bad input. Reports at most MAX_VIOLATIONS violations (the last says how many more there
    were), each bounded in length."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        kept = [
            FieldViolation(
                bounded(v.field, MAX_FIELD_LENGTH), bounded(v.description, MAX_DESCRIPTION_LENGTH)
            )
            for v in violations[:MAX_VIOLATIONS]
        ]
        if len(violations) > MAX_VIOLATIONS:
            more = len(violations) - MAX_VIOLATIONS + 1
            kept[-1] = FieldViolation("request", f"and {more} more problems")
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in kept))
        self.violations = tuple(kept)

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class TaskNotFound(ResinkitError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


class TasksNotFound(ResinkitError):
    """Some tasks of a batch read do not exist; `task_ids` names them (at most
    MAX_MISSING_NAMED, the rest are counted)."""

    def __init__(self, task_ids: Sequence[str]) -> None:
        named = [bounded(task_id, MAX_FIELD_LENGTH) for task_id in task_ids[:MAX_MISSING_NAMED]]
        more = len(task_ids) - len(named)
        super().__init__(
            f"{len(task_ids)} of the tasks asked for not found: {', '.join(map(repr, named))}"
            + (f" and {more} more" if more else "")
        )
        self.task_ids = tuple(named)
        self.missing = len(task_ids)


class ConcurrentCreate(ResinkitError):
    """A batch create lost a race with another replica's create: nothing was written, and a
    retry is safe (ABORTED)."""


class TaskAlreadyExists(ResinkitError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} already exists")
        self.task_id = task_id


class EtagMismatch(ResinkitError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} has changed since the etag given was read")
        self.task_id = task_id


class InvalidTransition(ResinkitError):
    def __init__(
        self,
        task_id: str,
        current: TaskStatus,
        requested: TaskStatus,
        allowed: Sequence[TaskStatus],
    ) -> None:
        allowed_text = ", ".join(map(api_name, allowed)) if allowed else "none (terminal status)"
        super().__init__(
            f"task {task_id!r} cannot move from {api_name(current)} to {api_name(requested)}; "
            f"allowed: {allowed_text}"
        )
        self.task_id = task_id
        self.current = current
        self.requested = requested
        self.allowed = tuple(allowed)


def api_name(status: TaskStatus) -> str:
    """A status as the API spells it (the TaskStatus enum of resinkit.v1)."""
    return f"TASK_STATUS_{status.value}"


class TaskStateConflict(ResinkitError):
    """The task exists but is in the wrong state for the call (deleted, not deleted, ...)."""

    def __init__(self, task_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.reason = reason


class StorageUnavailable(ResinkitError):
    """The database could not be reached or was too busy; the call may be retried.

    `outcome_unknown`: the failure hit the COMMIT itself, so the change may have been saved.
    Otherwise nothing was written. A retry is safe either way with a request_id."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class Overloaded(ResinkitError):
    """Too much work is waiting; nothing was done, and the call may be retried later."""


class DeadlineExceeded(ResinkitError):
    """The caller's deadline passed before the work began: nothing was done."""
