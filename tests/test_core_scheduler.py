"""The ready-set engine (serpytor._core scheduler), compiled and reference.

Every test taking ``impl`` runs against both implementations; the Hypothesis tests
drive both with the same random operations and compare them after every step.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from core_strategies import (IMPLEMENTATIONS, Dag, both, csr, dags, implementation,
                             successors)
from hypothesis import given, settings
from hypothesis import strategies as st

import serpytor._core as core
from serpytor._core import DONE, FAILED, READY, RUNNING, WAITING


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return implementation(request.param)


def engine(impl, n, edges, priority=None):
    indptr, indices = successors(n, edges)
    return impl.ReadyEngine(indptr, indices, priority)


# ---- the package -----------------------------------------------------------------------

def test_compiled_kernels_are_in_use_unless_pure_python_is_asked_for():
    if os.environ.get("SERPYTOR_PURE_PYTHON") == "1":
        assert core.COMPILED is False
        assert core.ReadyEngine is core.reference.ReadyEngine
    else:
        assert core.COMPILED is True, "serpytor._core runs on the pure-Python references"
        assert core.ReadyEngine is core.compiled.ReadyEngine
        assert core.place is core.compiled.place
        assert core.merge_facts is core.compiled.merge_facts


def import_core_without_build(pure_python: bool) -> subprocess.CompletedProcess:
    """Import serpytor._core in a fresh interpreter where the scheduler extension
    cannot be imported (as if it were never built)."""
    code = ("import sys\n"
            "sys.modules['serpytor._core.scheduler'] = None\n"
            "import serpytor._core as core\n"
            "print(core.COMPILED, core.compiled, core.ReadyEngine.__module__)\n")
    env = {k: v for k, v in os.environ.items() if k != "SERPYTOR_PURE_PYTHON"}
    if pure_python:
        env["SERPYTOR_PURE_PYTHON"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, cwd=root)


def test_a_missing_build_is_an_import_error_that_says_how_to_build():
    result = import_core_without_build(pure_python=False)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "python setup.py build_ext --inplace" in result.stderr
    assert "pip install -e ." in result.stderr


def test_pure_python_mode_runs_without_a_build():
    result = import_core_without_build(pure_python=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "None", "serpytor._core._ref_scheduler"]


# ---- behaviour on small graphs ----------------------------------------------------------

def test_a_chain_runs_in_order(impl):
    """0 -> 1 -> 2"""
    e = engine(impl, 3, [(0, 1), (1, 2)])
    assert e.pop_ready(5).tolist() == [0]
    assert e.pop_ready(5).tolist() == []
    assert e.complete(0).tolist() == [1]
    assert e.pop_ready().tolist() == [1]
    assert e.complete_many(np.array([1], np.int32)).tolist() == [2]
    assert e.pop_ready().tolist() == [2]
    assert e.complete(2).tolist() == []
    assert e.finished and e.counts == (0, 0, 0, 3, 0)


def test_a_join_waits_for_every_parent(impl):
    """
    0   1
     \\ /
      2
    """
    e = engine(impl, 3, [(0, 2), (1, 2)])
    assert sorted(e.pop_ready(2).tolist()) == [0, 1]
    assert e.complete(0).tolist() == []
    assert e.state_of(2) == WAITING and e.remaining.tolist() == [0, 0, 1]
    assert e.complete(1).tolist() == [2]


def test_longest_path_first_then_started_branches_then_last_made_ready(impl):
    """
        0      3        priority = height * (max depth + 1) + depth
       / \\             0: 2, 1: 1, 2: 1, 3: 0
      1   2
    """
    edges = [(0, 1), (0, 2)]
    assert impl.longest_path_priority(*successors(4, edges)).tolist() == [2, 1, 1, 0]
    e = engine(impl, 4, edges)
    assert e.pop_ready().tolist() == [0]
    assert e.complete(0).tolist() == [1, 2]
    # 1 and 2 tie; 2 became ready last and runs first; the fresh root 3 runs last
    assert e.pop_ready(10).tolist() == [2, 1, 3]


def test_equal_priority_roots_pop_in_id_order(impl):
    e = engine(impl, 4, [], priority=np.zeros(4, np.int64))
    assert e.pop_ready(4).tolist() == [0, 1, 2, 3]


def test_a_given_priority_is_used(impl):
    e = engine(impl, 3, [], priority=[5, -7, 9])
    assert e.pop_ready(3).tolist() == [2, 0, 1]
    assert e.priority.tolist() == [5, -7, 9]


def test_fail_with_retry_makes_the_vertex_ready_again(impl):
    e = engine(impl, 2, [(0, 1)])
    e.pop_ready()
    e.fail(0)
    assert e.state_of(0) == READY and e.failures.tolist() == [1, 0]
    assert e.pop_ready().tolist() == [0]
    e.fail(0, retry=False)
    assert e.state_of(0) == FAILED and e.failures.tolist() == [2, 0]
    assert e.pop_ready().tolist() == []
    assert e.invalidate(0).tolist() == []          # re-arms a failed vertex
    assert e.pop_ready().tolist() == [0]


def test_a_lost_output_sends_its_unfinished_consumers_back(impl):
    """
      0        4
     /|\\      |
    1 2 3      5

    0's output is lost while 1 is done, 2 is running and 3 is ready: 0 runs again,
    2 is returned (cancel it) and waits with 3; 1 keeps its output.
    """
    edges = [(0, 1), (0, 2), (0, 3), (1, 5), (4, 5)]
    e = engine(impl, 6, edges, priority=[9, 8, 7, 6, 0, 0])
    assert e.pop_ready().tolist() == [0]
    e.complete(0)
    assert e.pop_ready(2).tolist() == [1, 2]
    e.complete(1)
    assert e.invalidate(0).tolist() == [2]
    assert [e.state_of(v) for v in range(4)] == [READY, DONE, WAITING, WAITING]
    assert e.remaining.tolist() == [0, 1, 1, 1, 0, 1]
    assert e.pop_ready().tolist() == [0]
    assert e.complete(0).tolist() == [2, 3]


def test_invalidating_a_running_vertex_makes_it_ready(impl):
    e = engine(impl, 1, [])
    e.pop_ready()
    assert e.invalidate(0).tolist() == []
    assert e.state_of(0) == READY and e.failures.tolist() == [0]


def test_invalidating_waiting_or_ready_vertices_changes_nothing(impl):
    e = engine(impl, 2, [(0, 1)])
    before = e.state.tolist()
    assert e.invalidate_many([0, 1, 1]).tolist() == []
    assert e.state.tolist() == before


def test_repeated_edges_count_twice(impl):
    e = engine(impl, 2, [(0, 1), (0, 1)])
    assert e.remaining.tolist() == [0, 2]
    e.pop_ready()
    assert e.complete(0).tolist() == [1]


def test_an_empty_graph(impl):
    e = engine(impl, 0, [])
    assert e.pop_ready(3).tolist() == [] and e.finished
    assert e.complete_many([]).tolist() == []


def test_vertices_keep_their_ids_whatever_order_the_priorities_give(impl):
    """The priorities run against the ids: every answer still speaks of the caller's ids."""
    e = engine(impl, 6, [(0, 3), (1, 4), (2, 5)], priority=[1, 9, 5, 0, 7, 3])
    assert e.pop_ready(2).tolist() == [1, 2]
    assert e.complete(2).tolist() == [5]
    e.fail(1)
    assert e.state.tolist() == [READY, READY, DONE, WAITING, WAITING, READY]
    assert [e.state_of(v) for v in range(6)] == e.state.tolist()
    assert e.remaining.tolist() == [0, 0, 0, 1, 1, 0]
    assert e.failures.tolist() == [0, 1, 0, 0, 0, 0]
    assert e.pop_ready(6).tolist() == [1, 5, 0]        # priorities 9, 3, 1
    assert e.complete_many([0, 5, 1]).tolist() == [3, 4]
    assert e.invalidate(0).tolist() == []
    assert e.state_of(3) == WAITING and e.remaining.tolist()[3] == 1


