"""Registers TaskService on a server the way the generated add_TaskServiceServicer_to_server
does, from the service's descriptor, with one difference: WatchTaskEvents hands gRPC bytes it
encoded itself, so that an event is serialized once for every stream that carries it instead
of once per stream."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from resinkit_grpc.api.parse import UNDECODABLE
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TaskService"]


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
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        deserialize = _decoder(getattr(pb, method.input_type.name))
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.client_streaming:
            raise NotImplementedError(f"{method.name}: client streaming is not registered here")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=deserialize,
                response_serializer=None if method.name in PRE_ENCODED else serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=deserialize, response_serializer=serialize
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    # Looked up by method name first, as the generated code registers them.
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]
