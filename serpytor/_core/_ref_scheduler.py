"""Pure-Python reference of the ready-set engine in ``scheduler.pyx``.

The engine walks a DAG given as successor CSR arrays and answers one question for the
job manager: which vertices may run now, in which order. Policy (retry caps, what to do
with a failed server) stays with the caller; the engine only keeps the books.

State (n vertices, m edges; the compiled engine keeps the same arrays)::

    succ_indptr   int64[n+1]  CSR of successors: succ_indices[succ_indptr[v]:succ_indptr[v+1]]
    succ_indices  int32[m]    (a repeated edge counts twice, consistently)
    priority      int64[n]    larger runs first; longest_path_priority() by default
    remaining     int32[n]    parents of v that are not DONE
    state         uint8[n]    WAITING, READY, RUNNING, DONE or FAILED
    failures      int32[n]    how often fail(v) was called
    in_heap       bool[n]     the heap holds an entry for v (maybe a stale one)
    heap          entries ordered by (priority desc, seq desc); seq counts pushes, so
                  among equal priorities the vertex made ready last runs first (depth
                  first: finish the branch just started); roots get their seq in
                  descending id order, so equal-priority roots pop in ascending id

Invariants after every public call::

    remaining[v] == number of edges (p, v) with state[p] != DONE
    state[v] in (READY, RUNNING)  implies  remaining[v] == 0
    state[v] == WAITING           implies  remaining[v] > 0
    state[v] == READY             implies  in_heap[v]

Transitions::

    WAITING -> READY     the last parent completes
    READY   -> RUNNING   pop_ready()
    RUNNING -> DONE      complete(); successors lose one missing parent
    RUNNING -> READY     fail(retry=True), or invalidate() (the attempt was lost)
    RUNNING -> FAILED    fail(retry=False); the caller gave up on v
    FAILED  -> READY/WAITING   invalidate() re-arms v
    DONE    -> READY/WAITING   invalidate(): v's output is lost; each successor misses
                               one more parent, and consumers that were READY or RUNNING
                               go back to WAITING (the RUNNING ones are returned so the
                               caller cancels them)

A vertex leaving READY keeps its heap entry; pop_ready() skips entries whose vertex is
no longer READY (lazy deletion). A vertex never has two entries, so the heap holds at
most n entries.

The boundary checks every kernel and reference share live in ``_checks.py``.
"""

from __future__ import annotations

import heapq
from collections import deque
from enum import IntEnum
from typing import Any

import numpy as np

from ._checks import count_arg, csr_arrays, integer_array, scalar_index

WAITING, READY, RUNNING, DONE, FAILED = 0, 1, 2, 3, 4
STATE_NAMES = ("waiting", "ready", "running", "done", "failed")


class VertexState(IntEnum):
    """The state of a vertex in a ready-set engine (the values of ``engine.state``)."""

    WAITING = WAITING
    READY = READY
    RUNNING = RUNNING
    DONE = DONE
    FAILED = FAILED



def longest_path_priority(succ_indptr: Any, succ_indices: Any) -> np.ndarray:
    """Default priority, int64[n]: longest path (in edges) from v to a sink, ties broken
    by the longest path from a source to v, so a branch already started finishes first::

        priority[v] = height[v] * (max(depth) + 1) + depth[v]

    Raises ``ValueError`` when the graph has a cycle.
    """
    indptr, indices = csr_arrays("succ_indptr", "succ_indices", succ_indptr, succ_indices,
                                 None, None)
    n = indptr.shape[0] - 1
    succ = [indices[indptr[v]:indptr[v + 1]].tolist() for v in range(n)]
    order = _topological_order(succ)
    depth = [0] * n
    for v in order:
        for s in succ[v]:
            depth[s] = max(depth[s], depth[v] + 1)
    height = [0] * n
    for v in reversed(order):
        for s in succ[v]:
            height[v] = max(height[v], height[s] + 1)
    scale = max(depth, default=0) + 1
    return np.array([h * scale + d for h, d in zip(height, depth)], np.int64)


def _topological_order(succ: list[list[int]]) -> list[int]:
    indegree = [0] * len(succ)
    for children in succ:
        for s in children:
            indegree[s] += 1
    queue = deque(v for v, d in enumerate(indegree) if d == 0)
    order = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for s in succ[v]:
            indegree[s] -= 1
            if indegree[s] == 0:
                queue.append(s)
    if len(order) != len(succ):
        raise ValueError(f"the graph has a cycle: {len(succ) - len(order)} vertices are "
                         "on a cycle or downstream of one")
    return order


