"""Crash tests of durable execution (DESIGN.md section 4): "a re-run or a restart after
a crash of any process, the gateway included, reuses every recorded vertex and
recomputes only what is missing".

``tests/runtime_fixtures/slow.spg`` has 42 vertices that each sleep ~50 ms and append
their name to an execution log::

    src[0..15] => mid[0..15] >> join -> tail[0..7] >> end

A run is SIGKILLed at a seeded random point (after the log holds k lines); then the
journal database (table ``vertices``, column ``vertex``) says what was recorded, a
re-run completes the pipeline, and the log proves that no recorded vertex ran again.
"""

from __future__ import annotations

import json
import random

import pytest
from runtime_helpers import (
    ROOT,
    child_env,
    fixture_pipeline,
    group_gone,
    journaled_vertices,
    kill_group,
    log_lines,
    spawn_cli,
    start_servers,
    stop_all,
    wait_for,
)

import serpytor
from serpytor.runtime.api import run

SLOW = fixture_pipeline("slow")
PLAN = serpytor.compile_file(SLOW)
NAMES = set(PLAN.names)
assert len(NAMES) == 42


@pytest.fixture(scope="module")
def fault_free():
    """The outputs of an uninterrupted run (no sleeping, nothing journaled)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPT_SLOW_MS", "0")
        patch.delenv("SPT_LOG", raising=False)
        return run(SLOW, inline=True, journal=False).outputs


def rerun_to_completion(monkeypatch, log, journal):
    """Finish the pipeline in this process (without the sleeps, which are not part of
    any journal key); returns (result, vertices the re-run executed)."""
    seen = len(log_lines(log))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SPT_LOG", str(log))
    monkeypatch.setenv("SPT_SLOW_MS", "0")
    result = run(SLOW, inline=True, journal=journal)
    return result, log_lines(log)[seen:]


def check_recovery(result, executed, recorded, fault_free) -> None:
    again = sorted(set(executed) & set(recorded))
    assert not again, f"recorded vertices executed again: {again}"
    assert len(executed) == len(set(executed)), "a vertex ran twice in the re-run"
    assert set(executed) | set(recorded) == NAMES
    assert {n for n, r in result.vertices.items() if r.status == "reused"} == set(recorded)
    assert result.outputs == fault_free


@pytest.mark.parametrize("seed", (2, 5, 9))  # kill after 4, 17, 30 executions
def test_gateway_killed_at_a_random_point(seed, tmp_path, monkeypatch, fault_free):
    kill_after = random.Random(seed).randrange(1, 35)  # of 42 executions
    log, journal = tmp_path / "executions.log", tmp_path / "journal"
    process = spawn_cli("run", SLOW, "--workers", "2", "--journal", journal,
                        env=child_env(SPT_LOG=str(log)))
    try:
        wait_for(lambda: len(log_lines(log)) >= kill_after or process.poll() is not None,
                 60, f"{kill_after} executions")
        finished_early = process.poll() is not None
    finally:
        kill_group(process)  # the gateway and its local servers: one process group
        process.communicate()
    assert not finished_early, "the run ended before the kill point"
    assert group_gone(process.pid), "a process of the killed run survived"

    recorded = journaled_vertices(journal)
    assert len(recorded) == len(set(recorded))
    assert len(recorded) < len(NAMES)
    result, executed = rerun_to_completion(monkeypatch, log, journal)
    check_recovery(result, executed, recorded, fault_free)


def test_a_server_killed_at_a_random_point(tmp_path, monkeypatch, fault_free):
    """--servers with two servers; one is SIGKILLed mid-run. The run finishes on the
    other with the fault-free results, naming the lost server; what the victim held is
    recomputed or read from the journal, and a re-run executes nothing."""
    rng = random.Random(44)
    kill_after = rng.randrange(4, 30)
    log, journal = tmp_path / "executions.log", tmp_path / "journal"
    own = start_servers(2, prefix="killme")
    victim, survivor = (own[0], own[1]) if rng.random() < 0.5 else (own[1], own[0])
    try:
        process = spawn_cli("run", SLOW, "--servers", ",".join(s.address for s in own),
                            "--journal", journal, "--output", "json",
                            env=child_env(SPT_LOG=str(log)))
        try:
            wait_for(lambda: len(log_lines(log)) >= kill_after or process.poll() is not None,
                     60, f"{kill_after} executions")
            assert process.poll() is None, "the run ended before the kill point"
            victim.kill()
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                kill_group(process)
                process.communicate()
        assert process.returncode == 0, err
        assert json.loads(out)["outputs"] == fault_free
        assert victim.name in err and "lost" in err, err
        assert "Traceback" not in err
        assert set(log_lines(log)) == NAMES
        assert sorted(journaled_vertices(journal)) == sorted(NAMES)
        result, executed = rerun_to_completion(monkeypatch, log, journal)
        assert executed == [] and result.outputs == fault_free
    finally:
        stop_all(own)
