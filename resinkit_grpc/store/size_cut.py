"""Pages cut by stored size in SQL, so that a page of large rows is never fetched whole."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, Text, bindparam, func, select
from sqlalchemy import cast as sql_cast


def stored_length(column: Any) -> ColumnElement[Any]:
    """What a column's value takes: the characters of its text (a JSON document's included)."""
    return func.coalesce(func.length(sql_cast(column, Text)), 0)


def cut_by_size(
    page: Select[Any],
    size: ColumnElement[Any],
    keep: Sequence[str],
    ordering: Callable[[Any], Sequence[Any]],
) -> Select[Any]:
    """`page` (a SELECT with its ORDER BY and LIMIT) cut to its longest prefix whose rows before
    each stay under `:max_bytes` of `size` (the first row always comes). Its rows are the
    columns named in `keep`, `stored_size` (the row's `size`) and `page_rows` (how many rows
    the page had before the cut). `ordering(table)` gives the page's ORDER BY on `table`.

    The LIMIT stays innermost, so that the running sum is taken over one page, not the table."""
    inner = page.add_columns(size.label("stored_size")).subquery("page")
    running = func.sum(inner.c.stored_size).over(order_by=ordering(inner))
    counted = select(
        inner, running.label("running"), func.count().over().label("page_rows")
    ).subquery("counted")
    return (
        select(*(counted.c[name] for name in keep), counted.c.stored_size, counted.c.page_rows)
        .where(counted.c.running - counted.c.stored_size < bindparam("max_bytes", type_=BigInteger))
        .order_by(*ordering(counted))
    )
