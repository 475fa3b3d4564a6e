"""Compile errors: every mistake a user can make in a pipeline that parses, reported at
its place (``file:line:col: error: ...``, the source line and a caret), parametrized as
(source, message fragment, line, column) like pegen's syntax-error tests.

Dependency injection is checked against tests/fixtures/vertexmod.py, which pipelines
import as ``use tests.fixtures.vertexmod as vm``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import serpytor
from serpytor import CycleError, SerpytorError, SpgCompileError, SpgError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
H = "pipeline p\nuse spg_test_missing.mod as m\n"  # lines 1-2; `m` cannot be imported
VM = "pipeline p\nuse tests.fixtures.vertexmod as vm\n"  # lines 1-2; `vm` can


def compile_error(source: str, cls=SpgCompileError, filename: str = "<string>") -> SpgError:
    with pytest.raises(cls) as info:
        serpytor.compile(source, filename)
    return info.value


def check_rendering(error: SpgError, source: str, line: int, column: int) -> None:
    rendered = str(error).splitlines()
    assert rendered[0].startswith(f"{error.span.filename}:{line}:{column}: error: ")
    assert rendered[1] == "    " + source.splitlines()[line - 1]
    assert rendered[2] == "    " + " " * (column - 1) + "^"


def note_positions(error: SpgError) -> list[tuple[int, int]]:
    return [(span.line, span.column) for span, _ in error.notes]


COMPILE_ERRORS = [
    # (source, message fragment, line, column)
    pytest.param(H + "node a = m.f\nnode b = m.f\na -> b [channel = udp]",
                 "unknown channel kind 'udp'", 5, 9, id="unknown-channel"),
    pytest.param(H + "node a = m.f\nnode b = m.f\na -> b [color = red]",
                 "unknown edge attribute 'color'", 5, 9, id="unknown-edge-attribute"),
    pytest.param(H + "stage a = m.f x 0", "at least one replica", 3, 17, id="x-0"),
    pytest.param(H + "stage a = m.f x -2", "at least one replica", 3, 17, id="x-negative"),
    pytest.param(H + "node a = m.f x 2", "node 'a' cannot be replicated", 3, 16,
                 id="x-on-a-node"),
    pytest.param(H + "stage a = m.f", "stage 'a' needs a replica count", 3, 7,
                 id="stage-without-x"),
    pytest.param(H + "node alpha = m.f\nalpha -> alpah", "edge to undeclared name 'alpah'",
                 4, 10, id="undeclared-edge-target"),
    pytest.param(H + "node a = m.f\n\n  ghost => a", "edge to undeclared name 'ghost'", 5, 3,
                 id="undeclared-edge-source"),
    pytest.param(H + "node a = q.f", "unknown module alias 'q'", 3, 10, id="unknown-alias"),
    pytest.param(H + "node a = m", "names a module, not a function", 3, 10,
                 id="alias-without-function"),
    pytest.param(H + "node a = m.f\nnode b = m.f\ngroup g { zz, a }",
                 "group 'g' names undeclared vertex 'zz'", 5, 11, id="group-undeclared-member"),
    pytest.param(H + "node a = m.f\nnode b = m.f\ngroup g { a }\ng -> b",
                 "'g' is a group, not a vertex", 6, 1, id="group-as-edge-source"),
    pytest.param(H + "node a = m.f\nnode b = m.f\ngroup g { a }\nb -> g",
                 "'g' is a group, not a vertex", 6, 6, id="group-as-edge-target"),
    pytest.param(H + "node a = m.f\ngroup a { a }", "group 'a' has the name of a vertex", 4, 1,
                 id="group-named-like-vertex"),
    pytest.param(H + "node a = m.f\ngroup g { }", "group 'g' has no members", 4, 1,
                 id="empty-group"),
    pytest.param(H + "stage a = m.f x 2\nstage b = m.f x 3\na -> b",
                 "'->' between two stages (a x 2, b x 3) is ambiguous", 5, 1,
                 id="plain-edge-between-wide-stages"),
    pytest.param(H + "stage a = m.f x 2\nstage b = m.f x 3\nnode c = m.f\nc -> a -> b",
                 "is ambiguous", 6, 6, id="plain-edge-between-wide-stages-in-chain"),
    pytest.param(H + "node a = m.f aggregate(combine = m.c, merge = m.d)",
                 "got (combine, merge)", 3, 14, id="aggregate-mixed-forms"),
    pytest.param(H + "node a = m.f aggregate()", "got (nothing)", 3, 14, id="aggregate-empty"),
    pytest.param(H + "node a = m.f aggregate(reduce = m.r)", "got (reduce)", 3, 14,
                 id="aggregate-unknown-option"),
    pytest.param(H + "node a = m.f aggregate(initialize = m.i, iterate = m.t)",
                 "got (initialize, iterate)", 3, 14, id="aggregate-accumulator-incomplete"),
    pytest.param(H + "node a = m.f aggregate(combine = 3)",
                 "aggregate option 'combine' takes a function", 3, 24,
                 id="aggregate-number-for-function"),
    pytest.param(H + "node a = m.f aggregate(combine = m.c, fan_in = 1)",
                 "fan_in must be an integer of at least 2", 3, 39, id="aggregate-fan-in-1"),
    pytest.param(H + "node a = m.f aggregate(combine = m.c, fan_in = m.c)",
                 "fan_in must be an integer of at least 2", 3, 39,
                 id="aggregate-fan-in-function"),
    pytest.param(H + "node a = m.f aggregate(combine = q.c)", "unknown module alias 'q'", 3, 34,
                 id="aggregate-unknown-alias"),
    pytest.param(H + "stage a = m.f x 2 aggregate(combine = m.c)",
                 "aggregate applies to a node, and 'a' is a stage", 3, 19,
                 id="aggregate-on-stage"),
    pytest.param(H + "node a = m.f\nnode b = m.f\nnode r = m.f aggregate(combine = m.c)\n"
                 "a -> r\nb -> r", "aggregate node 'r' has inputs from several declarations "
                 "(a, b)", 5, 6, id="aggregate-two-sources"),
    pytest.param(H + "node a = m.f timeout 0", "timeout of 'a' must be positive", 3, 14,
                 id="timeout-0"),
    pytest.param(H + "node a = m.f(1, k = 2, 3)", "positional argument follows a keyword", 3, 24,
                 id="positional-after-keyword"),
    pytest.param(H + 'context { k = env("SPG_TEST_UNSET_VARIABLE") }',
                 "environment variable SPG_TEST_UNSET_VARIABLE is not set and has no default",
                 3, 15, id="env-unset-without-default"),
    pytest.param(H + 'node a = m.f(path = [1, env("SPG_TEST_UNSET_VARIABLE")])',
                 "SPG_TEST_UNSET_VARIABLE is not set", 3, 25, id="env-unset-in-argument"),
    pytest.param(H + "stage a = m.f x 99999999999999999999", "replica", 3, 17,
                 id="x-too-large"),
]


@pytest.mark.parametrize("source, message, line, column", COMPILE_ERRORS)
def test_compile_error(source, message, line, column, monkeypatch):
    monkeypatch.delenv("SPG_TEST_UNSET_VARIABLE", raising=False)
    error = compile_error(source)
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    check_rendering(error, source, line, column)


def test_undeclared_name_suggests_the_closest():
    error = compile_error(H + "node alpha = m.f\nnode beta = m.f\nalpha -> btea")
    assert error.hint == "did you mean 'beta'?"
    assert "hint: did you mean 'beta'?" in str(error)


def test_undeclared_name_without_a_close_match_says_how_to_declare_it():
    error = compile_error(H + "node alpha = m.f\nalpha -> zzzzz")
    assert "node zzzzz = ..." in error.hint


def test_unknown_alias_suggests_a_close_alias():
    error = compile_error("pipeline p\nuse a.b as words\nnode n = wrds.count\n")
    assert error.hint == "did you mean 'words'?"


def test_unknown_channel_lists_the_kinds():
    error = compile_error(H + "node a = m.f\nnode b = m.f\na -> b [channel = udp]")
    for kind in ("shm", "tcp", "file", "auto"):
        assert kind in error.hint


def test_plain_edge_between_wide_stages_suggests_both_operators():
    error = compile_error(H + "stage a = m.f x 2\nstage b = m.f x 2\na -> b")
    assert "a => b" in error.hint and "a >> b" in error.hint


# ---- duplicates name both places --------------------------------------------------
@pytest.mark.parametrize(
    "source, message, line, column, note",
    [
        pytest.param(H + "node a = m.f\nnode b = m.f\nstage  a = m.g x 2",
                     "'a' is declared twice", 5, 8, (3, 6), id="duplicate-vertex"),
        pytest.param(H + "use other.mod as m\nnode a = m.f", "module alias 'm' is declared twice",
                     3, 1, (2, 1), id="duplicate-alias"),
        pytest.param("pipeline p\nuse x.words\nuse y.words\n",
                     "module alias 'words' is declared twice", 3, 1, (2, 1),
                     id="duplicate-default-alias"),
        pytest.param(H + "node a = m.f\nnode b = m.f\ngroup g { a }\ngroup g { b }",
                     "group 'g' is declared twice", 6, 1, (5, 1), id="duplicate-group"),
        pytest.param(H + "context { k = 1\n  k = 2 }", "context key 'k' is set twice in context",
                     4, 3, (3, 11), id="duplicate-context-key"),
        pytest.param(H + "context { k = 1 }\ncontext { k = 2 }", "set twice", 4, 11, (3, 11),
                     id="duplicate-context-key-in-two-blocks"),
        pytest.param(H + "node a = m.f with { k = 1, k = 2 }",
                     "context key 'k' is set twice in the with block of 'a'", 3, 28, (3, 21),
                     id="duplicate-with-key"),
        pytest.param(H + "node a = m.f(k = 1, k = 2)", "argument 'k' is given twice", 3, 21,
                     (3, 14), id="duplicate-argument"),
        pytest.param(H + "node a = m.f\nnode b = m.f\ngroup g { a }\ngroup h { b, a }",
                     "'a' is in two groups, 'g' and 'h'", 6, 14, (5, 1),
                     id="vertex-in-two-groups"),
    ],
)
def test_duplicate_shows_both_locations(source, message, line, column, note):
    error = compile_error(source)
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    assert note_positions(error) == [note]
    check_rendering(error, source, line, column)
    assert f"<string>:{note[0]}:{note[1]}: note: " in str(error)


# ---- cycles -------------------------------------------------------------------------
def cycle_error(source: str) -> CycleError:
    error = compile_error(source, CycleError)
    assert isinstance(error, SpgCompileError)
    return error


def test_cycle_reports_the_full_path_with_each_edge_line():
    r"""
        a -> b -> c
        ^         |
        +---------+
    """
    source = H + "node a = m.f\nnode b = m.f\nnode c = m.f\na -> b\nb -> c\nc -> a\n"
    error = cycle_error(source)
    assert error.cycle == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in str(error)
    assert error.message == "cycle in the pipeline: a -> b -> c -> a"
    assert [(span.line, note) for span, note in error.notes] == [
        (6, "edge a -> b"), (7, "edge b -> c"), (8, "edge c -> a")]
    assert [span.line for span in error.edge_spans] == [6, 7, 8]
    assert (error.line, error.column) == (6, 1)
    check_rendering(error, source, 6, 1)


def test_cycle_in_one_chain():
    error = cycle_error(H + "node a = m.f\nnode b = m.f\nnode c = m.f\na -> b -> c -> a\n")
    assert error.cycle == ["a", "b", "c", "a"]
    assert [(span.line, span.column) for span, _ in error.notes] == [(6, 1), (6, 6), (6, 11)]


def test_cycle_through_stages_and_operators():
    error = cycle_error(H + "stage a = m.f x 2\nstage b = m.f x 2\nnode c = m.f\n"
                        "a => b\nb >> c\nc -> a\n")
    assert error.cycle == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in error.message


def test_cycle_not_starting_at_the_first_vertex():
    error = cycle_error(H + "node start = m.f\nnode x1 = m.f\nnode x2 = m.f\n"
                        "start -> x1\nx1 -> x2\nx2 -> x1\n")
    assert error.cycle == ["x1", "x2", "x1"]
    assert [span.line for span, _ in error.notes] == [7, 8]


def test_self_loop():
    source = H + "node a = m.f\n\na -> a\n"
    error = cycle_error(source)
    assert error.cycle == ["a", "a"]
    assert "a -> a" in error.message
    assert [(span.line, note) for span, note in error.notes] == [(5, "edge a -> a")]


def test_data_cycle_inside_a_group():
    error = cycle_error(H + "node a = m.f\nnode b = m.f\na -> b\nb -> a\ngroup g { a, b }\n")
    assert error.cycle == ["a", "b", "a"]
    assert "group 'g'" in error.message
    assert "a -> b -> a" in error.message


def test_group_that_depends_on_itself_through_an_outside_vertex():
    r"""
        a ---> o ---> b        group g { a, b }: the union node g feeds o and o feeds g
    """
    source = H + "node a = m.f\nnode b = m.f\nnode o = m.f\na -> o\no -> b\ngroup g { a, b }\n"
    error = cycle_error(source)
    assert "group 'g' depends on itself" in error.message
    assert set(error.cycle) == {"g", "o"} and error.cycle[0] == error.cycle[-1]
    assert len(error.cycle) == 3
    path = " -> ".join(error.cycle)
    assert path in error.message
    lines = {note: span.line for span, note in error.notes}
    assert lines == {"edge g -> o": 6, "edge o -> g": 7}


def test_members_chained_inside_a_group_are_not_a_group_cycle():
    plan = serpytor.compile(H + "node a = m.f\nnode b = m.f\nnode o = m.f\na -> b\nb -> o\n"
                            "group g { a, b }\n")
    assert plan.n_edges == 2


# ---- dependency injection -------------------------------------------------------------
def compile_vm(body: str) -> serpytor.Plan:
    # the file name places the pipeline in tests/fixtures, so `tests` is found above it
    return serpytor.compile(VM + body, str(FIXTURES / "inline.spg"))


def vm_error(body: str) -> SpgCompileError:
    with pytest.raises(SpgCompileError) as info:
        compile_vm(body)
    return info.value


def test_injection_accepts_every_way_to_fill_a_parameter():
    plan = compile_vm(
        "node source = vm.source\n"
        "node d = vm.double\n"                    # `source` is a parent; factor has a default
        "node i = vm.injected\n"                  # inputs, context, partition, partitions
        "node t = vm.takes(1, b = 2)\n"           # positional and keyword DSL arguments
        "node o = vm.options(anything = 1, z = 2)\n"  # **kwargs takes any keyword
        "node v = vm.variadic(1, 2, 3, 4, 5)\n"   # *args takes any number
        "node k = vm.keyword_only(scale = 3)\n"   # keyword-only parameter by keyword
        "node h = vm.Holder.method\n"             # a dotted qualified name
        "stage numbers = vm.source x 4\n"
        "node total = vm.total aggregate(combine = vm.combine, fan_in = 2)\n"
        "source -> d\nsource -> i\nsource -> k\nsource -> h\nnumbers >> total\n"
    )
    # 8 nodes, 4 replicas, the root, and 2 combiners (4 inputs, fan_in 2)
    assert plan.n_vertices == 8 + 4 + 1 + 2
    assert str(ROOT) in plan.meta["module_paths"]


def test_injection_of_a_stage_and_an_aggregate_root_uses_the_template_name():
    compile_vm("stage numbers = vm.source x 3\nstage again = vm.total x 3\nnumbers => again\n")


@pytest.mark.parametrize(
    "body, message, line, column",
    [
        pytest.param("node d = vm.double\n", "parameter 'source' of double cannot be filled for "
                     "'d'", 3, 6, id="unfillable-parameter"),
        pytest.param("node s = vm.source\nnode d = vm.double\ns -> d\n",
                     "parameter 'source' of double cannot be filled", 4, 6,
                     id="parent-with-another-name"),
        pytest.param("node source = vm.source\nnode k = vm.keyword_only\nsource -> k\n",
                     "parameter 'scale' of keyword_only cannot be filled", 4, 6,
                     id="unfilled-keyword-only"),
        pytest.param("node t = vm.takes(a = 1, b = 2, zz = 3)\n", "takes has no parameter 'zz'",
                     3, 6, id="unknown-keyword"),
        pytest.param("node t = vm.takes(1, 2, 3, 4)\n",
                     "takes takes at most 3 positional arguments, 't' gives 4", 3, 6,
                     id="too-many-positional"),
        pytest.param("node n = vm.nosuch\n",
                     "module 'tests.fixtures.vertexmod' has no function 'nosuch'", 3, 6,
                     id="unknown-function"),
        pytest.param("node n = vm.Holder.nosuch\n", "has no function 'Holder.nosuch'", 3, 6,
                     id="unknown-method"),
        pytest.param("stage numbers = vm.source x 2\n"
                     "node r = vm.total aggregate(combine = vm.combin)\nnumbers >> r\n", "has no function 'combin'", 4, 6,
                     id="unknown-aggregate-function"),
        pytest.param("node n = vm.NOT_A_FUNCTION\n", "is not callable", 3, 6, id="not-callable"),
        pytest.param("node t = vm.takes(1, a = 2, b = 3)\n", "'a'", 3, 6,
                     id="parameter-given-twice"),
    ],
)
def test_injection_error(body, message, line, column):
    error = vm_error(body)
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    check_rendering(error, VM + body, line, column)


def test_unfillable_parameter_suggests_a_close_parent():
    error = vm_error("node sourc = vm.source\nnode d = vm.double\nsourc -> d\n")
    assert "did you mean 'sourc'?" in error.hint
    assert "inputs, context, partition, partitions" in error.hint


def test_unknown_function_suggests_a_close_one():
    assert vm_error("node n = vm.sorce\n").hint == "did you mean 'source'?"
    assert vm_error("node t = vm.takes(a = 1, bb = 2)\n").hint == "did you mean 'b'?"


def test_a_module_that_cannot_be_imported_is_skipped_silently():
    plan = serpytor.compile("pipeline p\nuse spg_test_missing.mod as m\n"
                            "node a = m.whatever(1, 2, k = 3)\n")
    assert plan.meta["module_paths"] == []


def test_a_module_whose_dependency_is_missing_is_skipped_silently():
    plan = serpytor.compile("pipeline p\nuse tests.fixtures.missingdep as md\n"
                            "node a = md.anything(1, 2, nope = 3)\n", str(FIXTURES / "x.spg"))
    assert plan.n_vertices == 1


def test_a_module_that_fails_while_importing_is_a_compile_error():
    source = "pipeline p\nuse tests.fixtures.brokenmod as bm\n\nnode a = bm.f\n"
    error = compile_error(source, filename=str(FIXTURES / "x.spg"))
    assert "importing module 'tests.fixtures.brokenmod' failed: RuntimeError" in error.message
    assert (error.line, error.column) == (4, 6)


def test_modules_are_found_from_the_spg_files_directory(tmp_path, monkeypatch):
    """The working directory is elsewhere: the module root is the nearest ancestor of the
    .spg file that holds the module's top-level package."""
    monkeypatch.chdir(tmp_path)
    error = None
    try:
        serpytor.compile_file(FIXTURES / "injection_error.spg")
    except SpgCompileError as caught:
        error = caught
    assert error is not None, "the fixture's bad parameter was not found"
    assert "parameter 'source' of double cannot be filled" in error.message
    assert error.span.filename == str(FIXTURES / "injection_error.spg")


# ---- never a Python exception ----------------------------------------------------------
def test_empty_pipeline_is_not_a_crash():
    """A pipeline with no vertices is either an empty plan or a located error."""
    for source in ("pipeline p\n", "pipeline p\nuse spg_test_missing.mod as m\n",
                   "pipeline p\ncontext { k = 1 }\n"):
        try:
            plan = serpytor.compile(source)
        except SerpytorError as error:
            assert isinstance(error, SpgError) and error.line is not None
        else:
            assert plan.n_vertices == 0 and plan.n_edges == 0
