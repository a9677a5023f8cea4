"""When and how long to wait before trying a call again. Pure: the sync and asyncio clients
sleep in their own ways and ask this module what to do.

Only UNAVAILABLE is retried: the server did not serve the call (refused at shutdown, database
down or busy, writer overloaded) or the connection broke. Reads are always safe to retry;
mutations are safe because the client sends every mutation with a request_id (its own, when
the caller gives none), so a retry of a change that did commit returns the first outcome
instead of acting twice, on whichever replica it lands (outcome UNKNOWN included)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from resinkit_grpc.client.errors import ClientError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: before attempt n+1 wait a random time in
    [0, min(max_backoff, initial_backoff * multiplier**n)], and at least the server's
    RetryInfo delay when it sends one. `max_attempts` counts the first try."""

    max_attempts: int = 10
    initial_backoff: float = 0.1
    max_backoff: float = 3.0
    multiplier: float = 2.0

    def delay(self, retry_number: int, error: ClientError, rng: random.Random) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry_number)
        wait = rng.uniform(0, ceiling)
        if error.retry_delay is not None:
            wait = max(wait, error.retry_delay)
        return wait


NO_RETRIES = RetryPolicy(max_attempts=1)


def is_retryable(error: ClientError) -> bool:
    """UNAVAILABLE, and CANCELLED: a call this client cannot cancel itself (its own
    cancellations raise in the caller, never as a status) was cancelled by the server, as one
    shutting down does to what its transport had just accepted."""
    return error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Attempts:
    """The retry state of one call: `next_delay(error)` is how long to wait before trying
    again, or None when the error is final (not retryable, attempts or time used up)."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self.failures = 0

    def reset(self) -> None:
        """Progress was made (a watch received a message): the next failure starts afresh."""
        self.failures = 0

    def next_delay(self, error: ClientError, *, retryable: bool | None = None) -> float | None:
        if not (is_retryable(error) if retryable is None else retryable):
            return None
        self.failures += 1
        if self.failures >= self._policy.max_attempts:
            return None
        return self._policy.delay(self.failures - 1, error, self._rng)
