"""Shared helpers and Hypothesis strategies for the ``serpytor._core`` kernel tests.

``implementation(name)`` gives the compiled or the reference set of kernels (skipping
the test when pure-Python mode runs without a build). The strategies draw small random
DAGs, context problems (origins owned by nodes, several per union node) and fact
tables; the helpers turn edge lists into the CSR arrays the kernels take.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

import serpytor._core as core

IMPLEMENTATIONS = ("compiled", "reference")


def implementation(name: str) -> SimpleNamespace:
    chosen = getattr(core, name)
    if chosen is None:
        pytest.skip("the compiled kernels are not built (pure-Python mode)")
    return chosen


def both() -> tuple[SimpleNamespace, SimpleNamespace]:
    """(compiled, reference), skipping when there is no build."""
    return implementation("compiled"), implementation("reference")


# ---- graphs -------------------------------------------------------------------------

def csr(n: int, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """CSR (int64 indptr, int32 indices) of the pairs (rows[i], cols[i]), each row's
    columns in input order."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    cols = np.asarray(cols, np.int64).reshape(-1)
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order].astype(np.int32)


def successors(n: int, edges) -> tuple[np.ndarray, np.ndarray]:
    return csr(n, [s for s, _ in edges], [d for _, d in edges])


def predecessors(n: int, edges) -> tuple[np.ndarray, np.ndarray]:
    return csr(n, [d for _, d in edges], [s for s, _ in edges])


def topological(n: int, edges) -> np.ndarray:
    """A topological order (parents first), smallest ready id first."""
    parents = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        parents[d] += 1
        children[s].append(d)
    ready = sorted(v for v in range(n) if parents[v] == 0)
    order = []
    while ready:
        v = ready.pop(0)
        order.append(v)
        for c in children[v]:
            parents[c] -= 1
            if parents[c] == 0:
                ready.append(c)
        ready.sort()
    return np.array(order, np.int32)


@dataclass
class Dag:
    """A DAG on vertices 0..n-1; ``edges`` are (parent, child) pairs, repeats allowed."""

    n: int
    edges: list[tuple[int, int]]

    def parents(self, v: int) -> list[int]:
        return [s for s, d in self.edges if d == v]


@st.composite
def dags(draw, max_vertices: int = 12, max_edges: int = 30, repeats: bool = True) -> Dag:
    """Random DAGs whose vertex ids are shuffled (ids are not a topological order)."""
    n = draw(st.integers(0, max_vertices))
    if n < 2:
        return Dag(n, [])
    rank = draw(st.permutations(range(n)))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                          max_size=max_edges))
    edges = [(rank[min(a, b)], rank[max(a, b)]) for a, b in pairs if a != b]
    if not repeats:
        edges = list(dict.fromkeys(edges))
    return Dag(n, edges)


# ---- context problems ---------------------------------------------------------------

@dataclass
class ContextProblem:
    """A context DAG with origins and facts, the inputs of propagate/resolve."""

    dag: Dag
    owner: list[int]                    # owner[o - 1]: the node owning origin o >= 1
    facts: list[tuple[int, int, int]]   # (origin, key, value)
    n_keys: int

    @property
    def n_origins(self) -> int:
        return len(self.owner) + 1

    def propagate_args(self):
        n = self.dag.n
        indptr, parents = predecessors(n, self.dag.edges)
        own_indptr, own = csr(n, self.owner, range(1, self.n_origins))
        return indptr, parents, topological(n, self.dag.edges), own_indptr, own, \
            self.n_origins

    def fact_arrays(self):
        facts = np.array(self.facts, np.int32).reshape(-1, 3)
        return facts[:, 0].copy(), facts[:, 1].copy(), facts[:, 2].copy()

    def origins_of(self, node: int) -> list[int]:
        return [o for o in range(1, self.n_origins) if self.owner[o - 1] == node]


@st.composite
def context_problems(draw, max_nodes: int = 10, max_origins: int = 12, max_keys: int = 4,
                     max_values: int = 3) -> ContextProblem:
    dag = draw(dags(max_vertices=max_nodes, max_edges=2 * max_nodes, repeats=False))
    if dag.n == 0:
        return ContextProblem(dag, [], [], 1)
    owner = draw(st.lists(st.integers(0, dag.n - 1), max_size=max_origins))
    n_keys = draw(st.integers(1, max_keys))
    facts = []
    for origin in range(len(owner) + 1):
        keys = draw(st.sets(st.integers(0, n_keys - 1), max_size=n_keys))
        facts += [(origin, k, draw(st.integers(0, max_values - 1))) for k in sorted(keys)]
    order = draw(st.permutations(range(len(facts))))
    return ContextProblem(dag, owner, [facts[i] for i in order], n_keys)


# ---- fact tables --------------------------------------------------------------------

@st.composite
def fact_tables(draw, max_rows: int = 12, max_origin: int = 6, max_key: int = 3):
    """A consistent random table: one value per (origin, key), some rows shadowed,
    identities possibly repeated (as parents' tables concatenated are)."""
    identities = draw(st.lists(st.tuples(st.integers(0, max_origin),
                                         st.integers(0, max_key)), max_size=max_rows))
    value_of = {i: draw(st.integers(0, 2)) for i in identities}
    shadowed = draw(st.lists(st.booleans(), min_size=len(identities),
                             max_size=len(identities)))
    origin = np.array([o for o, _ in identities], np.int64)
    key = np.array([k for _, k in identities], np.int32)
    value = np.array([value_of[i] for i in identities], np.int32)
    return origin, key, value, np.array(shadowed, np.bool_)
