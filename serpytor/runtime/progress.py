"""A one-line progress bar on a terminal: vertices done/total, rate, ETA.

Shown only when the stream is a terminal; redrawn at most ten times a second, so it
costs nothing on the hot path.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.1
WIDTH = 30


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None,
                 clock=time.monotonic) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.drawn_at = 0.0
        self.done = 0

    @staticmethod
    def wanted(stream: TextIO | None = None) -> bool:
        stream = stream or sys.stderr
        return hasattr(stream, "isatty") and stream.isatty()

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.drawn_at >= REDRAW_S or done >= self.total:
            self.drawn_at = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        fraction = self.done / self.total if self.total else 1.0
        bar = "#" * int(WIDTH * fraction) + "-" * (WIDTH - int(WIDTH * fraction))
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "--" if remaining == float("inf") else _duration(remaining)
        return f"[{bar}] {self.done}/{self.total} vertices  {rate:,.0f}/s  ETA {eta} "

    def close(self) -> None:
        if self.drawn_at:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
