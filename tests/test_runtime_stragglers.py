"""The straggler rule (serpytor.runtime.stragglers), on its own."""

from __future__ import annotations

from serpytor.runtime.stragglers import StragglerWatch


def test_a_vertex_beyond_twice_its_stage_median_is_a_straggler_once_half_is_done():
    watch = StragglerWatch([4], factor=2.0, floor=1.0)
    watch.finished(0, 3.0)
    assert not watch.is_straggler(0, 100.0)  # one of four done: too early to say
    watch.finished(0, 3.0)
    assert watch.is_straggler(0, 6.5)
    assert not watch.is_straggler(0, 5.5)


def test_the_floor_keeps_fast_stages_from_duplicating():
    watch = StragglerWatch([2], factor=2.0, floor=1.0)
    watch.finished(0, 0.001)
    assert not watch.is_straggler(0, 0.5)
    assert watch.is_straggler(0, 1.5)


def test_a_stage_of_one_vertex_keeps_no_times_and_never_straggles():
    watch = StragglerWatch([1, 1, 3])
    for stage in (0, 1):
        watch.finished(stage, 5.0)
        assert not watch.is_straggler(stage, 1000.0)
    watch.finished(2, 5.0)
    assert set(watch.stages) == {2}
