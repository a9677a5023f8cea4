"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from sqlalchemy import DateTime, Dialect, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

# One encoder for every call: json.dumps with arguments builds a new one each time, and
# JSONEncoder.encode builds its C encoder each time (half the cost of a small document).
# JSONEncoder(separators=(",", ":"), ensure_ascii=False) without its check for circular
# references: the documents come from protobuf Structs and the store's own values, which cannot
# hold a cycle (one would end in RecursionError instead of ValueError).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ENCODE = (
    c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)
_DECODER = json.JSONDecoder()


def dump_json(value: Any) -> str:
    """The one JSON encoding of the store: compact, UTF-8, key order kept."""
    if _ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_ENCODE(value, 0))


class JSONString(TypeDecorator[Any]):
    """A JSON document: text on SQLite (serialized on write, parsed on read), JSONB on
    PostgreSQL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return dump_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.loads(value)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        # One function per value instead of TypeDecorator's chain (as for results, below).
        return lambda value: None if value is None else dump_json(value)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        # One function per value instead of TypeDecorator's chain: pages run it per column.
        # raw_decode skips json.loads's whitespace handling around the document, which costs
        # more than decoding a small one; text this store did not write takes json.loads.
        decode = _DECODER.raw_decode

        def process(value: str | None) -> Any:
            if value is None:
                return None
            try:
                document, end = decode(value)
            except json.JSONDecodeError:
                return json.loads(value)
            return document if end == len(value) else json.loads(value)

        return process


# "YYYY-MM-DD HH:MM:SS.ffffff": the length of every timestamp this store writes to SQLite.
STORED_LENGTH = 26


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Naive datetimes are refused on the way in; SQLite (which keeps no zone) hands back naive
    values, which are UTC by construction and are made aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # In one step, the text SQLAlchemy's SQLite DATETIME stores: "YYYY-MM-DD HH:MM:SS.ffffff"
        # (always six digits, so that stored and bound values compare as text), in UTC.
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTCDateTime column")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        # SQLite hands back the text SQLAlchemy stored ("YYYY-MM-DD HH:MM:SS.ffffff", UTC):
        # parsed in one step instead of TypeDecorator's chain, as pages run it per column.
        # Parsed with its zone spelled out: datetime.replace(tzinfo=) costs five times as much.
        parse = datetime.fromisoformat

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            if len(value) == STORED_LENGTH:
                try:
                    return parse(value + "+00:00")
                except ValueError:
                    pass  # as long, but not ours: "2024-01-01T00:00:00.1+0100", say
            moment = parse(value)  # written by something else: take it as it is
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

        return process
