"""ListTasks from the store, for tests of its statements: every page of a query, and the SQL
one page runs (for EXPLAIN)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event

from resinkit_grpc.store import tasks as store
from resinkit_grpc.store.prepared import DRIVER_PATH
from resinkit_grpc.store.tasks import SortOrder, TaskQuery


def listed(
    connection: Connection,
    query: TaskQuery,
    order: SortOrder,
    *,
    limit: int = 7,
    full: bool = False,
) -> list[str]:
    """The task ids of every page, `limit` rows at a time, each page after the last one's
    position."""
    seen: list[str] = []
    after = None
    while True:
        page = store.list_tasks(connection, query, order, after=after, limit=limit, full=full)
        seen.extend(row["task_id"] for row in page)
        if len(page) < limit:
            return seen
        after = (page[-1][order.field], page[-1]["task_id"])


def page_statement(
    connection: Connection,
    query: TaskQuery,
    order: SortOrder,
    *,
    after: tuple[Any, str] | None = None,
) -> tuple[str, Any]:
    """The SQL and parameters of the one statement a page of 51 (BASIC) runs last: the page
    itself, after any probes."""
    captured: list[tuple[str, Any]] = []

    def grab(*args: Any) -> None:
        captured.append((args[2], args[3]))

    event.listen(connection, "before_cursor_execute", grab)
    DRIVER_PATH.on = False  # through SQLAlchemy, whose events see the statement
    try:
        store.list_tasks(connection, query, order, after=after, limit=51, full=False)
    finally:
        DRIVER_PATH.on = True
        event.remove(connection, "before_cursor_execute", grab)
    return captured[-1]


def explained(connection: Connection, sql: str, params: Any, how: str = "") -> list[Any]:
    """The rows of EXPLAIN (`how`: its options, e.g. "(ANALYZE, FORMAT JSON)") on
    PostgreSQL, or of EXPLAIN QUERY PLAN on SQLite, for a statement page_statement caught."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    if connection.dialect.name == "sqlite":
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
    else:
        cursor.execute(f"EXPLAIN {how} {sql}", params)
    return list(cursor.fetchall())
