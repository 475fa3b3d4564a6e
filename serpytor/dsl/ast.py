"""The AST of a ``.spg`` file: one dataclass per grammar rule, each with its position.

Built by :class:`serpytor.dsl.parser.AstBuilder`; nothing outside ``dsl/`` looks at
lark trees. ``str()`` of a node prints it back as ``.spg`` text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import SourceSpan


@dataclass(frozen=True)
class Env:
    """``env("NAME", default)``: an environment variable read when the pipeline compiles."""

    name: str
    default: Any = None
    span: SourceSpan | None = field(default=None, compare=False)
    has_default: bool = field(default=True, compare=False)

    def __str__(self) -> str:
        if not self.has_default:
            return f"env({format_value(self.name)})"
        return f"env({format_value(self.name)}, {format_value(self.default)})"


@dataclass(frozen=True)
class BareName:
    """A bare identifier used as a value, as in ``[channel = tcp]``."""

    name: str

    def __str__(self) -> str:
        return self.name


Value = Union[str, int, float, bool, None, list, dict, Env, BareName]


def format_value(value: Value) -> str:
    """Print a value as ``.spg`` text."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are valid .spg string escapes
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_map_key(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _map_key(key: str) -> str:
    bare = key.isidentifier() and key.isascii() and key not in ("true", "false", "null", "env")
    return key if bare else json.dumps(key)


RESERVED_WORDS = frozenset(
    "pipeline use as context stage node x with aggregate volatile timeout group placement "
    "env true false null".split())


@dataclass(frozen=True)
class Dotted:
    """A dotted name: ``wc.count_words`` or ``examples.wordcount``."""

    parts: tuple[str, ...]
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Use:
    """``use MODULE as ALIAS``."""

    module: Dotted
    alias: str
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"use {self.module} as {self.alias}"


@dataclass(frozen=True)
class Assignment:
    """``key = value`` inside ``context { }`` or ``with { }``."""

    key: str
    value: Value
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.key} = {format_value(self.value)}"


@dataclass(frozen=True)
class Argument:
    """A DSL argument of a call; ``name`` is None for a positional one."""

    name: str | None
    value: Value
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        text = format_value(self.value)
        return f"{self.name} = {text}" if self.name else text


@dataclass(frozen=True)
class AggregateOption:
    """One option of ``aggregate(...)``: a function (dotted) or an integer (fan_in)."""

    name: str
    value: Dotted | int
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"


@dataclass(frozen=True)
class Aggregate:
    """``aggregate(...)``: the node's fan-in becomes a combiner tree."""

    options: tuple[AggregateOption, ...]
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return "aggregate(" + ", ".join(str(o) for o in self.options) + ")"


@dataclass(frozen=True)
class Replicate:
    """``x N``."""

    count: int
    span: SourceSpan | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Timeout:
    """``timeout SECONDS``."""

    seconds: float
    span: SourceSpan | None = field(default=None, compare=False)


@dataclass(frozen=True)
class VertexDecl:
    """``stage NAME = CALL x N ...`` or ``node NAME = CALL ...``."""

    kind: str  # "stage" or "node"
    name: str
    function: Dotted
    arguments: tuple[Argument, ...] = ()
    replicate: Replicate | None = None
    with_block: tuple[Assignment, ...] = ()
    aggregate: Aggregate | None = None
    volatile: bool = False
    timeout: Timeout | None = None
    span: SourceSpan | None = field(default=None, compare=False)
    name_span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        text = f"{self.kind} {self.name} = {self.function}"
        if self.arguments:
            text += "(" + ", ".join(str(a) for a in self.arguments) + ")"
        if self.replicate:
            text += f" x {self.replicate.count}"
        if self.aggregate:
            text += f" {self.aggregate}"
        if self.with_block:
            text += " with { " + ", ".join(str(a) for a in self.with_block) + " }"
        if self.volatile:
            text += " volatile"
        if self.timeout:
            text += f" timeout {self.timeout.seconds}"
        return text


@dataclass(frozen=True)
class EdgeAttribute:
    """``name = value`` inside an edge's ``[ ]``."""

    name: str
    value: Value
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.name} = {format_value(self.value)}"


@dataclass(frozen=True)
class EdgeChain:
    """``a -> b => c [channel = tcp]``: one or more edges sharing attributes."""

    names: tuple[str, ...]
    operators: tuple[str, ...]
    attributes: tuple[EdgeAttribute, ...] = ()
    span: SourceSpan | None = field(default=None, compare=False)
    name_spans: tuple[SourceSpan | None, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        text = self.names[0]
        for op, name in zip(self.operators, self.names[1:]):
            text += f" {op} {name}"
        if self.attributes:
            text += " [" + ", ".join(str(a) for a in self.attributes) + "]"
        return text


@dataclass(frozen=True)
class GroupDecl:
    """``group NAME { a, b }``: dependent origins forming a union node."""

    name: str
    members: tuple[str, ...]
    span: SourceSpan | None = field(default=None, compare=False)
    member_spans: tuple[SourceSpan | None, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return f"group {self.name} {{ " + ", ".join(self.members) + " }"


@dataclass(frozen=True)
class Placement:
    """``placement POLICY`` or ``placement alias.function``: where vertices run."""

    target: Dotted
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"placement {self.target}"


@dataclass(frozen=True)
class Pipeline:
    """A whole ``.spg`` file. ``source`` keeps the text for diagnostics."""

    name: str
    uses: tuple[Use, ...]
    context: tuple[Assignment, ...]
    vertices: tuple[VertexDecl, ...]
    edges: tuple[EdgeChain, ...]
    groups: tuple[GroupDecl, ...]
    filename: str = "<string>"
    source: str = field(default="", repr=False, compare=False)
    span: SourceSpan | None = field(default=None, compare=False)
    placements: tuple[Placement, ...] = ()

    def __str__(self) -> str:
        lines = [f"pipeline {self.name}", ""]
        lines += [str(u) for u in self.uses]
        lines += [str(p) for p in self.placements]
        if self.context:
            lines.append("context {")
            lines += [f"    {a}" for a in self.context]
            lines.append("}")
        lines += [str(v) for v in self.vertices]
        lines += [str(e) for e in self.edges]
        lines += [str(g) for g in self.groups]
        return "\n".join(lines) + "\n"

    def source_line(self, line: int | None) -> str | None:
        """The text of a 1-based line of the source, for diagnostics."""
        if line is None:
            return None
        lines = self.source.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None
