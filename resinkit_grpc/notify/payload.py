"""What a delivery sends: the Standard Webhooks body and headers of one attempt.

webhook-id: msg_<event_id>_<n>           (the same on every attempt: receivers de-duplicate)
webhook-timestamp: <seconds since the epoch, of this attempt>
webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,... per secret]
{"type": "task.status_change", "timestamp": "<the event's, RFC 3339>",
 "data": {"event": <TaskEvent, protobuf JSON>, "task": <Task BASIC view, protobuf JSON>}}
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from resinkit_grpc.api.convert import event_to_proto, task_to_proto
from resinkit_grpc.notify.secrets import WebhookSecrets
from resinkit_grpc.store.deliveries import Attempt
from resinkit_grpc.watch.items import LogEvent

USER_AGENT = "resinkit-grpc-webhooks/1"


class UnknownSecret(LookupError):
    """The webhook names a secret the server does not hold (yet)."""


def body(attempt: Attempt) -> str:
    """The JSON body: the same text on every attempt of the delivery."""
    row = attempt.event
    event = LogEvent(
        event_id=row["event_id"],
        task_id=row["task_id"],
        task_type=row["task_type"],
        event_type=row["event_type"],
        timestamp=row["timestamp"],
        event_data=row["event_data"],
        previous_status=row["previous_status"],
        new_status=row["new_status"],
        actor=row["actor"],
    )
    document: dict[str, Any] = {
        "type": f"task.{row['event_type'].lower()}",
        "timestamp": _rfc3339(row["timestamp"]),
        "data": {
            "event": json_format.MessageToDict(event_to_proto(event)),
            "task": json_format.MessageToDict(task_to_proto(attempt.task)),
        },
    }
    # Sorted: a Struct's keys come out in an order of the process's own, and another replica
    # (or this one after a restart) must send the very same bytes.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def headers(attempt: Attempt, text: str, secrets: WebhookSecrets, now: datetime) -> dict[str, str]:
    """The attempt's headers, signed with every secret of its secret_id (UnknownSecret when
    the server holds none of that id)."""
    sent = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": attempt.message_id,
        "webhook-timestamp": str(int(now.timestamp())),
    }
    if attempt.secret_id is not None:
        signers = secrets.signers(attempt.secret_id)
        if not signers:
            raise UnknownSecret(attempt.secret_id)
        moment = datetime.fromtimestamp(int(now.timestamp()), UTC)
        sent["webhook-signature"] = " ".join(
            signer.sign(attempt.message_id, moment, text) for signer in signers
        )
    return sent


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
