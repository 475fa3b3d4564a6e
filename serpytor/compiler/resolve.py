"""Pass 1: names. AST -> IR templates, edge declarations and groups.

Checks every name a user writes: module aliases, vertex names (duplicates show both
places), edge endpoints, group members, channel kinds, replication counts, aggregate
options, and evaluates ``env(...)`` values.
"""

from __future__ import annotations

import os
from typing import Any

from ..dsl import ast
from ..errors import SourceSpan
from ._errors import compile_error, did_you_mean
from .ir import EDGE_OPERATORS, IR, AggregateSpec, EdgeDecl, Fact, FunctionRef, Group, Template
from .kinds import ChannelKind, EdgeKind, VertexFlag

AGGREGATE_FORMS = {
    frozenset({"combine"}): "combine",
    frozenset({"initial_reduce", "combine"}): "iterator",
    frozenset({"initialize", "iterate", "merge"}): "accumulator",
}
DEFAULT_FAN_IN = 8
MAX_REPLICAS = 10_000_000  # a plan holds a few arrays per vertex; more is surely a typo
CHANNEL_NAMES = ", ".join(str(kind) for kind in ChannelKind)


PLACEMENT_POLICIES = ("locality", "least_loaded", "round_robin")


def resolve(pipeline: ast.Pipeline) -> IR:
    """Check the names of a parsed pipeline and build its declaration-level IR."""
    resolver = _Resolver(pipeline)
    return resolver.run()


