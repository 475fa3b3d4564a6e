# cython: cdivision=True
"""Ready-set engine over a DAG's successor CSR arrays (compiled).

The state, its invariants and every transition are written down in the reference,
``serpytor/_core/_ref_scheduler.py``; this module keeps the same state in C and must
agree with the reference after every call (tests/test_core_scheduler.py checks it)::

    _indptr     int64[n+1]     successor CSR (the engine's own copy, never exposed)
    _indices    int32[m]
    _vertex     VertexRec[n]   rank, remaining, next, state, queued (scheduler.pxd)
    _failures   int32[n]       fail() count
    _head       int32[r]       ready bucket of each priority rank (r distinct priorities)
    _bits       uint64[...]    64-ary bit tree of the non-empty buckets
    _counts     Py_ssize_t[5]  vertices per state

The reference's heap orders entries by (priority desc, seq desc), seq counting pushes.
Priorities are fixed when the engine loads, so the compiled queue replaces the heap by
one bucket per distinct priority (its dense ``rank``): the best bucket is found in the
bit tree with one count-leading-zeros per level, and within a bucket the entry pushed
last is the one with the largest seq, so a bucket is a stack (linked through
``VertexRec.next``). Push and pop cost O(log64 r) word operations, and the pop order is
the reference's exactly.

Python crosses into the kernel once per batch: pop_ready(n), complete_many(array) and
invalidate_many(array) loop in C without the GIL. Every vertex id that enters a
``nogil`` loop was range-checked at the boundary (in a private copy of the batch),
every successor id was checked when the CSR was loaded (into the engine's own copy),
and the queue's arrays are sized for every vertex when the engine loads, so the loops
need neither bounds checks nor error paths. While a loop runs without the GIL the
engine is marked busy: a second thread calling in gets a RuntimeError, never a torn
state (an engine shared between threads belongs behind a lock).
"""

cimport cython
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

import numpy as np

from ._checks import count_arg, csr_arrays, integer_array, scalar_index
from ._ref_scheduler import STATE_NAMES, VertexState

WAITING, READY, RUNNING, DONE, FAILED = S_WAITING, S_READY, S_RUNNING, S_DONE, S_FAILED

__all__ = ["ReadyEngine", "longest_path_priority", "VertexState",
           "WAITING", "READY", "RUNNING", "DONE", "FAILED"]

cdef extern from *:
    # a hint only: prefetching any address is safe, even an invalid one
    void __builtin_prefetch(const void* address) noexcept nogil
    int __builtin_clzll(unsigned long long word) noexcept nogil


# ---- default priority ---------------------------------------------------------------

def longest_path_priority(succ_indptr, succ_indices):
    """Default priority, int64[n]: longest path (in edges) from v to a sink, ties broken
    by the longest path from a source to v (a started branch finishes first)::

        priority[v] = height[v] * (max(depth) + 1) + depth[v]

    Raises ``ValueError`` when the graph has a cycle.
    """
    indptr, indices = _private_csr(succ_indptr, succ_indices)
    return _longest_path(indptr, indices)


cdef object _longest_path(indptr, indices):
    """longest_path_priority of a checked CSR that nobody else holds."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, sorted_count
    cdef int64_t max_depth
    order = np.empty(n, np.int32)
    height = np.zeros(n, np.int64)
    depth = np.zeros(n, np.int64)
    cdef const int64_t[::1] ptr = indptr
    cdef const int32_t[::1] idx = indices
    cdef int32_t[::1] indegree = np.bincount(indices, minlength=n).astype(np.int32)
    cdef int32_t[::1] order_view = order
    cdef int64_t[::1] height_view = height, depth_view = depth
    with nogil:
        sorted_count = _topological_order(ptr, idx, indegree, order_view)
    if sorted_count != n:
        raise ValueError(f"the graph has a cycle: {n - sorted_count} vertices are on a "
                         "cycle or downstream of one")
    with nogil:
        max_depth = _heights_and_depths(ptr, idx, order_view, height_view, depth_view)
    height *= max_depth + 1
    height += depth
    return height


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _topological_order(const int64_t[::1] indptr, const int32_t[::1] indices,
                                   int32_t[::1] indegree, int32_t[::1] order) noexcept nogil:
    """Kahn's algorithm; ``order`` doubles as the queue. Returns how many vertices it
    ordered (fewer than n means a cycle)."""
    cdef Py_ssize_t n = order.shape[0], head = 0, tail = 0, v
    cdef int64_t e
    cdef int32_t s
    for v in range(n):
        if indegree[v] == 0:
            order[tail] = <int32_t> v
            tail += 1
    while head < tail:
        v = order[head]
        head += 1
        for e in range(indptr[v], indptr[v + 1]):
            s = indices[e]
            indegree[s] -= 1
            if indegree[s] == 0:
                order[tail] = s
                tail += 1
    return tail


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int64_t _heights_and_depths(const int64_t[::1] indptr, const int32_t[::1] indices,
                                 const int32_t[::1] order, int64_t[::1] height,
                                 int64_t[::1] depth) noexcept nogil:
    cdef Py_ssize_t n = order.shape[0], i
    cdef int64_t e, max_depth = 0
    cdef int32_t v, s
    for i in range(n):
        v = order[i]
        if depth[v] > max_depth:
            max_depth = depth[v]
        for e in range(indptr[v], indptr[v + 1]):
            s = indices[e]
            depth[s] = max(depth[s], depth[v] + 1)
    for i in range(n - 1, -1, -1):
        v = order[i]
        for e in range(indptr[v], indptr[v + 1]):
            height[v] = max(height[v], height[indices[e]] + 1)
    return max_depth


# ---- helpers ------------------------------------------------------------------------

def _private_csr(succ_indptr, succ_indices):
    """The checked CSR as arrays nobody else holds: the loops run without the GIL, and
    another thread writing the caller's arrays must not reach them after the check."""
    indptr, indices = csr_arrays("succ_indptr", "succ_indices", succ_indptr, succ_indices,
                                 None, None)
    return np.array(indptr, np.int64, copy=True), np.array(indices, np.int32, copy=True)


