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


@dataclass(slots=True)
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
    """Per-stage durations, and the rule that says which running vertex to duplicate.

    A stage of one vertex never has a straggler (the rule needs half of the stage done),
    so only wider stages keep times, each from its first finished vertex: a plan of a
    template per vertex keeps none."""

    def __init__(self, widths: list[int], factor: float = 2.0, floor: float = 1.0) -> None:
        self.widths = widths
        self.stages: dict[int, StageTimes] = {}
        self.factor = factor
        self.floor = floor

    def finished(self, stage: int, seconds: float) -> None:
        times = self.stages.get(stage)
        if times is None:
            if self.widths[stage] < 2:
                return
            times = self.stages[stage] = StageTimes(self.widths[stage])
        times.add(seconds)

    def is_straggler(self, stage: int, running_for: float) -> bool:
        times = self.stages.get(stage)
        if times is None or 2 * times.done < times.width:
            return False
        median = times.median()
        return median is not None and running_for > max(self.factor * median, self.floor)
