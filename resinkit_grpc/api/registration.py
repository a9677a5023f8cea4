"""Registers services on a server the way the generated add_*Servicer_to_server functions do,
from the service's descriptor, with two differences: a request gRPC cannot decode reaches the
handler as UNDECODABLE (instead of gRPC answering UNKNOWN with the decoder's text and logging a
traceback), and TaskService's WatchTaskEvents hands gRPC bytes it encoded itself, so that an
event is serialized once for every stream that carries it instead of once per stream."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from resinkit_grpc.api.parse import UNDECODABLE
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TaskService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


def _decoder(message_class: Any) -> Any:
    parse = message_class.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return UNDECODABLE

    return decode


# Methods whose handlers yield serialized messages (bytes) rather than messages.
PRE_ENCODED = frozenset({"WatchTaskEvents"})


def add_task_service(servicer: Any, server: grpc.aio.Server) -> None:
    add_service(servicer, server, SERVICE, PRE_ENCODED)


def add_health_service(servicer: Any, server: grpc.aio.Server) -> None:
    """grpc.health.v1.Health; its handlers refuse UNDECODABLE (see api/health.py)."""
    add_service(servicer, server, HEALTH_SERVICE)


def add_service(
    servicer: Any,
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    pre_encoded: frozenset[str] = frozenset(),
) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        deserialize = _decoder(message_factory.GetMessageClass(method.input_type))
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            raise NotImplementedError(f"{method.name}: client streaming is not registered here")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=deserialize,
                response_serializer=None if method.name in pre_encoded else serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=deserialize, response_serializer=serialize
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Looked up by method name first, as the generated code registers them.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
