"""What every console endpoint answers with on failure: JSON naming the gRPC code and the
ErrorInfo reason the gRPC API gives for the same failure, with the HTTP status that
google/rpc/code.proto maps the code to. Domain errors go through api/status.to_status, the one
place where they become statuses, so both APIs say the same thing."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from resinkit_grpc.api.status import DOMAIN, pack_status, to_status
from resinkit_grpc.errors import InvalidArgument, ResinkitError

# google/rpc/code.proto's "HTTP Mapping" of each code.
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


def error_body(status: status_pb2.Status) -> dict[str, Any]:
    """`{"error": {"code", "reason", "message", ...}}` for a google.rpc.Status: its ErrorInfo's
    reason and metadata, and the field violations of a BadRequest."""
    error: dict[str, Any] = {
        "code": code_pb2.Code.Name(status.code),
        "reason": "",
        "message": status.message,
    }
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error["reason"] = info.reason
            if info.metadata:
                error["metadata"] = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            error["field_violations"] = [
                json_format.MessageToDict(v, preserving_proto_field_name=True)
                for v in bad.field_violations
            ]
    return {"error": error}


def status_reply(status: status_pb2.Status, headers: dict[str, str] | None = None) -> web.Response:
    return json_reply(error_body(status), HTTP_STATUS.get(status.code, 500), headers)


def domain_error(error: ResinkitError) -> web.Response:
    return status_reply(to_status(error))


def refusal(
    code: int,
    reason: str,
    message: str,
    *,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error of the console's own (no such endpoint, wrong method, no token)."""
    status = pack_status(code, message, [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)])
    body = error_body(status)
    return json_reply(body, http_status or HTTP_STATUS[code], headers or None)


def bad_input(field: str, description: str) -> web.Response:
    return domain_error(InvalidArgument.one(field, description))


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
