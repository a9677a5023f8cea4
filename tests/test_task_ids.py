"""Server-generated task ids are UUIDv7: valid, unique, and ordered by the time they were made."""

from __future__ import annotations

import time
import uuid

from resinkit_grpc.api.task_ids import new_task_id


def test_an_id_is_a_version_7_uuid_carrying_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    text = new_task_id()
    after = time.time_ns() // 1_000_000
    value = uuid.UUID(text)
    assert str(value) == text  # canonical form
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_ids_made_in_later_milliseconds_sort_later_as_text() -> None:
    made = []
    for _ in range(20):
        made.append(new_task_id())
        time.sleep(0.002)
    assert sorted(made) == made


def test_ids_are_unique() -> None:
    assert len({new_task_id() for _ in range(100_000)}) == 100_000
