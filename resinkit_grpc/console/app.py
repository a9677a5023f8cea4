"""The console's HTTP server (aiohttp, on the event loop grpc.aio runs on): the page and its
assets, the JSON API (api.py) and the live stream (live.py), with the gRPC API's roles. Every
failure is JSON (replies.py); nothing unexpected leaks its text."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from google.rpc import code_pb2

from resinkit_grpc.api.page_tokens import PageTokens
from resinkit_grpc.api.status import log_unexpected
from resinkit_grpc.console.api import ConsoleApi, json_body
from resinkit_grpc.console.live import LiveStreams
from resinkit_grpc.console.replies import domain_error, json_reply, refusal
from resinkit_grpc.errors import ResinkitError
from resinkit_grpc.security.auth import METHOD_ROLES, SERVICE
from resinkit_grpc.security.tokens import Identity, Role, TokenFile
from resinkit_grpc.store.database import Database
from resinkit_grpc.watch.watches import Watches

log = logging.getLogger(__name__)

STATIC = resources.files("resinkit_grpc.console") / "static"
ASSETS = {
    "app.js": "text/javascript",
    "views.js": "text/javascript",
    "live.js": "text/javascript",
    "style.css": "text/css",
}
# The page itself: the same document for the table and for one task (the script routes).
PAGE_SECURITY = {
    # No inline script, nothing from elsewhere: the assets ship in the wheel.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Endpoint = Callable[[web.Request, "Caller"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Caller:
    """Who calls: None as principal when authentication is off (the console is open then)."""

    principal: str | None
    role: Role
    token: str | None = None


class Access:
    """Decides each request as the gRPC interceptor decides each call: a bearer token from the
    tokens file, the role of the RPC the endpoint mirrors; mutual TLS names the caller when
    there are no tokens."""

    def __init__(self, tokens: TokenFile | None, *, mutual_tls: bool) -> None:
        self.tokens = tokens
        self.mutual_tls = mutual_tls

    def caller(self, request: web.Request, method: str) -> Caller | web.Response:
        if self.tokens is None:
            return Caller(_certificate_principal(request) if self.mutual_tls else None, Role.ADMIN)
        token = _bearer(request.headers.get("Authorization", ""))
        identity: Identity | None = self.tokens.identify(token) if token else None
        if identity is None or token is None:
            return refusal(
                code_pb2.UNAUTHENTICATED,
                "UNAUTHENTICATED",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        needed = METHOD_ROLES.get(SERVICE + method, Role.ADMIN)
        if identity.role < needed:
            return refusal(
                code_pb2.PERMISSION_DENIED,
                "PERMISSION_DENIED",
                f"the role {identity.role.name.lower()} may not call {method}",
            )
        return Caller(identity.principal, identity.role, token)


class Console:
    def __init__(
        self,
        address: str,
        database: Database,
        page_tokens: PageTokens,
        watches: Watches,
        access: Access,
        *,
        ssl_context: ssl.SSLContext | None,
        heartbeat_seconds: float,
    ) -> None:
        self._address = address
        self._api = ConsoleApi(database, page_tokens)
        self._live = LiveStreams(watches)
        self._access = access
        self._ssl = ssl_context
        self._heartbeat = heartbeat_seconds
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = self._build()

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=1024 * 1024)
        page = self._page
        app.router.add_get("/", page)
        app.router.add_get("/tasks/{task_id}", page)
        app.router.add_get("/static/{name}", self._asset)
        routes: list[tuple[str, str, str, Endpoint]] = [
            ("GET", "/api/session", "GetTask", self._session),
            ("GET", "/api/tasks", "ListTasks", self._list),
            ("GET", "/api/counts", "ListTasks", self._counts),
            ("GET", "/api/tasks/{task_id}", "GetTask", self._get),
            ("GET", "/api/tasks/{task_id}/events", "ListTaskEvents", self._events),
            ("GET", "/api/tasks/{task_id}/deliveries", "ListDeliveries", self._deliveries),
            ("POST", "/api/tasks/{task_id}/redeliver", "RedeliverTask", self._redeliver),
            ("POST", "/api/tasks/{task_id}/cancel", "UpdateTaskStatus", self._cancel),
            ("POST", "/api/tasks/{task_id}/delete", "DeleteTask", self._delete),
            ("POST", "/api/tasks/{task_id}/undelete", "UndeleteTask", self._undelete),
            ("GET", "/api/events", "WatchTaskEvents", self._stream),
        ]
        for verb, path, method, endpoint in routes:
            app.router.add_route(verb, path, self._guarded(method, endpoint))
        return app

    def _guarded(self, method: str, endpoint: Endpoint) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            caller = self._access.caller(request, method)
            if isinstance(caller, web.Response):
                return caller
            return await endpoint(request, caller)

        return handle

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self._address.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self._ssl)
        await site.start()
        addresses = self._runner.addresses
        bound = addresses[0][1] if addresses else int(port)
        scheme = "https" if self._ssl else "http"
        bare = host.strip("[]")
        shown = f"[{bare}]" if ":" in bare else bare
        self.url = f"{scheme}://{shown}:{bound}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _page(self, request: web.Request) -> web.StreamResponse:
        text = (STATIC / "index.html").read_text()
        return web.Response(
            text=text,
            content_type="text/html",
            headers={"Cache-Control": "no-store", **PAGE_SECURITY},
        )

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            return refusal(code_pb2.NOT_FOUND, "NOT_FOUND", "no such asset")
        return web.Response(
            body=(STATIC / name).read_bytes(),
            content_type=ASSETS[name],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def _session(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return json_reply(
            {
                "auth": self._access.tokens is not None,
                "principal": caller.principal,
                "role": caller.role.name.lower() if self._access.tokens is not None else None,
                "can_write": caller.role >= Role.WRITER,
                "tls": self._ssl is not None,
                "heartbeat_seconds": self._heartbeat,
            }
        )

    async def _list(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return json_reply(await self._api.list_tasks(request.query))

    async def _counts(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return json_reply(await self._api.counts(request.query))

    async def _get(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        if request.query:
            return _no_parameters()
        return json_reply(await self._api.get_task(request.match_info["task_id"]))

    async def _events(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return json_reply(await self._api.task_events(request.match_info["task_id"], request.query))

    async def _deliveries(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        found = await self._api.task_deliveries(request.match_info["task_id"], request.query)
        return json_reply(found)

    async def _redeliver(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await json_body(request)
        return json_reply(await self._api.redeliver(request.match_info["task_id"], body))

    async def _cancel(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await json_body(request)
        task = await self._api.cancel(request.match_info["task_id"], body, caller.principal)
        return json_reply(task)

    async def _delete(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await json_body(request)
        task = await self._api.delete(request.match_info["task_id"], body, caller.principal)
        return json_reply(task)

    async def _undelete(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await json_body(request)
        task = await self._api.undelete(request.match_info["task_id"], body, caller.principal)
        return json_reply(task)

    async def _stream(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        tokens, token = self._access.tokens, caller.token
        still_valid = None
        if tokens is not None and token is not None:

            def still_valid() -> bool:
                return tokens.identify(token) is not None

        return await self._live.stream(request, caller.principal, still_valid)


def _no_parameters() -> web.Response:
    return refusal(
        code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT", "this endpoint takes no parameters"
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure as JSON: domain errors as the gRPC API reports them, aiohttp's own (no
    such path, wrong method) as clear refusals, anything else logged and a bare INTERNAL."""
    try:
        return await handler(request)
    except ResinkitError as error:
        return domain_error(error)
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        return refusal(
            code_pb2.UNIMPLEMENTED,
            "METHOD_NOT_ALLOWED",
            f"{request.method} is not allowed here; allowed: {allowed}",
            http_status=405,
            headers={"Allow": allowed},
        )
    except web.HTTPNotFound:
        return refusal(code_pb2.NOT_FOUND, "NOT_FOUND", "no such page or endpoint")
    except web.HTTPRequestEntityTooLarge:
        return refusal(
            code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT", "the body is too large", http_status=413
        )
    except web.HTTPException as error:  # aiohttp's own refusals of a malformed request
        return refusal(
            code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT", error.reason, http_status=error.status
        )
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as error:
        log_unexpected(f"console {request.method} {request.path}", error)
        return refusal(code_pb2.INTERNAL, "INTERNAL", "internal error; it has been logged")


def _bearer(header: str) -> str | None:
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip() or None
    return None


def _certificate_principal(request: web.Request) -> str | None:
    """The client certificate's first subject alternative name, else its common name, as the
    gRPC side names a mutual-TLS caller (security/tls.principal_of)."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    for _kind, value in peer.get("subjectAltName", ()):
        return str(value)
    for entry in peer.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return str(value)
    return None


def ssl_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """The gRPC port's certificate and key (and client CA) for the console's HTTPS, read once at
    boot: a rotation reaches the console at the next restart."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(cert), Path(key))
    if client_ca:
        context.load_verify_locations(Path(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
