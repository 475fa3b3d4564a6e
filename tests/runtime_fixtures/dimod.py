"""Vertices for the dependency-injection tests: each returns what it received."""

from __future__ import annotations


def source(partition, partitions):
    return f"src{partition}/{partitions}"


def gather(source):
    """All-to-all parent: a list in partition order."""
    return list(source)


def single(source, partition):
    """Pointwise parent: one value."""
    return {"source": source, "partition": partition}


def everything(inputs):
    return {name: value for name, value in inputs.items()}


def arguments(first, second, scale=1, label="none"):
    return {"first": first, "second": second, "scale": scale, "label": label}


def args_and_parent(single, factor):
    return {"single": single, "factor": factor}


def kwargs_sink(**rest):
    return dict(rest)