def _dense_ranks(prio):
    """Dense ranks of ``prio`` (int64[n]) as uint32 (equal priorities, equal ranks) and
    how many distinct priorities there are."""
    n = prio.shape[0]
    if n == 0:
        return np.zeros(0, np.uint32), 0
    low, high = int(prio.min()), int(prio.max())
    if high - low < 4 * n + 64:
        # a small range (the default priority on wide graphs): counting, no sort
        offset = (prio - low).astype(np.intp)
        present = np.zeros(high - low + 1, np.bool_)
        present[offset] = True
        rank_of = np.cumsum(present, dtype=np.int32) - 1
        return rank_of[offset].astype(np.uint32), int(rank_of[-1]) + 1
    distinct, ranks = np.unique(prio, return_inverse=True)
    return ranks.reshape(-1).astype(np.uint32), distinct.shape[0]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _vertex_batch(object vertices, Py_ssize_t n):
    """``vertices`` as a checked int32 array of ids in [0, n), a copy nobody else holds
    (the batch loops read it without the GIL). An int32 array skips the generic
    conversion (batches arrive as the int32 arrays the engine returned); its range
    check gives the same message as the generic one."""
    if not (type(vertices) is np.ndarray and vertices.dtype == np.int32
            and vertices.ndim == 1):
        return np.array(integer_array("vertices", vertices, lower=0, upper=n), copy=True)
    vertices = np.array(vertices, copy=True)
    cdef const int32_t[::1] view = vertices
    cdef Py_ssize_t i, size = view.shape[0]
    cdef int32_t low = 0, high = 0, bad
    if size:
        low = high = view[0]
        for i in range(size):
            low = min(low, view[i])
            high = max(high, view[i])
    if low < 0 or high >= n:
        bad = low if low < 0 else high
        where = next(i for i in range(size) if view[i] == bad)
        raise ValueError(f"vertices: value {bad} at index {where} is outside [0, {n - 1}]")
    return vertices


