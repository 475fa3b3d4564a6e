"""SerPyTor: compiled, statically checked dataflow pipelines for Python.

Layers (data flows one way): ``dsl`` (text -> AST) -> ``compiler`` (AST -> Plan)
-> ``runtime`` (executes a Plan); ``compiler`` and ``runtime`` call the ``_core``
kernels. This module re-exports the public API; everything else is private.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compiler import compile_path as _compile_path
from .compiler import compile_source as _compile_source
from .compiler.kinds import ChannelKind, EdgeKind, VertexFlag
from .compiler.plan import Plan
from .errors import (
    AmbiguousContextError,
    ContextConflictError,
    CycleError,
    PlanFormatError,
    SerpytorError,
    SourceSpan,
    SpgCompileError,
    SpgError,
    SpgSyntaxError,
)

if TYPE_CHECKING:
    from .runtime.result import RunResult

__version__ = "0.1.0"


def compile(source: str, filename: str = "<string>") -> Plan:  # noqa: A001 - public name
    """Compile ``.spg`` source text into a :class:`Plan`.

    Raises :class:`SpgError` (a syntax or compile error with its location).
    """
    return _compile_source(source, filename)


def compile_file(path: str | Path) -> Plan:
    """Compile a ``.spg`` file into a :class:`Plan` (the same as ``compile`` of its text)."""
    return _compile_path(path)


def load_plan(path: str | Path) -> Plan:
    """Load a ``.spgc`` file written by ``serpytorc``."""
    return Plan.load(path)


def run(pipeline: Plan | str | Path, **options: Any) -> RunResult:
    """Run a Plan, a ``.spg`` or a ``.spgc`` file and return its :class:`RunResult`.

    Options as ``serpytor run``: ``inline``, ``workers``, ``servers``, ``journal``,
    ``fresh``, ``durable``, ``overrides``, ``keep_going``, ``progress``, ``placement``
    (see :func:`serpytor.runtime.api.run`). The runtime (and ZeroMQ) is imported on
    first use, so compiling alone never loads it.
    """
    from .runtime.api import run as run_plan

    return run_plan(pipeline, **options)


__all__ = [
    "AmbiguousContextError", "ChannelKind", "ContextConflictError", "CycleError",
    "EdgeKind", "Plan", "PlanFormatError", "SerpytorError", "SourceSpan",
    "SpgCompileError", "SpgError", "SpgSyntaxError", "VertexFlag", "compile",
    "compile_file", "load_plan", "run",
]
