"""The schema of a task's `notification_config`: which webhooks hear which of its events. Pure
rules, no I/O: the API validates a config with `parse` (every problem named by its field), the
store picks the webhooks of each new event with `webhooks_for`.

    {"webhooks": [{"url": "https://hooks.example/resinkit",
                   "event_types": ["STATUS_CHANGE"],
                   "statuses": ["TASK_STATUS_FAILED", "TASK_STATUS_COMPLETED"],
                   "secret_id": "team-a"}]}

- `url`: required, http or https, with a host; at most MAX_URL_LENGTH characters. One task
  names a URL once (a receiver gets each of the task's events once, in order).
- `event_types`: the event types delivered (CREATED, STATUS_CHANGE, UPDATED, DELETED,
  UNDELETED); absent or empty: every type.
- `statuses`: when given, only events whose new status is one of these (TaskStatus names as in
  the API, `TASK_STATUS_FAILED`); events without a new status (UPDATED, DELETED, UNDELETED)
  then never match.
- `secret_id`: the server-held secret that signs the deliveries (--webhook-secrets-file);
  absent: deliveries go unsigned.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from resinkit_grpc.rules import EventType, TaskStatus

MAX_WEBHOOKS = 10
MAX_URL_LENGTH = 2048
MAX_SECRET_ID_LENGTH = 200
STATUS_PREFIX = "TASK_STATUS_"
_KEYS = frozenset({"url", "event_types", "statuses", "secret_id"})
_STATUS_NAMES = frozenset(STATUS_PREFIX + status.value for status in TaskStatus)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# What inet_aton reads as an IPv4 address: decimal, octal and hex parts, fewer than four.
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


@dataclass(frozen=True)
class Webhook:
    url: str
    event_types: frozenset[str]  # empty: every type
    statuses: frozenset[str] | None  # stored status names; None: any
    secret_id: str | None

    def hears(self, event_type: str, new_status: str | None) -> bool:
        if self.event_types and event_type not in self.event_types:
            return False
        return self.statuses is None or (new_status is not None and new_status in self.statuses)


@dataclass(frozen=True)
class Problem:
    field: str  # below notification_config, e.g. "webhooks[0].url"
    description: str


class InvalidConfig(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.description}" for p in problems))
        self.problems = problems


def parse(
    config: Mapping[str, Any] | None,
    *,
    allow_private: bool = True,
    known_secret: Callable[[str], bool] | None = None,
) -> tuple[Webhook, ...]:
    """The webhooks of a config, or InvalidConfig naming every problem. `allow_private=False`
    refuses URLs whose host is a loopback, private or link-local address written out (or
    localhost); names are checked again when a delivery resolves them. `known_secret`, when
    given, must know every secret_id."""
    if config is None:
        return ()
    problems: list[Problem] = []
    for key in config:
        if key != "webhooks":
            problems.append(Problem(key, "is not a notification_config field (only webhooks)"))
    hooks = config.get("webhooks", [])
    if not isinstance(hooks, list):
        problems.append(Problem("webhooks", "must be a list"))
        raise InvalidConfig(problems)
    if len(hooks) > MAX_WEBHOOKS:
        problems.append(Problem("webhooks", f"at most {MAX_WEBHOOKS} webhooks"))
    parsed: list[Webhook] = []
    seen: set[tuple[str, str, int | None, str]] = set()
    for index, hook in enumerate(hooks[:MAX_WEBHOOKS]):
        at = f"webhooks[{index}]"
        webhook = _webhook(hook, at, problems, allow_private, known_secret)
        if webhook is None:
            continue
        same = _comparable(webhook.url)
        if same in seen:
            problems.append(Problem(f"{at}.url", "names a URL an earlier webhook names"))
        seen.add(same)
        parsed.append(webhook)
    if problems:
        raise InvalidConfig(problems)
    return tuple(parsed)


def webhooks_for(
    config: Mapping[str, Any] | None, event_type: str, new_status: str | None
) -> list[Webhook]:
    """The webhooks of a stored config that hear this event. A config stored before this schema
    was enforced, and invalid by it, has none."""
    if not config or "webhooks" not in config:
        return []
    try:
        hooks = parse(config)
    except InvalidConfig:
        return []
    return [hook for hook in hooks if hook.hears(event_type, new_status)]


def uncanonical_ipv4(host: str) -> bool:
    """Whether the host is an IPv4 address spelled some other way than four decimal numbers
    (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`): resolvers read those as addresses."""
    if not _NUMERIC_HOST.fullmatch(host) or not any(c.isdigit() for c in host):
        return False
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return False
    return socket.inet_ntoa(packed) != host


def private_host(host: str) -> bool:
    """Whether an address written out (or localhost) is one deliveries refuse by default."""
    if host.lower().rstrip(".") in ("localhost", "localhost6") or host.lower().rstrip(".").endswith(
        ".localhost"
    ):
        return True
    if uncanonical_ipv4(host):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return refused_address(address)


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, unspecified, multicast and reserved addresses, and the
    IPv6 forms of IPv4 ones."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 addresses inside IPv6 ones (mapped, 6to4, Teredo, NAT64) are judged as IPv4.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            address = embedded
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )


def _webhook(
    hook: Any,
    at: str,
    problems: list[Problem],
    allow_private: bool,
    known_secret: Callable[[str], bool] | None,
) -> Webhook | None:
    if not isinstance(hook, dict):
        problems.append(Problem(at, "must be an object with a url"))
        return None
    before = len(problems)
    for key in hook:
        if key not in _KEYS:
            problems.append(
                Problem(f"{at}.{key}", f"is not a webhook field ({', '.join(sorted(_KEYS))})")
            )
    url = hook.get("url")
    if not isinstance(url, str) or not url:
        problems.append(Problem(f"{at}.url", "is required: an http or https URL"))
    else:
        _check_url(url, f"{at}.url", problems, allow_private)
    event_types = _names(hook.get("event_types"), f"{at}.event_types", problems)
    unknown = sorted(name for name in event_types if name not in EventType.__members__)
    if unknown:
        problems.append(
            Problem(
                f"{at}.event_types",
                f"unknown event type {unknown[0]!r} (one of {', '.join(EventType)})",
            )
        )
    statuses: frozenset[str] | None = None
    if "statuses" in hook:
        names = _names(hook["statuses"], f"{at}.statuses", problems)
        if not names and isinstance(hook["statuses"], list):
            problems.append(
                Problem(f"{at}.statuses", "names no status, so nothing would match (omit it)")
            )
        stored = {name.removeprefix(STATUS_PREFIX) for name in names}
        wrong = sorted(
            name
            for name in names
            if not name.startswith(STATUS_PREFIX) or name not in _STATUS_NAMES
        )
        if wrong:
            problems.append(
                Problem(
                    f"{at}.statuses",
                    f"unknown status {wrong[0][:40]!r} (TASK_STATUS_PENDING ... "
                    "TASK_STATUS_CANCELLED)",
                )
            )
        statuses = frozenset(stored)
    secret_id = hook.get("secret_id")
    if secret_id is not None:
        if not isinstance(secret_id, str) or not 0 < len(secret_id) <= MAX_SECRET_ID_LENGTH:
            problems.append(
                Problem(f"{at}.secret_id", f"must be a string of 1 to {MAX_SECRET_ID_LENGTH}")
            )
        elif known_secret is not None and not known_secret(secret_id):
            problems.append(
                Problem(
                    f"{at}.secret_id",
                    f"names no secret of this server's webhook secrets ({secret_id[:40]!r})",
                )
            )
    if len(problems) > before:
        return None
    return Webhook(str(url), frozenset(event_types), statuses, secret_id)


def _names(value: Any, field: str, problems: list[Problem]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(Problem(field, "must be a list of strings"))
        return []
    return value


def _check_url(url: str, field: str, problems: list[Problem], allow_private: bool) -> None:
    if len(url) > MAX_URL_LENGTH:
        problems.append(Problem(field, f"is longer than {MAX_URL_LENGTH} characters"))
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        problems.append(Problem(field, "is not a URL"))
        return
    if parts.scheme not in ("http", "https") or not host:
        problems.append(Problem(field, "must be an http or https URL with a host"))
    elif any(ord(c) < 33 or ord(c) == 127 for c in url):
        problems.append(Problem(field, "must not contain spaces or control characters"))
    elif uncanonical_ipv4(host):
        problems.append(Problem(field, "writes an IPv4 address other than as a.b.c.d"))
    elif not allow_private and private_host(host):
        problems.append(
            Problem(
                field,
                "names a loopback, private or link-local address, which this server does not "
                "deliver to (--webhook-allow-private)",
            )
        )


def _comparable(url: str) -> tuple[str, str, int | None, str]:
    """A URL as receivers see it: scheme and host in lower case, the default port spelled out."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, rest
