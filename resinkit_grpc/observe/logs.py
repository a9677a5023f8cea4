"""The server's log: human-readable lines by default, or one JSON object per line
(`--log-format json`) with the same fields plus timestamp and level.

Access lines (logger `resinkit_grpc.access`, one per RPC, at INFO) carry their fields in
`record.rpc`; in JSON they become top-level keys. Nothing here adds payloads: what a line holds
is what its caller put in it, and no caller puts request data, tokens or secrets there."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "rpc", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic's "Context impl" lines at every look; migrations.py logs each migration itself.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
