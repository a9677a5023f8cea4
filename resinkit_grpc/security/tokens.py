"""Bearer tokens from a TOML file, stored only as SHA-256 hashes, each naming a principal and
a role; the file is re-read when it changes.

    [[tokens]]
    principal = "flink-runner"
    role = "writer"            # reader | writer | admin
    sha256 = "<hex SHA-256 of the token>"
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from resinkit_grpc.watched_file import WatchedFile

log = logging.getLogger(__name__)

TOKEN_PREFIX = "rk_"


class Role(enum.IntEnum):
    """What a caller may do; each role may do what the ones below it may."""

    READER = 1  # GetTask, BatchGetTasks, ListTasks, ListTaskEvents, WatchTaskEvents
    WRITER = 2  # and every mutation
    ADMIN = 3  # and the admin operations


class TokensError(ValueError):
    """The tokens file cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class Identity:
    principal: str
    role: Role


class TokenFile:
    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path, _read, TokensError, "tokens")  # TokensError: no boot

    def identify(self, token: str) -> Identity | None:
        """Who holds `token`, or None. Every entry is compared, in constant time, so the time
        taken says nothing about which one (if any) matched."""
        digest = hashlib.sha256(token.encode()).hexdigest().encode()
        found = None
        for expected, identity in self._file.current():
            if hmac.compare_digest(digest, expected):
                found = identity
        return found


def new_token(principal: str, role: str) -> tuple[str, str]:
    """A fresh random token, and the TOML entry (with its hash only) that grants it."""
    if role not in ("reader", "writer", "admin"):
        raise TokensError(f"role must be reader, writer or admin, not {role!r}")
    if not principal or len(principal) > 128:
        raise TokensError("principal must be 1 to 128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    # A JSON string is a TOML basic string for every character a principal may hold.
    entry = (
        f'[[tokens]]\nprincipal = {json.dumps(principal)}\nrole = "{role}"\nsha256 = "{digest}"\n'
    )
    return token, entry


def _read(path: Path) -> list[tuple[bytes, Identity]]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise TokensError(f"cannot read the tokens file {path}: {error.strerror}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TokensError(f"the tokens file {path} is not TOML: {error}") from error
    entries = []
    for number, entry in enumerate(document.get("tokens", []), start=1):
        where = f"the tokens file {path}, token {number}"
        if not isinstance(entry, dict):
            raise TokensError(f"{where}: not a table")
        principal, role, digest = entry.get("principal"), entry.get("role"), entry.get("sha256")
        if not isinstance(principal, str) or not 0 < len(principal) <= 128:
            raise TokensError(f"{where}: principal must be 1 to 128 characters")
        if role not in ("reader", "writer", "admin"):
            raise TokensError(f"{where}: role must be reader, writer or admin")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise TokensError(f"{where}: sha256 must be 64 hex digits (the token's SHA-256)")
        entries.append((digest.lower().encode(), Identity(principal, Role[role.upper()])))
    return entries


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
