"""Vertices that fail in the ways user code fails."""

from __future__ import annotations

import os
import threading
import time


def ok():
    return 1


def raises(ok):
    raise ValueError("bad value in raises")


def unpicklable(ok):
    return threading.Lock()



def spin(ok, seconds=60):
    """A pure-Python loop: interruptible."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


def block(ok):
    """Blocked in C for 30 s: not interruptible by an async exception."""
    time.sleep(30)
    return "slept"


def die(ok):
    os._exit(1)


def after(inputs):
    return sorted(inputs)
