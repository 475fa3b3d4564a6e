"""Pass 4: groups become union nodes.

A group's members must not reach each other through a vertex outside the group: the
union node's context would then depend on itself. Data edges inside a group are fine
(the cycle pass already made sure they are acyclic).
"""

from __future__ import annotations

import numpy as np

from .cycles import _edge_span, cycle_error, get_cycle
from .ir import IR


def template_groups(ir: IR) -> np.ndarray:
    """The group index of every template, -1 when it is in none."""
    group_of = np.full(len(ir.templates), -1, np.int32)
    for group in ir.groups:
        group_of[list(group.members)] = group.index
    return group_of


def check_groups(ir: IR) -> None:
    """Raise CycleError if a group depends on itself through an outside vertex."""
    group_of = template_groups(ir)
    n = len(ir.templates)

    def node(t: int) -> int:  # union nodes are numbered after the templates
        return n + int(group_of[t]) if group_of[t] >= 0 else t

    edges = {(node(d.src), node(d.dst)): (d.src, d.dst) for d in ir.edge_decls
             if node(d.src) != node(d.dst)}
    cycle = get_cycle(n + len(ir.groups), list(edges))
    if cycle is None:
        return
    names = [ir.groups[c - n].name if c >= n else ir.templates[c].name for c in cycle]
    spans = [_edge_span(ir, *edges[(a, b)]) for a, b in zip(cycle, cycle[1:])]
    group = next(names[i] for i, c in enumerate(cycle) if c >= n)
    raise cycle_error(ir, names, spans,
                      f"group '{group}' depends on itself through a vertex outside it")


def vertex_groups(ir: IR) -> np.ndarray:
    """The group index of every vertex, -1 when it is in none."""
    return template_groups(ir)[ir.vertex_template]
