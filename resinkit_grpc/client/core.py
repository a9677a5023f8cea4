"""What the sync and asyncio clients share: settings, deadlines, the retry policy, request
ids, and which replica to call next."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from resinkit_grpc.client.channels import DEFAULT_ADDRESS, ChannelSettings, Credential
from resinkit_grpc.client.retry import RetryPolicy

DEFAULT_TIMEOUT = 30.0


def new_request_id() -> str:
    return uuid.uuid4().hex


class ClientCore:
    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        root_certificates: Credential | None = None,
        client_certificate: Credential | None = None,
        client_key: Credential | None = None,
        tls: bool | None = None,
        keepalive_seconds: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        settings: ChannelSettings | None = None,
    ) -> None:
        self.settings = settings or ChannelSettings.build(
            address,
            token=token,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            tls=tls,
            keepalive_seconds=keepalive_seconds,
            options=options,
        )
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = self.settings.call_metadata()
        self._rng = random.Random()
        self._current = 0
        self._lock = threading.Lock()
        self.retries = 0  # calls tried again and watches reconnected, since the client was made

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.settings.addresses

    def _address(self) -> str:
        return self.settings.addresses[self._current]

    def _fail_over(self, address: str) -> None:
        """The replica at `address` failed a call: the next call goes to the next one."""
        with self._lock:
            self.retries += 1
            if self._address() == address:
                self._current = (self._current + 1) % len(self.settings.addresses)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout
