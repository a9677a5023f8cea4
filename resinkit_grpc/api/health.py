"""grpc.health.v1.Health: Check, List and Watch of this server's services.

grpcio-health-checking's aio servicer answers List with UNIMPLEMENTED and keeps Watch streams
open through shutdown (so a server with one open always waited its whole grace period); this
one lists every service, and ends each Watch stream with UNAVAILABLE right after telling it
NOT_SERVING when serving stops, as task watches end. A request gRPC cannot decode is
INVALID_ARGUMENT, as on TaskService (see api/registration.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resinkit_grpc.api.parse import decodable
from resinkit_grpc.api.status import abort, to_status
from resinkit_grpc.errors import InvalidArgument

# grpc_health ships no types: statuses are the enum's numbers.
ServingStatus = int
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._statuses: dict[str, ServingStatus] = {}
        self._changed = asyncio.Condition()
        self._stopping = False

    async def set(self, service: str, status: ServingStatus) -> None:
        """Sets a service's status; ignored once serving stops (it stays NOT_SERVING)."""
        if self._stopping:
            return
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; every Watch stream is told so, then ended."""
        async with self._changed:
            self._stopping = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        await _refuse_undecodable(request, context)
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        await _refuse_undecodable(request, context)
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._statuses.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        await _refuse_undecodable(request, context)
        last = None
        while True:
            async with self._changed:
                status = self._statuses.get(request.service, SERVICE_UNKNOWN)
                if status == last and not self._stopping:
                    await self._changed.wait()
                    continue
                stopping = self._stopping
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")


async def _refuse_undecodable(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    try:
        decodable(request)
    except InvalidArgument as error:
        await abort(context, to_status(error))
