"""Vertices for the data-plane tests: an array producer and consumers that say how
their input arrived (a read-only view on a shared segment, or memory of their own)."""

from __future__ import annotations

import time

import numpy as np


def array(partition=0, size=1_000_000):
    return np.arange(size, dtype=np.float64) + partition


def describe(inputs):
    """How the one input array looks here: its sum, and whether it is a read-only view
    (what a consumer gets from an shm channel) or an array of its own."""
    [value] = inputs.values()
    return {"sum": float(value.sum()), "size": int(value.size),
            "writeable": bool(value.flags.writeable), "owndata": bool(value.flags.owndata)}


def total(inputs):
    return float(sum(float(np.asarray(v).sum()) for v in inputs.values()))


def wedge(inputs):
    """Blocked in C past any timeout: its server must restart itself."""
    time.sleep(30)
    return 0


def count_runs(inputs, context):
    """Appends its vertex name to the file named by context key ``log``."""
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\n")
    return float(sum(float(np.asarray(v).sum()) for v in inputs.values()))




def source(context, size=10):
    """A small array; appends its vertex name to the file named by context key ``log``."""
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\n")
    return np.arange(size, dtype=np.float64)
