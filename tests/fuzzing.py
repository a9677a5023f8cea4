"""Hypothesis strategies derived from protobuf descriptors, for tests/test_fuzz.py.

`Requests(pools).of(descriptor)` draws messages of any type by walking its fields: scalars by
type, enums with numbers they do not define (proto3 enums are open), repeated and map fields,
nested messages, and the well-known types a request may hold (Struct / Value / ListValue with
deep nesting, NaN and infinities, huge strings and odd keys; Timestamp and Duration outside
their ranges; FieldMask paths taken from the fields next to it). Nothing names a field of the
service: a field added to the proto is fuzzed without an edit here. A few field *names* (task
ids, page tokens, etags, request ids, ...) also draw from pools of real values, so that
mutations hit existing rows and page tokens are real ones from another query.

Strings mix in SQL and LIKE metacharacters, NUL, odd unicode and lengths around every limit of
resinkit_grpc/api/parse.py (its MAX_* constants, so a new limit is probed at its edges too).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from resinkit_grpc.api import parse

Strategy = st.SearchStrategy[Any]

# Every MAX_* limit of the request parser; lengths and counts are probed at limit-1, +0, +1.
LIMITS = sorted(
    {
        value
        for name, value in vars(parse).items()
        if name.startswith("MAX_") and isinstance(value, int) and value > 0
    }
)
# Huge strings stay under the 4 MiB a request may take, most of the time: one field of 600 K
# characters of a 4-byte emoji is 2.4 MB, which is the point.
MAX_STRING_LENGTH = 600_000
LENGTHS = sorted({n for limit in LIMITS for n in (limit - 1, limit, limit + 1)} | {2_000, 70_000})
STRING_LENGTHS = [n for n in LENGTHS if 0 < n <= MAX_STRING_LENGTH]
# Repeated fields: counts around the limits, but no more than a few thousand elements.
COUNTS = [n for n in LENGTHS if 0 < n <= 2_000]

SQL_AND_LIKE = [
    "%",
    "_",
    "\\",
    "'",
    '"',
    "--",
    ";",
    "/*",
    "*/",
    "/",
    "//",
    "/%",
    "%_%",
    "\\%",
    "\\_",
    "[a-z]",
    "^$",
    "*",
    "?",
    ":name",
    "%s",
    "%(x)s",
    "{0}",
    "${x}",
    "' OR '1'='1",
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "') UNION SELECT * FROM service_secrets --",
    "1; SELECT pg_sleep(10)",
    "ESCAPE '/'",
]
ODD_UNICODE = [
    "\u200f",  # right-to-left mark
    "\u202eevil",  # right-to-left override
    "e\u0301",  # combining acute
    "\u0301\u0301\u0301",
    "\U0001f600",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # a ZWJ family
    "\ufeff",
    "\u2028\u2029",
    "\u0130",  # dotted capital I: lower() changes its length
    "\u00df",
    "\ufb03",
    "\uffff",
    "\U0010ffff",
    "\u03a9\u2126",
    "\x7f\x1b[31m",
    "\r\n\t",
]
NULS = ["\x00", "a\x00", "\x00" * 3]
WORDS = ["a", "Z", "0", "job", "flink_sql", " ", "-", ".", "..", "a.b", "*"]
PIECES = SQL_AND_LIKE + ODD_UNICODE + NULS + WORDS
LONG_CHARACTERS = ["x", "\u00e9", "%", "_", "'", "\x00", "\U0001f600", "\u0301"]

# Timestamp and Duration bounds (0001-01-01 .. 9999-12-31, and +-10000 years).
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}


@dataclass
class Pools:
    """Real values taken from the server under test (see test_fuzz.seeded)."""

    task_ids: list[str] = field(default_factory=list)
    task_types: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    etags: list[str] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    order_by: list[str] = field(default_factory=list)


def texts() -> Strategy:
    """Any string, hostile more often than not."""
    plain = st.text(max_size=30)
    pieces = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join)
    long = st.builds(
        lambda character, length: character * length,
        st.sampled_from(LONG_CHARACTERS),
        st.sampled_from(STRING_LENGTHS),
    )
    return st.one_of(plain, st.sampled_from(PIECES), pieces, long)


def _sometimes(real: Sequence[str], otherwise: Strategy) -> Strategy:
    """Real values from a pool (when it has any), or anything."""
    return st.one_of(st.sampled_from(list(real)), otherwise) if real else otherwise


def _integers(low: int, high: int) -> Strategy:
    edges = {low, high, 0, 1, -1, *LENGTHS, *(-n for n in LENGTHS)}
    return st.one_of(
        st.integers(low, high),
        st.sampled_from(sorted(n for n in edges if low <= n <= high)),
        st.integers(-3, 1200).filter(lambda n: low <= n <= high),
    )


def _floats(width: int) -> Strategy:
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=width),  # type: ignore[arg-type]
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 2.0**53 + 1, 1e308, 5e-324]),
    )


PLAIN, HOSTILE, MIXED = "plain", "hostile", "mixed"


class Requests:
    """Strategies for messages of any type, derived from their descriptors.

    A message is drawn in one of three modes: plain (every field plausible: real ids and tokens,
    short text with SQL and LIKE metacharacters, defined enum numbers, JSON with finite numbers,
    timestamps in range; such requests get past validation and reach the database), hostile
    (every field anything) and mixed (plausible but for one field, recursively: the one bad
    value may be deep inside a nested message)."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self._messages: dict[tuple[str, str], Strategy] = {}
        self.text = texts()
        self.plain_text = _plain_texts()
        self._keys = {HOSTILE: _json_keys(), PLAIN: _plain_json_keys()}
        self._json = {HOSTILE: self._json_values(HOSTILE), PLAIN: self._json_values(PLAIN)}

    def of(self, descriptor: Descriptor) -> Strategy:
        """Messages of `descriptor`'s type, in any mode (plausible ones a little more often)."""
        plain, mixed = self._message(descriptor, PLAIN), self._message(descriptor, MIXED)
        return st.one_of(plain, plain, mixed, mixed, self._message(descriptor, HOSTILE))

    def _message(self, descriptor: Descriptor, mode: str) -> Strategy:
        key = (descriptor.full_name, mode)
        if key not in self._messages:
            # Deferred, so that a message type containing itself terminates (fields are
            # optional, so the recursion ends with probability one).
            self._messages[key] = st.deferred(lambda: self._build(descriptor, mode))
        return self._messages[key]

    def _build(self, descriptor: Descriptor, mode: str) -> Strategy:
        special: dict[str, Callable[[bool], Strategy]] = {
            "google.protobuf.Struct": self._struct,
            "google.protobuf.Value": self._value,
            "google.protobuf.ListValue": self._list_value,
            "google.protobuf.Timestamp": lambda hostile: self._seconds_and_nanos(
                descriptor, hostile
            ),
            "google.protobuf.Duration": lambda hostile: self._seconds_and_nanos(
                descriptor, hostile
            ),
        }
        if descriptor.full_name in special:
            return special[descriptor.full_name](mode != PLAIN)
        cls = message_factory.GetMessageClass(descriptor)
        fields = descriptor.fields
        if mode == HOSTILE or not fields:
            values = {f.name: self._field(f, descriptor, mode) for f in fields}
            return st.fixed_dictionaries({}, optional=values).map(lambda v: _assemble(cls, v))
        # Plausible messages set every field (to values that may still be empty), so that they
        # get past the checks of required fields.
        plain = {f.name: self._field(f, descriptor, PLAIN) for f in fields}
        if mode == PLAIN:
            return st.fixed_dictionaries(plain).map(lambda v: _assemble(cls, v))
        # One field is not plausible: unset, a nested message mixed in turn, or hostile.
        odd = {
            f.name: st.one_of(
                st.just(_UNSET), self._field(f, descriptor, MIXED if f.message_type else HOSTILE)
            )
            for f in fields
        }
        one_odd = st.sampled_from(sorted(odd)).flatmap(
            lambda name: odd[name].map(lambda value: {name: value})
        )
        return st.builds(
            lambda values, bad: _assemble(cls, {**values, **bad}),
            st.fixed_dictionaries(plain),
            one_odd,
        )

    # Fields -------------------------------------------------------------------------------

    def _field(self, f: FieldDescriptor, parent: Descriptor, mode: str) -> Strategy:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = self._single(f.message_type.fields_by_name["key"], parent, mode)
            value = self._single(f.message_type.fields_by_name["value"], parent, mode)
            return st.dictionaries(key, value, max_size=5)
        one = self._single(f, parent, mode)
        if not f.is_repeated:
            return one
        few = st.lists(one, max_size=3 if mode == PLAIN else 5)
        if mode == PLAIN:
            return few
        # Many copies of one (small) value: counts at and past every limit, cheaply.
        many = st.builds(
            lambda value, count: [value] * count, one.filter(_small), st.sampled_from(COUNTS)
        )
        # Many distinct values (distinct ids, distinct unknown enum numbers, ...).
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM):
            distinct = st.builds(
                lambda count, start: _distinct(f, count, start),
                st.sampled_from(COUNTS),
                st.integers(0, 10**6),
            )
            return st.one_of(few, few, many, distinct)
        return st.one_of(few, few, many)

    def _single(self, f: FieldDescriptor, parent: Descriptor, mode: str) -> Strategy:
        hostile = mode != PLAIN
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.full_name == "google.protobuf.FieldMask":
                return self._field_mask(parent, hostile)
            return self._message(f.message_type, mode)
        if f.type == FieldDescriptor.TYPE_ENUM:
            numbers = sorted(f.enum_type.values_by_number)
            # Half of them zero: UNSPECIFIED, which output-only enums must be.
            defined = st.one_of(st.just(numbers[0]), st.sampled_from(numbers[1:] or numbers))
            if f.enum_type.is_closed or not hostile:
                return defined
            return st.one_of(defined, _integers(*INT32))
        if f.type == FieldDescriptor.TYPE_STRING:
            return self._string(f.name, hostile)
        if f.type == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=64), self.text.map(str.encode))
        if f.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            width = 64 if f.type == FieldDescriptor.TYPE_DOUBLE else 32
            return _floats(width) if hostile else st.floats(-1e6, 1e6, width=width)
        if f.type in INTEGER_RANGES:
            low, high = INTEGER_RANGES[f.type]
            return _integers(low, high) if hostile else st.integers(max(low, -5), min(high, 1100))
        raise NotImplementedError(f"{f.full_name}: field type {f.type} is not fuzzed yet")

    def _string(self, name: str, hostile: bool) -> Strategy:
        """A string field; for some well-known names real values as well (plausible ones are
        only real values, or empty)."""
        pools = self.pools
        text = self.text if hostile else self.plain_text
        ids = st.from_regex(parse.TASK_ID_PATTERN, fullmatch=True)
        if name.endswith(("task_id", "task_ids")):
            return _sometimes(pools.task_ids, st.one_of(ids, text) if hostile else ids)
        if name.endswith("page_token"):
            return st.one_of(self._page_tokens(), text) if hostile else self._real_tokens()
        real = {
            "etag": pools.etags,
            "request_id": pools.request_ids,
            "event_type": pools.event_types,
            "task_type": pools.task_types,
            "tag": pools.tags,
            "order_by": pools.order_by,
        }
        for ending, values in real.items():
            if name.rstrip("s").endswith(ending) or name.startswith(ending):
                if hostile:
                    return _sometimes(values, text)
                if ending == "request_id":  # fresh ones too, or each reuse is refused
                    return st.one_of(st.just(""), ids, st.sampled_from(values))
                if ending == "etag":  # mostly none, or most mutations are ABORTED
                    return st.one_of(st.just(""), st.just(""), st.sampled_from(values))
                return st.sampled_from(values)
        return text

    def _real_tokens(self) -> Strategy:
        return st.one_of(st.just(""), st.sampled_from(self.pools.page_tokens or [""]))

    def _page_tokens(self) -> Strategy:
        """Real tokens (of other queries, too), truncated, tampered with, or forged."""
        token = self._real_tokens()
        truncated = st.builds(lambda t, cut: t[: max(0, len(t) - cut)], token, st.integers(1, 40))
        flipped = st.builds(_flip_one_character, token, st.integers(0, 10**6))
        swapped = st.builds(
            lambda a, b: a.partition(".")[0] + "." + b.partition(".")[2], token, token
        )
        forged = st.builds(
            lambda payload, signature: _b64(json.dumps(payload).encode()) + "." + signature,
            st.fixed_dictionaries({"q": self.text, "p": st.lists(self._json[HOSTILE], max_size=3)}),
            st.one_of(st.just(""), st.binary(max_size=24).map(_b64), self.text),
        )
        junk = st.one_of(
            st.binary(max_size=200).map(_b64),
            st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
            st.sampled_from([".", "..", "=", "a.b.c", "%%%%", "\x00.\x00"]),
        )
        return st.one_of(token, truncated, flipped, swapped, forged, junk)

    def _field_mask(self, parent: Descriptor, hostile: bool) -> Strategy:
        """Paths naming fields of the messages next to the mask (the resource it masks), `*`,
        and, hostile, anything else."""
        names = sorted(
            {
                sibling.name
                for f in parent.fields
                if f.message_type is not None
                for sibling in f.message_type.fields
            }
        )
        cls = message_factory.GetMessageClass(
            parent.file.pool.FindMessageTypeByName("google.protobuf.FieldMask")
        )
        if not hostile:
            return st.lists(st.sampled_from([*names, "*"]), max_size=2).map(
                lambda values: cls(paths=values)
            )
        path = st.one_of(st.sampled_from([*names, "*", "", "task.task_name", "a.b"]), self.text)
        paths = st.one_of(
            st.lists(path, max_size=6),
            st.builds(lambda p, count: [p] * count, path.filter(_small), st.sampled_from(COUNTS)),
        )
        return paths.map(lambda values: cls(paths=values))

    # Well-known types --------------------------------------------------------------------

    def _json_values(self, mode: str) -> Strategy:
        keys = self._keys[mode]
        if mode == PLAIN:
            numbers = st.one_of(st.integers(-(2**53), 2**53), st.floats(-1e9, 1e9))
            leaves = st.one_of(st.none(), st.booleans(), numbers, self.plain_text)
            return st.recursive(
                leaves,
                lambda inner: st.one_of(
                    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
                ),
                max_leaves=8,
            )
        numbers = st.one_of(
            _floats(64),
            st.integers(-(2**64), 2**64),
            st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, parse.MAX_TIMEOUT_SECONDS + 1]),
        )
        leaves = st.one_of(st.none(), st.booleans(), numbers, self.text)
        nested = st.recursive(
            leaves,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
            ),
            max_leaves=12,
        )
        # Nesting around protobuf's decoding limit (100 messages, about 48 Structs deep).
        deep = st.builds(_nest, st.integers(1, 120), st.sampled_from(["struct", "list"]), leaves)
        # Wide: many keys, to and beyond the encoded size limit of a JSON field.
        wide = st.builds(
            lambda count: {f"key-{n}": n for n in range(count)},
            st.sampled_from([10, 1_000, 20_000, 40_000]),
        )
        return st.one_of(nested, nested, deep, wide)

    def _struct(self, hostile: bool) -> Strategy:
        mode = HOSTILE if hostile else PLAIN
        values = self._json[mode]
        top = st.one_of(
            st.dictionaries(self._keys[mode], values, max_size=5),
            values.filter(lambda value: isinstance(value, dict)),
        )
        return top.map(lambda fields: _filled(struct_pb2.Struct(), fields))

    def _value(self, hostile: bool) -> Strategy:
        def to_value(value: Any) -> struct_pb2.Value:
            holder = struct_pb2.Struct()
            holder.update({"v": value})
            return holder.fields["v"]

        return self._json[HOSTILE if hostile else PLAIN].map(to_value)

    def _list_value(self, hostile: bool) -> Strategy:
        def to_list(values: list[Any]) -> struct_pb2.ListValue:
            result = struct_pb2.ListValue()
            result.extend(values)
            return result

        return st.lists(self._json[HOSTILE if hostile else PLAIN], max_size=5).map(to_list)

    def _seconds_and_nanos(self, descriptor: Descriptor, hostile: bool) -> Strategy:
        cls = message_factory.GetMessageClass(descriptor)
        if not hostile:  # 1970 .. 2100
            return st.builds(
                lambda s, n: cls(seconds=s, nanos=n),
                st.integers(0, 4_102_444_800),
                st.integers(0, 999_999_999),
            )
        seconds = st.one_of(
            st.integers(MIN_SECONDS - 10, MAX_SECONDS + 10),
            st.sampled_from(
                [MIN_SECONDS - 1, MIN_SECONDS, 0, -1, MAX_SECONDS, MAX_SECONDS + 1, *INT64]
            ),
            st.integers(*INT64),
        )
        nanos = st.one_of(
            st.integers(0, 999_999_999),
            st.sampled_from([-1, 999_999_999, 10**9, *INT32]),
            st.integers(*INT32),
        )
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _plain_texts() -> Strategy:
    """Text any field may hold: short, without NUL, often with SQL and LIKE metacharacters."""
    clean = [piece for piece in PIECES if "\x00" not in piece]
    return st.one_of(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
        st.sampled_from(clean),
        st.lists(st.sampled_from(clean), min_size=1, max_size=4).map("".join),
    )


