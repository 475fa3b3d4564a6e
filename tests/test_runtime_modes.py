"""The three ways to run a plan give the same results (DESIGN.md section 4).

* inline: ``run(..., inline=True)``, vertex by vertex in this process;
* embedded default: ``run(..., workers=2)``, local ``serpytor server`` children;
* ``--servers``: ``run(..., servers=[...])`` on servers started once for the session.

Checked on the example pipelines, on the dependency-injection fixture and on random
DAGs from ``serpytor.testing.context_graphs`` whose vertices return their inputs and
context (``serpytor.testing.collect``); each vertex's context must equal the compiler's
precomputation ``plan.static_context``. Also: RunResult counts and ``--output json``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from runtime_helpers import (CORPUS, EXAMPLES, MODES, fixture_pipeline, run_cli, run_in_mode,
                             shared_servers)

import serpytor
from serpytor.runtime.api import run
from serpytor.testing import context_graphs, direct_context, to_spg, vertex_name


@pytest.fixture(scope="module")
def servers(request):
    return shared_servers(request.config)


@pytest.fixture(autouse=True)
def _absolute_corpus(monkeypatch):
    # the example reads env("CORPUS") when it compiles; make it independent of the cwd
    monkeypatch.setenv("CORPUS", str(CORPUS))


run_mode = run_in_mode


@pytest.fixture(params=MODES)
def mode_runner(request, servers):
    """A function running a pipeline in the parametrized mode. (``servers`` is
    requested statically, so the shared servers start before conftest's leak check.)"""
    mode = request.param
    return lambda pipeline, **options: run_mode(pipeline, mode, servers, **options)


# ---- the examples ------------------------------------------------------------------------
EXAMPLE_NAMES = ("wordcount", "average", "average_accumulator")


@pytest.fixture(scope="module")
def inline_results():
    """Inline results of each example, the reference for the other modes."""
    cache: dict[str, Any] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = run(EXAMPLES / f"{name}.spg", inline=True, journal=False)
        return cache[name]

    return get


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
@pytest.mark.parametrize("mode", ("embedded", "servers"))
def test_examples_give_the_inline_results(example, mode, inline_results, servers):
    expected = inline_results(example)
    result = run_mode(EXAMPLES / f"{example}.spg", mode, servers)
    assert result.outputs == expected.outputs
    assert result.error is None
    plan = serpytor.compile_file(EXAMPLES / f"{example}.spg")
    assert result.stats["vertices"] == result.stats["executed"] == plan.n_vertices
    assert {r.status for r in result.vertices.values()} == {"executed"}


def test_wordcount_inline_outputs_are_the_word_counts(inline_results):
    """The reference itself is right: counts computed directly from the corpus."""
    from collections import Counter

    counts = Counter(CORPUS.read_text(encoding="utf-8").lower().split())
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:20]
    outputs = inline_results("wordcount").outputs
    assert set(outputs) == {"audit", "archive"}  # the sinks
    assert outputs["audit"] == {"owner": "analytics", "words": 20,
                                "total": sum(c for _, c in top)}
    word, count = top[0]
    assert outputs["archive"] == f"analytics: most frequent word is {word!r} ({count} times)".upper()


@pytest.mark.parametrize("example", ("average", "average_accumulator"))
def test_average_examples_compute_the_mean(example, inline_results):
    from examples.average import numbers

    values = [x for p in range(16) for x in numbers(p, 16, count=200000)]
    assert inline_results(example).outputs["mean"] == pytest.approx(sum(values) / len(values))


# ---- random DAGs ------------------------------------------------------------------------
def contexts_seen(outputs: dict[str, Any]) -> dict[str, dict]:
    """{vertex: context it saw}, walking each sink's nested inputs (every vertex of a
    generated DAG is an ancestor of a sink, or a sink)."""
    seen: dict[str, dict] = {}
    stack = list(outputs.items())
    while stack:
        name, value = stack.pop()
        if name in seen:
            continue
        seen[name] = value["context"]
        stack.extend(value["inputs"].items())
    return seen


def check_against_plan(graph, plan, outputs) -> None:
    """Each vertex saw the compiled context, which is also the direct evaluation of the
    rules; each sink got exactly its parents' outputs; the outputs are the sinks'."""
    seen = contexts_seen(outputs)
    assert set(seen) == set(plan.names)
    rules = direct_context(graph)
    for v in range(plan.n_vertices):
        name = plan.vertex_name(v)
        assert seen[name] == plan.static_context(v), name
        by_rules = {key: next(iter(facts))[1] for key, facts in rules[int(name[1:])].items()}
        assert seen[name] == by_rules, name
    for v in range(graph.n):
        parents = {vertex_name(p) for p in graph.parents(v)}
        children = [b for a, b in graph.edges if a == v]
        if not children:
            assert set(outputs[vertex_name(v)]["inputs"]) == parents
    sinks = {vertex_name(v) for v in range(graph.n) if not any(a == v for a, _ in graph.edges)}
    assert set(outputs) == sinks


