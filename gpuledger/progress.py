"""Progress for long work: a bar on a terminal, plain lines every 10 % otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._next_decile = 1

    def update(self, n: int = 1) -> None:
        self.done += n
        frac = min(1.0, self.done / self.total)
        if self.tty:
            width = 30
            fill = int(frac * width)
            self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac:6.1%}")
            self.stream.flush()
        elif frac * 10 >= self._next_decile:
            while frac * 10 >= self._next_decile:
                self._next_decile += 1
            self.stream.write(
                f"{self.label}: {frac:.0%} ({self.done}/{self.total}, {time.monotonic() - self.start:.1f}s)\n"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def parse_duration(text: str) -> float:
    """'90s', '30m', '6h', '2d' (or plain seconds) -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        unit = units.get(text[-1:], 0)
        value = float(text[:-1]) * unit if unit else float(text)
    except ValueError as exc:
        raise ValueError(f"bad duration {text!r}: expected a number with s, m, h or d (e.g. 6h)") from exc
    if value <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value
