"""name_contains on PostgreSQL: the trigram index is asked for the pattern's rarest word alone.

pg_trgm answers `lower(task_name) LIKE '%load 1234%'` from its GIN index by intersecting the
posting lists of every trigram of the pattern, and a trigram that every name has ('loa', 'oad',
'ad ') has a posting list as long as the table: at 1,000,000 tasks each such trigram cost about
3 ms, whatever the pattern's other trigrams leave (the index scan took 9.4 ms for 113 rows;
`'% 1234%'` alone took 0.7 ms for the same rows). So when the pattern has a rare word, the
index is asked for that word (with the separator before it, whose trigrams mark a word's start),
and the whole pattern is tested on the rows that come back, with strpos, which no index serves,
so the planner cannot add it to the index condition (tasks._conditions).

Which word is rarest comes from the planner's own sample of `lower(task_name)`: pg_stats keeps
the most common values and the histogram bounds of the index's expression (up to 1,000 of each
since migration 0008), read at most once every SAMPLE_SECONDS per database and process. With no
statistics yet (a database never analyzed), a pattern of one word, or no word rarer than
NARROW_AT, the pattern goes to the index whole, as before. Either way the rows returned are
exactly those whose folded name contains the pattern: the word is part of the pattern. What
the sample cannot know is what changed since the table was last analyzed (autovacuum does it
once a tenth of the rows changed): a word that has become common since makes the page test
more rows than the whole pattern would have, until then, as the planner's own choices do."""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from resinkit_grpc.store.filter_indexes import NAME_TRIGRAM_INDEX

# How long a sample is used before it is read again (ANALYZE, autovacuum's included, renews it).
SAMPLE_SECONDS = 60.0
# The index is asked for a word alone when at most this share of the names contain it.
NARROW_AT = 0.01
# Words of a pattern weighed, the longest: each costs a substring search of the sample.
MOST_WORDS = 4
# Words shorter than this are never asked alone: with no separator before them they give
# pg_trgm no trigram, and it would read the whole index.
SHORTEST_WORD = 3

SELECT_SAMPLE = text(
    "SELECT most_common_vals::text::text[], most_common_freqs, histogram_bounds::text::text[], "
    "null_frac FROM pg_stats WHERE schemaname = current_schema() AND tablename = :index"
)


@dataclass(frozen=True)
class Sample:
    """The planner's sample of the folded names: common values with their shares of the rows,
    and histogram bounds that share what is left."""

    common: tuple[tuple[str, float], ...]
    bounds: tuple[str, ...]
    rest: float  # the share of rows the bounds stand for

    def share(self, word: str, enough: float = math.inf) -> float:
        """About what share of the rows have a name in which the index finds `word`'s
        trigrams (see `has`); counting stops once past `enough`."""
        found = 0.0
        for value, frequency in self.common:
            if has(value, word):
                found += frequency
                if found > enough:
                    return found
        each = self.rest / len(self.bounds) if self.bounds else 0.0
        for value in self.bounds:
            if has(value, word):
                found += each
                if found > enough:
                    return found
        return found


def has(name: str, word: str) -> bool:
    """Whether `name` has `word` as pg_trgm sees it: its letters and digits, at the start of a
    word of the name when `word` begins with a separator (pg_trgm's trigrams of ' load', '_load'
    and '-load' are the same). Anything but an ASCII letter or digit counts as a separator here,
    which errs towards finding the word more often, never less."""
    if _word_char(word[0]):
        return word in name
    word = word[1:]
    at = name.find(word)
    while at >= 0:
        if at == 0 or not _word_char(name[at - 1]):
            return True
        at = name.find(word, at + 1)
    return False


def _word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def words(pattern: str) -> list[str]:
    """The parts of `pattern` (folded) that could be asked of the index alone: each run of
    at least SHORTEST_WORD ASCII letters and digits, with the character before it when there
    is one. pg_trgm's words are runs of the letters and digits of the database's locale; in
    every locale those include the ASCII ones, so such a run always gives trigrams (a run of
    other letters might give none under the C locale, and a LIKE without a trigram reads the
    whole index)."""
    found, start = [], None
    for index, char in enumerate(pattern + " "):
        if _word_char(char):
            start = index if start is None else start
            continue
        if start is not None and index - start >= SHORTEST_WORD:
            found.append(pattern[max(start - 1, 0) : index])
        start = None
    return found


def narrowest(pattern: str, sample: Sample | None, narrow_at: float | None = None) -> str | None:
    """The word of `pattern` to ask the index for instead of the whole pattern, or None: the
    rarest in `sample` of its MOST_WORDS longest, if at most `narrow_at` (NARROW_AT) of the rows
    have it. Among equally rare words the longest (more trigrams, fewer rows to test)."""
    if sample is None:
        return None
    limit = NARROW_AT if narrow_at is None else narrow_at
    candidates = sorted(dict.fromkeys(w for w in words(pattern) if w != pattern), key=len)
    best, least = None, math.inf
    # Longest first, and a word stops being counted once it is too common: a page pays for a
    # few substring searches of the sample, whatever the pattern.
    for word in reversed(candidates[-MOST_WORDS:]):
        share = sample.share(word, enough=limit)
        if share <= limit and share < least:
            best, least = word, share
    return best


def narrower(connection: Connection, pattern: str) -> str | None:
    """narrowest(pattern) with this database's sample."""
    return narrowest(pattern, _samples.get(connection))


class _Samples:
    """Each database's sample, read again once it is SAMPLE_SECONDS old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: weakref.WeakKeyDictionary[Engine, tuple[float, Sample | None]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, connection: Connection) -> Sample | None:
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(connection.engine)
        if kept is not None and now - kept[0] < SAMPLE_SECONDS:
            return kept[1]
        sample = read_sample(connection)
        with self._lock:
            self._kept[connection.engine] = (now, sample)
        return sample

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


def read_sample(connection: Connection) -> Sample | None:
    row = connection.execute(SELECT_SAMPLE, {"index": NAME_TRIGRAM_INDEX}).first()
    if row is None:
        return None
    values, frequencies, bounds, null_share = row
    common = tuple(zip(values or (), frequencies or (), strict=True))
    rest = max(0.0, 1.0 - (null_share or 0.0) - sum(frequency for _, frequency in common))
    if not common and not bounds:
        return None
    return Sample(common=common, bounds=tuple(bounds or ()), rest=rest)


_samples = _Samples()
clear = _samples.clear
