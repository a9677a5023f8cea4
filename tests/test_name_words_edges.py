"""Adversarial checks of PostgreSQL's narrowed name_contains (store/name_words.py): whatever word
is asked of the trigram index, every filter, sort order and keyset page lists exactly what the
whole pattern asked of the index (the old statement) lists; the planner's sample is read right
whatever pg_stats holds; and asking a word alone never makes the index hand over many more rows
than asking the whole pattern did."""

from __future__ import annotations

import contextlib
import random
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
from resinkit_grpc.store import tasks as store
from resinkit_grpc.store.engine import create_engines
from resinkit_grpc.store.migrations import migrate
from resinkit_grpc.store.name_words import Sample, narrowest
from resinkit_grpc.store.tasks import SortOrder, TaskQuery, tasks
from tests.databases import Databases
from tests.listing import explained, listed, page_statement

BASE = datetime(2026, 1, 1, tzinfo=UTC)
# Pieces of names and patterns: LIKE's metacharacters and its escape, backslashes, quotes,
# array-literal syntax (pg_stats arrays come back as text), case pairs that fold differently.
PIECES = (
    "load",
    "LOAD",
    "abc",
    "x12",
    "123",
    "12",
    " ",
    "  ",
    "_",
    "%",
    "/",
    "//",
    "\\",
    "'",
    '"',
    "{",
    "}",
    ",",
    "NULL",
    "ß",
    "ẞ",
    "SS",
    "İ",
    "i",
    "Σ",
    "ς",
    "\u03c3",
    "é",
    "e\u0301",
    "ΩΩ",
    "\t",
)
ORDERS = [
    SortOrder(field, descending) for field in store.SORT_FIELDS for descending in (True, False)
]
STATUSES = ("PENDING", "RUNNING", "COMPLETED")
TAGS = ("team-1", "team-2", "rare")


def _name(rng: random.Random) -> str | None:
    if rng.random() < 0.03:
        return None
    if rng.random() < 0.02:
        return ""
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 7)))


def _rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "task_id": f"t-{i:05d}",
            "task_type": "flink_sql",
            "task_name": _name(rng),
            "status": rng.choice(STATUSES),
            # Few distinct values: keyset positions fall inside runs of equal sort values.
            "priority": rng.randint(0, 2),
            "created_at": BASE + timedelta(seconds=rng.randint(0, 50)),
            "updated_at": BASE + timedelta(seconds=rng.randint(0, 50)),
            "submitted_configs": {},
            "created_by": "user",
            "tags": rng.sample(TAGS, rng.randint(0, 2)) or None,
            "active": rng.random() < 0.8,
            "version": 1,
        }
        for i in range(count)
    ]


@contextlib.contextmanager
def _new_engine(databases: Databases, directory: Path) -> Iterator[Engine]:
    """A new PostgreSQL database at head, its engines disposed and the samples forgotten
    afterwards."""
    engine, reader = create_engines(
        Settings(database_url=databases.new_url("postgresql", directory))
    )
    try:
        migrate(engine)
        yield engine
    finally:
        name_words.clear()
        engine.dispose()
        reader.dispose()


