"""Vertices for the cluster fault tests (tests/test_cluster_faults.py).

Every vertex appends ``NAME PID`` to the execution log named by the context fact
``log`` *when it starts*, so the log tells which server process began which vertex
(and a vertex that is re-run elsewhere shows up again with another pid). How long a
vertex works comes from context facts too (``ms``, milliseconds), so one pipeline
serves fast and slow runs; the outputs depend only on the inputs and the partition,
so every run -- inline, on servers, with faults -- must produce the same values.
"""

from __future__ import annotations

import os
import time


def _log(context) -> None:
    path = context["log"]
    if path:
        # one small write with O_APPEND: lines of concurrent writers do not interleave
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{context.vertex} {os.getpid()}\n")


def _numbers(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _numbers(value)
        elif isinstance(value, dict):
            yield from _numbers(value.values())
        else:
            yield value


def _value(inputs, partition) -> int:
    total = sum(_numbers(inputs.values()))
    return (total * 31 + partition + 1) % 1_000_003


def work(inputs, context, partition):
    """Log, sleep ``ms`` milliseconds, return a value of the inputs and partition."""
    _log(context)
    ms = float(context["ms"])
    if ms > 0:
        time.sleep(ms / 1000)
    return _value(inputs, partition)


def straggle(inputs, context, partition):
    """Partition ``slow`` (a context fact) sleeps ``seconds`` the first time it runs --
    the file named by the fact ``marker`` records that it did -- and ``usual`` seconds
    on any later run (a duplicate, a re-run); every other partition sleeps ``usual``."""
    _log(context)
    delay = float(context["usual"])
    if partition == int(context["slow"]):
        try:
            fd = os.open(context["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass  # it ran before: this is a duplicate or a re-run
        else:
            os.close(fd)
            delay = float(context["seconds"])
    time.sleep(delay)
    return _value(inputs, partition)


def pure(inputs, partition):
    """No context, no side effect: what a fuzzed task may run without harm."""
    return _value(inputs, partition)


def die(inputs, context, status=3):
    """Kill the server running it, with exit status ``status``."""
    _log(context)
    os._exit(status)


def collect(inputs, context):
    """The sink: every input value, in partition order, and their sum."""
    _log(context)
    values = list(_numbers(inputs.values()))
    return {"values": values, "sum": sum(values)}
