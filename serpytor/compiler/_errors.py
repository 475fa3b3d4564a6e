"""Build compile errors that show the offending source line."""

from __future__ import annotations

import difflib
from typing import Iterable

from ..errors import SourceSpan, SpgCompileError


def source_line(source: str, span: SourceSpan | None) -> str | None:
    if span is None:
        return None
    lines = source.splitlines()
    return lines[span.line - 1] if 0 < span.line <= len(lines) else None


def compile_error(source: str, message: str, span: SourceSpan | None,
                  notes: tuple = (), hint: str | None = None,
                  cls: type[SpgCompileError] = SpgCompileError) -> SpgCompileError:
    return cls(message, span, source_line(source, span), notes, hint)


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{close[0]}'?" if close else None
