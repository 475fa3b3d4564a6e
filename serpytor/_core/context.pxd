# Declarations of the context kernels (context.pyx), for other Cython modules.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t


cdef enum:
    C_CONFLICT = -1      # an entry whose nearest facts disagree (_ref_context.CONFLICT)


# A growable array of int32 or int64 for outputs whose size is known only at the end.
cdef struct Int32Vec:
    int32_t* data
    Py_ssize_t size
    Py_ssize_t capacity

cdef struct Int64Vec:
    int64_t* data
    Py_ssize_t size
    Py_ssize_t capacity


# One row of merge_facts' input: a parent row (own = 0) or an own fact (own = 1).
cdef struct MergeRow:
    int64_t origin
    int32_t key
    int32_t value
    uint8_t shadowed
    uint8_t own


cdef int reserve32(Int32Vec* vec, Py_ssize_t extra) noexcept nogil
cdef int reserve64(Int64Vec* vec, Py_ssize_t extra) noexcept nogil
cdef int push32(Int32Vec* vec, int32_t item) noexcept nogil
cdef int push64(Int64Vec* vec, int64_t item) noexcept nogil
cdef uint64_t hash_row(const uint64_t* row, Py_ssize_t words) noexcept nogil
