"""Property-testing helpers for SerPyTor pipelines (needs ``hypothesis``:
``pip install serpytor[testing]``).

* :class:`ContextGraph` — a small DAG with groups and static facts;
* :func:`context_graphs` — a Hypothesis strategy of such graphs;
* :func:`direct_context` — the context rules of DESIGN.md section 3 evaluated directly,
  fact set by fact set, with no bitsets: the oracle the compiler is checked against;
* :func:`to_spg` — the graph as ``.spg`` text, so a property test can compile it.

Example::

    from hypothesis import given
    import serpytor
    from serpytor.testing import context_graphs, direct_context, to_spg

    @given(context_graphs())
    def test_contexts(graph):
        expected = direct_context(graph)
        ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

ORIGIN = 0  # the origin context xi(0) is origin 0; vertex v is origin ("v", v)

Origin = Any  # 0 or ("v", vertex)
FactT = tuple[str, Any, Origin]  # (key, value, origin)


@dataclass(frozen=True)
class ContextGraph:
    """Vertices ``0..n-1``; ``edges`` (parent, child) with parent < child;
    ``groups`` disjoint vertex sets; ``facts[v]`` the static facts ``Psi(v)``;
    ``origin_facts`` the origin context ``xi(0)``."""

    n: int
    edges: tuple[tuple[int, int], ...]
    groups: tuple[frozenset[int], ...] = ()
    facts: dict[int, dict[str, Any]] = field(default_factory=dict)
    origin_facts: dict[str, Any] = field(default_factory=dict)

    def parents(self, v: int) -> list[int]:
        return [a for a, b in self.edges if b == v]

    def union_of(self, v: int) -> Any:
        """U(v): v's group (as ``("g", index)``) or v itself."""
        for index, group in enumerate(self.groups):
            if v in group:
                return ("g", index)
        return v

    def members(self, node: Any) -> frozenset[int]:
        return self.groups[node[1]] if isinstance(node, tuple) else frozenset([node])

    def node_parents(self, node: Any) -> set[Any]:
        """Parents of a union node (outside its members) or of a plain vertex."""
        inside = self.members(node)
        return {self.union_of(p) for m in inside for p in self.parents(m) if p not in inside}


def psi(graph: ContextGraph, v: int) -> set[FactT]:
    return {(k, _freeze(val), ("v", v)) for k, val in graph.facts.get(v, {}).items()}


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def xi(graph: ContextGraph) -> dict[int, frozenset[FactT]]:
    """Every vertex's context as a set of facts, by rules 1-3."""
    origin = {(k, _freeze(v), ORIGIN) for k, v in graph.origin_facts.items()}

    @functools.lru_cache(maxsize=None)
    def of_node(node: Any) -> frozenset[FactT]:
        parents = graph.node_parents(node)
        inherited = set().union(*(of_node(p) for p in parents)) if parents else set(origin)
        own = set().union(*(psi(graph, m) for m in graph.members(node)))
        return frozenset(inherited | own)

    return {v: of_node(graph.union_of(v)) for v in range(graph.n)}


def strict_ancestors(graph: ContextGraph) -> dict[Origin, set[Origin]]:
    """For every origin, the origins that precede it (0 precedes every vertex; the
    members of a group stand side by side)."""
    @functools.lru_cache(maxsize=None)
    def above(node: Any) -> frozenset[int]:
        result: set[int] = set()
        for parent in graph.node_parents(node):
            result |= graph.members(parent) | above(parent)
        return frozenset(result)

    table: dict[Origin, set[Origin]] = {ORIGIN: set()}
    for v in range(graph.n):
        table[("v", v)] = {ORIGIN} | {("v", a) for a in above(graph.union_of(v))}
    return table


def nearest(facts: frozenset[FactT], key: str, ancestors: dict) -> set[FactT]:
    """The facts for ``key`` whose origin precedes no other such fact's origin."""
    candidates = {f for f in facts if f[0] == key}
    shadowed = set().union(*(ancestors[f[2]] for f in candidates)) if candidates else set()
    return {f for f in candidates if f[2] not in shadowed}


