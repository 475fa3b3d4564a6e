"""Vertex functions of ``benchmarks/run_bench.py``.

Three families:

* trivial tasks for the scheduling figures (``source`` / ``step`` in SerPyTor's calling
  convention, ``dask_source`` / ``dask_step`` the same arithmetic in Dask's), so that
  what is measured is the cost of running a task, not the task;
* a word count (``read_part`` -> ``count_words`` -> ``merge_counts``) whose counting
  costs real CPU, for the scaling figure;
* for ``benchmarks/cluster_bench.py``: ``nap``, the trivial tasks' arithmetic after a
  short sleep (a job of a few seconds to strike a server in), and ``block`` / ``bump``
  / ``checksum``, large numpy arrays passed from vertex to vertex.

Servers import this module by name, so it must stay importable as
``benchmarks.run_tasks`` from the repository root.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any, Mapping

MODULO = 1_000_003


# ---- trivial tasks ----------------------------------------------------------------------
def source(seed: int = 0) -> int:
    """A root vertex: its seed (an argument written in the ``.spg``)."""
    return seed


def step(inputs: Mapping[str, int]) -> int:
    """One more than the sum of every parent's output, kept small."""
    return (sum(inputs.values()) + 1) % MODULO


def dask_source(seed: int) -> int:
    """``source`` for Dask: the seed is the task's argument."""
    return seed


def dask_step(*parents: int) -> int:
    """``step`` for Dask: the parents' outputs arrive as positional arguments."""
    return (sum(parents) + 1) % MODULO


def relay(partition: int, inputs: Mapping[str, int]) -> int:
    """A replica of a wide stage: its parents' sum plus its partition (or the partition)."""
    return (sum(inputs.values()) + partition) % MODULO


# ---- word count ---------------------------------------------------------------------------
def aligned(handle: Any, position: int, size: int) -> int:
    """The first line start at or after ``position`` (``size`` past the end)."""
    if position <= 0:
        return 0
    if position >= size:
        return size
    handle.seek(position - 1)
    handle.readline()  # consumes the rest of the line holding position - 1
    return min(handle.tell(), size)


def read_part(path: str, partition: int, partitions: int) -> str:
    """This replica's byte range of the corpus, widened to whole lines.

    Replica ``p`` of ``n`` owns the lines that start in ``[p*size/n, (p+1)*size/n)``, so
    the replicas together read the file exactly once and in parallel.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        start = aligned(handle, partition * size // partitions, size)
        stop = aligned(handle, (partition + 1) * size // partitions, size)
        handle.seek(start)
        return handle.read(stop - start).decode("utf-8")


def count_words(read: str) -> Counter:
    """Case-folded word counts of one part, line by line (the CPU-heavy step)."""
    counts: Counter = Counter()
    for line in read.splitlines():
        counts.update(line.lower().split())
    return counts


def count_part(part: tuple[str, int, int]) -> int:
    """``count_words`` of ``read_part(*part)`` outside any pipeline (run_bench's measure
    of what two plain processes gain on this machine); the number of distinct words."""
    return len(count_words(read_part(*part)))


def merge_counts(count: list[Counter]) -> dict[str, int]:
    """The total of every part's counts (fed all-to-all: a list in partition order)."""
    total: Counter = Counter()
    for part in count:
        total.update(part)
    return dict(total)


# ---- cluster_bench: sleeping tasks and large arrays ---------------------------------------
def nap(inputs: Mapping[str, int], context: Mapping[str, Any], seed: int = 0,
        ms: float = 3.0) -> int:
    """Sleep ``ms`` milliseconds, then ``source(seed)`` for a root, ``step`` otherwise
    (so the values equal the trivial DAG's); then, when the context fact ``log`` names
    a file, append one line to it (one ``O_APPEND`` write: concurrent servers' lines
    do not interleave), so that the file counts the vertices finished so far."""
    time.sleep(ms / 1000)
    value = step(inputs) if inputs else source(seed)
    path = context.get("log")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{value}\n")
    return value


def block(partition: int, mb: float = 8.0) -> Any:
    """A float64 array of ``mb`` MB (10^6 bytes) whose values depend on the partition."""
    import numpy as np

    return np.arange(int(mb * 1e6) // 8, dtype=np.float64) + partition


def bump(inputs: Mapping[str, Any]) -> Any:
    """Its one parent's array plus one (a new array: the input may be a read-only view)."""
    (array,) = inputs.values()
    return array + 1.0


def checksum(inputs: Mapping[str, Any]) -> float:
    """The sum of its one parent's array (a small sink output to compare)."""
    (array,) = inputs.values()
    return float(array.sum())
