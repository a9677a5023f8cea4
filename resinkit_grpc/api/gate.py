"""ShutdownGate: once shutdown begins, every new call (but health checks) is answered
UNAVAILABLE before its handler runs, so a caller always knows that nothing was done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import code_pb2, error_details_pb2

from resinkit_grpc.api.status import DOMAIN, abort, pack_status

# Load balancers must still see NOT_SERVING while the server drains.
ALWAYS_OPEN = "/grpc.health.v1.Health/"


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class ShutdownGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.closed = False
        self.refused = 0  # calls refused since the gate closed
        self._refuse = grpc.unary_unary_rpc_method_handler(_refuse)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if self.closed and not handler_call_details.method.startswith(ALWAYS_OPEN):
            self.refused += 1
            return self._refuse
        return await continuation(handler_call_details)


async def drain(gate: ShutdownGate, quiet: float, limit: float) -> None:
    """Waits, with the gate closed, until no call has arrived for `quiet` seconds (clients have
    gone elsewhere) or `limit` seconds have passed. gRPC's stop() cancels the calls its
    transport has accepted and not yet dispatched: CANCELLED, which tells a caller nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    seen = -1
    while gate.refused != seen and loop.time() < deadline:
        seen = gate.refused
        await asyncio.sleep(min(quiet, max(0.0, deadline - loop.time())))


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    status = pack_status(
        code_pb2.UNAVAILABLE,
        "the server is shutting down; nothing was done: retry elsewhere",
        [
            error_details_pb2.ErrorInfo(
                reason="SHUTTING_DOWN", domain=DOMAIN, metadata={"outcome": "NOT_COMMITTED"}
            ),
            error_details_pb2.RetryInfo(retry_delay={"nanos": 100_000_000}),
        ],
    )
    await abort(context, status)
