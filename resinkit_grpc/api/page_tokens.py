"""Opaque, tamper-evident page tokens bound to the query that produced them.

A token is base64url(JSON {"q": query fingerprint, "p": keyset position}) + "." + HMAC. The key
is shared by every replica (it lives in the database), so any replica accepts any replica's
tokens. A token whose signature or fingerprint does not match is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from resinkit_grpc.errors import InvalidArgument

_SIGNATURE_BYTES = 16


def fingerprint(*parts: object) -> str:
    """A stable digest of the query a token belongs to (frozen dataclasses repr stably)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, query: str, position: list[Any]) -> str:
        payload = _b64(json.dumps({"q": query, "p": position}, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._sign(payload))}"

    def decode(self, token: str, query: str, field: str = "page_token") -> list[Any]:
        payload, _, signature = token.partition(".")
        try:
            valid = hmac.compare_digest(_unb64(signature), self._sign(payload))
            decoded = json.loads(_unb64(payload)) if valid else None
        except (binascii.Error, ValueError):
            decoded = None
        if not isinstance(decoded, dict) or not isinstance(decoded.get("p"), list):
            raise InvalidArgument.one(field, "is not a page token this service issued")
        if decoded.get("q") != query:
            raise InvalidArgument.one(
                field, "belongs to a different query: keep filter and order_by while paging"
            )
        position: list[Any] = decoded["p"]
        return position

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
