"""Golden tests of the compiler: every construct becomes the vertices, edges, channels,
groups and combiner trees it should (DESIGN.md section 2, README "A tour of the
language"), and the Plan API answers questions about them.

The module ``spg_test_missing.mod`` does not exist, so these pipelines skip the
dependency-injection check (tested in tests/test_compiler_errors.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import serpytor
from serpytor import ChannelKind, EdgeKind, VertexFlag

ROOT = Path(__file__).resolve().parent.parent
WORDCOUNT = ROOT / "examples" / "wordcount.spg"
H = "pipeline p\nuse spg_test_missing.mod as m\n"


def plan_of(body: str) -> serpytor.Plan:
    return serpytor.compile(H + body)


def edge_set(plan) -> set[tuple[str, str]]:
    return {(src, dst) for src, dst, _ in plan.edges()}


def channels(plan) -> dict[tuple[str, str], ChannelKind]:
    return {(src, dst): channel for src, dst, channel in plan.edges()}


def preds(plan, name: str) -> list[str]:
    return [plan.names[int(v)] for v in plan.predecessors(plan.index_of(name))]


def succs(plan, name: str) -> list[str]:
    return [plan.names[int(v)] for v in plan.successors(plan.index_of(name))]


def assert_topological(plan) -> None:
    order = plan.topological_order()
    assert sorted(order) == sorted(plan.names)
    position = {name: i for i, name in enumerate(order)}
    for src, dst, _ in plan.edges():
        assert position[src] < position[dst], (src, dst)


# ---- vertices ---------------------------------------------------------------------
def test_stage_replicas_are_named_by_index():
    plan = plan_of("stage s = m.f x 4\nnode n = m.g\n")
    assert plan.names == ["s[0]", "s[1]", "s[2]", "s[3]", "n"]
    assert plan.vertex_partition.tolist() == [0, 1, 2, 3, 0]
    assert [t["width"] for t in plan.templates] == [4, 1]
    assert [t["kind"] for t in plan.templates] == ["stage", "node"]
    assert plan.n_vertices == 5 and plan.n_edges == 0


def test_stage_x_1_is_still_indexed():
    plan = plan_of("stage s = m.f x 1\n")
    assert plan.names == ["s[0]"]


def test_index_of():
    plan = plan_of("stage s = m.f x 3\nnode n = m.g\n")
    assert [plan.index_of(name) for name in plan.names] == list(range(4))
    assert plan.index_of("s[2]") == 2
    assert plan.index_of("n") == 3
    for missing in ("s[3]", "s", "nope", "nope[0]"):
        with pytest.raises(KeyError):
            plan.index_of(missing)


def test_functions_arguments_and_options_are_recorded():
    plan = plan_of(
        'node a = m.f(1, "two", k = [3], opts = {x: null})\n'
        "node b = m.Outer.method volatile timeout 2.5\n"
        "node c = m.g timeout 30\n"
    )
    a, b, c = plan.templates
    assert (a["module"], a["function"]) == ("spg_test_missing.mod", "f")
    assert a["arguments"] == [[None, 1], [None, "two"], ["k", [3]], ["opts", {"x": None}]]
    assert b["function"] == "Outer.method"
    assert plan.flags(plan.index_of("b")) & VertexFlag.VOLATILE
    assert not plan.flags(plan.index_of("a")) & VertexFlag.VOLATILE
    assert (a["timeout"], b["timeout"], c["timeout"]) == (None, 2.5, 30.0)


def test_use_default_alias_is_the_last_module_part():
    plan = serpytor.compile("pipeline p\nuse spg_test_missing.deep.words\nnode n = words.count\n")
    assert (plan.templates[0]["module"], plan.templates[0]["function"]) == (
        "spg_test_missing.deep.words", "count")


def test_env_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SPG_TEST_CORPUS", "/data/corpus.txt")
    monkeypatch.delenv("SPG_TEST_UNSET", raising=False)
    plan = plan_of(
        'context { corpus = env("SPG_TEST_CORPUS", "default.txt")\n'
        '          fallback = env("SPG_TEST_UNSET", 7)\n'
        '          nested = [env("SPG_TEST_CORPUS"), {d: env("SPG_TEST_UNSET", false)}] }\n'
        'node a = m.f(path = env("SPG_TEST_CORPUS", "x"))\n'
    )
    assert plan.static_context(0) == {
        "corpus": "/data/corpus.txt", "fallback": 7,
        "nested": ["/data/corpus.txt", {"d": False}]}
    assert plan.templates[0]["arguments"] == [["path", "/data/corpus.txt"]]


def test_env_with_an_explicit_null_default(monkeypatch):
    """``env("NAME", null)`` has a default: null. Only ``env("NAME")`` has none."""
    monkeypatch.delenv("SPG_TEST_UNSET", raising=False)
    plan = plan_of('context { k = env("SPG_TEST_UNSET", null) }\nnode a = m.f\n')
    assert plan.static_context(0) == {"k": None}


# ---- edges ------------------------------------------------------------------------
def test_plain_edge_between_nodes():
    plan = plan_of("node a = m.f\nnode b = m.f\na -> b\n")
    assert list(plan.edges()) == [("a", "b", ChannelKind.AUTO)]
    assert plan.edge_kind(0) is EdgeKind.PLAIN


def test_plain_edge_fans_out_and_in_when_one_side_is_a_node():
    plan = plan_of("node a = m.f\nstage s = m.f x 3\nnode z = m.f\na -> s\ns -> z\n")
    assert edge_set(plan) == {("a", "s[0]"), ("a", "s[1]"), ("a", "s[2]"),
                              ("s[0]", "z"), ("s[1]", "z"), ("s[2]", "z")}


def test_pointwise_equal_widths():
    plan = plan_of("stage a = m.f x 3\nstage b = m.f x 3\na => b\n")
    assert edge_set(plan) == {("a[0]", "b[0]"), ("a[1]", "b[1]"), ("a[2]", "b[2]")}
    assert {plan.edge_kind(e) for e in range(plan.n_edges)} == {EdgeKind.POINTWISE}


def test_pointwise_2_to_3_is_round_robin():
    # a[i % 2] -> b[i % 3] for i < 3
    plan = plan_of("stage a = m.f x 2\nstage b = m.f x 3\na => b\n")
    assert edge_set(plan) == {("a[0]", "b[0]"), ("a[1]", "b[1]"), ("a[0]", "b[2]")}
    assert plan.n_edges == 3


def test_pointwise_3_to_2_is_round_robin():
    # a[i % 3] -> b[i % 2] for i < 3
    plan = plan_of("stage a = m.f x 3\nstage b = m.f x 2\na => b\n")
    assert edge_set(plan) == {("a[0]", "b[0]"), ("a[1]", "b[1]"), ("a[2]", "b[0]")}


def test_pointwise_1_to_4_and_4_to_1():
    plan = plan_of("stage a = m.f x 1\nstage b = m.f x 4\nnode c = m.f\na => b\nb => c\n")
    assert edge_set(plan) == {("a[0]", f"b[{i}]") for i in range(4)} | \
        {(f"b[{i}]", "c") for i in range(4)}


def test_all_to_all():
    plan = plan_of("stage a = m.f x 2\nstage b = m.f x 3\na >> b\n")
    assert edge_set(plan) == {(f"a[{i}]", f"b[{j}]") for i in range(2) for j in range(3)}
    assert {plan.edge_kind(e) for e in range(plan.n_edges)} == {EdgeKind.ALL}


def test_chain_of_edges():
    plan = plan_of("node a = m.f\nnode b = m.f\nnode c = m.f\na -> b -> c\n")
    assert edge_set(plan) == {("a", "b"), ("b", "c")}


def test_chain_with_mixed_operators():
    plan = plan_of("stage r = m.f x 2\nstage c = m.f x 2\nnode g = m.f\nnode o = m.f\n"
                   "r => c >> g -> o\n")
    assert edge_set(plan) == {("r[0]", "c[0]"), ("r[1]", "c[1]"), ("c[0]", "g"),
                              ("c[1]", "g"), ("g", "o")}


def test_an_edge_declared_twice_is_kept_once():
    plan = plan_of("node a = m.f\nnode b = m.f\na -> b\na -> b\na >> b\n")
    assert list(plan.edges()) == [("a", "b", ChannelKind.AUTO)]


def test_successors_and_predecessors():
    plan = plan_of("node a = m.f\nstage s = m.f x 3\nnode z = m.f\nz -> a\na -> s\n")
    assert succs(plan, "a") == ["s[0]", "s[1]", "s[2]"]
    assert preds(plan, "a") == ["z"]
    assert preds(plan, "s[1]") == ["a"]
    assert succs(plan, "s[1]") == [] and preds(plan, "z") == []
    assert plan.sinks().tolist() == [plan.index_of(f"s[{i}]") for i in range(3)]


def test_predecessors_are_in_partition_order():
    plan = plan_of("stage s = m.f x 5\nnode n = m.f\ns >> n\n")
    assert preds(plan, "n") == [f"s[{i}]" for i in range(5)]


# ---- channels ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["shm", "tcp", "file", "auto"])
def test_channel_hint(kind):
    plan = plan_of(f"node a = m.f\nnode b = m.f\na -> b [channel = {kind}]\n")
    assert list(plan.edges()) == [("a", "b", ChannelKind[kind.upper()])]


def test_channel_hint_applies_to_every_edge_of_the_chain_only():
    plan = plan_of("node a = m.f\nnode b = m.f\nnode c = m.f\nnode d = m.f\n"
                   "a -> b -> c [channel = file]\nc -> d\n")
    assert channels(plan) == {("a", "b"): ChannelKind.FILE, ("b", "c"): ChannelKind.FILE,
                              ("c", "d"): ChannelKind.AUTO}


def test_shm_puts_both_ends_in_one_gang():
    plan = plan_of("node a = m.f\nnode b = m.f\nnode c = m.f\nnode d = m.f\nnode e = m.f\n"
                   "a -> b [channel = shm]\nb -> c [channel = tcp]\nd -> e [channel = shm]\n")
    gang = {name: int(plan.vertex_gang[plan.index_of(name)]) for name in plan.names}
    assert gang["a"] == gang["b"] >= 0
    assert gang["d"] == gang["e"] >= 0
    assert gang["a"] != gang["d"]
    assert gang["c"] == -1


def test_shm_gangs_are_transitive_through_stages():
    plan = plan_of("stage a = m.f x 2\nstage b = m.f x 2\nnode c = m.f\nnode lone = m.f\n"
                   "a => b [channel = shm]\nb -> c [channel = shm]\n")
    gangs = plan.vertex_gang.tolist()
    in_gang = [gangs[plan.index_of(n)] for n in ("a[0]", "a[1]", "b[0]", "b[1]", "c")]
    assert len(set(in_gang)) == 1 and in_gang[0] >= 0
    assert gangs[plan.index_of("lone")] == -1


def test_no_shm_no_gangs():
    plan = plan_of("node a = m.f\nnode b = m.f\na -> b [channel = tcp]\n")
    assert plan.vertex_gang.tolist() == [-1, -1]


# ---- groups -----------------------------------------------------------------------
def test_groups_are_recorded_per_vertex():
    plan = plan_of("node a = m.f\nstage s = m.f x 2\nnode b = m.f\nnode c = m.f\n"
                   "a -> s\ns -> b\ngroup first { a, s }\ngroup second { c }\n")
    assert [(g["name"], g["members"]) for g in plan.groups] == [("first", [0, 1]),
                                                                  ("second", [3])]
    group = {name: int(plan.vertex_group[plan.index_of(name)]) for name in plan.names}
    assert group == {"a": 0, "s[0]": 0, "s[1]": 0, "b": -1, "c": 1}


def test_edges_inside_a_group_are_allowed():
    plan = plan_of("node a = m.f\nnode b = m.f\nnode c = m.f\na -> b -> c\ngroup g { a, b, c }\n")
    assert edge_set(plan) == {("a", "b"), ("b", "c")}
    assert_topological(plan)


# ---- aggregation trees ------------------------------------------------------------
def aggregate_plan(width: int, options: str) -> serpytor.Plan:
    return plan_of(f"stage s = m.f x {width}\nnode r = m.final aggregate({options})\n"
                   "node after = m.f\ns >> r\nr -> after\n")


def template(plan, name: str) -> dict:
    return next(t for t in plan.templates if t["name"] == name)


def test_combine_without_a_tree_when_fan_in_suffices():
    plan = aggregate_plan(8, "combine = m.c")
    assert plan.names == [f"s[{i}]" for i in range(8)] + ["r", "after"]
    assert preds(plan, "r") == [f"s[{i}]" for i in range(8)]
    assert plan.flags(plan.index_of("r")) & VertexFlag.AGG_ROOT


def test_combine_tree_two_levels():
    """5 inputs, fan_in 2::

        s[0] s[1]  s[2] s[3]  s[4]
           \\ /       \\ /      |
          r@1[0]    r@1[1]   r@1[2]        combine
               \\    /         |
               r@2[0]       r@2[1]         combine
                    \\       /
                        r                  final reduce (m.final)
    """
    plan = aggregate_plan(5, "combine = m.c, fan_in = 2")
    assert plan.names == ["s[0]", "s[1]", "s[2]", "s[3]", "s[4]", "r", "after",
                          "r@1[0]", "r@1[1]", "r@1[2]", "r@2[0]", "r@2[1]"]
    assert edge_set(plan) == {
        ("s[0]", "r@1[0]"), ("s[1]", "r@1[0]"), ("s[2]", "r@1[1]"), ("s[3]", "r@1[1]"),
        ("s[4]", "r@1[2]"),
        ("r@1[0]", "r@2[0]"), ("r@1[1]", "r@2[0]"), ("r@1[2]", "r@2[1]"),
        ("r@2[0]", "r"), ("r@2[1]", "r"), ("r", "after"),
    }
    assert preds(plan, "r") == ["r@2[0]", "r@2[1]"]  # the root's parents: the top level
    for level, width in ((1, 3), (2, 2)):
        t = template(plan, f"r@{level}")
        assert (t["kind"], t["width"], t["role"], t["function"]) == ("combiner", width,
                                                                    "combine", "c")
        assert plan.templates[t["serves"]]["name"] == "r"
        assert t["inject_as"] == "s"
    assert template(plan, "r")["function"] == "final"
    for name in ("r@1[0]", "r@2[1]"):
        assert plan.flags(plan.index_of(name)) == VertexFlag.COMBINER
    assert plan.flags(plan.index_of("r")) & VertexFlag.AGG_ROOT
    assert_topological(plan)


def test_combine_tree_default_fan_in_is_8():
    plan = aggregate_plan(20, "combine = m.c")
    assert template(plan, "r@1")["width"] == 3  # 8 + 8 + 4
    assert not any(t["name"] == "r@2" for t in plan.templates)
    assert preds(plan, "r") == ["r@1[0]", "r@1[1]", "r@1[2]"]
    assert preds(plan, "r@1[2]") == [f"s[{i}]" for i in range(16, 20)]


def test_iterator_form_always_has_an_initial_level():
    """initial_reduce runs on each input first, even when the fan-in is small::

        s[0] s[1] s[2]
           \\  |  /
            r@1[0]        initial (initial_reduce, then combine)
              |
              r
    """
    plan = aggregate_plan(3, "initial_reduce = m.i, combine = m.c")
    assert edge_set(plan) == {("s[0]", "r@1[0]"), ("s[1]", "r@1[0]"), ("s[2]", "r@1[0]"),
                              ("r@1[0]", "r"), ("r", "after")}
    t = template(plan, "r@1")
    assert (t["width"], t["role"], t["function"]) == (1, "initial", "i")
    assert plan.flags(plan.index_of("r@1[0]")) == VertexFlag.COMBINER | VertexFlag.INITIAL


def test_iterator_form_upper_levels_combine():
    plan = aggregate_plan(5, "initial_reduce = m.i, combine = m.c, fan_in = 2")
    first, second = template(plan, "r@1"), template(plan, "r@2")
    assert (first["width"], first["role"], first["function"]) == (3, "initial", "i")
    assert (second["width"], second["role"], second["function"]) == (2, "combine", "c")
    assert preds(plan, "r") == ["r@2[0]", "r@2[1]"]
    assert plan.flags(plan.index_of("r@2[0]")) == VertexFlag.COMBINER


def test_accumulator_form():
    """16 inputs, fan_in 3: 6 accumulators (iterate), 2 merges, then the root."""
    plan = aggregate_plan(16, "initialize = m.init, iterate = m.it, merge = m.mg, fan_in = 3")
    first, second = template(plan, "r@1"), template(plan, "r@2")
    assert (first["width"], first["role"], first["function"]) == (6, "initial", "it")
    assert (second["width"], second["role"], second["function"]) == (2, "combine", "mg")
    assert preds(plan, "r") == ["r@2[0]", "r@2[1]"]
    assert preds(plan, "r@2[0]") == ["r@1[0]", "r@1[1]", "r@1[2]"]
    assert preds(plan, "r@2[1]") == ["r@1[3]", "r@1[4]", "r@1[5]"]
    assert preds(plan, "r@1[5]") == ["s[15]"]
    assert template(plan, "r")["aggregate"] == {
        "form": "accumulator", "fan_in": 3,
        "functions": {"initialize": ["spg_test_missing.mod", "init"],
                      "iterate": ["spg_test_missing.mod", "it"],
                      "merge": ["spg_test_missing.mod", "mg"]}}


def test_accumulator_with_small_fan_in_keeps_one_initial_level():
    plan = aggregate_plan(4, "initialize = m.init, iterate = m.it, merge = m.mg")
    assert preds(plan, "r") == ["r@1[0]"]
    assert template(plan, "r@1")["role"] == "initial"


@pytest.mark.parametrize("form", ["combine = m.c", "initial_reduce = m.i, combine = m.c",
                                  "initialize = m.a, iterate = m.b, merge = m.d"])
@pytest.mark.parametrize("width, fan_in", [(1, 2), (2, 2), (7, 2), (9, 3), (27, 3), (40, 8),
                                           (65, 8)])
def test_every_combiner_tree_is_a_tree(form, width, fan_in):
    """Whatever the shape: every vertex of the tree takes at most fan_in inputs, every
    input reaches the root along exactly one path, and partition order is kept."""
    plan = aggregate_plan(width, f"{form}, fan_in = {fan_in}")
    root = plan.index_of("r")
    assert len(plan.predecessors(root)) <= fan_in
    tree = [v for v in range(plan.n_vertices) if plan.vertex_template(v)["kind"] == "combiner"]
    leaves_in_order = []
    for v in tree:
        assert 1 <= len(plan.predecessors(v)) <= fan_in
        assert len(plan.successors(v)) == 1
    for i in range(width):
        path, v = [], plan.index_of(f"s[{i}]")
        while v != root:
            (v,) = plan.successors(v).tolist()
            path.append(v)
        leaves_in_order.append(path[0])
    assert leaves_in_order == sorted(leaves_in_order)
    assert_topological(plan)


def test_combiner_names_follow_node_at_level():
    plan = aggregate_plan(9, "combine = m.c, fan_in = 3")
    assert [n for n in plan.names if "@" in n] == ["r@1[0]", "r@1[1]", "r@1[2]"]
    assert plan.index_of("r@1[2]") == plan.names.index("r@1[2]")


def test_tree_edges_keep_the_declared_channel():
    plan = plan_of("stage s = m.f x 4\nnode r = m.g aggregate(combine = m.c, fan_in = 2)\n"
                   "s >> r [channel = file]\n")
    assert set(channels(plan).values()) == {ChannelKind.FILE}


def test_aggregate_from_a_single_node():
    plan = plan_of("node a = m.f\nnode r = m.g aggregate(combine = m.c)\na -> r\n")
    assert edge_set(plan) == {("a", "r")}


# ---- the design's example ---------------------------------------------------------
def test_wordcount_example(monkeypatch):
    monkeypatch.delenv("CORPUS", raising=False)
    plan = serpytor.compile_file(WORDCOUNT)
    assert plan.pipeline == "wordcount"
    assert plan.names == ([f"read[{i}]" for i in range(8)] + [f"count[{i}]" for i in range(8)]
                          + ["merge", "report", "audit", "notify", "archive"])
    expected_edges = ({(f"read[{i}]", f"count[{i}]") for i in range(8)}
                      | {(f"count[{i}]", "merge") for i in range(8)}
                      | {("merge", "report"), ("report", "audit"), ("report", "notify"),
                         ("notify", "archive")})
    assert edge_set(plan) == expected_edges and plan.n_edges == 20
    assert channels(plan)[("merge", "report")] is ChannelKind.TCP
    assert {c for e, c in channels(plan).items() if e != ("merge", "report")} == {
        ChannelKind.AUTO}
    assert [(g["name"], [plan.templates[m]["name"] for m in g["members"]])
            for g in plan.groups] == [("review", ["audit", "notify"])]
    assert plan.flags(plan.index_of("archive")) & VertexFlag.VOLATILE
    assert plan.flags(plan.index_of("merge")) & VertexFlag.AGG_ROOT
    origin_context = {"corpus": "examples/data/corpus.txt", "lowercase": True}
    for name in plan.names[:17]:
        assert plan.static_context(plan.index_of(name)) == origin_context
        assert plan.origins(plan.index_of(name)) == ["context"]
    for name in ("report", "audit", "notify", "archive"):
        assert plan.static_context(plan.index_of(name)) == {**origin_context,
                                                            "owner": "analytics"}
        assert plan.origins(plan.index_of(name)) == ["context", "report"]
    assert plan.summary() == "pipeline wordcount: 21 vertices, 20 edges, 2 stages, 1 groups"
    assert_topological(plan)


def test_wordcount_reads_corpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("CORPUS", "/elsewhere/big.txt")
    plan = serpytor.compile_file(WORDCOUNT)
    assert plan.static_context(plan.index_of("read[3]"))["corpus"] == "/elsewhere/big.txt"


def _same_plan(a: serpytor.Plan, b: serpytor.Plan) -> None:
    assert sorted(a.arrays) == sorted(b.arrays)
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype, name
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    strip = lambda meta: {k: v for k, v in meta.items() if k != "filename"}  # noqa: E731
    assert strip(a.meta) == strip(b.meta)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.spg")),
                         ids=lambda p: p.name)
def test_compile_and_compile_file_give_the_same_plan(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from_file = serpytor.compile_file(path)
    from_text = serpytor.compile(path.read_text())
    _same_plan(from_file, from_text)
    assert from_file.meta["filename"] == str(path)
    assert from_text.meta["filename"] == "<string>"


def test_compile_is_deterministic():
    source = WORDCOUNT.read_text()
    _same_plan(serpytor.compile(source), serpytor.compile(source))


@pytest.mark.parametrize("body", [
    "stage a = m.f x 3\nstage b = m.f x 2\nnode c = m.f\nb >> c\na => b\n",
    "node z = m.f\nnode y = m.f\nnode x1 = m.f\nx1 -> y -> z\n",
    "stage s = m.f x 9\nnode r = m.g aggregate(combine = m.c, fan_in = 2)\ns >> r\n"
    "node first = m.f\nfirst -> s\n",
])
def test_topological_order_is_valid(body):
    assert_topological(plan_of(body))


def test_summary_counts():
    plan = plan_of("stage a = m.f x 3\nstage b = m.f x 2\nnode c = m.f\na >> b\nb -> c\n"
                   "group g { c }\n")
    assert plan.summary() == "pipeline p: 6 vertices, 8 edges, 2 stages, 1 groups"
    assert plan.summary() in repr(plan)