def _analyze(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE tasks"))


@pytest.fixture(scope="module")
def odd(
    backend: str, databases: Databases, module_dir: Path
) -> Iterator[tuple[Engine, list[dict[str, Any]], dict[str, str | None]]]:
    """3,000 tasks with odd names, analyzed, and each name as PostgreSQL's lower() folds it."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's trigram index only")
    with _new_engine(databases, module_dir) as engine:
        data = _rows(3000)
        with engine.begin() as connection:
            connection.execute(insert(tasks), data)
            select_folded = text("SELECT task_id, lower(task_name) FROM tasks")
            folded: dict[str, str | None] = {
                task_id: name for task_id, name in connection.execute(select_folded)
            }
        _analyze(engine)
        name_words.clear()
        yield engine, data, folded


def _expected(
    data: list[dict[str, Any]],
    folded: dict[str, str | None],
    query: TaskQuery,
    order: SortOrder,
) -> list[str]:
    """What the whole pattern asked of LIKE selects: PostgreSQL's lower() of the name, the
    pattern folded by Python (as before the change)."""
    pattern = (query.name_contains or "").lower()
    found = [
        row
        for row in data
        if (query.show_deleted or row["active"])
        and (not query.statuses or row["status"] in query.statuses)
        and (not query.tags_any or set(query.tags_any) & set(row["tags"] or ()))
        and (query.created_after is None or row["created_at"] >= query.created_after)
        and (query.created_before is None or row["created_at"] < query.created_before)
        and folded[row["task_id"]] is not None
        and pattern in folded[row["task_id"]]  # type: ignore[operator]
    ]
    found.sort(key=lambda row: (row[order.field], row["task_id"]), reverse=order.descending)
    return [row["task_id"] for row in found]


QUERIES = st.builds(
    TaskQuery,
    name_contains=st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("".join),
    statuses=st.sampled_from([(), ("RUNNING",), ("PENDING", "COMPLETED")]),
    tags_any=st.sampled_from([(), ("team-1",), ("rare", "team-2")]),
    created_after=st.sampled_from([None, BASE + timedelta(seconds=10)]),
    created_before=st.sampled_from([None, BASE + timedelta(seconds=40)]),
    show_deleted=st.booleans(),
)


@settings(
    max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=QUERIES,
    order=st.sampled_from(ORDERS),
    limit=st.integers(1, 7),
    full=st.booleans(),
)
def test_narrowed_or_not_every_filter_order_and_page_lists_the_same_rows(
    odd: tuple[Engine, list[dict[str, Any]], dict[str, str | None]],
    query: TaskQuery,
    order: SortOrder,
    limit: int,
    full: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, data, folded = odd
    expected = _expected(data, folded, query, order)
    runs: list[list[str]] = []
    with engine.connect() as connection:
        # Both statements of the shape are cached side by side (_list_statement): each must
        # keep its own parameters.
        for narrow_at in (1.0, -1.0, 1.0):
            monkeypatch.setattr(name_words, "NARROW_AT", narrow_at)
            runs.append(listed(connection, query, order, limit=limit, full=full))
        counts = store.count_by_status(connection, query)
    narrowed, whole, again = runs
    assert narrowed == expected, (query, name_words.words((query.name_contains or "").lower()))
    assert whole == expected
    assert again == expected
    assert sum(counts.values()) == len(expected)


def test_every_candidate_word_alone_lists_the_same_rows(
    odd: tuple[Engine, list[dict[str, Any]], dict[str, str | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not just the rarest: each word of a pattern rich in metacharacters, asked alone."""
    engine, data, folded = odd
    order = SortOrder("updated_at", descending=False)
    for pattern in ("load_%/abc", "\\abc'x12", '"abc", NULL', "ẞabc ßload", "%x12_/_123", "//load"):
        query = TaskQuery(name_contains=pattern, show_deleted=True)
        expected = _expected(data, folded, query, order)
        for word in name_words.words(pattern.lower()):
            monkeypatch.setattr(name_words, "narrower", lambda connection, p, word=word: word)
            with engine.connect() as connection:
                assert listed(connection, query, order, limit=4) == expected, (pattern, word)


def test_the_sample_reads_back_the_names_pg_stats_keeps(
    backend: str, databases: Databases, tmp_path: Path
) -> None:
    """Names that are array-literal syntax ('{', '"', ',', '\\', 'NULL') come back whole."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's trigram index only")
    names = ["NULL", 'a "quoted", {braced} name', "back\\slash abc", "ẞ load", " spaced  "]
    with _new_engine(databases, tmp_path) as engine:
        with engine.begin() as connection:
            connection.execute(
                insert(tasks),
                [{**row, "task_name": names[i % len(names)]} for i, row in enumerate(_rows(500))],
            )
            distinct = text("SELECT DISTINCT lower(task_name) FROM tasks")
            want = set(connection.execute(distinct).scalars())
        _analyze(engine)
        name_words.clear()
        with engine.connect() as connection:
            sample = name_words.read_sample(connection)
        assert sample is not None
        assert {value for value, _ in sample.common} | set(sample.bounds) == want
        assert sample.bounds == () and sample.rest < 0.01  # five values: all most common


def test_a_table_of_null_names_has_no_sample(
    backend: str, databases: Databases, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's trigram index only")
    with _new_engine(databases, tmp_path) as engine:
        with engine.begin() as connection:
            connection.execute(insert(tasks), [{**row, "task_name": None} for row in _rows(300)])
        _analyze(engine)
        name_words.clear()
        with engine.connect() as connection:
            assert name_words.read_sample(connection) is None
            assert (
                store.list_tasks(
                    connection,
                    TaskQuery(name_contains="abc load"),
                    SortOrder(),
                    after=None,
                    limit=10,
                    full=False,
                )
                == []
            )


def _index_rows(connection: Connection, query: TaskQuery) -> int:
    """How many row pointers the trigram index handed over for the page's statement."""
    sql, params = page_statement(connection, query, SortOrder())
    plan = explained(connection, sql, params, "(ANALYZE, FORMAT JSON)")[0][0][0]["Plan"]

    def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", ()):
            yield from walk(child)

    scans = [n for n in walk(plan) if n.get("Index Name") == "ix_tasks_task_name_trgm"]
    assert scans, plan
    return sum(n["Actual Rows"] for n in scans)


@pytest.mark.parametrize(
    ("common", "rare", "pattern"),
    [
        # The names separate their words with '_', the pattern with ' ': pg_trgm sees the
        # same trigrams in "_orders" and " orders", a sample searched for " orders" sees none.
        ("daily_orders_{}", "adhoc orders {}", "adhoc orders"),
        ("nightly-backup-{}", "full backup {}", "full backup"),
    ],
)
def test_a_word_the_sample_lacks_is_not_asked_alone_when_its_trigrams_are_everywhere(
    backend: str, databases: Databases, tmp_path: Path, common: str, rare: str, pattern: str
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's trigram index only")
    with _new_engine(databases, tmp_path) as engine:
        names = [common.format(i) for i in range(20_000)] + [rare.format(i) for i in range(5)]
        with engine.begin() as connection:
            connection.execute(
                insert(tasks),
                [
                    {**row, "task_name": name, "active": True, "task_id": f"t-{i:05d}"}
                    for i, (row, name) in enumerate(zip(_rows(len(names)), names, strict=True))
                ],
            )
        _analyze(engine)
        name_words.clear()
        with engine.connect() as connection:
            # What the index is asked for, seen where nothing else can serve.
            connection.execute(text("SET enable_seqscan = off"))
            connection.execute(text("SET enable_indexscan = off"))
            query = TaskQuery(name_contains=pattern, show_deleted=True)
            word = name_words.narrower(connection, pattern)
            narrowed = _index_rows(connection, query)
            name_words.clear()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(name_words, "NARROW_AT", -1.0)
                whole = _index_rows(connection, query)
        assert whole == 5
        # Before the fix: word ' orders' / ' backup', 20,005 rows handed over (every one
        # rechecked); now the rare first word.
        assert narrowed <= 10 * whole + 100, (word, narrowed, whole)


def test_choosing_a_word_costs_a_bounded_number_of_substring_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """narrowest() runs on every ListTasks page (on the GIL), and each share() is a substring
    test per value of the sample (up to 1,000 common values and 1,001 bounds). A 256-character
    pattern has up to 64 words: before the fix, 65 share() calls (one word 64 times over in the
    first pattern), about 4-6 ms of CPU per page with the bench database's sample."""
    sample = Sample(
        common=tuple((f"nightly load {i} for team {i % 7}", 0.00005) for i in range(1000)),
        bounds=tuple(sorted(f"adhoc load {i * 7919} region {i % 5}" for i in range(1001))),
        rest=0.95,
    )
    calls = 0
    share = Sample.share

    def counted(self: Sample, word: str, enough: float = float("inf")) -> float:
        nonlocal calls
        calls += 1
        return share(self, word, enough)

    monkeypatch.setattr(Sample, "share", counted)
    values = len(sample.common) + len(sample.bounds)
    for pattern in ("abc " * 64, " ".join(f"w{i:02d}" for i in range(64))):
        calls = 0
        narrowest(pattern[:256], sample)
        assert calls * values <= 20_000, (pattern[:20], calls)
