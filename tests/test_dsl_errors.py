"""Syntax errors: one clear diagnostic at the right place (pegen's
test_syntax_error_handling style: parametrized as source, message, line, column).

A diagnostic renders as ``file:line:col: error: message``, the source line, a caret
under the column, and what was expected in words.
"""

from __future__ import annotations

import re

import pytest

import serpytor
from serpytor import SerpytorError, SpgError, SpgSyntaxError
from serpytor.dsl.parser import parse

H = "pipeline p\nuse m\n"  # lines 1-2 of most sources below


def syntax_error(source: str, filename: str = "<string>") -> SpgSyntaxError:
    with pytest.raises(SpgSyntaxError) as info:
        parse(source, filename)
    return info.value


def check_rendering(error: SpgError, source: str, line: int, column: int) -> None:
    """``str(error)``: location line, the source line, a caret under ``column``."""
    rendered = str(error).splitlines()
    assert rendered[0].startswith(f"{error.span.filename}:{line}:{column}: error: ")
    source_line = source.splitlines()[line - 1]
    assert rendered[1] == "    " + source_line
    assert rendered[2] == "    " + " " * (column - 1) + "^"


SYNTAX_ERRORS = [
    # (source, message fragment, line, column) -- positions worked out by hand
    pytest.param(H + "context {\n  a = 1\n", "unclosed '{'", 4, 8, id="unclosed-brace-at-eof"),
    pytest.param(H + "context {\n  a = 1\nnode b = m.f\n", "unclosed '{'", 5, 1,
                 id="unclosed-brace-before-statement"),
    pytest.param(H + "node a = m.f(1, 2\nnode b = m.f\n", "unclosed '('", 4, 1,
                 id="unclosed-paren"),
    pytest.param(H + "node a = m.f(1, 2", "unclosed '('", 3, 18, id="unclosed-paren-at-eof"),
    pytest.param(H + "node a = m.f(x = [1,\n", "unclosed '['", 3, 21, id="unclosed-bracket"),
    pytest.param(H + "node a = m.f\nnode b = m.f\na -> b [channel = tcp\nnode c = m.f\n",
                 "unclosed '['", 6, 1, id="unclosed-edge-attributes"),
    pytest.param(H + "node a = m.f with { k = {n: 1 }\n", "unclosed '{'", 3, 32,
                 id="unclosed-map"),
    pytest.param(H + "context { a 1 }", "missing '='", 3, 13, id="missing-eq-context"),
    pytest.param(H + "node a m.f", "missing '='", 3, 8, id="missing-eq-node"),
    pytest.param(H + "node a = m.f with { k 1 }", "missing '='", 3, 23, id="missing-eq-with"),
    pytest.param(H + "node a = m.f aggregate(combine m.c)", "missing '='", 3, 32,
                 id="missing-eq-aggregate"),
    pytest.param(H + "stage a = m.f 4", "replication is written `x N`", 3, 15,
                 id="replication-without-x"),
    pytest.param(H + "stage a = m.f x", "unexpected end of file", 3, 16, id="x-without-count"),
    pytest.param("node a = m.f\n", "starts with `pipeline NAME`", 1, 1, id="no-pipeline-line"),
    pytest.param("# only a comment\n\nuse m\n", "starts with `pipeline NAME`", 3, 1,
                 id="no-pipeline-after-comment"),
    pytest.param("pipeline", "unexpected end of file", 1, 9, id="pipeline-without-name"),
    pytest.param("pipeline p\nnode a = m.f $", "unexpected character '$'", 2, 14,
                 id="bad-character"),
    pytest.param("pipeline p\na -< b", "unexpected character '-'", 2, 3, id="bad-operator"),
    pytest.param("pipeline p\na ->", "unexpected end of file", 2, 5, id="dangling-edge"),
    pytest.param("pipeline p\n\n  a => => b", "unexpected edge operator '=>'", 3, 8,
                 id="double-operator"),
    pytest.param("pipeline p\n}", "unexpected '}'", 2, 1, id="stray-closing-brace"),
    pytest.param(H + "node 1a = m.f", "unexpected integer '1'", 3, 6, id="name-with-digit"),
    pytest.param(H + "node a = m.f with k = 1", "unexpected name 'k'", 3, 19,
                 id="with-without-brace"),
    pytest.param('pipeline p\ncontext { k = env(HOME) }', "unexpected name 'HOME'", 2, 19,
                 id="env-name-not-a-string"),
    pytest.param('pipeline p\ncontext { s = "abc }', "unexpected character '\"'", 2, 15,
                 id="unterminated-string"),
    pytest.param('pipeline p\ncontext { s = "a\\qb" }', "invalid string literal", 2, 15,
                 id="invalid-escape"),
    pytest.param("pipeline p\ncontext {\n  s = 'ok'\n  t = '\\N{NO SUCH NAME}'\n}",
                 "invalid string literal", 4, 7, id="invalid-named-escape"),
    pytest.param('pipeline p\ncontext { s = "\\x4" }', "invalid string literal", 2, 15,
                 id="truncated-hex-escape"),
    pytest.param("pipeline p\ncontext {\n k = {a 1}\n}", "unexpected integer '1'", 3, 9,
                 id="map-without-colon"),
]


