"""Golden tests of the .spg parser: every construct of the language tour becomes the
AST node it should, with its source position.

Only ``serpytor.dsl`` is used here; compiling is tested in tests/test_compiler_*.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from serpytor.dsl import ast
from serpytor.dsl.parser import parse, parse_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.spg"))


def context_value(text: str):
    """The value of ``v = TEXT`` in a context block."""
    pipeline = parse(f"pipeline p\ncontext {{ v = {text} }}\n")
    (assignment,) = pipeline.context
    assert assignment.key == "v"
    return assignment.value


def only_vertex(declaration: str) -> ast.VertexDecl:
    pipeline = parse(f"pipeline p\nuse m\n{declaration}\n")
    (vertex,) = pipeline.vertices
    return vertex


# ---- pipeline and use -------------------------------------------------------------
def test_pipeline_name_and_position():
    pipeline = parse("\n\npipeline  word_count_2\n")
    assert pipeline.name == "word_count_2"
    assert (pipeline.span.line, pipeline.span.column) == (3, 11)
    assert pipeline.uses == pipeline.context == pipeline.vertices == ()
    assert pipeline.edges == pipeline.groups == ()


def test_use_with_alias_and_default_alias():
    pipeline = parse("pipeline p\nuse examples.wordcount as wc\nuse a.b.c\nuse single\n")
    uses = [(u.module.parts, u.alias) for u in pipeline.uses]
    assert uses == [(("examples", "wordcount"), "wc"), (("a", "b", "c"), "c"),
                    (("single",), "single")]
    assert [(u.span.line, u.span.column) for u in pipeline.uses] == [(2, 1), (3, 1), (4, 1)]
    assert str(pipeline.uses[1]) == "use a.b.c as c"


# ---- context and literals ---------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ('"plain"', "plain"),
        ("'single quoted'", "single quoted"),
        ('""', ""),
        (r'"tab\there"', "tab\there"),
        (r'"line\nbreak"', "line\nbreak"),
        (r'"a \"quoted\" word"', 'a "quoted" word'),
        (r"'it\'s'", "it's"),
        (r'"back\\slash"', "back\\slash"),
        (r'"\u00e9t\u00e9"', "\u00e9t\u00e9"),
        (r'"\x41"', "A"),
        ('"# not a comment"', "# not a comment"),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[]", []),
        ("[1, 2, 3]", [1, 2, 3]),
        ("[1, 2,]", [1, 2]),
        ('["a", 1, 2.0, true, null]', ["a", 1, 2.0, True, None]),
        ("{}", {}),
        ('{name: "x", "key with spaces": 2}', {"name": "x", "key with spaces": 2}),
        ("{a: 1,}", {"a": 1}),
        ('{outer: {inner: [1, {deep: [true, "x"]}]}, list: [[], [[]]]}',
         {"outer": {"inner": [1, {"deep": [True, "x"]}]}, "list": [[], [[]]]}),
    ],
)
def test_literal(text, expected):
    value = context_value(text)
    assert value == expected
    # True == 1 and 1 == 1.0 in Python: check the types as well, recursively
    assert _types(value) == _types(expected)


def _types(value):
    if isinstance(value, list):
        return ["list", [_types(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", {k: _types(v) for k, v in value.items()}]
    return type(value).__name__


def test_env_is_kept_unevaluated_in_the_ast():
    value = context_value('env("CORPUS", "data/corpus.txt")')
    assert value == ast.Env("CORPUS", "data/corpus.txt")
    assert (value.span.line, value.span.column) == (2, 15)
    assert context_value('env("ONLY_NAME")') == ast.Env("ONLY_NAME", None)
    assert context_value('env("N", [1, {a: 2}])') == ast.Env("N", [1, {"a": 2}])


def test_context_blocks_with_and_without_commas_and_several_blocks():
    pipeline = parse(
        "pipeline p\n"
        "context {\n"
        "    corpus = 'x',\n"
        "    lowercase = true\n"
        "}\n"
        "context { limit = 3 }\n"
    )
    assert [(a.key, a.value) for a in pipeline.context] == [
        ("corpus", "x"), ("lowercase", True), ("limit", 3)]
    assert [(a.span.line, a.span.column) for a in pipeline.context] == [(3, 5), (4, 5), (6, 11)]


def test_empty_context_block():
    assert parse("pipeline p\ncontext { }\n").context == ()


# ---- vertices ---------------------------------------------------------------------
def test_node_without_arguments():
    vertex = only_vertex("node  merge = wc.merge_counts")
    assert vertex.kind == "node"
    assert vertex.name == "merge"
    assert vertex.function.parts == ("wc", "merge_counts")
    assert vertex.arguments == ()
    assert vertex.replicate is None and vertex.aggregate is None and vertex.timeout is None
    assert vertex.with_block == () and vertex.volatile is False
    assert (vertex.span.line, vertex.span.column) == (3, 1)
    assert (vertex.name_span.line, vertex.name_span.column) == (3, 7)


def test_stage_with_replication():
    vertex = only_vertex("stage read = wc.read_lines x 8")
    assert (vertex.kind, vertex.name, vertex.replicate.count) == ("stage", "read", 8)
    assert (vertex.replicate.span.line, vertex.replicate.span.column) == (3, 30)


def test_positional_and_keyword_arguments():
    vertex = only_vertex('node f = m.g(1, "two", [3], n = 20, opts = {a: null},)')
    assert [(a.name, a.value) for a in vertex.arguments] == [
        (None, 1), (None, "two"), (None, [3]), ("n", 20), ("opts", {"a": None})]
    assert [a.span.column for a in vertex.arguments] == [14, 17, 24, 29, 37]


def test_empty_argument_list():
    assert only_vertex("node f = m.g()").arguments == ()


def test_deep_dotted_function():
    assert only_vertex("node f = m.Outer.method").function.parts == ("m", "Outer", "method")


def test_with_block():
    vertex = only_vertex('node report = wc.top_words(n = 20) with { owner = "analytics", tier = 2 }')
    assert [(a.key, a.value) for a in vertex.with_block] == [("owner", "analytics"), ("tier", 2)]
    assert vertex.with_block[0].span.column == 43


@pytest.mark.parametrize(
    "options, expected",
    [
        ("combine = wc.combine", [("combine", ("wc", "combine"))]),
        ("initial_reduce = avg.initial_reduce, combine = avg.combine",
         [("initial_reduce", ("avg", "initial_reduce")), ("combine", ("avg", "combine"))]),
        ("initialize = a.i, iterate = a.it, merge = a.mg",
         [("initialize", ("a", "i")), ("iterate", ("a", "it")), ("merge", ("a", "mg"))]),
        ("combine = a.c, fan_in = 4", [("combine", ("a", "c")), ("fan_in", 4)]),
    ],
)
def test_aggregate_options(options, expected):
    vertex = only_vertex(f"node total = m.f aggregate({options})")
    got = [(o.name, o.value.parts if isinstance(o.value, ast.Dotted) else o.value)
           for o in vertex.aggregate.options]
    assert got == expected
    assert vertex.aggregate.span.column == 18


def test_volatile_and_timeout():
    vertex = only_vertex("node archive = wc.archive volatile timeout 30")
    assert vertex.volatile is True
    assert vertex.timeout.seconds == 30.0
    assert only_vertex("node a = m.f timeout 2.5").timeout.seconds == 2.5


def test_modifiers_in_any_order():
    a = only_vertex('stage s = m.f(1) x 4 with { k = 1 } volatile timeout 5')
    b = only_vertex('stage s = m.f(1) timeout 5 volatile with { k = 1 } x 4')
    assert a == b
    assert a.replicate.count == 4 and a.volatile and a.timeout.seconds == 5.0
    assert [(w.key, w.value) for w in a.with_block] == [("k", 1)]


# ---- edges and groups -------------------------------------------------------------
@pytest.mark.parametrize("operator", ["->", "=>", ">>"])
def test_edge_operators(operator):
    (chain,) = parse(f"pipeline p\na {operator} b\n").edges
    assert chain.names == ("a", "b")
    assert chain.operators == (operator,)
    assert chain.attributes == ()


def test_chain_with_mixed_operators_and_positions():
    (chain,) = parse("pipeline p\n  read => count >> merge -> report\n").edges
    assert chain.names == ("read", "count", "merge", "report")
    assert chain.operators == ("=>", ">>", "->")
    assert [(s.line, s.column) for s in chain.name_spans] == [(2, 3), (2, 11), (2, 20), (2, 29)]


@pytest.mark.parametrize("kind", ["shm", "tcp", "file", "auto"])
def test_channel_attribute(kind):
    (chain,) = parse(f"pipeline p\nmerge -> report [channel = {kind}]\n").edges
    (attribute,) = chain.attributes
    assert attribute.name == "channel"
    assert attribute.value == ast.BareName(kind)
    assert attribute.span.column == 18


def test_channel_attribute_as_a_string():
    (chain,) = parse('pipeline p\na -> b [channel = "tcp"]\n').edges
    assert chain.attributes[0].value == "tcp"


def test_group():
    (group,) = parse("pipeline p\ngroup review { audit, notify, }\n").groups
    assert group.name == "review"
    assert group.members == ("audit", "notify")
    assert [(s.line, s.column) for s in group.member_spans] == [(2, 16), (2, 23)]
    assert (group.span.line, group.span.column) == (2, 1)


def test_statements_in_any_order_are_sorted_by_kind():
    pipeline = parse(
        "pipeline p\n"
        "a -> b\n"
        "group g { a }\n"
        "node b = m.f\n"
        "use mod as m\n"
        "context { k = 1 }\n"
        "node a = m.f\n"
    )
    assert [v.name for v in pipeline.vertices] == ["b", "a"]
    assert [u.alias for u in pipeline.uses] == ["m"]
    assert [e.names for e in pipeline.edges] == [("a", "b")]
    assert [g.name for g in pipeline.groups] == ["g"]
    assert [c.key for c in pipeline.context] == ["k"]


def test_comments_and_blank_lines_are_ignored():
    with_comments = parse(
        "# a leading comment\n"
        "pipeline p   # trailing\n"
        "\n"
        "use mod as m # the module\n"
        "context {    # open\n"
        "  k = '#'    # a '#' in a string is not a comment\n"
        "}            # close\n"
        "node a = m.f # a node\n"
        "node b = m.f\n"
        "a -> b       # an edge\n"
        "#########\n"
    )
    plain = parse("pipeline p\nuse mod as m\ncontext { k = '#' }\nnode a = m.f\nnode b = m.f\na -> b\n")
    assert with_comments == plain
    assert with_comments.context[0].value == "#"
    assert with_comments.vertices[1].name_span.line == 9


def test_whitespace_and_newlines_are_insignificant():
    spread = parse("pipeline\np\nnode\na\n=\nm\n.\nf\n(\n1\n)\nx\n2\n")
    assert spread.vertices[0] == parse("pipeline p node a = m.f(1) x 2").vertices[0]


def test_design_example_parses(tmp_path):
    pipeline = parse_file(ROOT / "examples" / "wordcount.spg")
    assert pipeline.name == "wordcount"
    assert pipeline.filename.endswith("wordcount.spg")
    assert [v.name for v in pipeline.vertices] == [
        "read", "count", "merge", "report", "audit", "notify", "archive"]
    assert [(v.name, v.replicate.count) for v in pipeline.vertices if v.replicate] == [
        ("read", 8), ("count", 8)]
    assert [e.operators[0] for e in pipeline.edges] == ["=>", ">>", "->", "->", "->", "->"]
    assert pipeline.groups[0].members == ("audit", "notify")
    assert pipeline.vertices[-1].volatile


def test_grammar_is_loaded_from_the_package_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grammars").mkdir()
    (tmp_path / "grammars" / "spg.lark").write_text("start: \"nonsense\"\n")
    assert parse("pipeline p\n").name == "p"


def test_parse_file_records_the_filename(tmp_path):
    path = tmp_path / "named.spg"
    path.write_text("pipeline named\nnode a = m.f\n")
    pipeline = parse_file(path)
    assert pipeline.filename == str(path)
    assert pipeline.vertices[0].span.filename == str(path)


# ---- printing the AST back as .spg --------------------------------------------------
FULL_SOURCE = """\
pipeline t
use a.b as ab
use c.d
context { k = [1, {z: null}], s = "x", on = true, off = false, f = 2.5 }
node n = ab.f(1, "s", k = [1, {z: null}]) with { o = 2.5, p = false } volatile timeout 30
stage s = d.g x 3 timeout 1.5
node r = ab.h aggregate(initialize = ab.i, iterate = ab.t, merge = ab.m, fan_in = 3)
node q = ab.h aggregate(combine = ab.c)
n -> s => r >> n [channel = shm]
r -> q [channel = "tcp"]
group gg { n, r }
"""


@pytest.mark.parametrize("source", [FULL_SOURCE] + [p.read_text() for p in EXAMPLES],
                         ids=["full"] + [p.name for p in EXAMPLES])
def test_str_prints_the_ast_back_as_spg(source):
    pipeline = parse(source)
    assert parse(str(pipeline)) == pipeline


@pytest.mark.parametrize(
    "value",
    [r'"line\nbreak"', r'"tab\there"', r"'it\'s'", r'"back\\slash \"q\""',
     '{"key with spaces": 1}', '{"a-b": 1}'],
)
def test_str_round_trips_string_values(value):
    """``str()`` of an AST must be valid .spg for every value the parser accepts."""
    pipeline = parse(f"pipeline p\ncontext {{ v = {value} }}\n")
    assert parse(str(pipeline)) == pipeline


def test_float_values_round_trip():
    pipeline = parse("pipeline p\ncontext { v = 1e-7 w = 123456789.125 }\n")
    again = parse(str(pipeline))
    assert again == pipeline
    assert math.isclose(again.context[0].value, 1e-7)
