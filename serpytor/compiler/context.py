"""Pass 5: context inheritance (DESIGN.md section 3), precomputed for every vertex.

Each group collapses into one *context node* (its union node); every other vertex is a
context node of its own. On that DAG the ``_core`` kernels compute, with bitsets:

* ``reach[c]``: the origins whose facts reach node c (origin 0 is ``xi(0)``; the
  others are the vertices with a ``with { }`` block);
* for every distinct reach set, the nearest facts per key, and whether they agree.

A key whose nearest facts disagree is a :class:`ContextConflictError` at the node where
the branches meet (the first such node in topological order).

Products, stored in the plan (see :class:`ContextTables`):
``vertex_node[v]`` context node of vertex v; ``node_reach[c]`` origin bitset;
``origin_vertex[o]`` the vertex of origin o (-1 for origin 0); ``facts`` the fact table;
``contexts[i]`` a resolved static context ``{key: [nearest fact ids]}``;
``vertex_context[v]`` the index of v's resolved context in ``contexts``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from ..errors import ContextConflictError
from ._errors import compile_error
from .cycles import sorted_unique, topological_order
from .groups import vertex_groups
from .ir import IR, Fact


@dataclass
class ContextTables:
    """The precomputed context of every vertex (see the module docstring)."""

    vertex_node: np.ndarray
    node_reach: np.ndarray
    origin_vertex: np.ndarray
    facts: list[tuple[str, Any, int, Fact]]  # (key, value, origin id, declaring fact)
    contexts: list[dict[str, list[int]]]
    vertex_context: np.ndarray


def context_nodes(ir: IR) -> tuple[np.ndarray, int]:
    """Map every vertex to its context node: groups collapse into one node each."""
    group = vertex_groups(ir)
    member = group >= 0
    node = np.empty(ir.n_vertices, np.int32)
    free = int((~member).sum())
    node[~member] = np.arange(free, dtype=np.int32)
    node[member] = free + group[member]
    return node, free + len(ir.groups)


def context_parents(ir: IR, node: np.ndarray, n_nodes: int):
    """Parent CSR of the context-node DAG (edges inside a group vanish)."""
    child, parent = node[ir.edge_dst].astype(np.int64), node[ir.edge_src].astype(np.int64)
    keep = child != parent
    key = sorted_unique(child[keep] * n_nodes + parent[keep])
    child, parent = key // max(n_nodes, 1), key % max(n_nodes, 1)
    indptr = np.zeros(n_nodes + 1, np.int64)
    np.cumsum(np.bincount(child, minlength=n_nodes), out=indptr[1:])
    return indptr, parent.astype(np.int32), child, parent


def origin_table(ir: IR, node: np.ndarray, n_nodes: int):
    """Origins (0 = xi(0), then every vertex that declares facts) and the fact table."""
    with_facts = [t for t in ir.templates if t.facts]
    origin_vertex = [-1] + [t.first + i for t in with_facts for i in range(t.width)]
    origin_vertex = np.array(origin_vertex, np.int32)
    facts = [(f.key, f.value, 0, f) for f in ir.origin_facts]
    for o, vertex in enumerate(origin_vertex[1:], start=1):
        template = ir.templates[int(ir.vertex_template[vertex])]
        facts += [(f.key, f.value, o, f) for f in template.facts]
    owners = node[origin_vertex[1:]].astype(np.int64)
    order = np.argsort(owners, kind="stable")
    own_indptr = np.zeros(n_nodes + 1, np.int64)
    np.cumsum(np.bincount(owners, minlength=n_nodes), out=own_indptr[1:])
    own_origins = (order + 1).astype(np.int32)
    return origin_vertex, facts, own_indptr, own_origins


def intern(values) -> np.ndarray:
    """Equal values get equal ids (values are JSON data, compared as canonical JSON)."""
    table: dict[str, int] = {}
    ids = [table.setdefault(json.dumps(v, sort_keys=True), len(table)) for v in values]
    return np.array(ids, np.int32)


def compute_context(ir: IR) -> ContextTables:
    node, n_nodes = context_nodes(ir)
    if n_nodes == 0:
        facts = [(f.key, f.value, 0, f) for f in ir.origin_facts]
        return ContextTables(node, np.zeros((0, 1), np.uint64), np.array([-1], np.int32),
                             facts, [], np.zeros(0, np.int32))
    indptr, parents, child, parent = context_parents(ir, node, n_nodes)
    topo = topological_order(n_nodes, parent, child)
    origin_vertex, facts, own_indptr, own_origins = origin_table(ir, node, n_nodes)
    n_origins = len(origin_vertex)
    reach, inherited = _core.propagate_origins(indptr, parents, topo, own_indptr,
                                               own_origins, n_origins)
    origin_inherited = np.zeros((n_origins, reach.shape[1]), np.uint64)
    origin_inherited[1:] = inherited[node[origin_vertex[1:]]]
    unique_rows, row_of_node = _unique_rows(reach)
    keys = [f[0] for f in facts]
    key_id = intern(keys)
    fact_origin = np.array([f[2] for f in facts], np.int32)
    resolved = _core.resolve_nearest(unique_rows, origin_inherited, fact_origin, key_id,
                                     intern([f[1] for f in facts]), len(set(keys)))
    key_names = {int(k): name for k, name in zip(key_id, keys)}
    contexts = _contexts(resolved, key_names)
    _raise_first_conflict(ir, resolved, key_names, facts, origin_vertex, row_of_node, topo, node)
    return ContextTables(node, reach, origin_vertex, facts, contexts,
                         row_of_node[node].astype(np.int32))


def _unique_rows(reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if reach.shape[0] == 0:
        return reach, np.zeros(0, np.int64)
    unique, inverse = np.unique(reach, axis=0, return_inverse=True)
    return np.ascontiguousarray(unique), inverse.reshape(-1)


def _contexts(resolved, key_names: dict[int, str]) -> list[dict[str, list[int]]]:
    entry_indptr, entry_key, _, fact_indptr, fact_ids = resolved
    contexts = []
    for row in range(len(entry_indptr) - 1):
        context = {}
        for e in range(entry_indptr[row], entry_indptr[row + 1]):
            context[key_names[int(entry_key[e])]] = \
                fact_ids[fact_indptr[e]:fact_indptr[e + 1]].tolist()
        contexts.append(context)
    return contexts


def _raise_first_conflict(ir, resolved, key_names, facts, origin_vertex, row_of_node, topo, node):
    entry_indptr, entry_key, entry_value, fact_indptr, fact_ids = resolved
    conflicted = np.flatnonzero(entry_value < 0)
    if not len(conflicted):
        return
    row_of_entry = np.searchsorted(entry_indptr, conflicted, side="right") - 1
    position = np.empty(len(topo), np.int64)
    position[topo] = np.arange(len(topo))
    # the meeting node: the first node in topological order whose row has a conflict
    bad_rows = set(row_of_entry.tolist())
    meet = next(int(c) for c in topo if int(row_of_node[c]) in bad_rows)
    entry = int(conflicted[row_of_entry == row_of_node[meet]][0])
    key = key_names[int(entry_key[entry])]
    nearest = [facts[int(f)] for f in fact_ids[fact_indptr[entry]:fact_indptr[entry + 1]]]
    raise _conflict_error(ir, key, meet, nearest, origin_vertex, node)


def origin_name(ir: IR, origin_vertex: np.ndarray, origin: int) -> str:
    return "context" if origin == 0 else ir.vertex_name(int(origin_vertex[origin]))


def node_name(ir: IR, meet: int, node: np.ndarray) -> tuple[str, Any]:
    vertices = np.flatnonzero(node == meet)
    first = int(vertices[0])
    template = ir.templates[int(ir.vertex_template[first])]
    for group in ir.groups:
        if template.index in group.members:
            return f"group '{group.name}'", group.span
    return f"'{ir.vertex_name(first)}'", template.span


def _conflict_error(ir, key, meet, nearest, origin_vertex, node) -> ContextConflictError:
    where, span = node_name(ir, meet, node)
    parts = [f"'{origin_name(ir, origin_vertex, o)}' sets {value!r}" for _, value, o, _ in nearest]
    notes = tuple((fact.span, f"'{origin_name(ir, origin_vertex, o)}' sets {key} = {value!r}")
                  for _, value, o, fact in nearest)
    fix = (f"declare `{key} = ...` in a with block on {where}, where the branches meet; it "
           "then overrides both") if where.startswith("'") else \
        (f"give '{key}' one value in the group's members, or declare it on the vertices "
         "that read it")
    return compile_error(ir.source, f"context key '{key}' is ambiguous at {where}: parallel "
                         f"branches disagree ({', '.join(parts)})", span, notes, fix,
                         cls=ContextConflictError)
