"""Fuzzing the front end: random text and mutated valid pipelines must raise nothing
but SerPyTor's own errors, each with a location and a rendering -- never a Python
exception from lark, numpy or the compiler's internals.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, assume, example, given, settings
from strategies import SOURCES, mutated_sources, random_texts

import serpytor
from serpytor import SerpytorError, SpgError, SpgSyntaxError
from serpytor.dsl.parser import parse

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# A valid but huge replica count (`x 88888888`) is a slow pipeline, not a parser bug;
# an out-of-range one has its own test in tests/test_compiler_errors.py.
HUGE_REPLICATION = re.compile(r"\bx\s*[-+]?\d{5,}")


def check_error(error: SerpytorError, text: str) -> None:
    rendered = str(error)
    assert rendered
    if isinstance(error, SpgError) and error.span is not None:
        lines = max(len(text.splitlines()), 1)
        assert 1 <= error.line <= lines + 1, rendered
        assert error.column >= 1, rendered
        assert rendered.startswith(f"{error.span.filename}:{error.line}:{error.column}: ")


def compile_or_error(text: str) -> None:
    try:
        serpytor.compile(text)
    except SerpytorError as error:
        check_error(error, text)


@FUZZ
@given(mutated_sources())
def test_mutated_pipelines_raise_only_serpytor_errors(text):
    assume(not HUGE_REPLICATION.search(text))
    compile_or_error(text)


@FUZZ
@given(random_texts())
@example("")
@example("pipeline p\n")
@example("pipeline p\n#")
@example("pipeline p\ncontext {")
@example('pipeline p\ncontext { k = "\\')
@example("pipeline p\nnode a = m.f\na -> a -> a")
@example("\x00")
def test_random_text_raises_only_serpytor_errors(text):
    assume(not HUGE_REPLICATION.search(text))
    compile_or_error(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_sources() | random_texts())
def test_parser_raises_only_syntax_errors(text):
    """The parser alone: text is either a pipeline or an SpgSyntaxError."""
    try:
        parse(text)
    except SpgSyntaxError as error:
        check_error(error, text)


def test_the_unmutated_sources_compile():
    for source in SOURCES:
        assert serpytor.compile(source).n_vertices > 0
