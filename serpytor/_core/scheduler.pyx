# cython: cdivision=True
"""Ready-set engine over a DAG's successor CSR arrays (compiled).

The state, its invariants and every transition are written down in the reference,
``serpytor/_core/_ref_scheduler.py``; this module keeps the same state in C and must
agree with the reference after every call (tests/test_core_scheduler.py checks it).

The reference's heap orders entries by (priority desc, seq desc), seq counting pushes.
Priorities are fixed when the engine loads, so the compiled queue replaces the heap by
one bucket per distinct priority (its dense rank, bucket 0 the highest): the best
bucket is found in a 64-ary bit tree with one count-trailing-zeros per level, and
within a bucket the entry pushed last is the one with the largest seq, so a bucket is
a stack. The pop order is the reference's exactly.

On a large graph the cost is memory traffic, so the engine numbers the vertices its own
way when it loads: sorted by bucket (stable in id), so that bucket b is a range of
numbers ``[start[b], start[b+1])``. Every array is kept in that numbering, and the
caller's ids are translated at the boundary only (``_internal`` in, ``VertexRec.id``
out). Vertices popped together are neighbours in memory, and so are their CSR rows;
each bucket's stack lives in the range of ``_slot`` its own vertices would fill (a
vertex is queued at most once), so the stacks need no links::

    _indptr     int64[n+1]     successor CSR in engine numbering (the engine's own copy)
    _indices    int32[m+8]     (8 spare ids: rows are copied in blocks of 8)
    _remaining  int32[n]       parents not DONE: the one array touched per edge
    _vertex     VertexRec[n]   id, bucket, state, queued (scheduler.pxd)
    _internal   int32[n]       caller's id -> engine number
    _handed     int32[n]       engine numbers of the last pop, in order
    _failures   int32[n]       fail() count, by caller's id
    _slot       int32[n]       bucket b's stack is _slot[_start[b]:_top[b]]
    _start      int32[r+1]     (r distinct priorities)
    _top        int32[r]
    _bits       uint64[...]    64-ary bit tree of the non-empty buckets
    _counts     Py_ssize_t[5]  vertices per state

What remains at random is the successors. Completing a batch lists the successors of
the whole batch, counts down their missing parents in one flat pass (``_remaining``, 4
bytes a vertex, prefetched a fixed number of edges ahead), then reads the records of
those whose count reached zero, prefetched too, to wake them in order. Translating a
batch of ids would be one more random read per vertex; callers mostly complete what
they popped, so the last pop's engine numbers are tried first (``_handed``), each
checked against the record's id.

Python crosses into the kernel once per batch: pop_ready(n), complete_many(array) and
invalidate_many(array) loop in C without the GIL. Every vertex id that enters a
``nogil`` loop was range-checked at the boundary (while translating the batch into a
private array of engine numbers), every successor id was checked when the CSR was
loaded (into the engine's own copy), and the queue's arrays are sized for every vertex
when the engine loads, so the loops need neither bounds checks nor error paths. While a
loop runs without the GIL the engine is marked busy: a second thread calling in gets a
RuntimeError, never a torn state (an engine shared between threads belongs behind a
lock).
"""

cimport cython
cimport numpy as cnp
from libc.string cimport memcpy
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t

import numpy as np

cnp.import_array()

from ._checks import count_arg, csr_arrays, integer_array, scalar_index
from ._ref_scheduler import STATE_NAMES, VertexState

WAITING, READY, RUNNING, DONE, FAILED = S_WAITING, S_READY, S_RUNNING, S_DONE, S_FAILED

__all__ = ["ReadyEngine", "longest_path_priority", "VertexState",
           "WAITING", "READY", "RUNNING", "DONE", "FAILED"]

cdef extern from *:
    # a hint only: prefetching any address is safe, even an invalid one
    void __builtin_prefetch(const void* address) noexcept nogil
    int __builtin_ctzll(unsigned long long word) noexcept nogil


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


