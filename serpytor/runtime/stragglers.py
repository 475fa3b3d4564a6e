"""Stragglers (Dryad): a vertex running far beyond its stage's typical time gets a
duplicate on another server; the first copy to finish wins.

A *stage* is a template (its replicas do the same work on different partitions). Once
at least half of a stage has finished, a running vertex of that stage is a straggler
when it has run longer than ``factor`` times the stage's median and at least ``floor``
seconds (a floor, so that stages of millisecond vertices never duplicate). How long a
vertex has run comes from its server (the ``running`` part of a pong).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

SAMPLES = 1001  # durations kept per stage for the median (a fixed-size sample)


@dataclass
class StageTimes:
    width: int
    done: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.done += 1
        if len(self.seconds) < SAMPLES:
            self.seconds.append(seconds)
        else:  # keep a sample spread over the stage: replace in turn
            self.seconds[self.done % SAMPLES] = seconds

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


class StragglerWatch:
    """Per-stage durations, and the rule that says which running vertex to duplicate."""

    def __init__(self, widths: list[int], factor: float = 2.0, floor: float = 1.0) -> None:
        self.stages = [StageTimes(w) for w in widths]
        self.factor = factor
        self.floor = floor

    def finished(self, stage: int, seconds: float) -> None:
        self.stages[stage].add(seconds)

    def is_straggler(self, stage: int, running_for: float) -> bool:
        times = self.stages[stage]
        if 2 * times.done < times.width:
            return False
        median = times.median()
        return median is not None and running_for > max(self.factor * median, self.floor)
