"""PostgreSQL's name_contains asks the trigram index for the pattern's rarest word and tests the
whole pattern on what comes back (store/name_words.py): the rows are exactly those whose folded
name contains the pattern, whichever word is asked, and a rare word is what the index is asked
for once the table has statistics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, text

from resinkit_grpc.config import Settings
from resinkit_grpc.store import name_words
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.migrations import migrate
from resinkit_grpc.store.name_words import Sample, has, narrowest, words
from resinkit_grpc.store.tasks import SortOrder, TaskQuery, tasks
from tests.databases import Databases
from tests.listing import explained, listed, page_statement

BASE = datetime(2026, 1, 1, tzinfo=UTC)
ODD_NAMES = ("load 50%_done", "Straße load 77", "ΩΩ load 1234", "load/1234", "x_load 12 34", None)
# Patterns made of the names' own pieces, so that many of them match something.
PIECES = st.sampled_from(["load", " ", "1", "2", "3", "4", "12", "34", "%", "_", "/", "ß", "Ω"])
PATTERNS = st.lists(PIECES, min_size=1, max_size=6).map("".join)


def test_words_are_runs_of_three_letters_or_digits_with_the_character_before() -> None:
    assert words("nightly load 1234") == ["nightly", " load", " 1234"]
    assert words("load 12") == ["load"]  # "12": too short to be asked alone
    assert words("ΩΩΩ-straße_x") == ["-stra"]  # ASCII runs only: they give trigrams anywhere
    assert words("%_/") == []


def test_a_word_after_a_separator_is_found_after_any_separator() -> None:
    """pg_trgm's trigrams of ' orders', '_orders' and '-orders' are the same: so are the
    sample's counts."""
    assert has("daily_orders_1", " orders") and has("daily-orders", "_orders")
    assert has("orders of the day", " orders")  # the start of a name starts a word
    assert not has("xorders", " orders") and has("xorders", "orders")


@given(pattern=st.text(min_size=1, max_size=20), common=st.lists(st.text(max_size=12)))
def test_the_word_asked_for_is_a_smaller_part_of_the_pattern(
    pattern: str, common: list[str]
) -> None:
    """So that every name containing the pattern contains the word: nothing is lost."""
    sample = Sample(common=(), bounds=tuple(common), rest=1.0)
    for narrow_at in (0.0, name_words.NARROW_AT, 1.0):
        word = narrowest(pattern, sample, narrow_at)
        if word is not None:
            assert word in pattern and word != pattern
            ascii_run = max(len(run) for run in re.split(r"[^a-zA-Z0-9]", word))
            assert ascii_run >= name_words.SHORTEST_WORD
            assert sample.share(word) <= narrow_at


def test_without_statistics_or_a_rare_word_the_whole_pattern_is_asked() -> None:
    common = Sample(common=(("nightly load 7", 0.5),), bounds=("adhoc load 1",), rest=0.5)
    assert narrowest("nightly load 1234", None) is None
    assert narrowest("nightly load 1234", common) == " 1234"
    assert narrowest("nightly load", common) is None  # both words in every name of the sample
    assert narrowest("1234", common) is None  # one word: it is the pattern


def _rows() -> list[dict[str, Any]]:
    names = [f"nightly load {i}" if i % 4 else f"adhoc load {i}" for i in range(20_000)]
    return [
        {
            "task_id": f"t-{i:05d}",
            "task_type": "flink_sql",
            "task_name": name,
            "status": ("PENDING", "RUNNING")[i % 2],
            "priority": i % 3,
            "created_at": BASE + timedelta(seconds=i),
            "updated_at": BASE + timedelta(seconds=i),
            "submitted_configs": {},
            "created_by": "user",
            "active": True,
            "version": 1,
        }
        for i, name in enumerate([*names, *ODD_NAMES])
    ]


