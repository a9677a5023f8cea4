"""Calling the console's HTTP API in tests: JSON requests and Server-Sent Event streams over
real sockets (http.client), no browser."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and "error" in self.body, self.body
        error: dict[str, Any] = self.body["error"]
        return error


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    url = urllib.parse.urlsplit(base)
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(
            url.hostname, url.port, timeout=30, context=context
        )
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    payload: bytes | None
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    else:
        payload = body.encode() if isinstance(body, str) else body
    try:
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        kind = response.getheader("Content-Type", "")
        parsed: Any = json.loads(raw) if kind.startswith("application/json") else raw
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed)
    finally:
        connection.close()


@dataclass(frozen=True)
class Frame:
    event: str
    id: str | None
    data: Any


class EventStream:
    """One open /api/events stream; frames() yields frames as they come, until `deadline`."""

    def __init__(
        self,
        base: str,
        query: str = "",
        last_event_id: str | None = None,
        token: str | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.connection.request("GET", f"/api/events?{query}", headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def frames(self, timeout: float = 10.0) -> Iterator[Frame]:
        deadline = time.monotonic() + timeout
        event, ident, data = "message", None, []
        while time.monotonic() < deadline:
            line = self.response.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text == "":
                if data or ident is not None or event != "message":
                    yield Frame(event, ident, json.loads("\n".join(data)) if data else None)
                event, ident, data = "message", None, []
                continue
            field, _, value = text.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)
        raise AssertionError(f"no end of stream within {timeout} s")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
