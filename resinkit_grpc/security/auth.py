"""Authentication and authorization of every call: a bearer token (`authorization: Bearer
<token>` metadata) names a principal and a role, and the role decides the call before any
handler runs, so a refusal never depends on (or reveals) whether a task exists."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import code_pb2, error_details_pb2

from resinkit_grpc.api.status import DOMAIN, abort, pack_status
from resinkit_grpc.security.tokens import Identity, Role, TokenFile

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

SERVICE = "/resinkit.v1.TaskService/"
# The role each TaskService method needs; a method not listed needs ADMIN.
METHOD_ROLES = {
    **{
        SERVICE + name: Role.READER
        for name in (
            "GetTask",
            "ListTasks",
            "ListTaskEvents",
            "WatchTaskEvents",
            "ListDeliveries",
        )
    },
    **{
        SERVICE + name: Role.WRITER
        for name in (
            "CreateTask",
            "UpdateTask",
            "UpdateTaskStatus",
            "DeleteTask",
            "UndeleteTask",
            "RedeliverTask",
        )
    },
    SERVICE + "RedeliverEvents": Role.ADMIN,
}
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection."


@dataclass(frozen=True)
class Authenticated:
    """The caller of the RPC in progress."""

    identity: Identity
    token: str
    tokens: TokenFile

    def still_valid(self) -> bool:
        """Whether the token is still in the file (a stream ends when it is removed)."""
        return self.tokens.identify(self.token) is not None


# Set by the interceptor for the handler it calls; each RPC runs in a task of its own.
current_caller: contextvars.ContextVar[Authenticated | None] = contextvars.ContextVar(
    "current_caller", default=None
)


class Authenticator(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, tokens: TokenFile, *, protect_reflection: bool) -> None:
        self._tokens = tokens
        self._protect_reflection = protect_reflection

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = details.method
        if method.startswith(HEALTH) or (
            method.startswith(REFLECTION) and not self._protect_reflection
        ):
            return await continuation(details)
        needed = Role.READER if method.startswith(REFLECTION) else METHOD_ROLES.get(method)
        token = _bearer(details.invocation_metadata)
        identity = self._tokens.identify(token) if token else None
        kind = (
            "unary_stream"
            if method == SERVICE + "WatchTaskEvents"
            else "stream_stream"
            if method.startswith(REFLECTION)
            else "unary_unary"
        )
        if identity is None or token is None:
            return _refusal(
                code_pb2.UNAUTHENTICATED,
                "UNAUTHENTICATED",
                "a valid bearer token is required (authorization: Bearer <token>)",
                kind,
            )
        if identity.role < (needed or Role.ADMIN):
            return _refusal(
                code_pb2.PERMISSION_DENIED,
                "PERMISSION_DENIED",
                f"the role {identity.role.name.lower()} may not call {method.rsplit('/', 1)[-1]}",
                kind,
            )
        handler = await continuation(details)
        if handler is None or method not in METHOD_ROLES:
            return handler  # reflection: nothing in it asks who calls
        return _with_caller(handler, Authenticated(identity, token, self._tokens))


def token_withdrawn() -> Any:
    """The status that ends a stream whose token has left the tokens file."""
    return pack_status(
        code_pb2.UNAUTHENTICATED,
        "the token this stream was opened with is no longer valid",
        [error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED", domain=DOMAIN)],
    )


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip() or None
    return None


def _refusal(code: int, reason: str, message: str, kind: str) -> Handler:
    """A handler of the method's own kind that answers with `code` and runs nothing."""
    status = pack_status(code, message, [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)])

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, status)

    async def refuse_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await abort(context, status)
        yield  # pragma: no cover - abort raises

    async def refuse_bidi(
        requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await abort(context, status)
        yield  # pragma: no cover - abort raises

    if kind == "unary_stream":
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if kind == "stream_stream":
        return grpc.stream_stream_rpc_method_handler(refuse_bidi)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _with_caller(handler: Handler, caller: Authenticated) -> Handler:
    """The same handler, run with `current_caller` set."""
    if handler.unary_stream is not None:
        inner_stream: Any = handler.unary_stream  # an async generator function on grpc.aio

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            current_caller.set(caller)
            # Closed with this one, so that a cancelled stream frees what it holds at once.
            async with contextlib.aclosing(inner_stream(request, context)) as responses:
                async for response in responses:
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    inner: Any = handler.unary_unary

    async def unary(request: Any, context: Any) -> Any:
        current_caller.set(caller)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
