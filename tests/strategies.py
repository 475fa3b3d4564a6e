"""Hypothesis strategies shared by the compiler's property and fuzz tests.

* :func:`mutated_sources` -- a valid pipeline (examples/, tests/fixtures/override.spg) with
  a few characters or tokens deleted, inserted, duplicated or swapped;
* :func:`random_texts` -- text made of the characters and words of the language;
* :func:`shuffled_statements` -- a pipeline with its statements in another order.

The random DAGs with groups and facts come from :mod:`serpytor.testing`
(``context_graphs``), the same strategies users get.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from hypothesis import strategies as st

# When a property fails, Hypothesis' pytest plugin imports hypothesis.extra._patching,
# which imports libcst, which warns (DeprecationWarning from mypy_extensions); with
# `filterwarnings = error` that warning turns the failure report into a pytest
# INTERNALERROR that hides the falsifying example. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - libcst is optional
        pass

ROOT = Path(__file__).resolve().parent.parent
# valid pipelines only (other fixtures hold errors on purpose)
SOURCES = tuple(p.read_text("utf-8") for p in sorted(
    [*(ROOT / "examples").glob("*.spg"), ROOT / "tests" / "fixtures" / "override.spg"]))

# strings, names, numbers, the three edge operators, then any other single character
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[A-Za-z_]\w*'
                   r"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|->|=>|>>|\s+|.", re.S)
WORDS = ("pipeline", "use", "as", "context", "stage", "node", "x", "with", "aggregate",
         "volatile", "timeout", "group", "env", "true", "false", "null", "combine",
         "fan_in", "channel", "shm", "tcp", "file", "auto", "->", "=>", ">>", "{", "}",
         "(", ")", "[", "]", "=", ",", ".", ":", "#", '"', "'", "\\", "\n", " ", "0", "8",
         "-1", "1.5", "1e999", "99999999999999999999", '"s"', "'\\q'", 'env("X")',
         "a", "wc", "read", "count", "merge", "review")
CHARACTERS = "abcxyz_019 \n\t{}()[]=<>-,.:#\"'\\@$+é\x00"


def tokens(source: str) -> list[str]:
    """The source split into tokens whose concatenation is the source."""
    return TOKEN.findall(source)


@st.composite
def _mutate(draw, pieces: list[str], fillers) -> str:
    pieces = list(pieces)
    for _ in range(draw(st.integers(1, 5))):
        operation = draw(st.sampled_from(["delete", "insert", "duplicate", "swap"]))
        if not pieces and operation != "insert":
            continue
        index = draw(st.integers(0, max(len(pieces) - 1, 0)))
        if operation == "delete":
            del pieces[index]
        elif operation == "insert":
            pieces.insert(index, draw(fillers))
        elif operation == "duplicate":
            pieces.insert(index, pieces[index])
        else:
            other = draw(st.integers(0, len(pieces) - 1))
            pieces[index], pieces[other] = pieces[other], pieces[index]
    return "".join(pieces)


@st.composite
def mutated_sources(draw) -> str:
    """A valid pipeline with one to five character- or token-level mutations."""
    source = draw(st.sampled_from(SOURCES))
    if draw(st.booleans()):
        return draw(_mutate(list(source), st.sampled_from(CHARACTERS)))
    fillers = st.sampled_from(WORDS) | st.sampled_from(tokens(source))
    return draw(_mutate(tokens(source), fillers))


def random_texts() -> st.SearchStrategy[str]:
    """Random text, raw or after a valid ``pipeline`` line, built from the language's
    characters and words (and any unicode now and then)."""
    pieces = st.lists(st.sampled_from(WORDS) | st.sampled_from(CHARACTERS), max_size=40)
    words = pieces.map("".join)
    raw = st.text(max_size=60)
    body = st.one_of(words, words, raw)
    return st.one_of(body, body.map(lambda text: "pipeline p\n" + text))


def shuffled_statements(source: str, random) -> str:
    """The same pipeline with its statements (all lines after ``use``) in another order;
    ``random`` is a Hypothesis ``randoms()`` value."""
    lines = source.splitlines()
    head, body = lines[:2], lines[2:]
    random.shuffle(body)
    return "\n".join(head + body) + "\n"
