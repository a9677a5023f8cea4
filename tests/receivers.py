"""Real webhook receivers for the tests: HTTP servers on 127.0.0.1, in a thread, that record
every request and answer as a test scripts them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str
    at: float = field(default_factory=time.monotonic)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Set: the answer waits for it (a receiver that hangs until the test lets it go).
    hold: threading.Event | None = None


# Decides the answer to a request, given it and every request received before it.
Policy = Callable[[Received, list[Received]], Answer]


def always(status: int) -> Policy:
    return lambda request, before: Answer(status)


class Receiver:
    """`with Receiver() as receiver:` serves on a free port of 127.0.0.1; `receiver.url`."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or always(200)
        self.requests: list[Received] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = Received(
                    {key.lower(): value for key, value in self.headers.items()},
                    self.rfile.read(length),
                    self.path,
                )
                with receiver._lock:
                    answer = receiver.policy(request, list(receiver.requests))
                    receiver.requests.append(request)
                    receiver._lock.notify_all()
                if answer.hold is not None:
                    answer.hold.wait(60)
                try:
                    self.send_response(answer.status)
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender has gone (killed, or timed out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, done: Callable[[list[Received]], bool], timeout: float = 20.0) -> None:
        """Waits until `done(requests)`; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: condition not met in {timeout} s; got "
                        f"{[r.webhook_id for r in self.requests]}"
                    )
                self._lock.wait(left)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)
