"""Per-vertex time limits for vertices run in this process's main thread."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ..errors import VertexTimeoutError


@contextlib.contextmanager
def time_limit(seconds: float | None, vertex: str) -> Iterator[None]:
    """Raise VertexTimeoutError in the block after ``seconds`` (SIGALRM, main thread
    only; elsewhere the caller's process-level watchdog enforces the limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise VertexTimeoutError(f"vertex {vertex} ran past its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