class _Resolver:
    def __init__(self, pipeline: ast.Pipeline) -> None:
        self.pipeline = pipeline
        self.source = pipeline.source
        self.aliases: dict[str, ast.Use] = {}
        self.templates: dict[str, Template] = {}
        self.decls: dict[str, ast.VertexDecl] = {}

    def error(self, message: str, span: SourceSpan | None, notes=(), hint=None):
        return compile_error(self.source, message, span, notes, hint)

    def run(self) -> IR:
        self.collect_uses()
        origin_facts = self.facts(self.pipeline.context, None, "context")
        for decl in self.pipeline.vertices:
            self.add_template(decl)
        templates = list(self.templates.values())
        edge_decls = self.edge_declarations()
        groups = self.groups()
        ir = IR(self.pipeline.name, self.pipeline.filename, self.source, templates,
                edge_decls, groups, origin_facts)
        ir.placement = self.placement()
        ir.placement_span = self.pipeline.placements[0].target.span \
            if self.pipeline.placements else None
        return ir

    # ---- placement ------------------------------------------------------------------
    def placement(self) -> dict[str, Any] | None:
        """``{"policy": name}`` or ``{"module", "function", "line"}`` of a user's
        allocation function; None when the pipeline leaves it to the command line."""
        decls = self.pipeline.placements
        if not decls:
            return None
        if len(decls) > 1:
            raise self.error("the pipeline declares its placement twice", decls[1].span,
                             ((decls[0].span, "first declared here"),))
        target = decls[0].target
        if len(target.parts) == 1 and target.parts[0] in PLACEMENT_POLICIES:
            return {"policy": target.parts[0]}
        if len(target.parts) == 1 and target.parts[0] not in self.aliases:
            hint = did_you_mean(target.parts[0], PLACEMENT_POLICIES) or \
                "name a policy or a function, alias.function"
            raise self.error(f"unknown placement policy '{target}'", target.span,
                             hint=f"{hint}; policies: {', '.join(PLACEMENT_POLICIES)}")
        ref = self.function_ref(target)
        return {"module": ref.module, "function": ref.qualname, "line": target.span.line
                if target.span else None}

    # ---- modules --------------------------------------------------------------------
    def collect_uses(self) -> None:
        for use in self.pipeline.uses:
            if use.alias in self.aliases:
                first = self.aliases[use.alias]
                raise self.error(f"module alias '{use.alias}' is declared twice", use.span,
                                 ((first.span, "first declared here"),))
            self.aliases[use.alias] = use

    def function_ref(self, dotted: ast.Dotted) -> FunctionRef:
        alias, *rest = dotted.parts
        if alias not in self.aliases:
            hint = did_you_mean(alias, self.aliases) or f"declare it with `use MODULE as {alias}`"
            raise self.error(f"unknown module alias '{alias}' in '{dotted}'", dotted.span,
                             hint=hint)
        if not rest:
            raise self.error(f"'{dotted}' names a module, not a function", dotted.span,
                             hint=f"write `{alias}.FUNCTION`")
        return FunctionRef(str(self.aliases[alias].module), ".".join(rest))

    # ---- values ---------------------------------------------------------------------
    def value(self, value: Any, span: SourceSpan | None) -> Any:
        """Evaluate ``env(...)`` inside a value; everything else is already Python."""
        if isinstance(value, ast.Env):
            if value.name in os.environ:
                return os.environ[value.name]
            if not value.has_default:
                raise self.error(
                    f"environment variable {value.name} is not set and has no default",
                    value.span or span, hint=f'write env("{value.name}", DEFAULT)')
            return self.value(value.default, span)
        if isinstance(value, list):
            return [self.value(v, span) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v, span) for k, v in value.items()}
        if isinstance(value, ast.BareName):
            return value.name
        return value

    def facts(self, assignments, owner: int | None, where: str) -> tuple[Fact, ...]:
        seen: dict[str, ast.Assignment] = {}
        facts = []
        for assignment in assignments:
            if assignment.key in seen:
                raise self.error(
                    f"context key '{assignment.key}' is set twice in {where}",
                    assignment.span, ((seen[assignment.key].span, "first set here"),))
            seen[assignment.key] = assignment
            value = self.value(assignment.value, assignment.span)
            facts.append(Fact(assignment.key, value, owner, assignment.span))
        return tuple(facts)

    # ---- vertices -------------------------------------------------------------------
    def add_template(self, decl: ast.VertexDecl) -> None:
        if decl.name in self.decls:
            first = self.decls[decl.name]
            raise self.error(f"'{decl.name}' is declared twice", decl.name_span,
                             ((first.name_span, "first declared here"),))
        self.decls[decl.name] = decl
        index = len(self.templates)
        flags = VertexFlag.VOLATILE if decl.volatile else VertexFlag.NONE
        self.templates[decl.name] = Template(
            index=index, name=decl.name, kind=decl.kind,
            function=self.function_ref(decl.function),
            arguments=self.arguments(decl), width=self.width(decl),
            facts=self.facts(decl.with_block, index, f"the with block of '{decl.name}'"),
            flags=flags, timeout=self.timeout(decl), aggregate=self.aggregate(decl),
            span=decl.name_span,
        )

    def arguments(self, decl: ast.VertexDecl) -> tuple[tuple[str | None, Any], ...]:
        seen: dict[str, ast.Argument] = {}
        result = []
        for argument in decl.arguments:
            if argument.name is None and seen:
                raise self.error("a positional argument follows a keyword argument",
                                 argument.span)
            if argument.name is not None:
                if argument.name in seen:
                    raise self.error(f"argument '{argument.name}' is given twice",
                                     argument.span, ((seen[argument.name].span, "first given here"),))
                seen[argument.name] = argument
            result.append((argument.name, self.value(argument.value, argument.span)))
        return tuple(result)

    def width(self, decl: ast.VertexDecl) -> int:
        if decl.kind == "node":
            if decl.replicate is not None:
                raise self.error(f"node '{decl.name}' cannot be replicated",
                                 decl.replicate.span,
                                 hint=f"declare it as `stage {decl.name} = ... x "
                                      f"{decl.replicate.count}`")
            return 1
        if decl.replicate is None:
            raise self.error(f"stage '{decl.name}' needs a replica count", decl.name_span,
                             hint=f"write `stage {decl.name} = {decl.function} x N`, or "
                                  f"declare it as a node")
        if decl.replicate.count < 1:
            raise self.error(f"stage '{decl.name}' has x {decl.replicate.count}; "
                             "a stage needs at least one replica", decl.replicate.span,
                             hint="use x 1 or more")
        if decl.replicate.count > MAX_REPLICAS:
            raise self.error(f"stage '{decl.name}' has x {decl.replicate.count}; at most "
                             f"{MAX_REPLICAS:,} replicas are allowed", decl.replicate.span)
        return decl.replicate.count

    def timeout(self, decl: ast.VertexDecl) -> float | None:
        if decl.timeout is None:
            return None
        if decl.timeout.seconds <= 0:
            raise self.error(f"timeout of '{decl.name}' must be positive",
                             decl.timeout.span)
        return decl.timeout.seconds

    def aggregate(self, decl: ast.VertexDecl) -> AggregateSpec | None:
        if decl.aggregate is None:
            return None
        if decl.kind != "node":
            raise self.error(f"aggregate applies to a node, and '{decl.name}' is a stage",
                             decl.aggregate.span, hint="declare it as `node`")
        functions: dict[str, FunctionRef] = {}
        fan_in = DEFAULT_FAN_IN
        for option in decl.aggregate.options:
            if option.name == "fan_in":
                fan_in = self.fan_in(option)
            elif isinstance(option.value, ast.Dotted):
                functions[option.name] = self.function_ref(option.value)
            else:
                raise self.error(f"aggregate option '{option.name}' takes a function",
                                 option.span)
        form = AGGREGATE_FORMS.get(frozenset(functions))
        if form is None:
            raise self.error(
                "aggregate takes (combine = f), (initial_reduce = f, combine = g) or "
                "(initialize = f, iterate = g, merge = h), optionally with fan_in = N; "
                f"got ({', '.join(functions) or 'nothing'})", decl.aggregate.span)
        return AggregateSpec(form, functions, fan_in)

    def fan_in(self, option: ast.AggregateOption) -> int:
        if not isinstance(option.value, int) or option.value < 2:
            raise self.error("fan_in must be an integer of at least 2", option.span)
        return option.value

    # ---- edges ----------------------------------------------------------------------
    def template_named(self, name: str, span: SourceSpan | None) -> Template:
        if name in self.templates:
            return self.templates[name]
        groups = {g.name for g in self.pipeline.groups}
        if name in groups:
            raise self.error(f"'{name}' is a group, not a vertex; connect its members",
                             span)
        raise self.error(f"edge to undeclared name '{name}'", span,
                         hint=did_you_mean(name, self.templates)
                         or f"declare it with `node {name} = ...` or `stage {name} = ... x N`")

    def edge_declarations(self) -> list[EdgeDecl]:
        decls: list[EdgeDecl] = []
        for chain in self.pipeline.edges:
            channel = self.channel(chain)
            ends = [self.template_named(n, s) for n, s in zip(chain.names, chain.name_spans)]
            for i, operator in enumerate(chain.operators):
                src, dst = ends[i], ends[i + 1]
                kind = EDGE_OPERATORS[operator]
                span = chain.name_spans[i]
                self.check_operator(src, dst, kind, span)
                decls.append(EdgeDecl(len(decls), src.index, dst.index, kind, channel, span))
        return decls

    def check_operator(self, src: Template, dst: Template, kind: EdgeKind,
                       span: SourceSpan | None) -> None:
        if kind is EdgeKind.PLAIN and src.width > 1 and dst.width > 1:
            raise self.error(
                f"'->' between two stages ({src.name} x {src.width}, {dst.name} x "
                f"{dst.width}) is ambiguous", span,
                hint=f"write `{src.name} => {dst.name}` (pointwise) or "
                     f"`{src.name} >> {dst.name}` (all-to-all)")

    def channel(self, chain: ast.EdgeChain) -> ChannelKind:
        channel = ChannelKind.AUTO
        for attribute in chain.attributes:
            if attribute.name != "channel":
                raise self.error(f"unknown edge attribute '{attribute.name}'", attribute.span,
                                 hint="edges take [channel = shm|tcp|file|auto]")
            value = self.value(attribute.value, attribute.span)
            try:
                channel = ChannelKind.parse(str(value))
            except KeyError:
                raise self.error(f"unknown channel kind '{value}'", attribute.span,
                                 hint=f"expected one of: {CHANNEL_NAMES}") from None
        return channel

    # ---- groups ---------------------------------------------------------------------
    def groups(self) -> list[Group]:
        groups: list[Group] = []
        owner: dict[str, ast.GroupDecl] = {}
        names: dict[str, ast.GroupDecl] = {}
        for decl in self.pipeline.groups:
            self.check_group_name(decl, names)
            members = []
            for member, span in zip(decl.members, decl.member_spans):
                if member in owner:
                    other = owner[member]
                    raise self.error(f"'{member}' is in two groups, '{other.name}' and "
                                     f"'{decl.name}'", span, ((other.span, "first group here"),))
                if member not in self.templates:
                    raise self.error(f"group '{decl.name}' names undeclared vertex "
                                     f"'{member}'", span, hint=did_you_mean(member, self.templates))
                owner[member] = decl
                members.append(self.templates[member].index)
            groups.append(Group(len(groups), decl.name, tuple(members), decl.span))
        return groups

    def check_group_name(self, decl: ast.GroupDecl, names: dict) -> None:
        if decl.name in names:
            raise self.error(f"group '{decl.name}' is declared twice", decl.span,
                             ((names[decl.name].span, "first declared here"),))
        if decl.name in self.templates:
            raise self.error(f"group '{decl.name}' has the name of a vertex", decl.span,
                             ((self.decls[decl.name].name_span, "the vertex"),))
        if not decl.members:
            raise self.error(f"group '{decl.name}' has no members", decl.span)
        names[decl.name] = decl
