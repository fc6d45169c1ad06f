"""Progress for long-running tools: a bar on a terminal, a line every few seconds in logs."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None, unit: str = "rows", every: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every = every
        self.done = 0
        self.started = time.monotonic()
        self._last = self.started
        self._tty = sys.stderr.isatty()

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self._last >= (0.2 if self._tty else self.every):
            self._last = now
            self._show(end="\r" if self._tty else "\n")

    def finish(self) -> float:
        """Print the final line and return the rate (units per second)."""
        self._show(end="\n")
        return self.rate

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    def _show(self, end: str) -> None:
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            head = f"{self.label} [{bar:<30}] {share:6.1%} {self.done:,}/{self.total:,} {self.unit}"
        else:
            head = f"{self.label} {self.done:,} {self.unit}"
        sys.stderr.write(f"{head} {self.seconds:6.1f} s {self.rate:,.0f} {self.unit}/s\033[K{end}"
                         if self._tty else f"{head} {self.seconds:.1f} s {self.rate:,.0f} {self.unit}/s{end}")
        sys.stderr.flush()
