"""Per-vertex time limits for vertices run in this process (``--inline``).

In the main thread a ``SIGALRM`` timer interrupts the vertex (even one blocked in a
system call). In any other thread (``serpytor.run(inline=True)`` from a web handler
or a notebook's worker) a watchdog timer raises the timeout asynchronously in the
running thread, which interrupts Python code; a vertex blocked in C code notices it
when it returns to Python (servers, which run vertices in their own process, restart
themselves in that case).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from typing import Callable, Iterator

from ..errors import VertexTimeoutError


def timeout_error(vertex: str, seconds: float) -> VertexTimeoutError:
    return VertexTimeoutError(f"vertex {vertex} ran past its timeout of {seconds:g} s")


@contextlib.contextmanager
def time_limit(seconds: float | None, vertex: str) -> Iterator[None]:
    """Raise VertexTimeoutError in the block after ``seconds``."""
    if not seconds:
        yield
    elif threading.current_thread() is threading.main_thread():
        with alarm(seconds, lambda: timeout_error(vertex, seconds)):
            yield
    else:
        with _watchdog(seconds, vertex):
            yield


@contextlib.contextmanager
def alarm(seconds: float, error: Callable[[], BaseException]) -> Iterator[None]:
    """In the main thread: raise ``error()`` in the block after ``seconds`` (SIGALRM,
    so even a blocking system call is interrupted)."""
    def expire(signum, frame):
        raise error()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Interruptible:
    """The region of a thread where a vertex runs, which another thread may interrupt
    by raising an exception in it -- only there: an interruption that has not been
    delivered when the region ends is withdrawn, so it never lands in the code around
    the vertex (which would lose the vertex's result)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None
        self.fired = False

    def region(self) -> "Interruptible":
        """``with guard.region():`` -- the code inside may be interrupted (a class
        rather than a generator: it is entered once per task)."""
        return self

    def __enter__(self) -> None:
        with self._lock:
            self._thread, self.fired = threading.get_ident(), False

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self.fired and self._thread is not None:
                _clear_pending(self._thread)
            self._thread = None

    def interrupt(self, exception: type[BaseException]) -> bool:
        """Raise ``exception`` in the region's thread if it is inside the region."""
        with self._lock:
            if self._thread is None:
                return False
            self.fired = True
            raise_in_thread(self._thread, exception)
            return True


@contextlib.contextmanager
def _watchdog(seconds: float, vertex: str) -> Iterator[None]:
    guard = Interruptible()
    timer = threading.Timer(seconds, guard.interrupt, (VertexTimeoutError,))
    timer.daemon = True
    try:
        with guard.region():
            timer.start()
            yield
    except VertexTimeoutError as error:
        if guard.fired and not error.args:
            raise timeout_error(vertex, seconds) from None
        raise
    finally:
        timer.cancel()


def raise_in_thread(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in the thread ``thread_id`` at its next Python bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exception))


def _clear_pending(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