def direct_context(graph: ContextGraph) -> dict[int, dict[str, set[FactT]]]:
    """For each vertex, for each key reaching it, the nearest facts."""
    contexts = xi(graph)
    ancestors = strict_ancestors(graph)
    return {v: {k: nearest(facts, k, ancestors) for k in {f[0] for f in facts}}
            for v, facts in contexts.items()}


def has_conflict(context: dict[int, dict[str, set[FactT]]]) -> bool:
    return any(len({f[1] for f in fs}) > 1 for per_key in context.values()
               for fs in per_key.values())


def vertex_name(v: int) -> str:
    return f"v{v}"


def to_spg(graph: ContextGraph, name: str = "random") -> str:
    """The graph as a ``.spg`` pipeline whose vertices run :func:`collect`."""
    lines = [f"pipeline {name}", "use serpytor.testing as t"]
    if graph.origin_facts:
        lines.append("context { " + " ".join(f"{k} = {v!r}" for k, v in
                                                graph.origin_facts.items()) + " }")
    for v in range(graph.n):
        facts = graph.facts.get(v, {})
        block = (" with { " + " ".join(f"{k} = {val!r}" for k, val in facts.items()) + " }"
                 if facts else "")
        lines.append(f"node {vertex_name(v)} = t.collect{block}")
    lines += [f"{vertex_name(a)} -> {vertex_name(b)}" for a, b in graph.edges]
    for index, group in enumerate(graph.groups):
        lines.append(f"group g{index} {{ " + ", ".join(vertex_name(m) for m in sorted(group))
                     + " }")
    return "\n".join(lines) + "\n"


def collect(inputs: dict, context: Any) -> dict:
    """A vertex function for generated pipelines: returns what it was given."""
    return {"inputs": dict(inputs), "context": dict(context) if context is not None else {}}


def quotient_is_acyclic(graph: ContextGraph) -> bool:
    """False when a group reaches itself through an outside vertex."""
    from .compiler.cycles import get_cycle

    nodes = sorted({graph.union_of(v) for v in range(graph.n)}, key=str)
    index = {node: i for i, node in enumerate(nodes)}
    edges = {(index[graph.union_of(a)], index[graph.union_of(b)]) for a, b in graph.edges
             if graph.union_of(a) != graph.union_of(b)}
    return get_cycle(len(nodes), sorted(edges)) is None


def context_graphs(max_vertices: int = 10, keys: str = "abc", values: int = 3,
                   allow_conflicts: bool = True):
    """A Hypothesis strategy of :class:`ContextGraph` (acyclic, groups well formed)."""
    try:
        from hypothesis import strategies as st
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("serpytor.testing needs hypothesis: pip install "
                          "'serpytor[testing]'") from error

    key = st.sampled_from(list(keys))
    value = st.integers(0, values - 1)
    fact_block = st.dictionaries(key, value, max_size=len(keys))

    @st.composite
    def build(draw):
        n = draw(st.integers(1, max_vertices))
        pairs = [(a, b) for b in range(n) for a in range(b)]
        edges = tuple(sorted(draw(st.sets(st.sampled_from(pairs), max_size=2 * n))
                             if pairs else set()))
        assignment = draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n))
        groups = tuple(frozenset(v for v in range(n) if assignment[v] == g)
                       for g in range(3) if assignment.count(g) >= 1)
        facts = {v: f for v in range(n) if (f := draw(fact_block))}
        graph = ContextGraph(n, edges, groups, facts, draw(fact_block))
        if not quotient_is_acyclic(graph):
            graph = ContextGraph(n, edges, (), facts, graph.origin_facts)
        if not allow_conflicts and has_conflict(direct_context(graph)):
            graph = ContextGraph(n, edges, graph.groups, {}, graph.origin_facts)
        return graph

    return build()


__all__ = ["ContextGraph", "collect", "context_graphs", "direct_context", "has_conflict",
           "nearest", "strict_ancestors", "to_spg", "xi"]
