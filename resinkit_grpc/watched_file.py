"""A configuration file a running server re-reads when it changes (tokens, webhook secrets)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often the file's modification time is looked at (each use stats it at most this often).
RECHECK_SECONDS = 0.5


class WatchedFile(Generic[T]):
    """What `read(path)` made of the file, made again when the file's modification time
    changes. `read` raises `error` (a ValueError whose message is one line for the operator)
    when the file cannot be used: at construction that stops the boot; later, the previous
    contents are kept and the problem is logged."""

    def __init__(
        self, path: Path, read: Callable[[Path], T], error: type[ValueError], what: str
    ) -> None:
        self._path = path
        self._read = read
        self._error = error
        self._what = what
        self._lock = threading.Lock()
        self._value = read(path)  # error: the boot stops
        self._mtime = _mtime(path)
        self._checked = time.monotonic()

    @property
    def path(self) -> Path:
        return self._path

    def current(self) -> T:
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._reload_if_changed(now)
        return self._value

    def _reload_if_changed(self, now: float) -> None:
        with self._lock:
            self._checked = now
            mtime = _mtime(self._path)
            if mtime == self._mtime:
                return
            try:
                value = self._read(self._path)
            except self._error as error:
                log.warning("keeping the %s read before: %s", self._what, error)
                return
            self._value, self._mtime = value, mtime
            log.info("%s reloaded from %s", self._what, self._path)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