@pytest.fixture(scope="module")
def analyzed(
    backend: str, databases: Databases, module_dir: Path
) -> Iterator[tuple[Engine, list[dict[str, Any]]]]:
    """A PostgreSQL database of 20,006 tasks, analyzed: "load" is in nearly every name."""
    if backend != "postgresql":
        pytest.skip("SQLite's name index is FTS5's (store/name_index.py)")
    engine, reader = create_engines(Settings(database_url=databases.new_url(backend, module_dir)))
    migrate(engine)
    data = _rows()
    with engine.begin() as connection:
        connection.execute(insert(tasks), data)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE tasks"))
    name_words.clear()
    yield engine, data
    name_words.clear()
    engine.dispose()
    reader.dispose()


def _expected(data: list[dict[str, Any]], pattern: str, order: SortOrder) -> list[str]:
    found = [row for row in data if pattern.lower() in (row["task_name"] or "").lower()]
    found.sort(key=lambda row: (row[order.field], row["task_id"]), reverse=order.descending)
    return [row["task_id"] for row in found]


def _plan(connection: Connection, query: TaskQuery, order: SortOrder) -> str:
    sql, params = page_statement(connection, query, order)
    return "\n".join(str(row[0]) for row in explained(connection, sql, params))


def test_a_rare_word_is_what_the_index_is_asked_for(
    analyzed: tuple[Engine, list[dict[str, Any]]],
) -> None:
    engine, data = analyzed
    order = SortOrder("priority", descending=True)
    with engine.connect() as connection:
        # What the index is asked for, seen where nothing else can serve (so small a table is
        # cheaper to scan, and a partial index on `active` would do for live tasks).
        connection.execute(text("SET enable_seqscan = off"))
        connection.execute(text("SET enable_indexscan = off"))
        everything = {"show_deleted": True}
        found = _plan(connection, TaskQuery(name_contains="LOAD 1234", **everything), order)
        index = next(line for line in found.splitlines() if "Index Cond" in line)
        assert "ix_tasks_task_name_trgm" in found, found
        assert "'% 1234%'" in index and "load" not in index, found
        assert "strpos(lower(task_name), 'load 1234'::text)" in found, found
        # Two common words: the whole pattern, as before.
        found = _plan(connection, TaskQuery(name_contains="nightly load", **everything), order)
        index = next(line for line in found.splitlines() if "Index Cond" in line)
        assert "'%nightly load%'" in index and "strpos" not in found, found
        connection.execute(text("RESET enable_seqscan"))
        connection.execute(text("RESET enable_indexscan"))
        for pattern in ("LOAD 1234", "load 12", "nightly load", "load 50%_", "straße load"):
            assert listed(connection, TaskQuery(name_contains=pattern), order) == _expected(
                data, pattern, order
            ), pattern


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=PATTERNS)
def test_every_pattern_lists_exactly_the_names_that_contain_it(
    analyzed: tuple[Engine, list[dict[str, Any]]], pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With any word asked for alone (NARROW_AT 1: the rarest, however common)."""
    engine, data = analyzed
    monkeypatch.setattr(name_words, "NARROW_AT", 1.0)
    order = SortOrder("created_at", descending=False)
    with engine.connect() as connection:
        found = listed(connection, TaskQuery(name_contains=pattern), order, limit=50)
    assert found == _expected(data, pattern, order)


def test_a_database_never_analyzed_asks_for_the_whole_pattern(
    backend: str, databases: Databases, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite's name index is FTS5's (store/name_index.py)")
    engine, reader = create_engines(Settings(database_url=databases.new_url(backend, tmp_path)))
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(insert(tasks), _rows())
        name_words.clear()
        with engine.connect() as connection:
            assert name_words.narrower(connection, "load 1234") is None
            found = _plan(connection, TaskQuery(name_contains="load 1234"), SortOrder())
            assert "strpos" not in found, found
    finally:
        name_words.clear()
        engine.dispose()
        reader.dispose()
