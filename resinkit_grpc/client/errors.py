"""Typed exceptions built from what the server sends: a gRPC code and a google.rpc.Status
carrying an ErrorInfo (reason, metadata), a BadRequest (field violations) and a RetryInfo.

Each reason the server sends has its class; a status without an ErrorInfo (gRPC's own errors:
a connection refused, a deadline passed on the client) gets the class of its code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from resinkit_grpc.rules import TaskStatus

DOMAIN = "resinkit.v1"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ClientError(Exception):
    """An RPC failed. `reason` is the ErrorInfo reason (or the code's name when the server sent
    none), `metadata` the ErrorInfo metadata, `retry_delay` the RetryInfo delay in seconds."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = field_violations
        self.retry_delay = retry_delay

    @property
    def task_id(self) -> str | None:
        return self.metadata.get("task_id")


class InvalidArgument(ClientError):
    """Bad input; `field_violations` names every offending field. Nothing was written."""


class TaskNotFound(ClientError):
    pass


class TaskAlreadyExists(ClientError):
    pass


class EtagMismatch(ClientError):
    """The task changed since the etag given was read (ABORTED): read it again and decide."""


class FailedPrecondition(ClientError):
    """The task is in the wrong state for the call."""


class InvalidTransition(FailedPrecondition):
    """An illegal status move; the statuses the task may move to are in
    `allowed_next_statuses` (empty for a terminal status)."""

    @property
    def current_status(self) -> TaskStatus | None:
        return _status(self.metadata.get("current_status", ""))

    @property
    def requested_status(self) -> TaskStatus | None:
        return _status(self.metadata.get("requested_status", ""))

    @property
    def allowed_next_statuses(self) -> tuple[TaskStatus, ...]:
        names = self.metadata.get("allowed_next_statuses", "")
        return tuple(s for s in map(_status, names.split(",")) if s is not None)


class TaskDeleted(FailedPrecondition):
    """The task is soft-deleted and takes no change until it is undeleted."""


class TaskAlreadyDeleted(FailedPrecondition):
    pass


class TaskNotDeleted(FailedPrecondition):
    pass


class Unavailable(ClientError):
    """The server or its database could not serve the call. `outcome` is NOT_COMMITTED
    (nothing was written), UNKNOWN (the change may have been saved: retry with the same
    request_id) or None when the server could not say (the connection broke)."""

    @property
    def outcome(self) -> str | None:
        return self.metadata.get("outcome")


class StorageUnavailable(Unavailable):
    pass


class Overloaded(Unavailable):
    pass


class ShuttingDown(Unavailable):
    """The server is stopping; a call was not run, a watch ended with a resume point."""

    @property
    def resume_after_event_id(self) -> int | None:
        return _resume_point(self.metadata)


class DeadlineExceeded(ClientError):
    pass


class ResourceExhausted(ClientError):
    pass


class SlowConsumer(ResourceExhausted):
    """A watch fell further behind than the server buffers; resume from the point given."""

    @property
    def resume_after_event_id(self) -> int | None:
        return _resume_point(self.metadata)


class TooManyWatchers(ResourceExhausted):
    @property
    def resume_after_event_id(self) -> int | None:
        return _resume_point(self.metadata)


class OutOfRange(ClientError):
    pass


class EventsPurged(OutOfRange):
    """Retention purged events a watch would have carried after its position: resuming would
    leave a gap, so the watch does not reconnect. List again (ListTasks, or ListTaskEvents of
    the tasks), then watch from the listed position or after `purged_through_event_id`."""

    @property
    def purged_through_event_id(self) -> int | None:
        return _metadata_int(self.metadata, "purged_through_event_id")

    @property
    def oldest_retained_event_id(self) -> int | None:
        return _metadata_int(self.metadata, "oldest_retained_event_id")


class Unauthenticated(ClientError):
    """No token, or one the server does not know (or no longer knows)."""


class PermissionDenied(ClientError):
    """The token's role may not make this call."""


class InternalError(ClientError):
    """The server failed unexpectedly (it logged why)."""


class Cancelled(ClientError):
    pass


class WaitTimeout(ClientError, TimeoutError):
    """`wait()` gave up: the task did not become terminal in time."""


BY_REASON: dict[str, type[ClientError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "TASK_NOT_FOUND": TaskNotFound,
    "TASK_ALREADY_EXISTS": TaskAlreadyExists,
    "ETAG_MISMATCH": EtagMismatch,
    "INVALID_STATUS_TRANSITION": InvalidTransition,
    "TASK_DELETED": TaskDeleted,
    "TASK_ALREADY_DELETED": TaskAlreadyDeleted,
    "TASK_NOT_DELETED": TaskNotDeleted,
    "STORAGE_UNAVAILABLE": StorageUnavailable,
    "OVERLOADED": Overloaded,
    "SHUTTING_DOWN": ShuttingDown,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "SLOW_CONSUMER": SlowConsumer,
    "TOO_MANY_WATCHERS": TooManyWatchers,
    "EVENTS_PURGED": EventsPurged,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "INTERNAL": InternalError,
}

BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: TaskNotFound,
    grpc.StatusCode.ALREADY_EXISTS: TaskAlreadyExists,
    grpc.StatusCode.ABORTED: EtagMismatch,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError) -> ClientError:
    """The typed exception for a failed call (sync or asyncio)."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    status = _rich_status(call.trailing_metadata())
    if status is None:
        return BY_CODE.get(code, ClientError)(code, message)
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and info is None:
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    reason = info.reason if info is not None else None
    kind = BY_REASON.get(reason or "") or BY_CODE.get(code, ClientError)
    return kind(
        code,
        status.message or message,
        reason=reason,
        metadata=dict(info.metadata) if info is not None else None,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )


def _rich_status(trailing: Any) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == _STATUS_DETAILS_KEY:
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def _status(name: str) -> TaskStatus | None:
    name = name.strip().removeprefix("TASK_STATUS_")
    return TaskStatus(name) if name in TaskStatus.__members__ else None


def _resume_point(metadata: Mapping[str, str]) -> int | None:
    return _metadata_int(metadata, "resume_after_event_id")


def _metadata_int(metadata: Mapping[str, str], key: str) -> int | None:
    value = metadata.get(key)
    return int(value) if value is not None else None
