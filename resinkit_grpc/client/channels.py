"""How the client reaches the server: addresses, TLS, a bearer token, keepalive, and the same
read from RESINKIT_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
# gRPC's own reconnect backoff grows to two minutes: a client would then keep failing for
# minutes after a restarted server is back. Our retries pace the attempts instead.
_RECONNECT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Lets the watch resume from heartbeats rather than have gRPC replay anything itself.
    ("grpc.enable_retries", 0),
]

Credential = bytes | str | Path


def _pem(value: Credential | None) -> bytes | None:
    """PEM bytes as given, or read from a path (str or Path)."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class ChannelSettings:
    """Where and how to connect. Several addresses are replicas of one service: a call that
    finds one unavailable is retried on the next."""

    addresses: tuple[str, ...]
    token: str | None = None
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    tls: bool = False
    keepalive_seconds: float | None = None
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def build(
        cls,
        address: str | Sequence[str],
        *,
        token: str | None = None,
        root_certificates: Credential | None = None,
        client_certificate: Credential | None = None,
        client_key: Credential | None = None,
        tls: bool | None = None,
        keepalive_seconds: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> ChannelSettings:
        addresses = tuple(a.strip() for a in ([address] if isinstance(address, str) else address))
        addresses = tuple(a for part in addresses for a in part.split(",") if a)
        if not addresses:
            raise ValueError("at least one HOST:PORT address is needed")
        roots = _pem(root_certificates)
        certificate, key = _pem(client_certificate), _pem(client_key)
        if (certificate is None) != (key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        secure = tls if tls is not None else bool(roots or certificate)
        return cls(
            addresses, token, roots, certificate, key, secure, keepalive_seconds, tuple(options)
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ChannelSettings:
        """RESINKIT_ADDRESS (comma-separated for several; default 127.0.0.1:50051),
        RESINKIT_TOKEN, RESINKIT_CA_CERT, RESINKIT_CLIENT_CERT, RESINKIT_CLIENT_KEY (paths of
        PEM files). Keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "token": env.get("RESINKIT_TOKEN") or None,
            "root_certificates": env.get("RESINKIT_CA_CERT") or None,
            "client_certificate": env.get("RESINKIT_CLIENT_CERT") or None,
            "client_key": env.get("RESINKIT_CLIENT_KEY") or None,
        }
        values.update(overrides)
        address = values.pop("address", None) or env.get("RESINKIT_ADDRESS") or DEFAULT_ADDRESS
        return cls.build(address, **values)

    def channel_options(self) -> list[tuple[str, Any]]:
        options = list(_RECONNECT_OPTIONS)
        if self.keepalive_seconds is not None:
            # The server must allow pings this often (gRPC servers default to 5 minutes).
            options += [
                ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
            ]
        return options + list(self.options)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        # Plain metadata rather than call credentials: gRPC refuses those on an insecure
        # channel, and a local server without TLS may still ask for tokens.
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def sync_channel(self, address: str) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(address, options=self.channel_options())
        return grpc.secure_channel(address, credentials, options=self.channel_options())

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=self.channel_options())
        return grpc.aio.secure_channel(address, credentials, options=self.channel_options())