# ---- loading: the engine's own numbering ----------------------------------------------

cdef void _bucket_order(const uint32_t* rank, Py_ssize_t n, Py_ssize_t n_ranks,
                        int32_t* start, int32_t* cursor, int32_t* public,
                        int32_t* internal) noexcept nogil:
    """Counting sort of the vertices by bucket (``n_ranks - 1 - rank``), stable in id:
    engine number u is vertex ``public[u]``, vertex v is number ``internal[v]``, and
    bucket b holds the numbers ``[start[b], start[b+1])``."""
    cdef Py_ssize_t v, b
    cdef int32_t u
    for b in range(n_ranks + 1):
        start[b] = 0
    for v in range(n):
        start[n_ranks - rank[v]] += 1
    for b in range(n_ranks):
        start[b + 1] += start[b]
        cursor[b] = start[b]
    for v in range(n):
        b = n_ranks - 1 - rank[v]
        u = cursor[b]
        cursor[b] = u + 1
        public[u] = <int32_t> v
        internal[v] = u


cdef void _renumber_csr(const int64_t* indptr, const int32_t* indices, Py_ssize_t n,
                        const int32_t* public, const int32_t* internal,
                        int64_t* new_indptr, int32_t* new_indices,
                        int32_t* parents) noexcept nogil:
    """The successor CSR in engine numbering (each row's order kept), and each vertex's
    parent count (``parents`` starts zeroed)."""
    cdef Py_ssize_t u
    cdef int64_t e, o = 0
    cdef int32_t v, s
    new_indptr[0] = 0
    for u in range(n):
        v = public[u]
        for e in range(indptr[v], indptr[v + 1]):
            s = internal[indices[e]]
            new_indices[o] = s
            parents[s] += 1
            o += 1
        new_indptr[u + 1] = o


cdef inline void* _data(cnp.ndarray array) noexcept:
    """The data of a C-contiguous numpy array (no memoryview: a batch call makes a few
    of these, and a memoryview costs more than the work on a small batch)."""
    return cnp.PyArray_DATA(array)