DAGS = context_graphs(max_vertices=12, allow_conflicts=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DAGS)
def test_inline_contexts_match_the_compiled_contexts(graph):
    plan = serpytor.compile(to_spg(graph))
    result = run(plan, inline=True, journal=False)
    check_against_plan(graph, plan, result.outputs)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(graph=DAGS)
def test_servers_match_inline_on_random_dags(servers, graph):
    plan = serpytor.compile(to_spg(graph))
    expected = run(plan, inline=True, journal=False)
    result = run_mode(plan, "servers", servers)
    assert result.outputs == expected.outputs
    check_against_plan(graph, plan, result.outputs)


@settings(max_examples=2, deadline=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(context_graphs(max_vertices=12, allow_conflicts=False).filter(lambda g: g.n >= 6))
def test_embedded_matches_inline_on_random_dags(graph):
    plan = serpytor.compile(to_spg(graph))
    expected = run(plan, inline=True, journal=False)
    result = run_mode(plan, "embedded")
    assert result.outputs == expected.outputs
    check_against_plan(graph, plan, result.outputs)


# ---- dependency injection -------------------------------------------------------------------
SOURCES = ["src0/3", "src1/3", "src2/3"]
SINGLES = [{"source": s, "partition": i} for i, s in enumerate(SOURCES)]


def test_dependency_injection(mode_runner):
    """A parent's name: its output, a list in partition order for >> (or when several
    replicas feed the vertex), one value for =>; ``inputs``; ``partition`` and
    ``partitions``; positional and keyword DSL arguments; ``**kwargs``."""
    outputs = mode_runner(fixture_pipeline("inject")).outputs
    assert outputs == {
        "everything": {"gather": SOURCES, "single": SINGLES},
        "arguments": {"first": 10, "second": 20, "scale": 1, "label": "L"},
        "mixed": {"single": SINGLES, "factor": 5},
        "narrow[0]": {"source": ["src0/3", "src2/3"], "partition": 0},
        "narrow[1]": {"source": "src1/3", "partition": 1},
        "kw": {"gather": SOURCES},
    }


# ---- what a run reports -------------------------------------------------------------------
def test_run_result_counts(mode_runner):
    plan = serpytor.compile_file(EXAMPLES / "average.spg")
    result = mode_runner(plan)
    assert set(result.vertices) == set(plan.names)
    assert result.stats["vertices"] == plan.n_vertices == 21
    assert result.stats["executed"] == result.count("executed") == 21
    assert result.stats["reused"] == result.stats["failed_attempts"] == 0
    assert result.stats["seconds"] > 0
    assert all(r.seconds >= 0 and r.status == "executed" for r in result.vertices.values())
    assert result["mean"] == result.outputs["mean"]


def test_output_json_shape(tmp_path):
    done = run_cli("run", EXAMPLES / "average.spg", "--inline", "--journal", tmp_path / "j",
                   "--output", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"outputs", "stats"}
    assert set(data["outputs"]) == {"mean"} and isinstance(data["outputs"]["mean"], float)
    assert set(data["stats"]) == {"vertices", "executed", "reused", "failed_attempts", "seconds"}
    assert (data["stats"]["vertices"], data["stats"]["executed"], data["stats"]["reused"],
            data["stats"]["failed_attempts"]) == (21, 21, 0, 0)
    assert isinstance(data["stats"]["seconds"], float)


def test_output_json_of_wordcount():
    """wordcount's sinks are a dict and a str: both are JSON values as they are."""
    done = run_cli("run", EXAMPLES / "wordcount.spg", "--inline", "--no-journal",
                   "--output", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data["outputs"]) == {"audit", "archive"}
    assert data["outputs"]["audit"]["owner"] == "analytics"
    assert data["stats"]["executed"] == 21


# ---- numpy outputs -----------------------------------------------------------------------
def test_numpy_outputs_cross_processes_intact(mode_runner):
    """arrays.spg: four 1.6 MB arrays, gathered all-to-all by two vertices."""
    import numpy as np

    outputs = mode_runner(fixture_pipeline("arrays")).outputs
    expected = np.stack([np.arange(200_000, dtype=np.float64) * (p + 1) for p in range(4)])
    assert outputs["total"] == float(expected.sum())
    assert outputs["stack"].dtype == np.float64
    np.testing.assert_array_equal(outputs["stack"], expected)
