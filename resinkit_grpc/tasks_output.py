"""How `resinkit-grpc tasks` shows tasks and events: tables that fit the terminal for people
(timestamps in local time and relative to now), one JSON object per line for scripts.

JSON objects carry the Python client's field names (`task_id`, `status: "RUNNING"`, ...),
timestamps as RFC 3339 in UTC, and every field, null when unset."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from resinkit_grpc.client import Delivery, Task, TaskEvent

ELLIPSIS = "…"
GAP = "  "  # between columns

FREE_TEXT_MINIMUM = 10
COMFORTABLE = 8  # narrower than this, a column is dropped (in `droppable` order) instead


@dataclasses.dataclass(frozen=True)
class Layout:
    """A table's columns and how they give way on a narrow terminal: free text first, keys
    (the ids people copy) last; when even that does not fit, `droppable` columns go."""

    headers: tuple[str, ...]
    free_text: tuple[int, ...]
    keys: tuple[int, ...]
    droppable: tuple[int, ...]

    def widths(self, natural: Sequence[int], available: int) -> list[int]:
        """Each column's width; 0 for a dropped one."""
        kept = list(range(len(self.headers)))
        for column in self.droppable:
            wanted = [natural[i] if i in self.keys else min(natural[i], COMFORTABLE) for i in kept]
            if sum(wanted) + len(GAP) * (len(kept) - 1) <= available:
                break
            kept.remove(column)
        fitted = fit(
            [natural[i] for i in kept],
            [len(self.headers[i]) for i in kept],
            available,
            [kept.index(i) for i in self.free_text if i in kept],
            [kept.index(i) for i in self.keys if i in kept],
        )
        widths = [0] * len(self.headers)
        for i, w in zip(kept, fitted, strict=True):
            widths[i] = w
        return widths


TASKS = Layout(("ID", "TYPE", "STATUS", "PRI", "NAME", "TAGS", "UPDATED"), (4, 5), (0,), (5, 3, 4))
EVENTS = Layout(("EVENT", "TASK", "TYPE", "STATUS", "ACTOR", "TIME", "DATA"), (6,), (0, 1), (6, 4))
DELIVERIES = Layout(
    ("DELIVERY", "TASK", "EVENT", "STATE", "TRIES", "HTTP", "URL", "LAST ERROR", "NEXT"),
    (6, 7),
    (0, 1),
    (7, 8, 5),
)
# A watch prints rows as they come, so its widths are set up front (then fitted).
WATCH_WIDTHS = (8, 36, 13, 23, 14, 22, 400)


