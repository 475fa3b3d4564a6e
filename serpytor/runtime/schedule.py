"""The graph the executors schedule: data edges plus the order context rule 3 needs.

Rule 3 (DESIGN.md section 3): every child of any member of a group inherits the union
node's context, which holds the facts *every* member publishes while running. So a
child of a group may start only when all members have finished, even those it has no
data edge from. Rather than an edge from every member to every such child (|M| x |C|
edges for a group of two wide stages), each group with outside children gets one
*barrier* node::

    member_1 --+                 +--> child_1        barrier ids are n .. n + b - 1
    member_2 --+--> barrier(U) --+--> child_2        (after the n vertices); they run
    member_k --+                 +--> ...            nothing: an executor completes a
                                                     barrier as soon as it is ready

Members of one group never wait for each other (each sees the facts of the members
that ran before it), and the compiler has made sure a group never depends on itself
through an outside vertex, so the barriers add no cycle.

The schedule is derived from the plan's arrays, so any ``.spgc`` can be scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiler.plan import Plan


@dataclass(frozen=True)
class Schedule:
    """Successor CSR over ``n_nodes`` = ``n_vertices`` vertices + barriers."""

    indptr: np.ndarray   # int64[n_nodes + 1]
    indices: np.ndarray  # int32[edges]
    n_vertices: int

    @property
    def n_nodes(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def is_barrier(self, node: int) -> bool:
        return node >= self.n_vertices

    def successors(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node]:self.indptr[node + 1]]

    def descendants(self, vertex: int) -> set[int]:
        """Every vertex (not barrier) that cannot start before ``vertex`` finishes."""
        seen: set[int] = set()
        stack = [vertex]
        while stack:
            for node in self.successors(stack.pop()).tolist():
                if node not in seen:
                    seen.add(node)
                    stack.append(node)
        return {v for v in seen if v < self.n_vertices}


def build_schedule(plan: Plan) -> Schedule:
    """The plan's data edges plus one barrier per group that has outside children."""
    a = plan.arrays
    n = plan.n_vertices
    src, dst = a["edge_src"].astype(np.int64), a["edge_dst"].astype(np.int64)
    extra_src, extra_dst = [], []
    barrier = n
    for group, (members, children) in enumerate(_group_members_and_children(plan)):
        if len(children) == 0:
            continue
        extra_src += [members, np.full(len(children), barrier, np.int64)]
        extra_dst += [np.full(len(members), barrier, np.int64), children]
        barrier += 1
    if barrier == n:
        return Schedule(a["succ_indptr"], a["succ_indices"], n)
    src = np.concatenate([src, *extra_src])
    dst = np.concatenate([dst, *extra_dst])
    order = np.argsort(src, kind="stable")
    counts = np.bincount(src, minlength=barrier)
    indptr = np.zeros(barrier + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Schedule(indptr, dst[order].astype(np.int32), n)


def _group_members_and_children(plan: Plan) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group: its member vertices and the vertices outside it fed by a member."""
    a = plan.arrays
    group_of = a["vertex_group"]
    src_group, dst_group = group_of[a["edge_src"]], group_of[a["edge_dst"]]
    result = []
    for group in range(len(plan.groups)):
        members = np.flatnonzero(group_of == group).astype(np.int64)
        leaving = (src_group == group) & (dst_group != group)
        children = np.unique(a["edge_dst"][leaving]).astype(np.int64)
        result.append((members, children))
    return result
