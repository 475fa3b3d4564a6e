"""Context at run time: static facts from the plan plus facts vertices publish.

The compiler resolved every vertex's *static* context. While a job runs, a vertex may
``context.publish(key, value)``; those facts reach its descendants (and, through its
union node, its group) by the same rules (DESIGN.md section 3). The tracker computes
them without the ancestor relation of arbitrary vertices, by carrying, per context
node, a :class:`PublishedState`:

* ``live``: published facts still visible, ``{fact id: (key, value, origin vertex)}``;
* ``shadowed``: ids of published facts some nearer origin overrode.

Merging parents is the union of ``live`` minus the union of ``shadowed`` (a fact
overridden on any path is overridden: its origin is an ancestor of the overriding one).
A node's own facts (static keys of its members, then facts its members publish)
shadow the inherited live facts with the same key; members stand side by side.

A lookup of ``key`` takes the live published facts for the key and the static nearest
facts not overridden by them (a static origin is overridden by a published fact when
it reaches the publisher). One distinct value: the value; several: AmbiguousContextError.
Published values travel on the control plane, so they must be JSON data.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..compiler.plan import Plan
from ..errors import AmbiguousContextError, SerpytorError
from .protocol import json_data_problem


class ContextPublishError(SerpytorError, TypeError):
    """A vertex published a context value that is not JSON data (str, number, bool,
    None, list, dict with string keys). Publish a plain value instead."""


@dataclass(frozen=True)
class ContextFact:
    """One fact reaching a vertex: ``origin`` is a vertex name or ``"context"``."""

    key: str
    value: Any
    origin: str
    nearest: bool = True


@dataclass
class PublishedState:
    """Published facts visible at a context node (see the module docstring)."""

    live: dict[int, tuple[str, Any, int]] = field(default_factory=dict)
    shadowed: set[int] = field(default_factory=set)

    @classmethod
    def merge(cls, states: list["PublishedState"]) -> "PublishedState":
        if len(states) == 1:
            return cls(dict(states[0].live), set(states[0].shadowed))
        shadowed = set().union(*(s.shadowed for s in states)) if states else set()
        live = {i: f for s in states for i, f in s.live.items() if i not in shadowed}
        return cls(live, shadowed)

    def shadow_keys(self, keys: set[str], side_by_side: set[int] = frozenset()) -> None:
        """Own facts for ``keys`` override the inherited ones; facts published by the
        vertices in ``side_by_side`` (the node's own members) are not inherited."""
        for fact_id in [i for i, (k, _, o) in self.live.items()
                        if k in keys and o not in side_by_side]:
            del self.live[fact_id]
            self.shadowed.add(fact_id)


class Context(Mapping[str, Any]):
    """A vertex's context: a read-only mapping with nearest-origin lookup.

    ``context[key]`` gives the value; several disagreeing nearest facts raise
    :class:`AmbiguousContextError`; a missing key raises ``KeyError``.
    ``facts(key)`` lists every fact with that key reaching the vertex, with its origin.
    ``publish(key, value)`` adds a fact whose origin is this vertex.
    """

    def __init__(self, vertex: str, facts: list[ContextFact],
                 on_publish: Callable[[str, Any], None] | None = None) -> None:
        self._vertex = vertex
        self._facts = facts
        self._published: dict[str, Any] = {}
        self._on_publish = on_publish

    @property
    def vertex(self) -> str:
        return self._vertex

    def __getitem__(self, key: str) -> Any:
        if key in self._published:
            return self._published[key]
        nearest = [f for f in self._facts if f.key == key and f.nearest]
        if not nearest:
            raise KeyError(key)
        values = _distinct([f.value for f in nearest])
        if len(values) > 1:
            raise AmbiguousContextError(key, [(f.origin, f.value) for f in nearest])
        return values[0]

    def __iter__(self) -> Iterator[str]:
        keys = dict.fromkeys(itertools.chain((f.key for f in self._facts), self._published))
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def facts(self, key: str) -> list[ContextFact]:
        own = [ContextFact(key, self._published[key], self._vertex)] if key in self._published else []
        inherited = [f if not own else ContextFact(f.key, f.value, f.origin, False)
                     for f in self._facts if f.key == key]
        return own + inherited

    def publish(self, key: str, value: Any) -> None:
        """Add the fact ``(key, value, this vertex)``; it reaches the descendants."""
        if not isinstance(key, str):
            raise ContextPublishError(f"context keys are strings, got {type(key).__name__}")
        problem = json_data_problem(value)
        if problem is not None:
            raise ContextPublishError(
                f"vertex {self._vertex} published {key}={value!r}, which is not JSON data "
                f"({problem})")
        self._published[key] = value
        if self._on_publish is not None:
            self._on_publish(key, value)

    @property
    def published(self) -> dict[str, Any]:
        return dict(self._published)

    def __repr__(self) -> str:
        return f"<Context of {self._vertex}: {sorted(self)}>"


def _distinct(values: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True, default=repr), value)
    return list(seen.values())


