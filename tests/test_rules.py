"""The status transition table, checked pair by pair against the documented one.

The expected table is written out here by hand from the proto comment on UpdateTaskStatusRequest
and the README's "Status transitions", never derived from resinkit_grpc.rules, so a change to the
rules that the documentation does not describe fails here.
"""

from __future__ import annotations

import pytest

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.rules import TaskStatus, allowed_next, can_transition

# Row: the current status. Column: the requested one. "x" allowed, "." refused.
# Terminal statuses are final; the pipeline PENDING..RUNNING only moves forward (skipping is
# fine) or to COMPLETED; any non-terminal status may go to CANCELLING, CANCELLED or FAILED;
# CANCELLING may also go to COMPLETED; moving to the current status is not a transition.
DOCUMENTED_TABLE = """
              PENDING SUBMITTED VALIDATING PREPARING BUILDING RUNNING COMPLETED FAILED CANCELLING CANCELLED
  PENDING        .        x         x          x         x       x        x       x        x          x
  SUBMITTED      .        .         x          x         x       x        x       x        x          x
  VALIDATING     .        .         .          x         x       x        x       x        x          x
  PREPARING      .        .         .          .         x       x        x       x        x          x
  BUILDING       .        .         .          .         .       x        x       x        x          x
  RUNNING        .        .         .          .         .       .        x       x        x          x
  COMPLETED      .        .         .          .         .       .        .       .        .          .
  FAILED         .        .         .          .         .       .        .       .        .          .
  CANCELLING     .        .         .          .         .       .        x       x        .          x
  CANCELLED      .        .         .          .         .       .        .       .        .          .
"""  # noqa: E501


def _parse_table(text: str) -> dict[tuple[str, str], bool]:
    header, *rows = (line.split() for line in text.strip().splitlines())
    table: dict[tuple[str, str], bool] = {}
    for current, *marks in rows:
        assert len(marks) == len(header), f"row {current} has {len(marks)} marks"
        for requested, mark in zip(header, marks, strict=True):
            assert mark in ("x", "."), mark
            table[current, requested] = mark == "x"
    return table


EXPECTED = _parse_table(DOCUMENTED_TABLE)
STATUS_NAMES = sorted({current for current, _ in EXPECTED})


def test_the_expected_table_covers_every_status_of_the_api_exactly_once() -> None:
    api_statuses = {
        value.name.removeprefix("TASK_STATUS_")
        for value in pb.TaskStatus.DESCRIPTOR.values
        if value.number != pb.TASK_STATUS_UNSPECIFIED
    }
    assert set(STATUS_NAMES) == api_statuses
    assert {status.value for status in TaskStatus} == api_statuses
    assert len(EXPECTED) == 10 * 10


@pytest.mark.parametrize(
    ("current", "requested", "allowed"),
    [(current, requested, allowed) for (current, requested), allowed in EXPECTED.items()],
    ids=[
        f"{current}->{requested}-{'allowed' if allowed else 'refused'}"
        for (current, requested), allowed in EXPECTED.items()
    ],
)
def test_a_move_is_allowed_exactly_when_the_documented_table_allows_it(
    current: str, requested: str, allowed: bool
) -> None:
    assert can_transition(TaskStatus(current), TaskStatus(requested)) is allowed


@pytest.mark.parametrize("current", STATUS_NAMES)
def test_the_allowed_next_statuses_are_exactly_the_documented_row(current: str) -> None:
    documented = {requested for (row, requested), ok in EXPECTED.items() if row == current and ok}
    reported = allowed_next(TaskStatus(current))
    assert len(reported) == len(set(reported)), "a status is listed twice"
    assert {status.value for status in reported} == documented


@pytest.mark.parametrize("status", STATUS_NAMES)
def test_exactly_completed_failed_and_cancelled_are_terminal(status: str) -> None:
    assert TaskStatus(status).is_terminal is (status in {"COMPLETED", "FAILED", "CANCELLED"})
