"""The one place where domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from resinkit_grpc.api.parse import decodable
from resinkit_grpc.errors import (
    ConcurrentCreate,
    DeadlineExceeded,
    EtagMismatch,
    InvalidArgument,
    InvalidTransition,
    Overloaded,
    ResinkitError,
    StorageUnavailable,
    TaskAlreadyExists,
    TaskNotFound,
    TasksNotFound,
    TaskStateConflict,
    api_name,
)
from resinkit_grpc.store.database import call_deadline
from resinkit_grpc.store.engine import describe
from resinkit_grpc.watch.items import Ended, EndReason

DOMAIN = "resinkit.v1"
log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]


def to_status(error: ResinkitError) -> status_pb2.Status:
    """A google.rpc.Status for a domain error: canonical code, safe message, ErrorInfo and,
    where it helps the caller, BadRequest or PreconditionFailure."""
    details: list[Any] = []
    metadata: dict[str, str] = {}
    task_id = getattr(error, "task_id", None)
    if task_id is not None:
        metadata["task_id"] = task_id
    if error.index is not None:
        metadata["index"] = str(error.index)
    match error:
        case InvalidArgument():
            code, reason = code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        case TaskNotFound():
            code, reason = code_pb2.NOT_FOUND, "TASK_NOT_FOUND"
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type="resinkit.v1.Task",
                    resource_name=error.task_id,
                    description=error.message,
                )
            )
        case TasksNotFound():
            code, reason = code_pb2.NOT_FOUND, "TASK_NOT_FOUND"
            metadata["missing_task_ids"] = ",".join(error.task_ids)
            metadata["missing_count"] = str(error.missing)
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type="resinkit.v1.Task",
                    resource_name=error.task_ids[0],
                    description=error.message,
                )
            )
        case ConcurrentCreate():
            code, reason = code_pb2.ABORTED, "CONCURRENT_CREATE"
            metadata["outcome"] = "NOT_COMMITTED"
        case TaskAlreadyExists():
            code, reason = code_pb2.ALREADY_EXISTS, "TASK_ALREADY_EXISTS"
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type="resinkit.v1.Task",
                    resource_name=error.task_id,
                    description=error.message,
                )
            )
        case EtagMismatch():
            code, reason = code_pb2.ABORTED, "ETAG_MISMATCH"
        case InvalidTransition():
            code, reason = code_pb2.FAILED_PRECONDITION, "INVALID_STATUS_TRANSITION"
            metadata["current_status"] = api_name(error.current)
            metadata["requested_status"] = api_name(error.requested)
            metadata["allowed_next_statuses"] = ",".join(map(api_name, error.allowed))
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type="STATUS_TRANSITION",
                            subject=f"tasks/{error.task_id}",
                            description=error.message,
                        )
                    ]
                )
            )
        case TaskStateConflict():
            code, reason = code_pb2.FAILED_PRECONDITION, error.reason
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=error.reason,
                            subject=f"tasks/{error.task_id}",
                            description=error.message,
                        )
                    ]
                )
            )
        case StorageUnavailable():
            code, reason = code_pb2.UNAVAILABLE, "STORAGE_UNAVAILABLE"
            # NOT_COMMITTED: nothing was written. UNKNOWN: the COMMIT failed, the change may
            # have been saved; a retry without a request_id could do it twice.
            metadata["outcome"] = "UNKNOWN" if error.outcome_unknown else "NOT_COMMITTED"
            details.append(error_details_pb2.RetryInfo(retry_delay={"nanos": 200_000_000}))
        case Overloaded():
            code, reason = code_pb2.UNAVAILABLE, "OVERLOADED"
            metadata["outcome"] = "NOT_COMMITTED"
            details.append(error_details_pb2.RetryInfo(retry_delay={"seconds": 1}))
        case DeadlineExceeded():
            code, reason = code_pb2.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
            metadata["outcome"] = "NOT_COMMITTED"
        case _:
            code, reason = code_pb2.INTERNAL, "INTERNAL"
    details.insert(0, error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    return pack_status(code, error.message, details)


_ENDINGS = {
    EndReason.SLOW_CONSUMER: (
        code_pb2.RESOURCE_EXHAUSTED,
        "the stream fell further behind than its buffer allows (--watch-buffer, "
        "--watch-buffer-bytes)",
    ),
    EndReason.TOO_MANY_WATCHERS: (
        code_pb2.RESOURCE_EXHAUSTED,
        "this server already serves as many watchers as it may (--max-watchers, or "
        "--max-watchers-per-principal for this caller); retry later or elsewhere",
    ),
    EndReason.SHUTTING_DOWN: (code_pb2.UNAVAILABLE, "the server is shutting down; reconnect"),
}


def watch_ending(ended: Ended) -> status_pb2.Status | None:
    """The status that ends a watch stream; None for a normal end (OK).

    Every early end is resumable: ErrorInfo.metadata["resume_after_event_id"] says where from
    (absent only when a live-only stream is refused before it started: just ask again)."""
    if ended.reason is EndReason.FINISHED:
        return None
    if ended.reason is EndReason.EVENTS_PURGED:
        return events_purged(ended)
    code, message = _ENDINGS[ended.reason]
    metadata = {}
    if ended.resume_after is not None:
        metadata["resume_after_event_id"] = str(ended.resume_after)
        message = f"{message}; resume with after_event_id={ended.resume_after}"
    info = error_details_pb2.ErrorInfo(reason=ended.reason.value, domain=DOMAIN, metadata=metadata)
    return pack_status(code, message, [info])


def events_purged(ended: Ended) -> status_pb2.Status:
    """OUT_OF_RANGE (Kubernetes' 410 Gone): the stream's position is older than what retention
    keeps. Deliberately no resume_after_event_id: resuming there would skip the purged events.
    The client lists again (ListTasks, or ListTaskEvents of its tasks: a task is purged whole,
    so a stored task's history is complete), then watches from after the listed position or
    from purged_through_event_id."""
    horizon = ended.purged_through or 0
    metadata = {
        # Every event above it is still stored: a watch from here on is complete.
        "purged_through_event_id": str(horizon),
        "oldest_retained_event_id": str(horizon + 1),
    }
    if ended.resume_after is not None:
        # How far this stream got: every matching event up to here was sent on it.
        metadata["after_event_id"] = str(ended.resume_after)
    message = (
        f"retention has purged events this stream would carry after event_id "
        f"{ended.resume_after} (the log is kept from {horizon + 1} on); list again, then "
        f"watch from the listed position or with after_event_id={horizon}"
    )
    info = error_details_pb2.ErrorInfo(
        reason=EndReason.EVENTS_PURGED.value, domain=DOMAIN, metadata=metadata
    )
    return pack_status(code_pb2.OUT_OF_RANGE, message, [info])


def log_unexpected(where: str, error: Exception) -> None:
    """A bug, logged for the operator: its type (and database code) and its stack, never its
    message, at any level: messages quote what a caller sent (a driver's quotes statement
    values, a unique violation the key)."""
    stack = "".join(traceback.format_tb(error.__traceback__))
    log.error("unexpected error in %s: %s\n%s", where, describe(error), stack.rstrip())


def internal_error() -> status_pb2.Status:
    return pack_status(
        code_pb2.INTERNAL,
        "internal error; it has been logged",
        [error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)],
    )


def pack_status(code: int, message: str, details: list[Any]) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    # The code set first as well: OpenTelemetry's servicer-context wrapper learns the code from
    # set_code and abort, not from abort_with_status.
    context.set_code(_CODES.get(status.code, grpc.StatusCode.UNKNOWN))
    # grpc-stubs predates abort_with_status on the aio context.
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def translate_stream_errors(
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[None]:
    """translate_errors for a streaming handler: wraps its body, lets its own aborts through."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except ResinkitError as error:
        await abort(context, to_status(error))
    except Exception as error:
        log_unexpected("a stream", error)
        await abort(context, internal_error())


def translate_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turns domain errors into their statuses; anything unexpected is logged and becomes a bare
    INTERNAL, so no exception text or stack trace ever reaches a caller. Hands the call's deadline
    to the store, which does nothing for a caller past it."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            decodable(request)
            remaining = context.time_remaining()
            if remaining is not None:
                call_deadline.set(time.monotonic() + remaining)
            return await handler(self, request, context)
        except ResinkitError as error:
            await abort(context, to_status(error))
        except Exception as error:
            log_unexpected(handler.__name__, error)
            await abort(context, internal_error())
        raise AssertionError("unreachable: abort raises")

    return wrapper
