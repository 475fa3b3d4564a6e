"""The compiler's intermediate representation.

The IR has two levels. *Templates* are the declared vertices (one per ``stage``/``node``,
plus the combiner levels the aggregation pass adds); *edge declarations* are the
declared edges between templates. Expansion turns them into *vertex arrays* and *edge
arrays* (numpy), so a graph of a million edges is a few arrays, not a million objects.

Vertex ``v`` belongs to template ``vertex_template[v]`` with replica index
``vertex_partition[v]``; the vertices of one template are contiguous, starting at
``template.first``. Edge ``e`` goes ``edge_src[e] -> edge_dst[e]``, came from
declaration ``edge_decl[e]`` and uses channel ``edge_channel[e]``.

``str()`` of an IR node prints DSL-like text; ``repr()`` its constructor form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SourceSpan
from .kinds import ChannelKind, EdgeKind, VertexFlag

EDGE_OPERATORS = {"->": EdgeKind.PLAIN, "=>": EdgeKind.POINTWISE, ">>": EdgeKind.ALL}
OPERATOR_TEXT = {kind: text for text, kind in EDGE_OPERATORS.items()}
OPERATOR_TEXT[EdgeKind.TREE] = "~>"


@dataclass(frozen=True)
class FunctionRef:
    """A Python function by module and qualified name."""

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclass(frozen=True)
class Fact:
    """A static context fact ``key = value`` declared at ``span``.

    ``owner`` is the template that declares it (``None``: the origin context).
    """

    key: str
    value: Any
    owner: int | None
    span: SourceSpan | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}"


@dataclass(frozen=True)
class AggregateSpec:
    """How an aggregate node's fan-in is combined (DESIGN.md section 2).

    ``form`` is ``"combine"``, ``"iterator"`` (initial_reduce + combine) or
    ``"accumulator"`` (initialize + iterate + merge); ``functions`` maps option names
    to functions; ``fan_in`` is the most inputs one combiner vertex takes.
    """

    form: str
    functions: dict[str, FunctionRef]
    fan_in: int = 8

    def __str__(self) -> str:
        options = [f"{name} = {ref}" for name, ref in self.functions.items()]
        return "aggregate(" + ", ".join(options + [f"fan_in = {self.fan_in}"]) + ")"


@dataclass
class Template:
    """One declared vertex (``node`` has width 1) or one level of a combiner tree."""

    index: int
    name: str
    kind: str  # "stage", "node" or "combiner"
    function: FunctionRef
    arguments: tuple[tuple[str | None, Any], ...] = ()
    width: int = 1
    first: int = 0
    facts: tuple[Fact, ...] = ()
    flags: VertexFlag = VertexFlag.NONE
    timeout: float | None = None
    aggregate: AggregateSpec | None = None
    # for combiner levels: the aggregate node they serve and the option they run
    serves: int | None = None
    role: str | None = None
    # combiners hand their partials to the root under the name of the aggregated parent
    inject_as: str | None = None
    span: SourceSpan | None = None

    def vertex_name(self, partition: int) -> str:
        return f"{self.name}[{partition}]" if self.kind != "node" else self.name

    def __str__(self) -> str:
        args = ", ".join(f"{k} = {v!r}" if k else repr(v) for k, v in self.arguments)
        text = f"{self.kind} {self.name} = {self.function}" + (f"({args})" if args else "")
        if self.kind != "node":
            text += f" x {self.width}"
        if self.aggregate:
            text += f" {self.aggregate}"
        if self.facts:
            text += " with { " + ", ".join(str(f) for f in self.facts) + " }"
        if self.flags & VertexFlag.VOLATILE:
            text += " volatile"
        if self.timeout is not None:
            text += f" timeout {self.timeout}"
        return text


@dataclass
class EdgeDecl:
    """A declared edge between two templates."""

    index: int
    src: int
    dst: int
    kind: EdgeKind
    channel: ChannelKind = ChannelKind.AUTO
    span: SourceSpan | None = None


@dataclass
class Group:
    """A group of dependent origins (a union node): its member templates."""

    index: int
    name: str
    members: tuple[int, ...]
    span: SourceSpan | None = None

    def __str__(self) -> str:
        return f"group {self.name} {{ ... {len(self.members)} members }}"


@dataclass
class IR:
    """Everything the passes know about one pipeline."""

    pipeline: str
    filename: str
    source: str
    templates: list[Template]
    edge_decls: list[EdgeDecl]
    groups: list[Group]
    origin_facts: tuple[Fact, ...]
    module_paths: tuple[str, ...] = ()
    placement: dict[str, Any] | None = None  # see resolve.placement
    placement_span: SourceSpan | None = None
    # filled by expand (and extended by aggregate)
    vertex_template: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    vertex_partition: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    edge_src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    edge_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    edge_decl: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    edge_channel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @property
    def n_vertices(self) -> int:
        return int(self.vertex_template.shape[0])

    def vertex_name(self, vertex: int) -> str:
        template = self.templates[int(self.vertex_template[vertex])]
        return template.vertex_name(int(self.vertex_partition[vertex]))

    def template_by_name(self, name: str) -> Template:
        return next(t for t in self.templates if t.name == name)

    def source_line(self, span: SourceSpan | None) -> str | None:
        if span is None:
            return None
        lines = self.source.splitlines()
        return lines[span.line - 1] if 0 < span.line <= len(lines) else None

    def __str__(self) -> str:
        lines = [f"pipeline {self.pipeline}"]
        lines += [f"context {{ {f} }}" for f in self.origin_facts]
        lines += [str(t) for t in self.templates]
        for decl in self.edge_decls:
            src, dst = self.templates[decl.src].name, self.templates[decl.dst].name
            lines.append(f"{src} {OPERATOR_TEXT[decl.kind]} {dst} [channel = {decl.channel}]")
        for group in self.groups:
            members = ", ".join(self.templates[m].name for m in group.members)
            lines.append(f"group {group.name} {{ {members} }}")
        return "\n".join(lines) + "\n"
