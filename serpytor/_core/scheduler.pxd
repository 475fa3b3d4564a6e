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


# The per-vertex fields the hot loops touch together, packed so that a successor costs
# one cache line, not four.
cdef struct VertexRec:
    uint32_t rank        # dense rank of the vertex's priority (larger runs first)
    int32_t remaining    # parents not DONE
    int32_t next         # next vertex in the same ready bucket, -1 at the end
    uint8_t state        # S_WAITING .. S_FAILED
    uint8_t queued       # a ready bucket holds the vertex (maybe stale)


# The ready queue: one LIFO bucket per rank (head[rank], linked through next) and a
# 64-ary bit tree over the ranks whose buckets are not empty; level 0 has a bit per
# rank, level l+1 a bit per word of level l, the top level is one word.
cdef enum:
    MAX_LEVELS = 6      # 64**6 ranks: more than any int32 vertex count


@cython.final
cdef class ReadyEngine:
    cdef readonly Py_ssize_t n_vertices
    cdef object _owned           # the numpy arrays behind the pointers below
    cdef const int64_t* _indptr  # successor CSR, the engine's own copy
    cdef const int32_t* _indices
    cdef int32_t* _failures
    cdef int32_t* _head          # int32[n_ranks]: top of each bucket, -1 when empty
    cdef uint64_t* _bits         # the bit tree, levels one after the other
    cdef Py_ssize_t _level_start[MAX_LEVELS]
    cdef int _levels
    cdef object _priority_array  # int64[n], for the priority property
    cdef VertexRec* _vertex
    cdef Py_ssize_t _queued      # entries in the buckets, stale ones included
    cdef Py_ssize_t _counts[5]
    cdef bint _busy              # a call that releases the GIL is under way

    cdef int _enter(self) except -1
    cdef object _bit_tree(self, Py_ssize_t n_ranks)
    cdef int _init_vertices(self, const uint32_t[::1] ranks,
                            const int32_t[::1] parents) except -1
    cdef void _push(self, int32_t v) noexcept nogil
    cdef int32_t _pop(self) noexcept nogil
    cdef void _set(self, int32_t v, uint8_t new) noexcept nogil
    cdef void _make_ready(self, int32_t v) noexcept nogil
    cdef void _rearm(self, int32_t v) noexcept nogil
    cdef Py_ssize_t _complete_one(self, int32_t v, int32_t* out, Py_ssize_t k) noexcept nogil
    cdef Py_ssize_t _invalidate_one(self, int32_t v, int32_t* out,
                                    Py_ssize_t k) noexcept nogil
    cdef void _arm_roots(self) noexcept nogil
    cdef Py_ssize_t _pop_into(self, int32_t* out, Py_ssize_t wanted) noexcept nogil
    cdef int64_t _mark_running(self, const int32_t[::1] batch) except -2
    cdef Py_ssize_t _complete_batch(self, const int32_t* batch, Py_ssize_t n,
                                    int32_t* out) noexcept nogil
    cdef Py_ssize_t _invalidate_batch(self, const int32_t* batch, Py_ssize_t n,
                                      int32_t* out) noexcept nogil
    cdef int64_t _out_degree_sum(self, const int32_t[::1] batch) noexcept
    cdef object _run_batch(self, batch, int64_t degree, bint complete)