@pytest.mark.parametrize("source, message, line, column", SYNTAX_ERRORS)
def test_syntax_error(source, message, line, column):
    error = syntax_error(source)
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    check_rendering(error, source, line, column)


@pytest.mark.parametrize("source, message, line, column", SYNTAX_ERRORS)
def test_syntax_error_speaks_words_not_terminal_names(source, message, line, column):
    error = syntax_error(source)
    # `NAME = value` in backquotes is an example for the user, not a terminal name
    text = re.sub(r"`[^`]*`", "", "\n".join([error.message, error.hint or ""]))
    assert not re.search(r"\b(NAME|STRING|SIGNED_INT|SIGNED_FLOAT|EDGE_OP|__ANON\w*|\$END|"
                         r"LBRACE|RBRACE|LPAR|RPAR|LSQB|RSQB|EQUAL|COMMA)\b", text), text


@pytest.mark.parametrize("source, message, line, column", SYNTAX_ERRORS)
def test_compile_raises_the_same_syntax_error(source, message, line, column):
    with pytest.raises(SpgSyntaxError) as info:
        serpytor.compile(source)
    assert (info.value.line, info.value.column) == (line, column)
    assert message in info.value.message


def test_unclosed_bracket_hint_names_where_it_was_opened():
    error = syntax_error(H + "context {\n  a = 1\n", "dir/p.spg")
    assert "dir/p.spg:3:9" in error.hint
    assert "add '}'" in error.hint
    error = syntax_error(H + "node a = m.f(x = [1,\n", "p.spg")
    assert "p.spg:3:18" in error.hint and "add ']'" in error.hint


def test_unclosed_bracket_ignores_brackets_in_strings_and_comments():
    source = H + "context {   # { ( [\n  a = \"{[(\"\n"
    error = syntax_error(source)
    assert error.message == "unclosed '{'"
    assert "<string>:3:9" in error.hint


def test_expected_tokens_are_listed():
    error = syntax_error("pipeline p\na ->")
    assert error.expected == ("a name",)
    assert "expected one of: a name" in str(error)


@pytest.mark.parametrize(
    "source, line, column",
    [
        pytest.param(H + "node a = m.f(1 2)", 3, 16, id="missing-comma-in-arguments"),
        pytest.param("pipeline p\ngroup g { a b }", 2, 13, id="missing-comma-in-group"),
        pytest.param(H + "node a = m.f([1 2])", 3, 17, id="missing-comma-in-list"),
    ],
)
def test_missing_comma_is_not_reported_as_an_unclosed_bracket(source, line, column):
    """The bracket is closed on the same line: the error is the missing ','."""
    error = syntax_error(source)
    assert (error.line, error.column) == (line, column)
    assert "unclosed" not in error.message, str(error)
    assert "','" in str(error)


# ---- SpgSyntaxError is also a SyntaxError ------------------------------------------
def test_syntax_error_is_a_python_syntax_error():
    source = "pipeline p\nuse m\nnode a = m.f $\n"
    error = syntax_error(source, "pipelines/bad.spg")
    assert isinstance(error, SyntaxError)
    assert isinstance(error, SerpytorError)
    assert error.filename == "pipelines/bad.spg"
    assert error.lineno == 3
    assert error.offset == 14
    assert error.text == "node a = m.f $"
    assert error.msg == error.message
    assert str(error).startswith("pipelines/bad.spg:3:14: error: unexpected character '$'")


def test_syntax_error_can_be_caught_as_syntax_error():
    with pytest.raises(SyntaxError):
        serpytor.compile("not a pipeline")


def test_error_in_an_empty_file_has_a_location():
    error = syntax_error("", "empty.spg")
    assert (error.line, error.column) == (1, 1)
    assert str(error).startswith("empty.spg:1:1: error: ")


def test_compile_file_names_the_file(tmp_path):
    path = tmp_path / "broken.spg"
    path.write_text("pipeline p\ncontext { k = [1, 2\n")
    with pytest.raises(SpgSyntaxError) as info:
        serpytor.compile_file(path)
    assert info.value.filename == str(path)
    assert str(info.value).startswith(f"{path}:2:")


# ---- reserved words -------------------------------------------------------------------
RESERVED = "pipeline use as context stage node x with aggregate volatile timeout group env " \
           "true false null".split()


def test_reserved_words_are_not_vertex_names():
    """README: these words are reserved; using one as a vertex name is an error at the
    declaration (one test for all words, so one bug is one failure)."""
    accepted = []
    for word in RESERVED:
        source = f"pipeline p\nuse m\nnode {word} = m.f\n"
        try:
            serpytor.compile(source)
        except SpgError as error:
            assert error.line == 3, str(error)
        else:
            accepted.append(word)
    assert accepted == [], f"reserved words accepted as vertex names: {accepted}"


def test_vertex_named_x_cannot_break_a_later_edge():
    """If `node x` were accepted, `x -> a` after it must parse; it must not fail with
    'expected an integer' on a line that is correct."""
    source = "pipeline p\nuse m\nnode a = m.f\nnode x = m.f\nx -> a\n"
    with pytest.raises(SpgError) as info:
        serpytor.compile(source)
    assert info.value.line == 4, str(info.value)