cdef class ReadyEngine:
    """Ready-set bookkeeping for one DAG (state and transitions: see _ref_scheduler).

    ``succ_indptr``/``succ_indices``: successor CSR (int64[n+1], int32[m]); the engine
    keeps its own copy. ``priority``: int64[n], larger first; default
    :func:`longest_path_priority`.
    """

    def __cinit__(self):
        self._busy = False
        self._vertex = NULL
        self._head = NULL
        self._bits = NULL
        self._queued = 0
        self._levels = 0

    def __init__(self, succ_indptr, succ_indices, priority=None):
        indptr, indices = _private_csr(succ_indptr, succ_indices)
        cdef Py_ssize_t n = indptr.shape[0] - 1
        if self._vertex != NULL:
            raise RuntimeError("ReadyEngine.__init__ may run only once")
        if priority is None:
            priority = _longest_path(indptr, indices)
        prio = integer_array("priority", priority, np.int64, length=n)
        ranks, n_ranks = _dense_ranks(prio)
        failures = np.zeros(max(n, 1), np.int32)
        head = np.full(max(n_ranks, 1), -1, np.int32)
        bits = self._bit_tree(max(n_ranks, 1))
        self._owned = (indptr, indices, failures, head, bits)
        self._priority_array = np.array(prio, np.int64, copy=True)
        self._priority_array.flags.writeable = False
        self.n_vertices = n
        self._indptr = <const int64_t*> (<size_t> indptr.ctypes.data)
        self._indices = <const int32_t*> (<size_t> indices.ctypes.data)
        self._failures = <int32_t*> (<size_t> failures.ctypes.data)
        self._head = <int32_t*> (<size_t> head.ctypes.data)
        self._bits = <uint64_t*> (<size_t> bits.ctypes.data)
        self._init_vertices(ranks, np.bincount(indices, minlength=n).astype(np.int32))
        with nogil:
            self._arm_roots()

    cdef object _bit_tree(self, Py_ssize_t n_ranks):
        """The zeroed bit tree for ``n_ranks`` ranks; sets the level offsets."""
        cdef Py_ssize_t words, total = 0
        self._levels = 0
        while True:
            words = (n_ranks + 63) >> 6
            self._level_start[self._levels] = total
            self._levels += 1
            total += words
            if words == 1:
                return np.zeros(total, np.uint64)
            n_ranks = words

    cdef int _init_vertices(self, const uint32_t[::1] ranks,
                            const int32_t[::1] parents) except -1:
        cdef Py_ssize_t v, n = self.n_vertices
        self._vertex = <VertexRec*> PyMem_RawMalloc(max(n, 1) * sizeof(VertexRec))
        if self._vertex == NULL:
            raise MemoryError("ReadyEngine: cannot allocate the vertex table")
        for v in range(n):
            self._vertex[v].rank = ranks[v]
            self._vertex[v].remaining = parents[v]
            self._vertex[v].next = -1
            self._vertex[v].state = S_WAITING
            self._vertex[v].queued = 0
        self._counts[S_WAITING] = n
        for v in range(1, 5):
            self._counts[v] = 0
        return 0

    def __dealloc__(self):
        PyMem_RawFree(self._vertex)

    cdef void _arm_roots(self) noexcept nogil:
        cdef Py_ssize_t v
        for v in range(self.n_vertices - 1, -1, -1):
            if self._vertex[v].remaining == 0:
                self._make_ready(<int32_t> v)

    # ---- the ready queue: buckets by rank under a 64-ary bit tree --------------------
    cdef void _push(self, int32_t v) noexcept nogil:
        cdef uint64_t i = self._vertex[v].rank
        cdef uint64_t old
        cdef uint64_t* word
        cdef int level
        self._vertex[v].next = self._head[i]
        self._head[i] = v
        self._queued += 1
        if self._vertex[v].next != -1:
            return  # the bucket was not empty: its bits are set already
        for level in range(self._levels):
            word = &self._bits[self._level_start[level] + (i >> 6)]
            old = word[0]
            word[0] = old | ((<uint64_t> 1) << (i & 63))
            if old:
                return
            i >>= 6

    cdef int32_t _pop(self) noexcept nogil:
        """Remove and return the top of the best bucket (the queue is not empty)."""
        cdef uint64_t i = 0
        cdef uint64_t* word
        cdef int level
        for level in range(self._levels - 1, -1, -1):
            # the highest set bit of the word: the best non-empty child
            word = &self._bits[self._level_start[level] + i]
            i = (i << 6) | <uint64_t> (63 - __builtin_clzll(word[0]))
        cdef int32_t v = self._head[i]
        self._head[i] = self._vertex[v].next
        self._queued -= 1
        if self._head[i] != -1:
            return v
        for level in range(self._levels):
            word = &self._bits[self._level_start[level] + (i >> 6)]
            word[0] &= ~((<uint64_t> 1) << (i & 63))
            if word[0]:
                break
            i >>= 6
        return v

    # ---- state changes (vertex ids already validated) ---------------------------------
    cdef void _set(self, int32_t v, uint8_t new) noexcept nogil:
        self._counts[self._vertex[v].state] -= 1
        self._counts[new] += 1
        self._vertex[v].state = new

    cdef void _make_ready(self, int32_t v) noexcept nogil:
        self._set(v, S_READY)
        if not self._vertex[v].queued:
            self._vertex[v].queued = 1
            self._push(v)

    cdef void _rearm(self, int32_t v) noexcept nogil:
        if self._vertex[v].remaining == 0:
            self._make_ready(v)
        else:
            self._set(v, S_WAITING)

    cdef Py_ssize_t _complete_one(self, int32_t v, int32_t* out, Py_ssize_t k) noexcept nogil:
        cdef int64_t e
        cdef VertexRec* s
        self._set(v, S_DONE)
        for e in range(self._indptr[v], self._indptr[v + 1]):
            s = &self._vertex[self._indices[e]]
            s.remaining -= 1
            if s.remaining == 0 and s.state == S_WAITING:
                self._make_ready(self._indices[e])
                out[k] = self._indices[e]
                k += 1
        return k

    cdef Py_ssize_t _invalidate_one(self, int32_t v, int32_t* out,
                                    Py_ssize_t k) noexcept nogil:
        cdef int64_t e
        cdef int32_t s
        cdef uint8_t state = self._vertex[v].state
        if state == S_RUNNING:
            self._make_ready(v)
        elif state == S_FAILED:
            self._rearm(v)
        elif state == S_DONE:
            self._rearm(v)
            for e in range(self._indptr[v], self._indptr[v + 1]):
                s = self._indices[e]
                self._vertex[s].remaining += 1
                if self._vertex[s].state == S_READY:
                    self._set(s, S_WAITING)
                elif self._vertex[s].state == S_RUNNING:
                    self._set(s, S_WAITING)
                    out[k] = s
                    k += 1
        return k

    # ---- batch loops -------------------------------------------------------------------
    cdef Py_ssize_t _pop_into(self, int32_t* out, Py_ssize_t wanted) noexcept nogil:
        cdef Py_ssize_t k = 0
        cdef int32_t v
        while k < wanted and self._queued > 0:
            v = self._pop()
            self._vertex[v].queued = 0
            if self._vertex[v].state == S_READY:
                self._set(v, S_RUNNING)
                out[k] = v
                k += 1
        return k

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int64_t _mark_running(self, const int32_t[::1] batch) except -2:
        """Check that every vertex of ``batch`` is RUNNING and appears once; return the
        sum of their out-degrees. On error the marks are undone and nothing changed."""
        cdef Py_ssize_t i, j, n = batch.shape[0]
        cdef int32_t v
        cdef int64_t degree = 0
        cdef uint8_t state
        for i in range(n):
            if i + 8 < n:
                __builtin_prefetch(&self._vertex[batch[i + 8]])
                __builtin_prefetch(&self._indptr[batch[i + 8]])
            v = batch[i]
            state = self._vertex[v].state
            if state != S_RUNNING:
                for j in range(i):
                    self._vertex[batch[j]].state = S_RUNNING
                if state == S_MARKED:
                    raise ValueError(f"vertices: vertex {v} appears twice")
                raise ValueError(f"cannot complete vertex {v}: it is "
                                 f"{STATE_NAMES[state]}, not running")
            self._vertex[v].state = S_MARKED
            degree += self._indptr[v + 1] - self._indptr[v]
        for i in range(n):
            self._vertex[batch[i]].state = S_RUNNING
        return degree

    cdef Py_ssize_t _complete_batch(self, const int32_t* batch, Py_ssize_t n,
                                    int32_t* out) noexcept nogil:
        # The batch is known in advance, so fetch each vertex's CSR row and its
        # successors' records a few vertices ahead: on a large random DAG these are
        # cache misses, and overlapping them is most of the speed.
        cdef Py_ssize_t i, k = 0
        cdef int64_t e
        for i in range(n):
            # three stages, each reading what the one before fetched
            if i + 16 < n:
                __builtin_prefetch(&self._indptr[batch[i + 16]])
            if i + 8 < n:
                __builtin_prefetch(&self._indices[self._indptr[batch[i + 8]]])
            if i + 4 < n:
                for e in range(self._indptr[batch[i + 4]], self._indptr[batch[i + 4] + 1]):
                    __builtin_prefetch(&self._vertex[self._indices[e]])
            k = self._complete_one(batch[i], out, k)
        return k

    cdef Py_ssize_t _invalidate_batch(self, const int32_t* batch, Py_ssize_t n,
                                      int32_t* out) noexcept nogil:
        cdef Py_ssize_t i, k = 0
        for i in range(n):
            k = self._invalidate_one(batch[i], out, k)
        return k

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int64_t _out_degree_sum(self, const int32_t[::1] batch) noexcept:
        cdef Py_ssize_t i
        cdef int64_t degree = 0
        for i in range(batch.shape[0]):
            degree += self._indptr[batch[i] + 1] - self._indptr[batch[i]]
        return degree

    cdef object _run_batch(self, batch, int64_t degree, bint complete):
        # each vertex reported was reached through an edge of the batch
        cdef const int32_t[::1] ids = batch
        cdef Py_ssize_t n = ids.shape[0], k
        out = np.empty(max(degree, 1), np.int32)
        cdef int32_t[::1] out_view = out
        with nogil:
            if n == 0:
                k = 0
            elif complete:
                k = self._complete_batch(&ids[0], n, &out_view[0])
            else:
                k = self._invalidate_batch(&ids[0], n, &out_view[0])
        # a short result gets its own small buffer instead of pinning the large one
        return out[:k] if 2 * k >= degree else out[:k].copy()

    # ---- public API --------------------------------------------------------------------
    cdef int _enter(self) except -1:
        """Claim the engine for a call that changes it. The batch loops release the GIL,
        so a second thread could otherwise change the same state under them; it gets
        an error instead (share an engine between threads only behind a lock)."""
        if self._busy:
            raise RuntimeError("ReadyEngine is in use by another thread; guard a shared "
                               "engine with a lock")
        self._busy = True
        return 0

    def pop_ready(self, n=1):
        """Up to ``n`` READY vertices, best first; they become RUNNING."""
        cdef Py_ssize_t wanted = n if type(n) is int and n >= 0 else count_arg("n", n), k
        wanted = min(wanted, self._queued)
        out = np.empty(max(wanted, 1), np.int32)
        cdef int32_t[::1] view = out
        self._enter()
        try:
            with nogil:
                k = self._pop_into(&view[0], wanted)
        finally:
            self._busy = False
        return out[:k] if 2 * k >= wanted else out[:k].copy()

    def complete(self, vertex):
        """RUNNING ``vertex`` finished; returns the vertices it made READY."""
        return self.complete_many([scalar_index("vertex", vertex, self.n_vertices)])

    def complete_many(self, vertices):
        """Complete every vertex in ``vertices`` (all RUNNING, no repeats), in order;
        returns the vertices made READY, in the order they became ready."""
        batch = _vertex_batch(vertices, self.n_vertices)
        self._enter()
        try:
            return self._run_batch(batch, self._mark_running(batch), True)
        finally:
            self._busy = False

    def invalidate(self, vertex):
        """``vertex``'s output (DONE) or attempt (RUNNING) is lost, or a FAILED vertex is
        re-armed; returns the consumers that were RUNNING and now wait (cancel them)."""
        return self.invalidate_many([scalar_index("vertex", vertex, self.n_vertices)])

    def invalidate_many(self, vertices):
        """:meth:`invalidate` each vertex in order; repeats are allowed."""
        batch = _vertex_batch(vertices, self.n_vertices)
        self._enter()
        try:
            return self._run_batch(batch, self._out_degree_sum(batch), False)
        finally:
            self._busy = False

    def fail(self, vertex, retry=True):
        """RUNNING ``vertex`` failed: count it; READY again if ``retry``, else FAILED."""
        cdef int32_t v = scalar_index("vertex", vertex, self.n_vertices)
        self._enter()  # nothing below releases the GIL: the claim is only a check
        self._busy = False
        if self._vertex[v].state != S_RUNNING:
            raise ValueError(f"cannot fail vertex {v}: it is "
                             f"{STATE_NAMES[self._vertex[v].state]}, not running")
        self._failures[v] += 1
        if retry:
            self._make_ready(v)
        else:
            self._set(v, S_FAILED)

    def state_of(self, vertex):
        """The state of one vertex (a :class:`VertexState` value)."""
        return int(self._vertex[scalar_index("vertex", vertex, self.n_vertices)].state)

    @property
    def state(self):
        """A copy of the state array, uint8[n]."""
        out = np.empty(self.n_vertices, np.uint8)
        cdef uint8_t[::1] view = out
        cdef Py_ssize_t v
        for v in range(self.n_vertices):
            view[v] = self._vertex[v].state
        return out

    @property
    def remaining(self):
        """A copy of the missing-parent counts, int32[n]."""
        out = np.empty(self.n_vertices, np.int32)
        cdef int32_t[::1] view = out
        cdef Py_ssize_t v
        for v in range(self.n_vertices):
            view[v] = self._vertex[v].remaining
        return out

    @property
    def failures(self):
        """A copy of the failure counts, int32[n]."""
        return self._owned[2][:self.n_vertices].copy()

    @property
    def priority(self):
        """A copy of the priorities, int64[n]."""
        return self._priority_array.copy()

    @property
    def counts(self):
        """How many vertices are (waiting, ready, running, done, failed)."""
        return tuple(self._counts[i] for i in range(5))

    @property
    def finished(self):
        """True when every vertex is DONE."""
        return self._counts[S_DONE] == self.n_vertices

    def __repr__(self):
        shown = ", ".join(f"{name}={self._counts[i]}" for i, name in enumerate(STATE_NAMES))
        return f"<ReadyEngine (compiled) of {self.n_vertices} vertices: {shown}>"