def json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [json_value(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def as_json(item: Task | TaskEvent | Delivery) -> str:
    """One line: the task, event or delivery as a JSON object, every field in the client's
    order."""
    return json.dumps(json_value(item), ensure_ascii=False)


def relative(value: datetime, now: datetime) -> str:
    seconds = (now - value).total_seconds()
    span = abs(seconds)
    if span < 1:
        return "just now"
    if span < 60:
        amount = f"{int(span)} s"
    elif span < 3600:
        amount = f"{int(span // 60)} min"
    elif span < 86400:
        amount = f"{int(span // 3600)} h"
    else:
        amount = f"{int(span // 86400)} d"
    return f"{amount} ago" if seconds > 0 else f"in {amount}"


def when(value: datetime | None, now: datetime) -> str:
    """`2026-05-01 14:03:22 (3 min ago)`, in the machine's local time zone."""
    if value is None:
        return ""
    return f"{value.astimezone():%Y-%m-%d %H:%M:%S} ({relative(value, now)})"


def short_when(value: datetime | None, now: datetime) -> str:
    """For tables, where a cell may be cut short: `3 min ago (14:03:22)` today,
    `1 d ago (2026-04-30 09:12)` other days."""
    if value is None:
        return ""
    local = value.astimezone()
    today = local.date() == now.astimezone().date()
    shown = f"{local:%H:%M:%S}" if today else f"{local:%Y-%m-%d %H:%M}"
    return f"{relative(value, now)} ({shown})"


def compact(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def one_line(text: str) -> str:
    """A cell never breaks a row: newlines and tabs become spaces."""
    return " ".join(text.split())


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def fit(
    widths: Sequence[int],
    minimums: Sequence[int],
    available: int,
    free_text: Sequence[int] = (),
    keys: Sequence[int] = (),
) -> list[int]:
    """Narrows columns, widest first, one character at a time, until the row fits `available`
    characters: first the free-text ones (down to FREE_TEXT_MINIMUM), then every column but
    the keys (the ids people copy), then the keys, each down to its minimum (a row may stay
    wider when every column is at its minimum)."""
    fitted = list(widths)
    excess = sum(fitted) + len(GAP) * (len(fitted) - 1) - available
    everything = range(len(fitted))
    phases = [
        (free_text, [max(m, FREE_TEXT_MINIMUM) for m in minimums]),
        ([i for i in everything if i not in keys], list(minimums)),
        (everything, list(minimums)),
    ]
    for columns, floor in phases:
        while excess > 0:
            shrinkable = [i for i in columns if fitted[i] > floor[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: fitted[i])
            fitted[widest] -= 1
            excess -= 1
    return fitted


def row(cells: Sequence[str], widths: Sequence[int]) -> str:
    shown = [cut(c, w).ljust(w) for c, w in zip(cells, widths, strict=True) if w]
    return GAP.join(shown).rstrip()


def table(layout: Layout, rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Lines of a table whose columns fit `width` characters (long cells end in …)."""
    cells = [[one_line(c) for c in r] for r in rows]
    natural = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(layout.headers)]
    widths = layout.widths(natural, width)
    return [row(layout.headers, widths), *(row(r, widths) for r in cells)]


def task_row(task: Task, now: datetime) -> list[str]:
    status = task.status.value if task.active else f"{task.status.value} (deleted)"
    return [
        task.task_id,
        task.task_type,
        status,
        str(task.priority),
        task.task_name,
        ",".join(task.tags),
        short_when(task.updated_at, now),
    ]


def event_row(event: TaskEvent, now: datetime) -> list[str]:
    status = ""
    if event.new_status is not None:
        previous = event.previous_status.value if event.previous_status else ""
        status = f"{previous} → {event.new_status.value}" if previous else event.new_status.value
    return [
        str(event.event_id),
        event.task_id,
        event.event_type,
        status,
        event.actor or "",
        short_when(event.timestamp, now),
        compact(event.event_data) if event.event_data else "",
    ]


def delivery_row(delivery: Delivery, now: datetime) -> list[str]:
    return [
        str(delivery.delivery_id),
        delivery.task_id,
        str(delivery.event_id),
        delivery.state.value,
        str(delivery.attempts),
        str(delivery.last_status_code or ""),
        delivery.url,
        delivery.last_error or "",
        short_when(delivery.next_attempt_at, now) if delivery.next_attempt_at else "",
    ]


def task_detail(task: Task, now: datetime) -> list[str]:
    """A task as `field  value` lines, every field the view returned; JSON in full."""
    pairs = [
        ("id", task.task_id),
        ("type", task.task_type),
        ("name", task.task_name),
        ("status", task.status.value),
        ("active", "yes" if task.active else "no (deleted)"),
        ("priority", str(task.priority)),
        ("tags", ", ".join(task.tags)),
        ("created by", task.created_by),
        ("created", when(task.created_at, now)),
        ("updated", when(task.updated_at, now)),
        ("started", when(task.started_at, now)),
        ("finished", when(task.finished_at, now)),
        ("expires", when(task.expires_at, now)),
        ("etag", task.etag),
        ("description", one_line(task.description)),
        ("configs", compact(task.submitted_configs)),
        ("execution", compact(task.execution_details)),
        ("progress", compact(task.progress_details)),
        ("result", compact(task.result_summary)),
        ("error", compact(task.error_info)),
        ("notification", compact(task.notification_config)),
    ]
    shown = [(label, value) for label, value in pairs if value]
    label_width = max(len(label) for label, _ in shown)
    return [f"{label.ljust(label_width)}  {value}" for label, value in shown]
