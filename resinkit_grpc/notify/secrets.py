"""The signing secrets of webhooks, from a TOML file held by the server (never stored in tasks:
a task's webhook names its secret by id); the file is re-read when it changes.

    [[secrets]]
    id = "team-a"
    secret = "whsec_<base64 of 24 to 64 random bytes>"

An id listed more than once signs with each of its secrets (the webhook-signature header then
carries one signature per secret): add the new secret, let receivers learn it, remove the old.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
import time
import tomllib
from pathlib import Path

from standardwebhooks.webhooks import Webhook as Signer

log = logging.getLogger(__name__)

RECHECK_SECONDS = 0.5
PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64


class SecretsError(ValueError):
    """The secrets file cannot be used; the message is one line for the operator."""


class WebhookSecrets:
    """Secret id -> its signers. Without a file, no id is known (deliveries of a webhook that
    names one wait, retried, until the secret appears)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._signers: dict[str, list[Signer]] = {} if path is None else _read(path)
        self._mtime = 0 if path is None else _mtime(path)
        self._checked = time.monotonic()

    @property
    def configured(self) -> bool:
        return self._path is not None

    def knows(self, secret_id: str) -> bool:
        self._reload_if_changed()
        return secret_id in self._signers

    def signers(self, secret_id: str) -> list[Signer]:
        self._reload_if_changed()
        return self._signers.get(secret_id, [])

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            mtime = _mtime(self._path)
            if mtime == self._mtime:
                return
            try:
                signers = _read(self._path)
            except SecretsError as error:
                log.warning("keeping the webhook secrets read before: %s", error)
                return
            self._signers, self._mtime = signers, mtime
            log.info("webhook secrets reloaded from %s: %d ids", self._path, len(signers))


def new_secret() -> str:
    """A fresh secret in the file's format."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _read(path: Path) -> dict[str, list[Signer]]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise SecretsError(
            f"cannot read the webhook secrets file {path}: {error.strerror}"
        ) from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SecretsError(f"the webhook secrets file {path} is not TOML: {error}") from error
    entries = document.get("secrets", [])
    if not isinstance(entries, list):
        raise SecretsError(f"the webhook secrets file {path}: secrets must be [[secrets]] tables")
    found: dict[str, list[Signer]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"the webhook secrets file {path}, secret {number}"
        if not isinstance(entry, dict):
            raise SecretsError(f"{where}: not a table")
        secret_id, secret = entry.get("id"), entry.get("secret")
        if not isinstance(secret_id, str) or not 0 < len(secret_id) <= 200:
            raise SecretsError(f"{where}: id must be 1 to 200 characters")
        found.setdefault(secret_id, []).append(Signer(_key(secret, where)))
    return found


def _key(secret: object, where: str) -> bytes:
    problem = f"{where}: secret must be {PREFIX} and the base64 of {MIN_BYTES} to {MAX_BYTES} bytes"
    if not isinstance(secret, str) or not secret.startswith(PREFIX):
        raise SecretsError(problem)
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as error:
        raise SecretsError(problem) from error
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        raise SecretsError(problem)
    return key


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
