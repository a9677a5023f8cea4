"""The column types' one-step SQLite processors store exactly what SQLAlchemy's own would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime, Text
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeEngine

from resinkit_grpc.store.types import JSONString, UTCDateTime, dump_json

DIALECT = sqlite.dialect()


def bind(type_: TypeEngine[Any], value: Any) -> Any:
    process = type_.dialect_impl(DIALECT).bind_processor(DIALECT)
    return value if process is None else process(value)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_timestamps_are_stored_as_sqlalchemys_datetime_text_in_utc(moment: datetime) -> None:
    expected = bind(DateTime(), moment.astimezone(UTC).replace(tzinfo=None))
    assert bind(UTCDateTime(), moment) == expected
    assert bind(UTCDateTime(), None) is None


def result(type_: TypeEngine[Any], value: Any) -> Any:
    process = type_.dialect_impl(DIALECT).result_processor(DIALECT, None)
    return value if process is None else process(value)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_stored_timestamps_read_back_as_the_same_moment_in_utc(moment: datetime) -> None:
    value = result(UTCDateTime(), bind(UTCDateTime(), moment))
    assert value == moment and value.tzinfo is UTC
    assert result(UTCDateTime(), None) is None


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-25 10:00:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25T10:00:00.5+02:00", datetime(2026, 11, 25, 8, 0, 0, 500000, tzinfo=UTC)),
        # As long as what this store writes, but with a zone of its own.
        ("2026-11-25T10:00:00.1+0100", datetime(2026, 11, 25, 9, 0, 0, 100000, tzinfo=UTC)),
    ],
)
def test_timestamps_written_by_other_tools_read_back_in_utc(text: str, moment: datetime) -> None:
    value = result(UTCDateTime(), text)
    assert value == moment and value.tzinfo is UTC


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        bind(UTCDateTime(), datetime(2026, 1, 1))


def test_json_is_stored_compact_and_unescaped() -> None:
    document = {"sql": "SELECT 'ü'", "nested": [1, 2.5, None, True, {"k": "☃"}]}
    stored = bind(JSONString(), document)
    assert stored == json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    assert bind(Text(), stored) == stored and bind(JSONString(), None) is None


@pytest.mark.parametrize(
    "document", [{"sql": "SELECT 1", "nested": {"list": [1, 2.5, None, True]}}, ["a"], "text", 0]
)
def test_stored_json_reads_back_as_it_was(document: Any) -> None:
    assert result(JSONString(), bind(JSONString(), document)) == document
    assert result(JSONString(), None) is None


def test_json_written_by_other_tools_reads_back_and_bad_json_fails_as_json_loads_does() -> None:
    assert result(JSONString(), ' { "a" : [1, 2] } ') == {"a": [1, 2]}
    assert result(JSONString(), '["a"]\n') == ["a"]
    for bad in ("[1] [2]", "{", ""):
        with pytest.raises(json.JSONDecodeError):
            result(JSONString(), bad)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON)
def test_json_is_encoded_as_json_dumps_encodes_it_compact(document: Any) -> None:
    """dump_json skips JSONEncoder.encode's per-call set-up; the text stays json.dumps's."""
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    assert dump_json(document) == expected
