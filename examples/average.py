"""DryadLINQ's decomposable average (the Dryad overview, section on aggregation).

Average is not associative, but it decomposes: each partition reduces its numbers to a
partial ``(sum, count)`` (InitialReduce), partials add up (Combine), and the final
reduce divides. The accumulator form (Initialize / Iterate / Merge) is shown by
``average_accumulator`` in average_accumulator.spg.
"""

from __future__ import annotations

import random


def numbers(partition: int, partitions: int, count: int = 100_000, seed: int = 11) -> list[float]:
    rng = random.Random(seed * 1_000_003 + partition)
    share = count // partitions + (partition < count % partitions)
    return [rng.uniform(0.0, 100.0) for _ in range(share)]


def initial_reduce(values: list[float]) -> tuple[float, int]:
    return (sum(values), len(values))


def combine(partials: list[tuple[float, int]]) -> tuple[float, int]:
    return (sum(p[0] for p in partials), sum(p[1] for p in partials))


def average(numbers: list[tuple[float, int]]) -> float:
    total, count = combine(numbers)
    return total / count if count else float("nan")


def initialize() -> tuple[float, int]:
    return (0.0, 0)


def iterate(accumulator: tuple[float, int], values: list[float]) -> tuple[float, int]:
    return (accumulator[0] + sum(values), accumulator[1] + len(values))


def merge(left: tuple[float, int], right: tuple[float, int]) -> tuple[float, int]:
    return (left[0] + right[0], left[1] + right[1])
