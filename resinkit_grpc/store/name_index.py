"""name_contains on SQLite through an FTS5 trigram index that follows the event log.

SQLite's `LIKE` and `lower()` fold ASCII only, so a name is matched as Python's `str.lower`
folds it (engine.UNICODE_LOWER), and the index must hold the names folded the same way.
Writing it with the task is too dear: FTS5 writes a segment per transaction, and a name's 20
or so trigrams cost 25 to 40 µs per task at the writer's batch sizes, a tenth of a CreateTask
and half of a batch item's budget. So the index is a projection of the event log, kept by
`catch_up` in write transactions of its own (the server runs it ten times a second,
server._index_names), and a page reads both the index and the tail of the log it has not
covered yet:

- `task_names(key, task_id, name)`: each indexed task's folded name, under an integer key of
  its own (FTS5 rows need one; `tasks` has a text primary key, and the implicit rowid of such
  a table may change on VACUUM). Its FTS5 index `task_names_fts` (external content, trigram
  tokenizer, case-sensitive: folding is ours) is kept in step with it, row for row.
- `task_names_state.indexed_through`: the last event the index has taken in. A task changed
  since (its CREATED event, a rename, any event) is in the log above it.

A page with `name_contains` of three characters or more then tests the name of every task the
index matches and of every task an event above `indexed_through` names; both are re-checked
with the LIKE, so a stale row (a renamed task not yet taken in) matches nothing it should not.
Every change of a live task is an event (the log is the system of record), and retention
removes a task's events only with the task, so nothing escapes both the index and the tail; a
task written around the service has no event, and needs `rebuild` (as scripts/bench does).
Shorter patterns, which FTS5's trigrams cannot serve, and patterns at least DENSE_AT indexed
names contain (filter_indexes.dense_conditions) walk the sort order's index, as before.
PostgreSQL indexes lower(task_name) with pg_trgm instead (filter_indexes.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import CompoundSelect, Connection, bindparam, column, func, select, table, union_all

from resinkit_grpc.store.engine import UNICODE_LOWER, register_functions

TABLE = "task_names"
FTS = "task_names_fts"
STATE = "task_names_state"
KEY_INDEX = "ix_task_names_task_id"
# What the alembic comparison must leave alone: ours, and the tables FTS5 makes for itself.
OBJECTS = frozenset(
    {
        TABLE,
        FTS,
        STATE,
        KEY_INDEX,
        *(f"{FTS}_{part}" for part in ("data", "idx", "config")),
    }
)
CREATE = (
    f"CREATE TABLE {TABLE} (key INTEGER PRIMARY KEY, task_id TEXT NOT NULL, name TEXT NOT NULL)",
    f"CREATE UNIQUE INDEX {KEY_INDEX} ON {TABLE} (task_id)",
    # columnsize=0: no per-row sizes (only ranking uses them), a B-tree write less per name.
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(name, content='{TABLE}', content_rowid='key', "
    "columnsize=0, tokenize='trigram case_sensitive 1')",
    f"CREATE TABLE {STATE} (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), "
    "indexed_through INTEGER NOT NULL)",
)
DROP = (
    f"DROP TABLE IF EXISTS {STATE}",
    f"DROP TABLE IF EXISTS {FTS}",
    f"DROP TABLE IF EXISTS {TABLE}",
)

# FTS5's trigram tokenizer matches substrings of at least this many characters.
SHORTEST = 3
# Events one catch_up takes in: its write transaction stays short beside other writes.
CATCH_UP_BATCH = 2_000

_names = table(TABLE, column("key"), column("task_id"), column("name"))
_fts = table(FTS, column("rowid"), column(FTS))
_state = table(STATE, column("indexed_through"))
_events = table("task_events", column("event_id"), column("task_id"))


def serves(dialect: str, pattern: str) -> bool:
    """Whether the index can serve name_contains `pattern` (already folded)."""
    return dialect == "sqlite" and len(pattern) >= SHORTEST


def phrase(pattern: str) -> str:
    """The FTS5 query matching names that contain `pattern`: one quoted phrase, whose trigrams
    must follow each other (so: the substring itself)."""
    return '"' + pattern.replace('"', '""') + '"'


def candidates() -> CompoundSelect[Any]:
    """The task ids whose name may contain the pattern (bound as `name_phrase`): those the
    index matches, and those changed since it last caught up."""
    matched = select(_names.c.task_id).where(
        _names.c.key.in_(
            select(_fts.c.rowid).where(_fts.c[FTS].op("MATCH")(bindparam("name_phrase")))
        )
    )
    through = select(func.coalesce(func.max(_state.c.indexed_through), 0)).scalar_subquery()
    changed = select(_events.c.task_id).where(_events.c.event_id > through)
    return union_all(matched, changed)


def indexed_count(connection: Connection, pattern: str, limit: int) -> int:
    """How many indexed names contain `pattern`, counted up to `limit`."""
    return int(
        connection.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM {FTS} WHERE {FTS} MATCH ? LIMIT ?)",
            (phrase(pattern), limit),
        ).scalar_one()
    )


def behind(connection: Connection) -> bool:
    """Whether the log holds events the index has not taken in (a read: cheap when not)."""
    return bool(
        connection.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM task_events WHERE event_id > "
            f"(SELECT coalesce(max(indexed_through), 0) FROM {STATE}))"
        ).scalar_one()
    )


def catch_up(connection: Connection, limit: int = CATCH_UP_BATCH) -> int:
    """Takes in the events after `indexed_through`, at most `limit` of them: the names of the
    tasks they name, as those tasks stand now. Returns how many events it took in (fewer than
    `limit`: the index is up to date). Run inside a write transaction, so that no event commits
    meanwhile. All of it in SQL (no row comes into Python): it shares the writer with every
    write, and row by row in Python it cost a sustained BatchCreateTasks load a sixth of its
    rate."""
    through = connection.exec_driver_sql(
        f"SELECT coalesce(max(indexed_through), 0) FROM {STATE}"
    ).scalar_one()
    taken, upto = connection.exec_driver_sql(
        "SELECT count(*), max(event_id) FROM "
        "(SELECT event_id FROM task_events WHERE event_id > ? ORDER BY event_id LIMIT ?)",
        (through, limit),
    ).one()
    if not taken:
        return 0
    span = (through, upto)
    changed = "SELECT task_id FROM task_events WHERE event_id > ? AND event_id <= ?"
    # Indexed names of those tasks that are no longer theirs (renamed, unnamed, purged).
    stale = (
        f"SELECT n.key FROM {TABLE} AS n LEFT JOIN tasks AS t ON t.task_id = n.task_id "
        f"WHERE n.task_id IN ({changed}) "
        f"AND (t.task_name IS NULL OR {UNICODE_LOWER}(t.task_name) IS NOT n.name)"
    )
    # Usually none: looked for once, and dropped by key only when there are some.
    keys = connection.exec_driver_sql(stale, span).scalars().all()
    if keys:
        _drop(connection, "key IN (SELECT value FROM json_each(?))", json.dumps(keys))
    # New rows take keys above the largest one there is (INTEGER PRIMARY KEY).
    top = connection.exec_driver_sql(f"SELECT coalesce(max(key), 0) FROM {TABLE}").scalar_one()
    connection.exec_driver_sql(
        f"INSERT INTO {TABLE} (task_id, name) "
        f"SELECT t.task_id, {UNICODE_LOWER}(t.task_name) FROM tasks AS t "
        f"WHERE t.task_id IN ({changed}) AND t.task_name IS NOT NULL "
        f"AND NOT EXISTS (SELECT 1 FROM {TABLE} AS n WHERE n.task_id = t.task_id)",
        span,
    )
    connection.exec_driver_sql(
        f"INSERT INTO {FTS} (rowid, name) SELECT key, name FROM {TABLE} WHERE key > ?", (top,)
    )
    _set_through(connection, upto)
    return int(taken)


def forget(connection: Connection, task_ids: Sequence[str]) -> None:
    """Drops purged tasks' names from the index (retention; SQLite only)."""
    if connection.dialect.name == "sqlite" and task_ids:
        _forget(connection, task_ids)


