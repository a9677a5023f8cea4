"""Server-generated task ids: UUIDv7 (RFC 9562), time-ordered.

A task id is the primary key, and it is in two more indexes (the events' task_id index and the
keyset indexes end in it). Random ids (UUIDv4) land on a random leaf page of each of those
B-trees, so every insert dirties pages all over them, and as the table outgrows the page cache
each insert reads them back first: on SQLite, a batch of CreateTask writes got slower as the
table grew, and was about half as fast at 120,000 tasks as with ids that grow with time.
A UUIDv7 begins with the Unix time in milliseconds, so new ids land on the right-most pages,
which stay hot. The other 74 bits are random, which keeps ids from different replicas (and
within one millisecond) apart; ids made within one millisecond are not ordered among themselves.
"""

from __future__ import annotations

import os
import time

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RANDOM = ((1 << 80) - 1) & ~(0xF << 76) & ~(0b11 << 62)  # every bit but version and variant


def new_task_id() -> str:
    """A fresh UUIDv7 in its canonical text form."""
    unix_ms = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big") & _RANDOM
    # Written out here: uuid.UUID's checks and str() cost twice what the rest does, per task.
    digits = f"{(unix_ms << 80) | _VERSION | random_bits | _VARIANT:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
