"""Pass 7: channel hints. ``shm`` edges force their two ends onto one host.

Vertices joined by shm edges form a *gang* (Dryad schedules FIFO-connected vertices
together); ``vertex_gang[v]`` is the gang id, -1 when v is in none. ``auto`` stays
``auto``: the runtime resolves it once it knows where each end runs.
"""

from __future__ import annotations

import numpy as np

from .ir import IR
from .kinds import ChannelKind


def colocation_gangs(ir: IR) -> np.ndarray:
    """Union-find over shm edges; returns each vertex's gang id (-1: free)."""
    shm = np.flatnonzero(ir.edge_channel == ChannelKind.SHM)
    parent = np.arange(ir.n_vertices, dtype=np.int64)
    for e in shm:
        a, b = _find(parent, int(ir.edge_src[e])), _find(parent, int(ir.edge_dst[e]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([_find(parent, v) for v in range(ir.n_vertices)], np.int64) \
        if len(shm) else parent
    in_gang = np.zeros(ir.n_vertices, bool)
    in_gang[ir.edge_src[shm]] = True
    in_gang[ir.edge_dst[shm]] = True
    gang = np.full(ir.n_vertices, -1, np.int32)
    if in_gang.any():
        _, ids = np.unique(roots[in_gang], return_inverse=True)
        gang[in_gang] = ids.astype(np.int32)
    return gang


def _find(parent: np.ndarray, v: int) -> int:
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = int(parent[v])
    return v