class ReadyEngine:
    """Ready-set bookkeeping for one DAG (see the module docstring for the state).

    ``succ_indptr``/``succ_indices``: successor CSR (int64[n+1], int32[m]); the engine
    keeps its own copy. ``priority``: int64[n], larger first; default
    :func:`longest_path_priority`.
    """

    def __init__(self, succ_indptr: Any, succ_indices: Any, priority: Any = None) -> None:
        indptr, indices = csr_arrays("succ_indptr", "succ_indices", succ_indptr,
                                     succ_indices, None, None)
        n = indptr.shape[0] - 1
        if priority is None:
            priority = longest_path_priority(indptr, indices)
        prio = integer_array("priority", priority, np.int64, length=n)
        self._n = n
        self._succ = [indices[indptr[v]:indptr[v + 1]].tolist() for v in range(n)]
        self._priority = prio.tolist()
        self._remaining = np.bincount(indices, minlength=n).tolist()
        self._state = [WAITING] * n
        self._failures = [0] * n
        self._in_heap = [False] * n
        self._heap: list[tuple[int, int, int]] = []
        self._seq = 0
        self._counts = [n, 0, 0, 0, 0]
        for v in range(n - 1, -1, -1):
            if self._remaining[v] == 0:
                self._make_ready(v)

    @property
    def n_vertices(self) -> int:
        return self._n

    # ---- state changes ------------------------------------------------------------
    def _set(self, v: int, new: int) -> None:
        self._counts[self._state[v]] -= 1
        self._counts[new] += 1
        self._state[v] = new

    def _make_ready(self, v: int) -> None:
        self._set(v, READY)
        if not self._in_heap[v]:
            self._in_heap[v] = True
            heapq.heappush(self._heap, (-self._priority[v], -self._seq, v))
            self._seq += 1

    def _rearm(self, v: int) -> None:
        if self._remaining[v] == 0:
            self._make_ready(v)
        else:
            self._set(v, WAITING)

    def _complete_one(self, v: int, ready: list[int]) -> None:
        self._set(v, DONE)
        for s in self._succ[v]:
            self._remaining[s] -= 1
            if self._remaining[s] == 0 and self._state[s] == WAITING:
                self._make_ready(s)
                ready.append(s)

    def _invalidate_one(self, v: int, cancelled: list[int]) -> None:
        state = self._state[v]
        if state == RUNNING:
            self._make_ready(v)
        elif state == FAILED:
            self._rearm(v)
        elif state == DONE:
            self._rearm(v)
            for s in self._succ[v]:
                self._remaining[s] += 1
                if self._state[s] == READY:
                    self._set(s, WAITING)
                elif self._state[s] == RUNNING:
                    self._set(s, WAITING)
                    cancelled.append(s)

    # ---- public API ----------------------------------------------------------------
    def pop_ready(self, n: int = 1) -> np.ndarray:
        """Up to ``n`` READY vertices, best first; they become RUNNING."""
        n = count_arg("n", n)
        out: list[int] = []
        while len(out) < n and self._heap:
            _, _, v = heapq.heappop(self._heap)
            self._in_heap[v] = False
            if self._state[v] == READY:
                self._set(v, RUNNING)
                out.append(v)
        return np.array(out, np.int32)

    def complete(self, vertex: int) -> np.ndarray:
        """RUNNING ``vertex`` finished; returns the vertices it made READY."""
        return self.complete_many([scalar_index("vertex", vertex, self.n_vertices)])

    def complete_many(self, vertices: Any) -> np.ndarray:
        """Complete every vertex in ``vertices`` (all RUNNING, no repeats), in order;
        returns the vertices made READY, in the order they became ready."""
        batch = integer_array("vertices", vertices, lower=0, upper=self.n_vertices).tolist()
        seen: set[int] = set()
        for v in batch:
            if v in seen:
                raise ValueError(f"vertices: vertex {v} appears twice")
            if self._state[v] != RUNNING:
                raise ValueError(f"cannot complete vertex {v}: it is "
                                 f"{STATE_NAMES[self._state[v]]}, not running")
            seen.add(v)
        ready: list[int] = []
        for v in batch:
            self._complete_one(v, ready)
        return np.array(ready, np.int32)

    def fail(self, vertex: int, retry: bool = True) -> None:
        """RUNNING ``vertex`` failed: count it; READY again if ``retry``, else FAILED."""
        v = scalar_index("vertex", vertex, self.n_vertices)
        if self._state[v] != RUNNING:
            raise ValueError(f"cannot fail vertex {v}: it is "
                             f"{STATE_NAMES[self._state[v]]}, not running")
        self._failures[v] += 1
        if retry:
            self._make_ready(v)
        else:
            self._set(v, FAILED)

    def invalidate(self, vertex: int) -> np.ndarray:
        """``vertex``'s output (DONE) or attempt (RUNNING) is lost, or a FAILED vertex is
        re-armed; returns the consumers that were RUNNING and now wait (cancel them)."""
        return self.invalidate_many([scalar_index("vertex", vertex, self.n_vertices)])

    def invalidate_many(self, vertices: Any) -> np.ndarray:
        """:meth:`invalidate` each vertex in order; repeats are allowed."""
        batch = integer_array("vertices", vertices, lower=0, upper=self.n_vertices).tolist()
        cancelled: list[int] = []
        for v in batch:
            self._invalidate_one(v, cancelled)
        return np.array(cancelled, np.int32)

    def state_of(self, vertex: int) -> int:
        """The state of one vertex (a :class:`VertexState` value)."""
        return self._state[scalar_index("vertex", vertex, self.n_vertices)]

    @property
    def state(self) -> np.ndarray:
        """A copy of the state array, uint8[n]."""
        return np.array(self._state, np.uint8)

    @property
    def remaining(self) -> np.ndarray:
        """A copy of the missing-parent counts, int32[n]."""
        return np.array(self._remaining, np.int32)

    @property
    def failures(self) -> np.ndarray:
        """A copy of the failure counts, int32[n]."""
        return np.array(self._failures, np.int32)

    @property
    def priority(self) -> np.ndarray:
        """A copy of the priorities, int64[n]."""
        return np.array(self._priority, np.int64)

    @property
    def counts(self) -> tuple[int, int, int, int, int]:
        """How many vertices are (waiting, ready, running, done, failed)."""
        return tuple(self._counts)  # type: ignore[return-value]

    @property
    def finished(self) -> bool:
        """True when every vertex is DONE."""
        return self._counts[DONE] == self.n_vertices

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={c}" for name, c in zip(STATE_NAMES, self._counts))
        return f"<ReadyEngine (reference) of {self.n_vertices} vertices: {shown}>"
