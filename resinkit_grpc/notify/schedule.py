"""When a failed delivery is tried again: the Standard Webhooks schedule (the first attempt at
once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after each failure: eight attempts over
about 28 hours), each delay with jitter, a receiver's Retry-After honoured."""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime

# The pauses after each failed attempt; the first attempt is made at once.
DEFAULT_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A delay drawn between (1 - JITTER) and (1 + JITTER) times the schedule's: retries of many
# deliveries that failed together (a receiver down) do not all come back at the same moment.
JITTER = 0.1
# Retry-After beyond this many seconds is taken as this (a receiver cannot park a delivery for
# longer than the schedule's longest pause).
MAX_RETRY_AFTER_SECONDS = 10 * 3600


def parse_schedule(text: str) -> tuple[float, ...]:
    """`5s,5m,30m`: the pause after each failed attempt before the next, each 0 or a number
    with a unit (ms, s, m, h, d); `none` for no retry at all. ValueError otherwise."""
    if text.strip().lower() == "none":
        return ()
    delays = []
    for item in text.split(","):
        cleaned = item.strip().lower()
        if cleaned == "0":
            delays.append(0.0)
            continue
        for unit in ("ms", "s", "m", "h", "d"):
            if cleaned.endswith(unit) and cleaned[: -len(unit)]:
                value = float(cleaned[: -len(unit)]) * UNITS[unit]
                if not math.isfinite(value) or not 0 <= value <= 7 * 86400:
                    raise ValueError(item)
                delays.append(value)
                break
        else:
            raise ValueError(item)
    if not 1 <= len(delays) <= 50:  # "none" is the way to say no retries
        raise ValueError(text)
    return tuple(delays)


def schedule_problem(value: str) -> str | None:
    try:
        parse_schedule(value)
    except ValueError:
        return (
            "must be none, or 1 to 50 comma-separated pauses, each 0 or a number with a unit "
            "(ms, s, m, h, d) of at most 7d, such as 5s,5m,30m"
        )
    return None


class Schedule:
    def __init__(self, pauses: Sequence[float]) -> None:
        self.pauses = tuple(pauses)

    @property
    def attempts(self) -> int:
        """How many attempts a delivery gets: the first, and one after each pause."""
        return 1 + len(self.pauses)

    def after_failure(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the attempt after failed attempt number `attempt` (1 for the first),
        or None: that was the last."""
        if attempt > len(self.pauses):
            return None
        delay = self.pauses[attempt - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