class ContextTracker:
    """Computes each vertex's run-time context from the plan and published facts."""

    def __init__(self, plan: Plan, origin_overrides: Mapping[str, Any] | None = None) -> None:
        self.plan = plan
        self.states: dict[int, PublishedState] = {}  # per context node, once computed
        self.next_fact = itertools.count()
        self.overrides = dict(origin_overrides or {})
        self._graph: NodeGraph | None = None  # built when something is first published
        self.any_published = False
        # static facts are the same for every vertex with the same context and origins
        self.static_cache: dict[tuple[int, Any], list[tuple[ContextFact, int]]] = {}
        # per vertex its context and node, per node its reach (see _static_ids)
        self._vertex_ids: tuple[list[int], list[int], list[Any]] | None = None

    # -- published state per context node ----------------------------------------------
    @property
    def graph(self) -> "NodeGraph":
        if self._graph is None:
            self._graph = NodeGraph(self.plan)
        return self._graph

    def state(self, node: int) -> PublishedState:
        if node not in self.states:
            parents = [self.state(p) for p in self.graph.parents(node)]
            state = PublishedState.merge(parents)
            state.shadow_keys(self.graph.static_keys(node))
            self.states[node] = state
        return self.states[node]

    def record_published(self, vertex: int, facts: Mapping[str, Any]) -> None:
        """Facts vertex published while running: they shadow inherited ones."""
        if not facts:
            return
        self.any_published = True
        node = int(self.plan.arrays["vertex_node"][vertex])
        state = self.state(node)
        # a group member's facts override inherited ones, never its fellow members'
        state.shadow_keys(set(facts), self.graph.members(node))
        for key, value in facts.items():
            state.live[next(self.next_fact)] = (key, value, vertex)

    def published_reach(self, vertex: int) -> bool:
        """True when a published fact reaches ``vertex``: only then does its context
        differ from the plan's static one (which a server can compute itself)."""
        if not self.any_published:
            return False
        return bool(self.state(int(self.plan.arrays["vertex_node"][vertex])).live)

    def static_key(self, vertex: int) -> tuple[int, Any] | None:
        """A name for vertex's context shared by every vertex that sees the same facts,
        or None when published facts make its context its own."""
        if self.published_reach(vertex):
            return None
        return self._static_ids(vertex)

    def static_keys(self, vertices: list[int]) -> list[tuple[int, Any] | None]:
        """:meth:`static_key` of each of ``vertices`` (one call for a batch)."""
        if self.any_published:
            return [self.static_key(vertex) for vertex in vertices]
        contexts, nodes, reaches = self._ids()
        return [(contexts[vertex], reaches[nodes[vertex]]) for vertex in vertices]

    def _static_ids(self, vertex: int) -> tuple[int, Any]:
        """vertex's context id and its node's reach (hashable): together they fix the
        plan's facts it sees."""
        contexts, nodes, reaches = self._ids()
        return contexts[vertex], reaches[nodes[vertex]]

    def _ids(self) -> tuple[list[int], list[int], list[Any]]:
        """Per vertex its context and node, per node its reach, made once (lists: asked
        for every task and journaled vertex)."""
        if self._vertex_ids is None:
            arrays = self.plan.arrays
            reach = arrays["node_reach"]
            # a node's reach, hashable: its one word (the usual plan), or its row's bytes
            reaches = reach[:, 0].tolist() if reach.shape[1] == 1 else \
                [row.tobytes() for row in reach]
            self._vertex_ids = (arrays["vertex_context"].tolist(),
                                arrays["vertex_node"].tolist(), reaches)
        return self._vertex_ids

    # -- the context a vertex sees ----------------------------------------------------
    def context_for(self, vertex: int, on_publish=None) -> Context:
        return Context(self.plan.vertex_name(vertex), self.facts_for(vertex), on_publish)

    def facts_for(self, vertex: int) -> list[ContextFact]:
        """Every fact reaching vertex, published ones first, each marked nearest or not."""
        static = self._static_facts(vertex)
        if not self.any_published:
            return [fact for fact, _ in static]
        plan = self.plan
        live = list(self.state(int(plan.arrays["vertex_node"][vertex])).live.values())
        if not live:
            return [fact for fact, _ in static]
        published_keys = {k for k, _, _ in live}
        facts = [ContextFact(k, v, plan.vertex_name(o)) for k, v, o in live]
        for fact, origin in static:
            if fact.nearest and origin >= 0 and self._overridden(fact.key, origin, live,
                                                                 published_keys):
                fact = ContextFact(fact.key, fact.value, fact.origin, False)
            facts.append(fact)
        return facts

    def _static_facts(self, vertex: int) -> list[tuple[ContextFact, int]]:
        """The plan's facts reaching vertex with their origin ids (cached)."""
        plan = self.plan
        key = self._static_ids(vertex)
        context_id = key[0]
        if key not in self.static_cache:
            nearest_ids = {i for ids in plan.meta["contexts"][context_id].values() for i in ids}
            reaching = self._reaching_origins(vertex)
            facts = []
            for fact_id, fact in enumerate(plan.meta["facts"]):
                origin = fact["origin"]
                if origin not in reaching:
                    continue
                value = self.overrides.get(fact["key"], fact["value"]) if origin == 0 \
                    else fact["value"]
                facts.append((ContextFact(fact["key"], value, plan.origin_name(origin),
                                          fact_id in nearest_ids), origin))
            known = {f.key for f, _ in facts}
            facts += [(ContextFact(k, v, "context"), -1) for k, v in self.overrides.items()
                      if k not in known]
            self.static_cache[key] = facts
        return self.static_cache[key]

    def _reaching_origins(self, vertex: int) -> set[int]:
        row = self.plan.arrays["node_reach"][int(self.plan.arrays["vertex_node"][vertex])]
        bits = np.unpackbits(row.view(np.uint8), bitorder="little")
        return set(np.flatnonzero(bits).tolist())

    def _overridden(self, fact_key: str, static_origin: int, live,
                    published_keys: set[str]) -> bool:
        """A static fact loses to a live published fact whose publisher it reaches (or
        that the same vertex published: a vertex may update its own fact)."""
        if fact_key not in published_keys:
            return False
        origin_vertex = self.plan.arrays["origin_vertex"]
        for key, _, publisher in live:
            if key != fact_key:
                continue
            if int(origin_vertex[static_origin]) == publisher or \
                    static_origin in self._inherited_origins(publisher):
                return True
        return False

    def _inherited_origins(self, vertex: int) -> set[int]:
        """Static origins that precede ``vertex`` (its own group's members excluded)."""
        origins = self._reaching_origins(vertex)
        members = self.graph.members(int(self.plan.arrays["vertex_node"][vertex]))
        origin_vertex = self.plan.arrays["origin_vertex"]
        own = {o for o in origins if int(origin_vertex[o]) in members}
        return origins - own


