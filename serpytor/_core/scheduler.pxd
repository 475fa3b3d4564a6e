# Declarations of the ready-set engine (scheduler.pyx), for other Cython modules.
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    S_WAITING = 0
    S_READY = 1
    S_RUNNING = 2
    S_DONE = 3
    S_FAILED = 4
    # marks a vertex already seen in the batch being validated by complete_many()
    S_MARKED = 5


# What a vertex needs when it becomes ready, side by side: the engine reads it once per
# vertex at a random place. The counter hit once per edge lives apart
# (ReadyEngine._remaining), so that the array walked at random for every edge is small.
cdef struct VertexRec:
    int32_t id           # the caller's vertex id (the engine numbers vertices its own way)
    uint32_t bucket      # ready bucket: dense priority rank, 0 = highest priority
    uint8_t state        # S_WAITING .. S_FAILED
    uint8_t queued       # a ready bucket holds the vertex (maybe stale)


# The ready queue: one LIFO bucket per priority rank, and a 64-ary bit tree over the
# buckets that are not empty; level 0 has a bit per bucket, level l+1 a bit per word of
# level l, the top level is one word.
cdef enum:
    MAX_LEVELS = 6      # 64**6 buckets: more than any int32 vertex count

# How far ahead the batch loops prefetch: records of the vertices popped next; engine
# numbers of the caller's ids; CSR rows and records in vertices of the batch (row
# offsets twice as far); successors' counters in edges; records of vertices woken.
cdef enum:
    PREFETCH_POP = 8
    PREFETCH_IDS = 32
    PREFETCH_ROWS = 32
    PREFETCH_EDGES = 64
    PREFETCH_WAKE = 64
    ROW_COPY = 8        # successor ids copied as one block (spare room at array ends)


@cython.final
cdef class ReadyEngine:
    cdef readonly Py_ssize_t n_vertices
    cdef object _owned           # the numpy arrays behind the pointers below
    # Per-vertex arrays are indexed by the engine's own numbering (vertices sorted by
    # bucket, so that a bucket is a range of numbers), but for _internal and _failures,
    # indexed by the caller's ids.
    cdef const int64_t* _indptr  # successor CSR in engine numbering (its own copy)
    cdef const int32_t* _indices
    cdef int32_t* _remaining     # int32[n]: parents not DONE
    cdef VertexRec* _vertex
    cdef const int32_t* _internal  # int32[n]: caller's id -> engine number
    cdef int32_t* _failures      # int32[n] by caller's id: fail() count
    cdef int32_t* _slot          # int32[n]: bucket b's stack is _slot[_start[b]:_top[b]]
    cdef const int32_t* _start   # int32[r+1]: bucket b holds _start[b] .. _start[b+1]-1
    cdef int32_t* _top           # int32[r]
    cdef uint64_t* _bits         # the bit tree, levels one after the other
    cdef int32_t* _handed        # int32[n]: engine numbers of the last pop, in order
    cdef Py_ssize_t _n_handed
    cdef Py_ssize_t _level_start[MAX_LEVELS]
    cdef int _levels
    cdef object _priority_array  # int64[n] by caller's id, for the priority property
    cdef Py_ssize_t _entries     # entries in the buckets, stale ones included
    cdef Py_ssize_t _counts[5]
    cdef bint _busy              # a call that releases the GIL is under way

    cdef int _enter(self) except -1
    cdef object _bit_tree(self, Py_ssize_t n_buckets)
    cdef object _load(self, indptr, indices, ranks, Py_ssize_t n_ranks)
    cdef int _init_vertices(self, const int32_t[::1] public,
                            Py_ssize_t n_buckets) except -1
    cdef void _arm_roots(self) noexcept nogil
    cdef inline void _mark_bucket(self, uint64_t b) noexcept nogil
    cdef void _unmark_bucket(self, uint64_t b) noexcept nogil
    cdef uint64_t _best_bucket(self) noexcept nogil
    cdef inline void _push(self, int32_t v) noexcept nogil
    cdef inline void _set(self, int32_t v, uint8_t new) noexcept nogil
    cdef void _make_ready(self, int32_t v) noexcept nogil
    cdef void _rearm(self, int32_t v) noexcept nogil
    cdef Py_ssize_t _invalidate_one(self, int32_t v, int32_t* out,
                                    Py_ssize_t k) noexcept nogil
    cdef Py_ssize_t _pop_into(self, int32_t* out, Py_ssize_t wanted) noexcept nogil
    cdef object _internal_batch(self, vertices)
    cdef bint _to_engine(self, const int32_t* ids, Py_ssize_t size,
                         int32_t* out) noexcept nogil
    cdef int64_t _check_running(self, const int32_t* batch, Py_ssize_t n) except -2
    cdef Py_ssize_t _gather_successors(self, const int32_t* batch, Py_ssize_t n,
                                       int32_t* out) noexcept nogil
    cdef Py_ssize_t _release_successors(self, const int32_t* batch, Py_ssize_t n,
                                        int32_t* out) noexcept nogil
    cdef Py_ssize_t _wake(self, int32_t* found, Py_ssize_t k) noexcept nogil
    cdef Py_ssize_t _invalidate_batch(self, const int32_t* batch, Py_ssize_t n,
                                      int32_t* out) noexcept nogil
    cdef int64_t _out_degree_sum(self, const int32_t* batch, Py_ssize_t n) noexcept
    cdef object _run_batch(self, batch, bint complete)