def rebuild(connection: Connection) -> None:
    """Indexes every task's name afresh, and the log up to its last event (the migration, and
    tasks written around the service), on any connection: the alembic command's too."""
    if not connection.exec_driver_sql(
        "SELECT 1 FROM pragma_function_list WHERE name = ?", (UNICODE_LOWER,)
    ).first():
        register_functions(connection.connection.driver_connection)
    connection.exec_driver_sql(f"DELETE FROM {TABLE}")
    connection.exec_driver_sql(
        f"INSERT INTO {TABLE} (task_id, name) SELECT task_id, {UNICODE_LOWER}(task_name) "
        "FROM tasks WHERE task_name IS NOT NULL"
    )
    connection.exec_driver_sql(f"INSERT INTO {FTS} ({FTS}) VALUES ('rebuild')")
    last = connection.exec_driver_sql(
        "SELECT coalesce(max(event_id), 0) FROM task_events"
    ).scalar_one()
    _set_through(connection, last)


def _forget(connection: Connection, task_ids: Iterable[str]) -> None:
    ids = json.dumps(list(task_ids))
    if ids != "[]":
        _drop(connection, "task_id IN (SELECT value FROM json_each(?))", ids)


def _drop(connection: Connection, where: str, values: str) -> None:
    """Removes the names `WHERE where` (one parameter, `values`) from the table and from its
    FTS5 index."""
    chosen = f"FROM {TABLE} WHERE {where}"
    # External content: FTS5 removes a row given the values it was indexed with.
    connection.exec_driver_sql(
        f"INSERT INTO {FTS} ({FTS}, rowid, name) SELECT 'delete', key, name {chosen}", (values,)
    )
    connection.exec_driver_sql(f"DELETE {chosen}", (values,))


def _set_through(connection: Connection, event_id: int) -> None:
    connection.exec_driver_sql(
        f"INSERT INTO {STATE} (singleton, indexed_through) VALUES (1, ?) "
        "ON CONFLICT (singleton) DO UPDATE SET indexed_through = excluded.indexed_through",
        (event_id,),
    )