cdef class ReadyEngine:
    """Ready-set bookkeeping for one DAG (state and transitions: see _ref_scheduler).

    ``succ_indptr``/``succ_indices``: successor CSR (int64[n+1], int32[m]); the engine
    keeps its own copy. ``priority``: int64[n], larger first; default
    :func:`longest_path_priority`.
    """

    def __cinit__(self):
        self._busy = False
        self._vertex = NULL
        self._entries = 0
        self._n_handed = 0
        self._levels = 0

    def __init__(self, succ_indptr, succ_indices, priority=None):
        indptr, indices = _private_csr(succ_indptr, succ_indices)
        cdef Py_ssize_t n = indptr.shape[0] - 1
        if self._vertex != NULL:
            raise RuntimeError("ReadyEngine.__init__ may run only once")
        if n > INT32_MAX:
            raise ValueError(f"succ_indptr: at most {INT32_MAX} vertices (int32 ids), "
                             f"got {n}")
        if priority is None:
            priority = _longest_path(indptr, indices)
        prio = integer_array("priority", priority, np.int64, length=n)
        ranks, n_ranks = _dense_ranks(prio)
        self._priority_array = np.array(prio, np.int64, copy=True)
        self._priority_array.flags.writeable = False
        self.n_vertices = n
        try:
            public = self._load(indptr, indices, ranks, n_ranks)
            del indptr, indices  # the copy in engine numbering replaces them
            self._init_vertices(public, n_ranks)
        except BaseException:
            self.n_vertices = 0  # a failed load leaves an empty engine, not a dangling one
            raise
        with nogil:
            self._arm_roots()

    cdef object _bit_tree(self, Py_ssize_t n_buckets):
        """The zeroed bit tree for ``n_buckets`` buckets; sets the level offsets."""
        cdef Py_ssize_t words, total = 0
        self._levels = 0
        while True:
            words = (n_buckets + 63) >> 6
            self._level_start[self._levels] = total
            self._levels += 1
            total += words
            if words == 1:
                return np.zeros(total, np.uint64)
            n_buckets = words

    cdef object _load(self, indptr, indices, ranks, Py_ssize_t n_ranks):
        """Number the vertices by bucket and keep the graph in that numbering: the
        vertices popped one after the other are then neighbours in every array, and
        so are their CSR rows. Returns ``public`` (caller's id of each number)."""
        cdef Py_ssize_t n = self.n_vertices, size = max(n, 1), b
        cdef Py_ssize_t buckets = max(n_ranks, 1)
        public = np.empty(size, np.int32)
        internal = np.empty(size, np.int32)
        start = np.zeros(buckets + 1, np.int32)
        top = np.empty(buckets, np.int32)
        own_indptr = np.empty(n + 1, np.int64)
        # ROW_COPY spare ids at the end: _gather_successors copies rows in whole blocks
        own_indices = np.zeros(indices.shape[0] + ROW_COPY, np.int32)
        remaining = np.zeros(size, np.int32)
        # _handed starts zeroed: a guess is always some vertex's engine number
        self._owned = (own_indptr, own_indices, remaining, internal,
                       np.zeros(size, np.int32), np.empty(size, np.int32), start, top,
                       self._bit_tree(buckets), np.zeros(size, np.int32))
        cdef const uint32_t* rank = <const uint32_t*> _data(ranks)
        cdef const int64_t* ptr = <const int64_t*> _data(indptr)
        cdef const int32_t* idx = <const int32_t*> _data(indices)
        cdef int32_t* public_ = <int32_t*> _data(public)
        self._indptr = <const int64_t*> _data(own_indptr)
        self._indices = <const int32_t*> _data(own_indices)
        self._remaining = <int32_t*> _data(remaining)
        self._internal = <const int32_t*> _data(internal)
        self._failures = <int32_t*> _data(self._owned[4])
        self._slot = <int32_t*> _data(self._owned[5])
        self._start = <const int32_t*> _data(start)
        self._top = <int32_t*> _data(top)
        self._bits = <uint64_t*> _data(self._owned[8])
        self._handed = <int32_t*> _data(self._owned[9])
        with nogil:
            _bucket_order(rank, n, n_ranks, <int32_t*> self._start, self._top, public_,
                          <int32_t*> self._internal)
            for b in range(n_ranks):
                self._top[b] = self._start[b]
            _renumber_csr(ptr, idx, n, public_, self._internal, <int64_t*> self._indptr,
                          <int32_t*> self._indices, self._remaining)
        return public

    cdef int _init_vertices(self, const int32_t[::1] public,
                            Py_ssize_t n_buckets) except -1:
        cdef Py_ssize_t u, b, n = self.n_vertices
        # a numpy buffer rather than malloc: numpy asks for huge pages on large arrays,
        # and the table is read at random
        table = np.empty(max(n, 1) * sizeof(VertexRec), np.uint8)
        self._owned += (table,)
        self._vertex = <VertexRec*> _data(table)
        for b in range(n_buckets):
            for u in range(self._start[b], self._start[b + 1]):
                self._vertex[u].bucket = <uint32_t> b
        for u in range(n):
            self._vertex[u].id = public[u]
            self._vertex[u].state = S_WAITING
            self._vertex[u].queued = 0
        self._counts[S_WAITING] = n
        for u in range(1, 5):
            self._counts[u] = 0
        return 0

    cdef void _arm_roots(self) noexcept nogil:
        # in descending id order, as the reference pushes them
        cdef Py_ssize_t v
        cdef int32_t u
        for v in range(self.n_vertices - 1, -1, -1):
            u = self._internal[v]
            if self._remaining[u] == 0:
                self._make_ready(u)

    # ---- the ready queue: LIFO buckets under a 64-ary bit tree -------------------------
    cdef inline void _mark_bucket(self, uint64_t b) noexcept nogil:
        cdef uint64_t old
        cdef uint64_t* word
        cdef int level
        for level in range(self._levels):
            word = &self._bits[self._level_start[level] + (b >> 6)]
            old = word[0]
            word[0] = old | ((<uint64_t> 1) << (b & 63))
            if old:
                return  # the levels above have their bit already
            b >>= 6

    cdef void _unmark_bucket(self, uint64_t b) noexcept nogil:
        cdef uint64_t* word
        cdef int level
        for level in range(self._levels):
            word = &self._bits[self._level_start[level] + (b >> 6)]
            word[0] &= ~((<uint64_t> 1) << (b & 63))
            if word[0]:
                return  # a sibling is still non-empty
            b >>= 6

    cdef uint64_t _best_bucket(self) noexcept nogil:
        """The non-empty bucket of highest priority (some bucket is not empty)."""
        cdef uint64_t b = 0
        cdef int level
        for level in range(self._levels - 1, -1, -1):
            # the lowest set bit of the word: its best non-empty child
            b = (b << 6) | <uint64_t> __builtin_ctzll(
                self._bits[self._level_start[level] + b])
        return b

    cdef inline void _push(self, int32_t v) noexcept nogil:
        cdef uint32_t b = self._vertex[v].bucket
        cdef int32_t t = self._top[b]
        self._slot[t] = v
        self._top[b] = t + 1
        self._entries += 1
        # the bucket's bit may be set already: setting it again costs less than a branch
        # on whether the bucket was empty
        self._mark_bucket(b)

    # ---- state changes (engine numbers, already validated) ----------------------------
    cdef inline void _set(self, int32_t v, uint8_t new) noexcept nogil:
        self._counts[self._vertex[v].state] -= 1
        self._counts[new] += 1
        self._vertex[v].state = new

    cdef void _make_ready(self, int32_t v) noexcept nogil:
        self._set(v, S_READY)
        if not self._vertex[v].queued:
            self._vertex[v].queued = 1
            self._push(v)

    cdef void _rearm(self, int32_t v) noexcept nogil:
        if self._remaining[v] == 0:
            self._make_ready(v)
        else:
            self._set(v, S_WAITING)

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
                self._remaining[s] += 1
                if self._vertex[s].state == S_READY:
                    self._set(s, S_WAITING)
                elif self._vertex[s].state == S_RUNNING:
                    self._set(s, S_WAITING)
                    out[k] = self._vertex[s].id
                    k += 1
        return k

    # ---- batch loops -------------------------------------------------------------------
    cdef Py_ssize_t _pop_into(self, int32_t* out, Py_ssize_t wanted) noexcept nogil:
        # Nothing is pushed while popping, so the best bucket stays the best until it
        # is empty: the tree is searched once per bucket, not once per vertex.
        cdef Py_ssize_t k = 0
        cdef uint64_t b
        cdef int32_t t, base, v
        cdef VertexRec* vertex = self._vertex
        cdef const int32_t* slot = self._slot
        while k < wanted and self._entries > 0:
            b = self._best_bucket()
            base = self._start[b]
            t = self._top[b]
            while t > base and k < wanted:
                t -= 1
                if t - PREFETCH_POP >= base:
                    __builtin_prefetch(&vertex[slot[t - PREFETCH_POP]])
                v = slot[t]
                vertex[v].queued = 0
                if vertex[v].state == S_READY:
                    vertex[v].state = S_RUNNING
                    out[k] = vertex[v].id
                    self._handed[k] = v
                    k += 1
            self._entries -= self._top[b] - t
            self._top[b] = t
            if t == base:
                self._unmark_bucket(b)
        self._counts[S_READY] -= k
        self._counts[S_RUNNING] += k
        self._n_handed = k
        return k

    cdef object _internal_batch(self, vertices):
        """``vertices`` (caller's ids) as a new int32 array of engine numbers, nobody
        else's (the batch loops read it without the GIL). Every id is range-checked
        here; an int32 array (as the engine returns them) skips the generic
        conversion, and a bad id gets the generic conversion's message."""
        cdef Py_ssize_t n = self.n_vertices
        source = vertices
        if not (type(source) is np.ndarray and cnp.PyArray_TYPE(source) == cnp.NPY_INT32
                and cnp.PyArray_NDIM(source) == 1):
            source = integer_array("vertices", source, lower=0, upper=n)
        if not cnp.PyArray_ISCARRAY_RO(source):  # C order, aligned, native byte order
            source = np.require(source, np.int32, "CA")
        cdef Py_ssize_t size = cnp.PyArray_DIM(source, 0)
        batch = np.empty(size, np.int32)
        if not self._to_engine(<const int32_t*> _data(source), size,
                               <int32_t*> _data(batch)):
            integer_array("vertices", vertices, lower=0, upper=n)  # raises, with the place
            raise ValueError(f"vertices: a value is outside [0, {n - 1}]")
        return batch

    cdef bint _to_engine(self, const int32_t* ids, Py_ssize_t size,
                         int32_t* out) noexcept nogil:
        """out[i] = the engine number of ``ids[i]``; False (``out`` unfinished) when an id
        is outside [0, n).

        Callers mostly complete what they popped, in that order: the engine number of
        the i-th vertex of the last pop is tried first, checked against its record
        (which the pop has just read), and only a wrong guess reads ``_internal``, at
        a random place."""
        cdef uint32_t n = <uint32_t> self.n_vertices  # < 2**31: a negative id wraps above
        cdef Py_ssize_t i, guessed = min(size, self._n_handed)
        cdef int32_t v
        for i in range(size):
            v = ids[i]
            if <uint32_t> v >= n:
                return False
            if i < guessed and self._vertex[self._handed[i]].id == v:
                out[i] = self._handed[i]
            else:
                if i + PREFETCH_IDS < size and <uint32_t> ids[i + PREFETCH_IDS] < n:
                    __builtin_prefetch(&self._internal[ids[i + PREFETCH_IDS]])
                out[i] = self._internal[v]
        return True

    cdef int64_t _check_running(self, const int32_t* batch, Py_ssize_t n) except -2:
        """Check that every vertex of ``batch`` is RUNNING and appears once; return the
        sum of their out-degrees. The marks are undone: nothing changes."""
        cdef Py_ssize_t i, j
        cdef int32_t v
        cdef int64_t degree = 0
        cdef uint8_t state
        for i in range(n):
            if i + PREFETCH_ROWS < n:
                __builtin_prefetch(&self._vertex[batch[i + PREFETCH_ROWS]])
                __builtin_prefetch(&self._indptr[batch[i + PREFETCH_ROWS]])
            v = batch[i]
            state = self._vertex[v].state
            if state != S_RUNNING:
                for j in range(i):
                    self._vertex[batch[j]].state = S_RUNNING
                v = self._vertex[v].id
                if state == S_MARKED:
                    raise ValueError(f"vertices: vertex {v} appears twice")
                raise ValueError(f"cannot complete vertex {v}: it is "
                                 f"{STATE_NAMES[state]}, not running")
            self._vertex[v].state = S_MARKED
            degree += self._indptr[v + 1] - self._indptr[v]
        for i in range(n):
            self._vertex[batch[i]].state = S_RUNNING
        return degree

    cdef Py_ssize_t _gather_successors(self, const int32_t* batch, Py_ssize_t n,
                                       int32_t* out) noexcept nogil:
        """Mark the batch DONE and copy its successors, row after row, to ``out`` (which
        has ROW_COPY spare entries); returns how many."""
        cdef const int64_t* indptr = self._indptr
        cdef const int32_t* indices = self._indices
        cdef Py_ssize_t i, o = 0
        cdef int64_t start, degree
        cdef int32_t v
        for i in range(n):
            # the rows, a few vertices ahead (their offsets twice as far)
            if i + 2 * PREFETCH_ROWS < n:
                __builtin_prefetch(&indptr[batch[i + 2 * PREFETCH_ROWS]])
            if i + PREFETCH_ROWS < n:
                __builtin_prefetch(&indices[indptr[batch[i + PREFETCH_ROWS]]])
            v = batch[i]
            self._vertex[v].state = S_DONE
            start = indptr[v]
            degree = indptr[v + 1] - start
            # most rows are short: a fixed-size copy has no branch to mispredict
            memcpy(&out[o], &indices[start], ROW_COPY * sizeof(int32_t))
            if degree > ROW_COPY:
                memcpy(&out[o + ROW_COPY], &indices[start + ROW_COPY],
                       (degree - ROW_COPY) * sizeof(int32_t))
            o += degree
        return o

    cdef Py_ssize_t _release_successors(self, const int32_t* batch, Py_ssize_t n,
                                        int32_t* out) noexcept nogil:
        """Complete the batch (all RUNNING): mark it DONE and count down its successors'
        missing parents; the vertices woken go to ``out`` (caller's ids), in order."""
        # One counter per edge at a random place, and nothing else at random (the
        # records of the successors whose count reaches zero are read by _wake). The
        # successors are listed first, so that this loop is one flat pass that
        # prefetches the counters a fixed number of edges ahead.
        cdef int32_t* remaining = self._remaining
        cdef Py_ssize_t j, k = 0, m = self._gather_successors(batch, n, out)
        cdef int32_t s, left
        for j in range(m):
            if j + PREFETCH_EDGES < m:
                __builtin_prefetch(&remaining[out[j + PREFETCH_EDGES]])
            s = out[j]
            left = remaining[s] - 1
            remaining[s] = left
            # kept in place (k <= j), without a branch: whether a count reaches zero is
            # a coin toss on a random graph
            out[k] = s
            k += left == 0
        self._counts[S_RUNNING] -= n
        self._counts[S_DONE] += n
        return self._wake(out, k)

    cdef Py_ssize_t _wake(self, int32_t* found, Py_ssize_t k) noexcept nogil:
        """Make READY, in order, the vertices of ``found`` (engine numbers whose last
        parent just completed) that wait; ``found`` becomes their caller's ids.

        The batch's successors are never in the batch (a RUNNING vertex has every
        parent DONE), so their states are the ones they had before it: waking them
        after the whole batch, in the order they were found, pushes exactly what
        waking each as it was found would."""
        cdef VertexRec* vertex = self._vertex
        cdef Py_ssize_t i, j = 0
        cdef int32_t s
        for i in range(k):
            if i + PREFETCH_WAKE < k:
                __builtin_prefetch(&vertex[found[i + PREFETCH_WAKE]])
            s = found[i]
            if vertex[s].state == S_WAITING:
                vertex[s].state = S_READY
                if not vertex[s].queued:
                    vertex[s].queued = 1
                    self._push(s)
                found[j] = vertex[s].id
                j += 1
        self._counts[S_WAITING] -= j
        self._counts[S_READY] += j
        return j

    cdef Py_ssize_t _invalidate_batch(self, const int32_t* batch, Py_ssize_t n,
                                      int32_t* out) noexcept nogil:
        cdef Py_ssize_t i, k = 0
        for i in range(n):
            k = self._invalidate_one(batch[i], out, k)
        return k

    cdef int64_t _out_degree_sum(self, const int32_t* batch, Py_ssize_t n) noexcept:
        cdef Py_ssize_t i
        cdef int64_t degree = 0
        for i in range(n):
            degree += self._indptr[batch[i] + 1] - self._indptr[batch[i]]
        return degree

    cdef object _run_batch(self, batch, bint complete):
        cdef const int32_t* ids = <const int32_t*> _data(batch)
        cdef Py_ssize_t n = cnp.PyArray_DIM(batch, 0), k
        # each vertex reported was reached through an edge of the batch
        cdef int64_t degree = (self._check_running(ids, n) if complete
                               else self._out_degree_sum(ids, n))
        out = np.empty(degree + ROW_COPY, np.int32)  # room for _gather_successors
        cdef int32_t* found = <int32_t*> _data(out)
        with nogil:
            if complete:
                k = self._release_successors(ids, n, found)
            else:
                k = self._invalidate_batch(ids, n, found)
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
        wanted = min(wanted, self._entries)
        out = np.empty(max(wanted, 1), np.int32)
        cdef int32_t* popped = <int32_t*> _data(out)
        self._enter()
        try:
            with nogil:
                k = self._pop_into(popped, wanted)
        finally:
            self._busy = False
        return out[:k] if 2 * k >= wanted else out[:k].copy()

    def complete(self, vertex):
        """RUNNING ``vertex`` finished; returns the vertices it made READY."""
        return self.complete_many([scalar_index("vertex", vertex, self.n_vertices)])

    def complete_many(self, vertices):
        """Complete every vertex in ``vertices`` (all RUNNING, no repeats), in order;
        returns the vertices made READY, in the order they became ready."""
        batch = self._internal_batch(vertices)
        self._enter()
        try:
            return self._run_batch(batch, True)
        finally:
            self._busy = False

    def invalidate(self, vertex):
        """``vertex``'s output (DONE) or attempt (RUNNING) is lost, or a FAILED vertex is
        re-armed; returns the consumers that were RUNNING and now wait (cancel them)."""
        return self.invalidate_many([scalar_index("vertex", vertex, self.n_vertices)])

    def invalidate_many(self, vertices):
        """:meth:`invalidate` each vertex in order; repeats are allowed."""
        batch = self._internal_batch(vertices)
        self._enter()
        try:
            return self._run_batch(batch, False)
        finally:
            self._busy = False

    def fail(self, vertex, retry=True):
        """RUNNING ``vertex`` failed: count it; READY again if ``retry``, else FAILED."""
        cdef int32_t v = scalar_index("vertex", vertex, self.n_vertices)
        cdef int32_t u = self._internal[v]
        self._enter()  # nothing below releases the GIL: the claim is only a check
        self._busy = False
        if self._vertex[u].state != S_RUNNING:
            raise ValueError(f"cannot fail vertex {v}: it is "
                             f"{STATE_NAMES[self._vertex[u].state]}, not running")
        self._failures[v] += 1
        if retry:
            self._make_ready(u)
        else:
            self._set(u, S_FAILED)

    def state_of(self, vertex):
        """The state of one vertex (a :class:`VertexState` value)."""
        cdef int32_t v = scalar_index("vertex", vertex, self.n_vertices)
        return int(self._vertex[self._internal[v]].state)

    @property
    def state(self):
        """A copy of the state array, uint8[n]."""
        out = np.empty(self.n_vertices, np.uint8)
        cdef uint8_t[::1] view = out
        cdef Py_ssize_t v
        for v in range(self.n_vertices):
            view[v] = self._vertex[self._internal[v]].state
        return out

    @property
    def remaining(self):
        """A copy of the missing-parent counts, int32[n]."""
        out = np.empty(self.n_vertices, np.int32)
        cdef int32_t[::1] view = out
        cdef Py_ssize_t v
        for v in range(self.n_vertices):
            view[v] = self._remaining[self._internal[v]]
        return out

    @property
    def failures(self):
        """A copy of the failure counts, int32[n]."""
        return self._owned[4][:self.n_vertices].copy()

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
