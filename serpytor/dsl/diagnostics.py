"""Turn lark's parse errors into one clear :class:`SpgSyntaxError`.

A diagnostic says where (file:line:col, the source line and a caret), what was found,
what was expected (in words, not terminal names), and for the common mistakes a plain
label: an unclosed brace, a missing ``=``, replication written without ``x``.
"""

from __future__ import annotations

import re

import lark

from ..errors import SourceSpan, SpgSyntaxError
from .ast import RESERVED_WORDS

OPENERS = {"{": "}", "(": ")", "[": "]"}
CLOSERS = {v: k for k, v in OPENERS.items()}

# Terminals whose names say nothing to a user.
FRIENDLY_TERMINALS = {
    "NAME": "a name",
    "STRING": "a string",
    "SIGNED_INT": "an integer",
    "SIGNED_FLOAT": "a number",
    "EDGE_OP": "an edge operator (->, =>, >>)",
    "$END": "end of file",
}

STATEMENT_WORDS = {"pipeline", "use", "context", "stage", "node", "group"}
FOUND_WORDS = {"NAME": "name", "STRING": "string", "SIGNED_INT": "integer",
               "SIGNED_FLOAT": "number", "EDGE_OP": "edge operator"}


def syntax_error_from_lark(error: lark.exceptions.UnexpectedInput, text: str,
                           filename: str) -> SpgSyntaxError:
    """Build the diagnostic for a lark error raised while parsing ``text``."""
    line, column = _error_position(error, text)
    span = SourceSpan(filename, line, column)
    source_line = _line_of(text, line)
    expected = _expected_words(error)
    found = _found_words(error)
    unclosed = _unclosed_bracket(text, _offset_of(text, line, column))
    if unclosed and unclosed[1][0] < line:
        # inside brackets keywords read as keys, so the parser may stumble a word late:
        # a later line that starts with a statement keyword means the bracket never closed
        first_word = (source_line or "").split(maxsplit=1)[:1]
        if first_word and first_word[0] in STATEMENT_WORDS:
            column = len(source_line) - len(source_line.lstrip()) + 1
            span = SourceSpan(filename, line, column)
            found = f"'{first_word[0]}'"
            expected = ["'" + OPENERS[unclosed[0]] + "'"]
    starts_line = not (source_line or "")[: column - 1].strip()
    if unclosed and not (found == "end of file" or (starts_line and line > unclosed[1][0])):
        unclosed = None  # the bracket may close later on; the mistake is here
    message, hint = _label(error, found, expected, unclosed, source_line or "", filename)
    if hint is not None:
        expected = []  # the label says it better than a list of tokens
    return SpgSyntaxError(message, span, source_line, tuple(expected), hint)


def _label(error, found: str, expected: list[str], unclosed, source_line: str, filename: str):
    """The message and hint for the error: a known mistake, or 'unexpected X'."""
    at_end = found == "end of file"
    closing = {f"'{c}'" for c in CLOSERS}
    if unclosed and (at_end or closing & set(expected)):
        bracket, (line, column) = unclosed
        return (f"unclosed '{bracket}'",
                f"the '{bracket}' opened at {filename}:{line}:{column} is never closed; "
                f"add '{OPENERS[bracket]}'")
    if found.strip("'") in RESERVED_WORDS and "a name" in expected:
        return (f"{found} is a reserved word", "choose another name")
    if "'='" in expected and len(expected) <= 2:
        return (f"missing '=' before {found}", "write `NAME = value`")
    if found.startswith("integer") and _REPLICATED_DECL.match(source_line):
        return ("replication is written `x N`", "write, e.g., `stage s = m.f x 8`")
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        return (f"unexpected character {found}", None)
    if "'pipeline'" in expected:
        return ("a .spg file starts with `pipeline NAME`", None)
    return (f"unexpected {found}", None)


_REPLICATED_DECL = re.compile(r"\s*stage\s+\w+\s*=")


def _error_position(error, text: str) -> tuple[int, int]:
    line = getattr(error, "line", -1)
    column = getattr(error, "column", -1)
    token = getattr(error, "token", None)
    at_end = token is not None and token.type == "$END"
    if isinstance(error, lark.exceptions.UnexpectedEOF) or at_end or line in (None, -1):
        lines = text.splitlines() or [""]
        # point just past the last non-blank character
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].strip():
                return index + 1, len(lines[index].rstrip()) + 1
        return 1, 1
    return line, column


def _line_of(text: str, line: int) -> str | None:
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else None


def _offset_of(text: str, line: int, column: int) -> int:
    lines = text.splitlines(keepends=True)
    return sum(len(l) for l in lines[: line - 1]) + column - 1


def _terminal_words(name: str) -> str:
    if name in FRIENDLY_TERMINALS:
        return FRIENDLY_TERMINALS[name]
    from .parser import spg_parser  # the parser module imports this one

    for terminal in spg_parser().terminals:
        if terminal.name == name and terminal.pattern.type == "str":
            return f"'{terminal.pattern.value}'"
    return name.lower()


def _expected_words(error) -> list[str]:
    names = getattr(error, "expected", None) or getattr(error, "allowed", None) or ()
    words = sorted({_terminal_words(n) for n in names})
    return words


def _found_words(error) -> str:
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        return repr(error.char)
    if isinstance(error, lark.exceptions.UnexpectedEOF):
        return "end of file"
    token = getattr(error, "token", None)
    if token is None or token.type == "$END":
        return "end of file"
    if token.type in FOUND_WORDS:
        return f"{FOUND_WORDS[token.type]} '{token}'"
    return f"'{token}'"


def _unclosed_bracket(text: str, stop: int):
    """The innermost bracket opened before ``stop`` and not closed, with its position."""
    stack: list[tuple[str, int]] = []
    index = 0
    while index < min(stop, len(text)):
        char = text[index]
        if char == "#":
            index = _skip_until(text, index, "\n")
            continue
        if char in "\"'":
            index = _skip_string(text, index)
            continue
        if char in OPENERS:
            stack.append((char, index))
        elif char in CLOSERS and stack and stack[-1][0] == CLOSERS[char]:
            stack.pop()
        index += 1
    if not stack:
        return None
    bracket, offset = stack[-1]
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return bracket, (line, column)


def _skip_until(text: str, index: int, char: str) -> int:
    end = text.find(char, index)
    return len(text) if end < 0 else end


def _skip_string(text: str, index: int) -> int:
    quote = text[index]
    index += 1
    while index < len(text) and text[index] not in (quote, "\n"):
        index += 2 if text[index] == "\\" else 1
    return index + 1