@pytest.mark.parametrize("layout", ["list", "int64", "big-endian", "strided", "read-only"])
def test_a_batch_in_any_integer_layout_is_read_by_value(impl, layout):
    e = engine(impl, 8, [(v, v + 4) for v in range(4)], priority=np.zeros(8, np.int64))
    assert e.pop_ready(8).tolist() == [0, 1, 2, 3]
    batch = {
        "list": lambda: [3, 1],
        "int64": lambda: np.array([3, 1], np.int64),
        "big-endian": lambda: np.array([3, 1], ">i4"),
        "strided": lambda: np.array([3, 9, 1, 9], np.int32)[::2],
        "read-only": lambda: np.frombuffer(np.array([3, 1], np.int32).tobytes(), np.int32),
    }[layout]()
    assert e.complete_many(batch).tolist() == [7, 5]
    assert e.state.tolist() == [RUNNING, DONE, RUNNING, DONE, WAITING, READY, WAITING,
                                READY]


def test_errors_name_the_callers_ids_whatever_order_the_priorities_give(impl):
    e = engine(impl, 3, [], priority=[0, 1, 2])
    assert e.pop_ready().tolist() == [2]
    with pytest.raises(ValueError, match="cannot complete vertex 0: it is ready"):
        e.complete_many([2, 0])
    with pytest.raises(ValueError, match="vertices: vertex 2 appears twice"):
        e.complete_many(np.array([2, 2], np.int32))
    with pytest.raises(ValueError, match="cannot fail vertex 1: it is ready"):
        e.fail(1)
    assert e.counts == (0, 2, 1, 0, 0)


