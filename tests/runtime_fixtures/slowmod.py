"""Slow-ish vertices for the kill tests: each sleeps ``SPT_SLOW_MS`` milliseconds
(default 50; read at run time, so it is not part of the journal key) and appends its
vertex name to the file named by the context key ``log``."""

from __future__ import annotations

import os
import time


def work(inputs, context, partition):
    time.sleep(int(os.environ.get("SPT_SLOW_MS", "50")) / 1000)
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\n")
    total = sum(_numbers(inputs.values()))
    return (total * 31 + partition + 1) % 1_000_003


def _numbers(values):
    for value in values:
        if isinstance(value, list):
            yield from _numbers(value)
        else:
            yield value
