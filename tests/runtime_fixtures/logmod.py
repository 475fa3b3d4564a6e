"""Vertices that count their executions: each appends its vertex name to the file
named by the context key ``log`` (a fact of the origin context), then computes a small
deterministic value from its inputs."""

from __future__ import annotations

import os


def _log(context) -> None:
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\n")


def start(context, partition, n=1):
    _log(context)
    return n * 100 + partition


def step(inputs, context, bias=0):
    _log(context)
    return sum(_flatten(inputs.values())) + bias + 1


def scaled(inputs, context):
    _log(context)
    return sum(_flatten(inputs.values())) * int(context["scale"])



def fragile(inputs, context):
    """Fails while the file named by context key ``flag`` exists."""
    _log(context)
    if os.path.exists(context["flag"]):
        raise ValueError(f"flag file {context['flag']} is present")
    return sum(_flatten(inputs.values())) + 7


def _flatten(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        elif isinstance(value, (int, float)):
            yield value
        elif isinstance(value, dict):
            yield from _flatten(value.values())
