"""Retry-safe mutations (AIP-155): a mutation carrying a request_id is done once. Its outcome
is kept, with a fingerprint of what was asked, in the same transaction as the change; a retry
with the same id gets that outcome back (the same task, etag and event) instead of acting
again, from any replica, for as long as the id is kept (see purge_requests). Failed calls
are not kept: nothing was done, and a retry acts afresh."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, insert, select

from resinkit_grpc.errors import InvalidArgument
from resinkit_grpc.store.clock import utcnow
from resinkit_grpc.store.models import MutationRequest

requests = cast(Table, MutationRequest.__table__)
Record = dict[str, Any]
_TIMESTAMPS = ("created_at", "updated_at", "started_at", "finished_at", "expires_at")


def once(
    connection: Connection,
    request_id: str | None,
    method: str,
    inputs: Any,
    act: Callable[[], Record],
) -> Record:
    """`act()`'s outcome, from the first call with this request_id if there was one."""
    if request_id is None:
        return act()
    fingerprint = _fingerprint(method, inputs)
    # On PostgreSQL every write transaction holds the event-append lock from its start (see
    # events.serialize_appends), so a concurrent first call on another replica has committed
    # before this SELECT runs, and is seen: two calls with one id never both act.
    kept = connection.execute(
        select(requests.c.fingerprint, requests.c.outcome).where(
            requests.c.request_id == request_id
        )
    ).first()
    if kept is not None:
        if kept.fingerprint != fingerprint:
            raise InvalidArgument.one(
                "request_id", "was already used for a different request; use a new one"
            )
        return _decode(kept.outcome)
    outcome = act()
    connection.execute(
        insert(requests).values(
            request_id=request_id,
            fingerprint=fingerprint,
            task_id=outcome["task_id"],
            outcome=_encode(outcome),
            created_at=utcnow(),
        )
    )
    return outcome


def purge_requests(connection: Connection, before: datetime, limit: int = 1000) -> int:
    """Forgets at most `limit` request ids kept since before `before`; returns how many."""
    oldest = (
        select(requests.c.request_id)
        .where(requests.c.created_at < before)
        .order_by(requests.c.created_at)
        .limit(limit)
    )
    result = connection.execute(delete(requests).where(requests.c.request_id.in_(oldest)))
    return int(result.rowcount)


def _fingerprint(method: str, inputs: Any) -> str:
    canonical = json.dumps([method, inputs], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _encode(record: Record) -> Record:
    return {
        name: value.isoformat() if name in _TIMESTAMPS and value is not None else value
        for name, value in record.items()
    }


def _decode(stored: Record) -> Record:
    return {
        name: datetime.fromisoformat(value) if name in _TIMESTAMPS and value is not None else value
        for name, value in stored.items()
    }