class NodeGraph:
    """The context nodes' graph (a group's members share one node), as CSR arrays,
    with each node's own static keys computed when first asked for."""

    def __init__(self, plan: Plan) -> None:
        a = plan.arrays
        node = a["vertex_node"]
        self.plan = plan
        self.by_node = np.argsort(node, kind="stable")
        self.member_ptr = _indptr(node, self._n_nodes(node))
        src, dst = node[a["edge_src"]], node[a["edge_dst"]]
        keep = src != dst
        pairs = np.unique(np.stack([dst[keep], src[keep]], axis=1), axis=0) \
            if keep.any() else np.zeros((0, 2), node.dtype)
        self.parent_ptr = _indptr(pairs[:, 0], len(self.member_ptr) - 1)
        self.parent_of = pairs[:, 1]
        self._keys: dict[int, set[str]] = {}

    @staticmethod
    def _n_nodes(node: np.ndarray) -> int:
        return int(node.max()) + 1 if len(node) else 0

    def members(self, node: int) -> set[int]:
        return set(self.by_node[self.member_ptr[node]:self.member_ptr[node + 1]].tolist())

    def parents(self, node: int) -> list[int]:
        return self.parent_of[self.parent_ptr[node]:self.parent_ptr[node + 1]].tolist()

    def static_keys(self, node: int) -> set[str]:
        if node not in self._keys:
            templates = self.plan.arrays["vertex_template"]
            self._keys[node] = {f["key"] for v in self.members(node)
                                for f in self.plan.templates[int(templates[v])].get("facts", [])}
        return self._keys[node]


def _indptr(sorted_ids: np.ndarray, count: int) -> np.ndarray:
    """CSR offsets of ids 0..count-1 (``sorted_ids`` as grouped by argsort)."""
    indptr = np.zeros(count + 1, np.int64)
    np.cumsum(np.bincount(sorted_ids, minlength=count), out=indptr[1:])
    return indptr