def test_states_are_copies(impl):
    e = engine(impl, 2, [(0, 1)])
    state = e.state
    state[:] = 99
    assert e.state.tolist() == [READY, WAITING]


# ---- bad input --------------------------------------------------------------------------

BAD_LOADS = [
    (dict(succ_indptr=[0.0, 1.0], succ_indices=[0]), "succ_indptr: expected a 1-D integer"),
    (dict(succ_indptr=[[0, 0]], succ_indices=[]), "succ_indptr: expected a 1-D integer"),
    (dict(succ_indptr=[], succ_indices=[]), "succ_indptr: .*empty"),
    (dict(succ_indptr=[0, 2, 1], succ_indices=[1]), "succ_indptr: must start at 0"),
    (dict(succ_indptr=[1, 1], succ_indices=[]), "succ_indptr: must start at 0"),
    (dict(succ_indptr=[0, 1, 1], succ_indices=[2]), r"succ_indices: value 2 .* outside"),
    (dict(succ_indptr=[0, 1, 1], succ_indices=[-1]), r"succ_indices: value -1"),
    (dict(succ_indptr=[0, 1, 1], succ_indices=["a"]), "succ_indices: expected"),
    (dict(succ_indptr=[0, 0, 0], succ_indices=[], priority=[1]), r"priority: .*\(2,\)"),
    (dict(succ_indptr=[0, 0], succ_indices=[], priority=[2**63]), "priority: value"),
    (dict(succ_indptr=[0, 1, 2], succ_indices=[1, 0]), "the graph has a cycle"),
    (dict(succ_indptr=[0, 1], succ_indices=[0]), "the graph has a cycle"),
]


@pytest.mark.parametrize("kwargs, message", BAD_LOADS)
def test_bad_graphs_are_value_errors(impl, kwargs, message):
    with pytest.raises(ValueError, match=message):
        impl.ReadyEngine(**kwargs)


