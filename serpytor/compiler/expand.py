"""Pass 3: expand templates into vertices and edge declarations into edges.

Replica ``i`` of stage ``s`` is vertex ``s[i]``. Edges are built with numpy, never one
Python object per edge:

* ``a -> b``  every vertex of ``a`` to every vertex of ``b`` (one side has width 1);
* ``a => b``  pointwise, ``a[i % m] -> b[i % n]`` for ``i < max(m, n)`` (round-robin);
* ``a >> b``  complete bipartite.

An edge declared twice (by two statements) is kept once.
"""

from __future__ import annotations

import numpy as np

from .ir import IR, EdgeDecl
from .kinds import EdgeKind


def expand(ir: IR) -> IR:
    """Fill the IR's vertex and edge arrays from its templates and edge declarations."""
    widths = np.array([t.width for t in ir.templates], dtype=np.int64)
    firsts = (np.cumsum(widths) - widths).astype(np.int64)
    for template, first in zip(ir.templates, firsts):
        template.first = int(first)
    ir.vertex_template = np.repeat(np.arange(len(widths), dtype=np.int32), widths)
    starts = np.repeat(firsts, widths)
    ir.vertex_partition = (np.arange(int(widths.sum()), dtype=np.int64) - starts).astype(np.int32)
    parts = [edges_of(ir, decl) for decl in ir.edge_decls]
    set_edges(ir, parts)
    return ir


def edges_of(ir: IR, decl: EdgeDecl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (src, dst, decl) arrays of one declared edge."""
    src_t, dst_t = ir.templates[decl.src], ir.templates[decl.dst]
    m, n = src_t.width, dst_t.width
    if decl.kind is EdgeKind.POINTWISE:
        i = np.arange(max(m, n), dtype=np.int64)
        src, dst = i % m, i % n
    else:  # PLAIN (one side has width 1) and ALL are complete bipartite
        src = np.repeat(np.arange(m, dtype=np.int64), n)
        dst = np.tile(np.arange(n, dtype=np.int64), m)
    return (src + src_t.first, dst + dst_t.first, np.full(src.shape, decl.index, np.int64))


def set_edges(ir: IR, parts) -> None:
    """Store edges, dropping repeats (the first declaration of a pair wins)."""
    if parts:
        src = np.concatenate([p[0] for p in parts])
        dst = np.concatenate([p[1] for p in parts])
        decl = np.concatenate([p[2] for p in parts])
    else:
        src = dst = decl = np.zeros(0, np.int64)
    key = src * max(ir.n_vertices, 1) + dst
    # first occurrence of each key, by a stable sort (np.unique hashes, which is slow)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    is_first = np.ones(ordered.size, bool)
    np.not_equal(ordered[1:], ordered[:-1], out=is_first[1:])
    first = np.sort(order[is_first])
    ir.edge_src = src[first].astype(np.int32)
    ir.edge_dst = dst[first].astype(np.int32)
    ir.edge_decl = decl[first].astype(np.int32)
    channels = np.array([d.channel for d in ir.edge_decls] or [0], dtype=np.uint8)
    ir.edge_channel = channels[ir.edge_decl] if len(first) else np.zeros(0, np.uint8)
