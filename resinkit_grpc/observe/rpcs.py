"""Observer: one server interceptor that counts every RPC the way go-grpc-middleware's
Prometheus server metrics do, and writes one access-log line per RPC.

It is the outermost interceptor, so calls refused before any handler runs (shutdown gate,
authentication) are counted and logged too. Everything it can prepare is prepared when the
server starts: each method's metric children are resolved once, so a call costs a few counter
increments and one histogram observation, not label lookups."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram

from resinkit_grpc.security.auth import current_caller
from resinkit_grpc.security.tls import principal_of

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

access_log = logging.getLogger("resinkit_grpc.access")

# Go's names for the codes (codes.Code.String()), which the dashboards built on
# go-grpc-middleware filter on: grpc_code="OK", "Canceled", "NotFound", ...
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Sub-millisecond RPCs are the common case here; then Prometheus' default buckets.
HANDLING_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"),
)  # fmt: skip


@dataclass
class _Method:
    """The metric children and names of one method, resolved once."""

    service: str
    name: str
    kind: str
    started: Any
    received: Any
    sent: Any
    seconds: Any
    handled: dict[grpc.StatusCode, Any]


class RpcMetrics:
    """grpc_server_* for every method of `services`, every code pre-initialized at zero."""

    def __init__(self, registry: CollectorRegistry, services: Iterable[ServiceDescriptor]) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=registry
        )
        handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        received = Counter(
            "grpc_server_msg_received",
            "Messages received by the server (requests, one per unary call).",
            labels,
            registry=registry,
        )
        sent = Counter(
            "grpc_server_msg_sent",
            "Messages sent by the server (responses; stream messages each).",
            labels,
            registry=registry,
        )
        seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end, in seconds (a stream's whole life).",
            labels,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self._methods: dict[str, _Method] = {}
        for service in services:
            for method in service.methods:
                kind = _kind(method.client_streaming, method.server_streaming)
                values = (kind, service.full_name, method.name)
                self._methods[f"/{service.full_name}/{method.name}"] = _Method(
                    service=service.full_name,
                    name=method.name,
                    kind=kind,
                    started=started.labels(*values),
                    received=received.labels(*values),
                    sent=sent.labels(*values),
                    seconds=seconds.labels(*values),
                    handled={
                        code: handled.labels(*values, name) for code, name in GO_CODE_NAMES.items()
                    },
                )

    def method(self, path: str) -> _Method | None:
        return self._methods.get(path)


def _kind(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


class Observer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: RpcMetrics | None, *, mutual_tls: bool) -> None:
        self._metrics = metrics
        self._mutual_tls = mutual_tls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
            return handler
        method = self._metrics.method(details.method) if self._metrics is not None else None
        logging_on = access_log.isEnabledFor(logging.INFO)
        if method is None and not logging_on:
            return handler
        call = _Call(self, details.method, method, logging_on)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.server_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                call.bidi_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: this server has none

    def certified(self, context: Any) -> str | None:
        """The client certificate's identity, with mutual TLS."""
        return principal_of(context) if self._mutual_tls else None


class _Call:
    """One RPC in progress: counts it and logs it once it ends."""

    __slots__ = ("_certified", "_logging", "_method", "_observer", "_path", "_peer", "_started")

    def __init__(
        self, observer: Observer, path: str, method: _Method | None, logging_on: bool
    ) -> None:
        self._observer = observer
        self._path = path
        self._method = method
        self._logging = logging_on
        self._started = time.perf_counter()
        self._peer = ""
        self._certified: str | None = None
        if method is not None:
            method.started.inc()

    def _begin(self, context: Any) -> None:
        """What the log line needs of the call itself, read while the call is alive: once a
        call is cancelled, asking its context for the peer can crash grpcio (1.85.1)."""
        if self._logging:
            self._peer = context.peer()
            self._certified = self._observer.certified(context)

    def unary(self, inner: Any) -> Callable[[Any, Any], Awaitable[Any]]:
        async def run(request: Any, context: Any) -> Any:
            self._begin(context)
            method = self._method
            if method is not None:
                method.received.inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await inner(request, context)
                code = _code(context) or grpc.StatusCode.OK
                if method is not None and code is grpc.StatusCode.OK:
                    method.sent.inc()
                return response
            except grpc.aio.AbortError:
                code = _code(context) or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = _cancelled(context)
                raise
            finally:
                self._end(code)

        return run

    def server_stream(self, inner: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
        return self._stream(inner, counts_request=True)

    def bidi_stream(self, inner: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                if self._method is not None:
                    self._method.received.inc()
                yield request

        def counting(requests: Any, context: Any) -> AsyncIterator[Any]:
            return inner(counted(requests), context)  # type: ignore[no-any-return]

        return self._stream(counting, counts_request=False)

    def _stream(
        self, inner: Callable[[Any, Any], AsyncIterator[Any]], *, counts_request: bool
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        """A streaming handler counting what it sends, and the one request it takes when
        `counts_request` (a request stream counts its own, see bidi_stream)."""

        async def run(request: Any, context: Any) -> AsyncIterator[Any]:
            self._begin(context)
            method = self._method
            if counts_request and method is not None:
                method.received.inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in inner(request, context):
                    if method is not None:
                        method.sent.inc()
                    yield response
                code = _code(context) or grpc.StatusCode.OK
            except grpc.aio.AbortError:
                code = _code(context) or grpc.StatusCode.UNKNOWN
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = _cancelled(context)
                raise
            finally:
                self._end(code)

        return run

    def _end(self, code: grpc.StatusCode) -> None:
        seconds = time.perf_counter() - self._started
        method = self._method
        if method is not None:
            method.handled[code].inc()
            method.seconds.observe(seconds)
        if self._logging:
            caller = current_caller.get()  # set by the authenticator, for this call's task
            principal = caller.identity.principal if caller is not None else self._certified
            access_log.info(
                "%s %s %.2f ms peer=%s principal=%s",
                self._path,
                code.name,
                seconds * 1000,
                self._peer,
                principal or "-",
                extra={
                    "rpc": {
                        "method": self._path,
                        "code": code.name,
                        "duration_ms": round(seconds * 1000, 3),
                        "peer": self._peer,
                        "principal": principal,
                    }
                },
            )


def _code(context: Any) -> grpc.StatusCode | None:
    """The code the handler set or aborted with; None if it set none."""
    code = context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return _BY_NUMBER.get(int(code), grpc.StatusCode.UNKNOWN)


def _cancelled(context: Any) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
