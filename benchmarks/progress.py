"""A one-line progress bar on stderr for the long phases."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self._shown = 0.0
        self._enabled = sys.stderr.isatty()

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if self._enabled and (now - self._shown > 0.1 or self.done >= self.total):
            self._shown = now
            filled = int(30 * min(self.done, self.total) / self.total)
            sys.stderr.write(
                f"\r  {self.label:<34} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{self.done}/{self.total}"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\n")
        else:
            sys.stderr.write(f"  {self.label}: {self.done}/{self.total}\n")
        sys.stderr.flush()