BAD_CALLS = [
    (lambda e: e.complete(0), "cannot complete vertex 0: it is ready, not running"),
    (lambda e: e.complete(5), r"vertex: 5 is outside \[0, 3\)"),
    (lambda e: e.complete(True), "vertex: expected an integer"),
    (lambda e: e.complete("0"), "vertex: expected an integer"),
    (lambda e: e.complete_many([0, 3]), r"vertices: value 3 at index 1 is outside \[0, 2\]"),
    (lambda e: e.complete_many(np.array([-1], np.int32)), "vertices: value -1 at index 0"),
    (lambda e: e.complete_many([[0]]), "vertices: expected a 1-D integer array"),
    (lambda e: e.complete_many([0.5]), "vertices: expected a 1-D integer array"),
    (lambda e: e.complete_many([1, 1]), "cannot complete vertex 1: it is waiting"),
    (lambda e: e.pop_ready(-1), "n: expected an integer >= 0"),
    (lambda e: e.pop_ready(1.5), "n: expected an integer"),
    (lambda e: e.fail(1), "cannot fail vertex 1: it is waiting, not running"),
    (lambda e: e.invalidate(-1), r"vertex: -1 is outside"),
    (lambda e: e.state_of(3), r"vertex: 3 is outside"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS)
def test_bad_calls_are_value_errors_and_change_nothing(impl, call, message):
    e = engine(impl, 3, [(0, 1), (1, 2)])
    before = (e.state.tolist(), e.remaining.tolist(), e.counts)
    with pytest.raises(ValueError, match=message):
        call(e)
    assert (e.state.tolist(), e.remaining.tolist(), e.counts) == before


def test_a_repeated_vertex_in_a_batch_is_refused_and_nothing_changes(impl):
    e = engine(impl, 3, [])
    e.pop_ready(3)
    with pytest.raises(ValueError, match="vertices: vertex 1 appears twice"):
        e.complete_many(np.array([0, 1, 2, 1], np.int32))
    assert e.counts == (0, 0, 3, 0, 0)
    assert e.complete_many([2, 1, 0]).tolist() == []


def test_the_engine_keeps_its_own_copy_of_the_graph(impl):
    indptr, indices = successors(3, [(0, 1), (1, 2)])
    e = impl.ReadyEngine(indptr, indices)
    indices[:] = 10**6  # would be out of range if the engine still read it
    e.pop_ready()
    assert e.complete(0).tolist() == [1]


# ---- compiled == reference, step by step ------------------------------------------------

def check_invariants(e, dag: Dag) -> None:
    state, remaining = e.state, e.remaining
    missing = np.zeros(dag.n, np.int64)
    for s, d in dag.edges:
        missing[d] += state[s] != DONE
    assert remaining.tolist() == missing.tolist()
    active = (state == READY) | (state == RUNNING)
    assert (remaining[active] == 0).all()
    assert (remaining[state == WAITING] > 0).all()
    assert list(e.counts) == np.bincount(state, minlength=5).tolist()


def assert_same(a, b) -> None:
    assert a.state.tolist() == b.state.tolist()
    assert a.remaining.tolist() == b.remaining.tolist()
    assert a.failures.tolist() == b.failures.tolist()
    assert a.counts == b.counts and a.finished == b.finished


def both_do(a, b, method: str, *args):
    """Call ``method`` on both engines; they must return or raise the same."""
    outcomes = []
    for e in (a, b):
        try:
            result = getattr(e, method)(*args)
            outcomes.append(("ok", None if result is None else result.tolist()))
        except ValueError as error:
            outcomes.append(("error", str(error)))
    assert outcomes[0] == outcomes[1], (method, args)
    return outcomes[0]


OPERATIONS = ("pop", "complete", "complete_one", "fail", "give_up", "invalidate",
              "invalidate_many", "bad_batch")


def random_step(a, b, n: int, data) -> None:
    op = data.draw(st.sampled_from(OPERATIONS))
    running = np.flatnonzero(b.state == RUNNING).tolist()
    if op == "pop":
        both_do(a, b, "pop_ready", data.draw(st.integers(0, n + 1)))
    elif op == "complete" and running:
        chosen = data.draw(st.lists(st.sampled_from(running), unique=True))
        both_do(a, b, "complete_many", np.array(chosen, np.int32))
    elif op == "complete_one" and running:
        both_do(a, b, "complete", data.draw(st.sampled_from(running)))
    elif op in ("fail", "give_up") and running:
        both_do(a, b, "fail", data.draw(st.sampled_from(running)), op == "fail")
    elif op == "invalidate" and n:
        both_do(a, b, "invalidate", data.draw(st.integers(0, n - 1)))
    elif op == "invalidate_many" and n:
        both_do(a, b, "invalidate_many", data.draw(st.lists(st.integers(0, n - 1))))
    elif op == "bad_batch" and n:
        batch = data.draw(st.lists(st.integers(-1, n), max_size=4))
        both_do(a, b, "complete_many", batch)


def run_to_completion(a, b, dag: Dag) -> None:
    """Pop everything ready and complete it, re-arming failed vertices, until done."""
    for _ in range(4 * dag.n + 4):
        if b.finished:
            break
        failed = np.flatnonzero(b.state == FAILED)
        both_do(a, b, "invalidate_many", failed.astype(np.int32))
        running = np.flatnonzero(b.state == RUNNING)
        both_do(a, b, "complete_many", running.astype(np.int32))
        popped = both_do(a, b, "pop_ready", dag.n)[1]
        for v in popped:  # a vertex starts only when every parent is done
            assert all(b.state_of(p) == DONE for p in dag.parents(v))
        check_invariants(a, dag)
    assert a.finished and b.finished


@settings(max_examples=150, deadline=None)
@given(dag=dags(), data=st.data())
def test_compiled_matches_reference_after_every_step(dag, data):
    compiled, reference = both()
    indptr, indices = successors(dag.n, dag.edges)
    use_default = data.draw(st.booleans())
    priority = None if use_default else data.draw(
        st.lists(st.integers(-3, 3), min_size=dag.n, max_size=dag.n))
    a = compiled.ReadyEngine(indptr, indices, priority)
    b = reference.ReadyEngine(indptr, indices, priority)
    assert a.priority.tolist() == b.priority.tolist()
    for _ in range(data.draw(st.integers(0, 30))):
        random_step(a, b, dag.n, data)
        assert_same(a, b)
        check_invariants(a, dag)
        check_invariants(b, dag)
    run_to_completion(a, b, dag)


@settings(max_examples=40, deadline=None)
@given(dag=dags(max_vertices=30, max_edges=80))
def test_longest_path_priority_agrees(dag):
    compiled, reference = both()
    indptr, indices = successors(dag.n, dag.edges)
    assert compiled.longest_path_priority(indptr, indices).tolist() == \
        reference.longest_path_priority(indptr, indices).tolist()


@settings(max_examples=30, deadline=None)
@given(dag=dags(max_vertices=40, max_edges=120), batch=st.integers(1, 8))
def test_batched_runs_agree_in_order(dag, batch):
    """Pop in batches and complete them: the same vertices in the same order."""
    compiled, reference = both()
    indptr, indices = successors(dag.n, dag.edges)
    a, b = compiled.ReadyEngine(indptr, indices), reference.ReadyEngine(indptr, indices)
    order = []
    while not b.finished:
        popped = both_do(a, b, "pop_ready", batch)[1]
        order += popped
        both_do(a, b, "complete_many", popped)
    assert sorted(order) == list(range(dag.n))


def random_dag_with_hubs(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random DAG, 4 edges a vertex, where a few vertices have rows longer
    than the compiled engine copies in one block, and some exactly that long."""
    dst = rng.integers(1, n, 4 * n)
    src = (rng.random(dst.shape[0]) * dst).astype(np.int64)
    hubs = np.repeat(np.arange(12), [40, 9, 8, 7, 30, 9, 8, 64, 1, 8, 9, 16])
    hub_dst = hubs + 1 + (rng.random(hubs.shape[0]) * (n - hubs - 1)).astype(np.int64)
    rows, cols = np.concatenate([src, hubs]), np.concatenate([dst, hub_dst])
    order = rng.permutation(n)  # ids that are not a topological order
    return csr(n, order[rows], order[cols])


def test_large_graphs_agree_whatever_order_batches_are_completed_in():
    """Pop batches of every size; complete a shuffled half, then the rest in reverse
    (not the order they were popped in), sometimes with a vertex re-run."""
    compiled, reference = both()
    rng = np.random.default_rng(11)
    indptr, indices = random_dag_with_hubs(3000, rng)
    a, b = compiled.ReadyEngine(indptr, indices), reference.ReadyEngine(indptr, indices)
    while not b.finished:
        popped = both_do(a, b, "pop_ready", int(rng.integers(1, 400)))[1]
        shuffled = [popped[i] for i in rng.permutation(len(popped))]
        half = len(shuffled) // 2
        both_do(a, b, "complete_many", np.array(shuffled[:half], np.int32))
        if half and rng.random() < 0.2:
            both_do(a, b, "invalidate", shuffled[0])
        both_do(a, b, "complete_many", np.array(shuffled[half:][::-1], np.int32))
        assert_same(a, b)


def test_large_graphs_agree_when_batches_are_completed_as_popped():
    compiled, reference = both()
    rng = np.random.default_rng(12)
    indptr, indices = random_dag_with_hubs(5000, rng)
    priority = rng.integers(0, 50, 5000)  # large buckets, ties broken by the stacks
    a = compiled.ReadyEngine(indptr, indices, priority)
    b = reference.ReadyEngine(indptr, indices, priority)
    while not b.finished:
        popped = both_do(a, b, "pop_ready", 256)[1]
        both_do(a, b, "complete_many", np.array(popped, np.int32))
    assert_same(a, b)


def test_threads_sharing_an_engine_get_errors_not_corruption():
    """Two threads drive one compiled engine without a lock: a call that meets a batch
    running without the GIL raises RuntimeError, and the books stay consistent."""
    import threading

    compiled = implementation("compiled")
    n = 20_000
    dag = Dag(n, [(v, v + 1) for v in range(n - 1)] + [(v, v + 2) for v in range(n - 2)])
    e = compiled.ReadyEngine(*successors(n, dag.edges), priority=np.zeros(n, np.int64))
    refused = []

    def drive():
        while not e.finished:
            try:
                ready = e.pop_ready(64)
            except RuntimeError:
                refused.append("pop")
                continue
            while True:
                try:
                    e.complete_many(ready)
                    break
                except RuntimeError:
                    refused.append("complete")

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert e.finished
    check_invariants(e, dag)