def _json_keys() -> Strategy:
    return st.one_of(
        st.text(max_size=8),
        st.sampled_from(["", "\x00", "a\x00b", "task_timeout_seconds", "__proto__", "$where"]),
        st.sampled_from(PIECES),
        st.builds(lambda n: "k" * n, st.sampled_from(STRING_LENGTHS)),
    )


def _plain_json_keys() -> Strategy:
    return st.one_of(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
        st.sampled_from(SQL_AND_LIKE + ODD_UNICODE),
    )


# A field a mixed message leaves unset.
_UNSET = object()


def _assemble(cls: Any, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        if value is _UNSET:
            continue
        f = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif f.is_repeated and f.message_type is not None:
            # Not extend(): that copies through the decoder, which refuses messages nested as
            # deep as the fuzzer makes them (the server must see those).
            for item in value:
                target.add().CopyFrom(item)
        elif f.is_repeated:
            target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    result: Message = message
    return result


def _small(value: Any) -> bool:
    """Small enough to be repeated a thousand times in one request."""
    size = value.ByteSize() if isinstance(value, Message) else len(str(value))
    return bool(size <= 256)


def _filled(struct: Any, values: dict[str, Any]) -> Any:
    struct.update(values)
    return struct


def _nest(depth: int, kind: str, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "struct" else [value]
    return value if kind == "struct" else {"a": value}


def _distinct(f: FieldDescriptor, count: int, start: int) -> list[Any]:
    if f.type == FieldDescriptor.TYPE_ENUM:
        return [start + n for n in range(count)]
    return [f"fuzz-{start + n}" for n in range(count)]


def _flip_one_character(token: str, where: int) -> str:
    if not token:
        return "A"
    index = where % len(token)
    replacement = "B" if token[index] != "B" else "C"
    return token[:index] + replacement + token[index + 1 :]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def corrupted(encoded: bytes, where: int, how: int) -> bytes:
    """A serialized message damaged one way or another: cut short, a byte changed, garbage
    appended, or a length prefix made to lie."""
    if not encoded:
        return bytes([how % 256]) * (1 + where % 8)
    index = where % len(encoded)
    match how % 4:
        case 0:
            return encoded[:index]
        case 1:
            return (
                encoded[:index] + bytes([encoded[index] ^ (1 + how % 255)]) + encoded[index + 1 :]
            )
        case 2:
            return encoded + b"\xff" * (1 + how % 11)
        case _:
            return encoded[:index] + b"\x0a\xff\xff\xff\x0f" + encoded[index:]


# A sweep: every field, one at a time, at its edges ------------------------------------------


def edge_cases(descriptor: Descriptor, pools: Pools) -> list[tuple[str, Message]]:
    """(field path, request) pairs: a plausible request (`plausible`) with one field, at any
    depth, set to one of its type's edge values. Random examples seldom put a given field at
    a given edge; this puts every field at every edge on every run."""
    cases: list[tuple[str, Message]] = []
    _sweep(descriptor, pools, [], cases, depth=0)
    return cases


def plausible(descriptor: Descriptor, pools: Pools) -> Message:
    """A request every check accepts, as far as one can tell from the descriptor and pools."""
    message: Message = message_factory.GetMessageClass(descriptor)()
    for f in descriptor.fields:
        if f.is_repeated or f.containing_oneof is not None:
            continue
        if f.type == FieldDescriptor.TYPE_ENUM and len(f.enum_type.values) > 1:
            setattr(message, f.name, sorted(f.enum_type.values_by_number)[1])
        elif (
            f.type == FieldDescriptor.TYPE_STRING and f.name.endswith("task_id") and pools.task_ids
        ):
            setattr(message, f.name, pools.task_ids[0])
        elif f.type == FieldDescriptor.TYPE_STRING and f.name.endswith("task_type"):
            setattr(message, f.name, "fuzz_type")
        elif (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and f.message_type.file.package != "google.protobuf"
        ):
            getattr(message, f.name).CopyFrom(plausible(f.message_type, pools))
    return message


def _edges(f: FieldDescriptor) -> list[Any]:
    if f.type == FieldDescriptor.TYPE_ENUM:
        top = max(f.enum_type.values_by_number)
        return [top + 1, INT32[1], -1] if not f.enum_type.is_closed else [top]
    if f.type == FieldDescriptor.TYPE_STRING:
        return ["\x00", "%_\\'\";--/*", "\u202e\U0001f600e\u0301", "x" * (max(LIMITS[:-1]) + 1)]
    if f.type == FieldDescriptor.TYPE_BYTES:
        return [b"\xff" * 16]
    if f.type == FieldDescriptor.TYPE_BOOL:
        return [True]
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [math.nan, math.inf, -math.inf]
    if f.type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[f.type]
        return sorted({low, high, -1 if low < 0 else 0, 1_000_001})
    name = f.message_type.full_name
    if name == "google.protobuf.Struct":
        return [{"n": math.nan}, {"\x00": 1}, _nest(60, "struct", 1), {"k": "\x00"}]
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        pairs = [(MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (0, -1), (0, 10**9), (INT64[1], 0)]
        cls = message_factory.GetMessageClass(f.message_type)
        return [cls(seconds=s, nanos=n) for s, n in pairs]
    if name == "google.protobuf.FieldMask":
        cls = message_factory.GetMessageClass(f.message_type)
        return [cls(paths=p) for p in (["*", "status"], ["x" * 10_000], ["task_name"] * 33)]
    return []


def _sweep(
    descriptor: Descriptor,
    pools: Pools,
    path: list[FieldDescriptor],
    cases: list[tuple[str, Message]],
    depth: int,
) -> None:
    for f in descriptor.fields:
        here = [*path, f]
        is_plain_message = (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and f.message_type.file.package != "google.protobuf"
            and not f.message_type.GetOptions().map_entry
        )
        if is_plain_message and not f.is_repeated and depth < 3:
            _sweep(f.message_type, pools, here, cases, depth + 1)
            continue
        for edge in _edges(f):
            if f.is_repeated and isinstance(edge, dict):
                continue
            lists = [[edge], [edge] * 1001] if _small(edge) else [[edge]]
            for value in lists if f.is_repeated else [edge]:
                cases.append((".".join(p.name for p in here), _with(pools, here, value)))


def _with(pools: Pools, path: list[FieldDescriptor], value: Any) -> Message:
    root = path[0].containing_type
    request = plausible(root, pools)
    target: Any = request
    for f in path[:-1]:
        target = getattr(target, f.name)
    last = path[-1]
    if isinstance(value, dict):
        getattr(target, last.name).Clear()
        getattr(target, last.name).update(value)
    elif last.is_repeated and last.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(target, last.name).extend(value)
    elif last.is_repeated:
        getattr(target, last.name)[:] = value
    elif isinstance(value, Message):
        getattr(target, last.name).CopyFrom(value)
    else:
        setattr(target, last.name, value)
    return request
