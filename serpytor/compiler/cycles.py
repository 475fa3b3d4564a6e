"""Pass 2: the data edges must form a DAG; and topological orders for later passes.

Cycles are found on the declaration graph (templates and edge declarations): every
vertex of a template has an edge to the next template of a declared edge, for all
three operators, so the declaration graph has a cycle exactly when the vertex graph
does, and the cycle can be reported with the names the user wrote.
"""

from __future__ import annotations

import numpy as np

from ..errors import CycleError, SourceSpan
from ._errors import source_line
from .ir import IR


def get_cycle(n: int, edges: list[tuple[int, int]]) -> list[int] | None:
    """A cycle of the graph as a node list with the first node repeated at the end.

    >>> get_cycle(3, [(0, 1), (1, 2), (2, 0)])
    [0, 1, 2, 0]
    >>> get_cycle(3, [(0, 1), (1, 2)]) is None
    True
    >>> get_cycle(1, [(0, 0)])
    [0, 0]
    """
    children: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        children[a].append(b)
    state = [0] * n  # 0 unseen, 1 on the current path, 2 finished
    for root in range(n):
        if state[root]:
            continue
        cycle = _walk(root, children, state)
        if cycle:
            return cycle
    return None


def _walk(root: int, children: list[list[int]], state: list[int]) -> list[int] | None:
    """Iterative depth-first search from root; the first back edge closes a cycle."""
    path = [root]
    iterators = [iter(children[root])]
    state[root] = 1
    while iterators:
        child = next(iterators[-1], None)
        if child is None:
            state[path.pop()] = 2
            iterators.pop()
        elif state[child] == 1:
            return path[path.index(child):] + [child]
        elif state[child] == 0:
            state[child] = 1
            path.append(child)
            iterators.append(iter(children[child]))
    return None


def is_dag(n: int, edges: list[tuple[int, int]]) -> bool:
    """True when the graph has no cycle.

    >>> is_dag(2, [(0, 1)]), is_dag(2, [(0, 1), (1, 0)])
    (True, False)
    """
    return get_cycle(n, edges) is None


def check_acyclic(ir: IR) -> None:
    """Raise :class:`CycleError` with the full path and each edge's line."""
    edges = [(d.src, d.dst) for d in ir.edge_decls]
    cycle = get_cycle(len(ir.templates), edges)
    if cycle is None:
        return
    spans = [_edge_span(ir, a, b) for a, b in zip(cycle, cycle[1:])]
    names = [ir.templates[t].name for t in cycle]
    raise cycle_error(ir, names, spans, cycle_context(ir, cycle))


def cycle_context(ir: IR, cycle: list[int]) -> str | None:
    """Name the group when the whole cycle lies inside one group."""
    for group in ir.groups:
        if set(cycle) <= set(group.members):
            return f"data cycle inside group '{group.name}'"
    return None


def cycle_error(ir: IR, names: list[str], spans: list[SourceSpan | None],
                what: str | None = None) -> CycleError:
    message = f"{what or 'cycle in the pipeline'}: {' -> '.join(names)}"
    return CycleError(names, spans, message, source_line(ir.source, spans[0] if spans else None))


def _edge_span(ir: IR, src: int, dst: int) -> SourceSpan | None:
    return next((d.span for d in ir.edge_decls if d.src == src and d.dst == dst), None)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: numpy's hash-based unique costs ~1 us per distinct
    element on large inputs, a sort costs ~20 ns.

    >>> sorted_unique(np.array([3, 1, 3, 2])).tolist()
    [1, 2, 3]
    """
    ordered = np.sort(values, kind="stable")
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def topological_order(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A topological order of ``n`` nodes (parents first), level by level with numpy.

    Raises ``ValueError`` if the graph has a cycle (callers check cycles first).

    >>> topological_order(3, np.array([2, 1]), np.array([1, 0])).tolist()
    [2, 1, 0]
    """
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    order_by_src = np.argsort(src, kind="stable")
    children = dst[order_by_src]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    remaining = np.bincount(dst, minlength=n).astype(np.int64)
    frontier = np.flatnonzero(remaining == 0)
    levels = []
    while frontier.size:
        levels.append(frontier)
        reached = children[_gather(indptr, frontier)]
        np.subtract.at(remaining, reached, 1)
        candidates = sorted_unique(reached)
        frontier = candidates[remaining[candidates] == 0]
    order = np.concatenate(levels) if levels else np.zeros(0, np.int64)
    if order.size != n:
        raise ValueError("graph has a cycle")
    return order.astype(np.int32)


def _gather(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions ``indptr[r]:indptr[r+1]`` for every r in rows, concatenated."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets
