# cython: cdivision=True
"""Context kernels (compiled): origin bitsets, nearest-origin resolution, run-time merge.

Every array's schema and the exact rules are written down in the reference,
``serpytor/_core/_ref_context.py``; the arguments are validated by the same functions
(``check_*_inputs``), so a bad argument is the same ``ValueError`` in both, and the
loops below only ever index with ids those checks range-checked, in copies nobody else
holds (the loops run without the GIL). Working state:

propagate_origins
    reach, inherited   uint64[n, W] outputs, filled in topo_order (parents first)
    done               uint8[n] nodes already filled: the loop checks on the way that
                       topo_order lists each node once, after all its parents

resolve_nearest (Resolver)
    slots      int32[2^k >= 2n]   open-addressing hash table of the distinct reach rows
                                  (the index d of each distinct bitset)
    distinct_of_row  int32[n]     d of every row; distinct_rows[d] the first such row
    key_ptr    int64[n_keys+1]    the facts grouped by key, fact ids ascending
    key_facts  int32[F]
    used_keys  int32[K]           keys that have facts, ascending
    cand       int32[F]           candidates of the current (bitset, key)
    ancestors  uint64[W]          OR of the candidates' origin_inherited rows
    d_*                           the entries of each distinct bitset, resolved once
                                  (growable Int32Vec / Int64Vec); the outputs are then
                                  sized exactly and every row copies its bitset's part

merge_facts
    rows       MergeRow[R+Q]      parent rows and own facts, sorted by
                                  (key, origin, own, value): one identity is one run,
                                  one key one run of identities
    exempt     int64[...]         own origins and peers, sorted, for binary search
"""

cimport cython
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy, memset

import numpy as np

from ._ref_context import (
    CONFLICT,
    MISSING,
    check_merge_inputs,
    check_propagate_inputs,
    check_resolve_inputs,
    words_for,
)
from ._checks import scalar_index

__all__ = ["propagate_origins", "resolve_nearest", "merge_facts", "lookup_fact",
           "CONFLICT", "MISSING"]

cdef extern from *:
    # a hint only: prefetching any address is safe, even an invalid one
    void __builtin_prefetch(const void* address) noexcept nogil


# ---- small helpers ------------------------------------------------------------------

cdef int reserve32(Int32Vec* vec, Py_ssize_t extra) noexcept nogil:
    """Room for ``extra`` more items; -1 when memory runs out (the caller raises)."""
    cdef Py_ssize_t capacity = vec.capacity
    cdef int32_t* grown
    if vec.size + extra <= capacity:
        return 0
    while capacity < vec.size + extra:
        capacity = max(2 * capacity, 1024)
    grown = <int32_t*> PyMem_RawRealloc(vec.data, capacity * sizeof(int32_t))
    if grown == NULL:
        return -1
    vec.data, vec.capacity = grown, capacity
    return 0


cdef int reserve64(Int64Vec* vec, Py_ssize_t extra) noexcept nogil:
    cdef Py_ssize_t capacity = vec.capacity
    cdef int64_t* grown
    if vec.size + extra <= capacity:
        return 0
    while capacity < vec.size + extra:
        capacity = max(2 * capacity, 1024)
    grown = <int64_t*> PyMem_RawRealloc(vec.data, capacity * sizeof(int64_t))
    if grown == NULL:
        return -1
    vec.data, vec.capacity = grown, capacity
    return 0


cdef int push32(Int32Vec* vec, int32_t item) noexcept nogil:
    """Append; -1 when memory runs out (the caller raises MemoryError)."""
    if vec.size == vec.capacity and reserve32(vec, 1) < 0:
        return -1
    vec.data[vec.size] = item
    vec.size += 1
    return 0


cdef int push64(Int64Vec* vec, int64_t item) noexcept nogil:
    if vec.size == vec.capacity and reserve64(vec, 1) < 0:
        return -1
    vec.data[vec.size] = item
    vec.size += 1
    return 0


cdef object _to_numpy32(Int32Vec* vec):
    out = np.empty(vec.size, np.int32)
    cdef int32_t[::1] view = out
    if vec.size:
        memcpy(&view[0], vec.data, vec.size * sizeof(int32_t))
    return out


cdef object _to_numpy64(Int64Vec* vec):
    out = np.empty(vec.size, np.int64)
    cdef int64_t[::1] view = out
    if vec.size:
        memcpy(&view[0], vec.data, vec.size * sizeof(int64_t))
    return out


cdef uint64_t hash_row(const uint64_t* row, Py_ssize_t words) noexcept nogil:
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL
    cdef Py_ssize_t w
    for w in range(words):
        h ^= row[w]
        h *= 0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
    return h


cdef inline bint _has(const uint64_t* row, int64_t origin) noexcept nogil:
    return (row[origin >> 6] >> (origin & 63)) & 1


def _group_by(keys, Py_ssize_t n):
    """CSR of the positions of ``keys`` (ints in [0, n)) grouped by key, ascending."""
    order = np.argsort(keys, kind="stable").astype(np.int32)
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, order


# ---- propagate_origins --------------------------------------------------------------

def propagate_origins(parent_indptr, parent_indices, topo_order, own_indptr, own_origins,
                      n_origins):
    """``(reach, inherited)``, uint64[n, W] each: inherited(c) is the OR of reach(p)
    over c's parents ({0} for a root); reach(c) = inherited(c) | own(c)."""
    indptr, parents, topo, own_ptr, own, n_origins = check_propagate_inputs(
        parent_indptr, parent_indices, topo_order, own_indptr, own_origins, n_origins)
    cdef Py_ssize_t n = indptr.shape[0] - 1, words = words_for(n_origins)
    reach = np.zeros((n, words), np.uint64)
    inherited = np.zeros((n, words), np.uint64)
    if n == 0:
        return reach, inherited
    # the loop indexes with these without the GIL: use arrays nobody else holds
    cdef const int64_t[::1] indptr_view = np.array(indptr, copy=True)
    cdef const int32_t[::1] parents_view = np.array(parents, copy=True)
    cdef const int32_t[::1] topo_view = np.array(topo, copy=True)
    cdef const int64_t[::1] own_ptr_view = np.array(own_ptr, copy=True)
    cdef const int32_t[::1] own_view = np.array(own, copy=True)
    cdef uint8_t[::1] done = np.zeros(n, np.uint8)
    cdef uint64_t[::1] reach_view = reach.reshape(-1), inherited_view = inherited.reshape(-1)
    cdef int32_t bad[2]
    cdef int status
    with nogil:
        status = _propagate(indptr_view, parents_view, topo_view, own_ptr_view, own_view,
                            words, reach_view, inherited_view, done, bad)
    if status == 1:
        raise ValueError(f"topo_order: node {bad[0]} appears twice; expected every node "
                         "once")
    if status == 2:
        raise ValueError(f"topo_order: node {bad[0]} comes before its parent {bad[1]} (or "
                         "is its own parent); expected parents before children")
    return reach, inherited


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _propagate(const int64_t[::1] indptr, const int32_t[::1] parents,
                    const int32_t[::1] topo, const int64_t[::1] own_ptr,
                    const int32_t[::1] own, Py_ssize_t words, uint64_t[::1] reach_flat,
                    uint64_t[::1] inherited_flat, uint8_t[::1] done,
                    int32_t* bad) noexcept nogil:
    """Fill reach and inherited in topo_order; checks on the way that the order lists
    each node once, after its parents: 0, or 1 (twice: bad[0]) or 2 (bad[0] before its
    parent bad[1])."""
    cdef Py_ssize_t n = topo.shape[0], i, w
    cdef int64_t e
    cdef int32_t c, o
    cdef uint64_t* reach = &reach_flat[0]
    cdef uint64_t* inherited = &inherited_flat[0]
    cdef uint64_t* into
    cdef const uint64_t* source
    for i in range(n):
        if i + 4 < n:
            # the parents' rows are scattered: fetch them a few nodes ahead
            for e in range(indptr[topo[i + 4]], indptr[topo[i + 4] + 1]):
                __builtin_prefetch(&reach[parents[e] * words])
        c = topo[i]
        if done[c]:
            bad[0] = c
            return 1
        into = &inherited[c * words]
        if indptr[c] == indptr[c + 1]:
            into[0] = 1  # a root inherits xi(0), origin 0
        for e in range(indptr[c], indptr[c + 1]):
            if not done[parents[e]]:
                bad[0], bad[1] = c, parents[e]
                return 2
            source = &reach[parents[e] * words]
            for w in range(words):
                into[w] |= source[w]
        for w in range(words):
            reach[c * words + w] = into[w]
        for e in range(own_ptr[c], own_ptr[c + 1]):
            o = own[e]
            reach[c * words + (o >> 6)] |= (<uint64_t> 1) << (o & 63)
        done[c] = 1
    return 0


# ---- resolve_nearest ----------------------------------------------------------------

cdef struct Resolver:
    # inputs
    const uint64_t* reach
    const uint64_t* inherited
    Py_ssize_t n_rows
    Py_ssize_t words
    const int32_t* fact_origin
    const int32_t* fact_value
    const int64_t* key_ptr
    const int32_t* key_facts
    const int32_t* used_keys
    Py_ssize_t n_used
    # scratch
    int32_t* cand
    uint64_t* ancestors
    int32_t* slots              # hash table: index of a distinct bitset, -1 when free
    uint64_t slot_mask
    # each distinct bitset resolved once
    int32_t* distinct_of_row    # int32[n_rows]
    Int32Vec distinct_rows      # the first row with each distinct bitset
    Int64Vec d_entry_ptr        # entries of distinct d: d_entry_ptr[d] .. d_entry_ptr[d+1]
    Int32Vec d_key
    Int32Vec d_value
    Int64Vec d_fact_ptr         # nearest facts of entry j: d_fact_ptr[j] .. d_fact_ptr[j+1]
    Int32Vec d_fact_ids


def resolve_nearest(reach, origin_inherited, fact_origin, fact_key, fact_value, n_keys):
    """Nearest facts per (row, key): ``(entry_indptr, entry_key, entry_value,
    fact_indptr, fact_ids)``; entry_value is -1 where the nearest facts disagree."""
    reach, origin_inherited, fact_origin, fact_key, fact_value, n_keys = \
        check_resolve_inputs(reach, origin_inherited, fact_origin, fact_key, fact_value,
                             n_keys)
    cdef Py_ssize_t n = reach.shape[0], n_facts = fact_origin.shape[0]
    if n == 0 or n_facts == 0:
        empty = np.zeros(0, np.int32)
        return (np.zeros(n + 1, np.int64), empty, empty.copy(), np.zeros(1, np.int64),
                empty.copy())
    key_ptr, key_facts = _group_by(fact_key, n_keys)
    used_keys = np.flatnonzero(np.diff(key_ptr)).astype(np.int32)
    distinct_of_row = np.empty(n, np.int32)
    cdef Resolver r
    memset(&r, 0, sizeof(Resolver))
    # fact_origin indexes the bitsets without the GIL: a copy nobody else holds
    cdef const int32_t[::1] origin_view = np.array(fact_origin, copy=True)
    cdef const int32_t[::1] value_view = fact_value
    cdef const uint64_t[::1] reach_flat = reach.reshape(-1)
    cdef const uint64_t[::1] inherited_flat = origin_inherited.reshape(-1)
    cdef const int64_t[::1] key_ptr_view = key_ptr
    cdef const int32_t[::1] key_facts_view = key_facts, used_view = used_keys
    cdef int32_t[::1] distinct_view = distinct_of_row
    r.reach, r.inherited = &reach_flat[0], &inherited_flat[0]
    r.n_rows, r.words = n, reach.shape[1]
    r.fact_origin, r.fact_value = &origin_view[0], &value_view[0]
    r.key_ptr, r.key_facts = &key_ptr_view[0], &key_facts_view[0]
    r.used_keys, r.n_used = &used_view[0], used_keys.shape[0]
    r.distinct_of_row = &distinct_view[0]
    cdef int status
    try:
        with nogil:
            status = _resolve_distinct(&r, n_facts)
        if status < 0:
            raise MemoryError("resolve_nearest: out of memory")
        return _spread_rows(&r, distinct_of_row)
    finally:
        _free_resolver(&r)


cdef void _free_resolver(Resolver* r) noexcept:
    PyMem_RawFree(r.cand)
    PyMem_RawFree(r.ancestors)
    PyMem_RawFree(r.slots)
    PyMem_RawFree(r.distinct_rows.data)
    PyMem_RawFree(r.d_entry_ptr.data)
    PyMem_RawFree(r.d_key.data)
    PyMem_RawFree(r.d_value.data)
    PyMem_RawFree(r.d_fact_ptr.data)
    PyMem_RawFree(r.d_fact_ids.data)


cdef int _resolve_distinct(Resolver* r, Py_ssize_t n_facts) noexcept nogil:
    """Map every row to its distinct bitset, resolving each new one; -1: no memory."""
    cdef Py_ssize_t row, size = 1, i
    cdef int32_t d
    while size < 2 * r.n_rows:
        size <<= 1
    r.slot_mask = size - 1
    r.cand = <int32_t*> PyMem_RawMalloc(n_facts * sizeof(int32_t))
    r.ancestors = <uint64_t*> PyMem_RawMalloc(r.words * sizeof(uint64_t))
    r.slots = <int32_t*> PyMem_RawMalloc(size * sizeof(int32_t))
    if r.cand == NULL or r.ancestors == NULL or r.slots == NULL or \
            push64(&r.d_entry_ptr, 0) < 0 or push64(&r.d_fact_ptr, 0) < 0:
        return -1
    for i in range(size):
        r.slots[i] = -1
    for row in range(r.n_rows):
        d = _find_or_insert(r, row)
        if d == -2:
            return -1
        if d == -1:  # a new bitset
            d = <int32_t> (r.distinct_rows.size - 1)
            if _resolve_row(r, &r.reach[row * r.words]) < 0 or \
                    push64(&r.d_entry_ptr, r.d_key.size) < 0:
                return -1
        r.distinct_of_row[row] = d
    return 0


cdef int32_t _find_or_insert(Resolver* r, Py_ssize_t row) noexcept nogil:
    """The distinct index of ``row``'s bitset, or -1 after recording it as new (-2: no
    memory)."""
    cdef const uint64_t* bits = &r.reach[row * r.words]
    cdef uint64_t slot = hash_row(bits, r.words) & r.slot_mask
    cdef int32_t d
    while r.slots[slot] != -1:
        d = r.slots[slot]
        if memcmp(&r.reach[r.distinct_rows.data[d] * r.words], bits,
                  r.words * sizeof(uint64_t)) == 0:
            return d
        slot = (slot + 1) & r.slot_mask
    r.slots[slot] = <int32_t> r.distinct_rows.size
    return -2 if push32(&r.distinct_rows, <int32_t> row) < 0 else -1


cdef int _resolve_row(Resolver* r, const uint64_t* row) noexcept nogil:
    """Append the entries of one bitset to the d_* vectors."""
    cdef Py_ssize_t u, n_cand, i, w
    cdef int64_t j
    cdef int32_t key, f, value
    for u in range(r.n_used):
        key = r.used_keys[u]
        n_cand = 0
        for j in range(r.key_ptr[key], r.key_ptr[key + 1]):
            if _has(row, r.fact_origin[r.key_facts[j]]):
                r.cand[n_cand] = r.key_facts[j]
                n_cand += 1
        if n_cand == 0:
            continue
        # the ancestors of the candidates: a candidate among them is not nearest
        for w in range(r.words):
            r.ancestors[w] = 0
        if n_cand > 1:
            for i in range(n_cand):
                for w in range(r.words):
                    r.ancestors[w] |= r.inherited[r.fact_origin[r.cand[i]] * r.words + w]
        value = -2  # no nearest fact yet
        for i in range(n_cand):
            f = r.cand[i]
            if _has(r.ancestors, r.fact_origin[f]):
                continue
            if push32(&r.d_fact_ids, f) < 0:
                return -1
            value = r.fact_value[f] if value == -2 or value == r.fact_value[f] else C_CONFLICT
        if push32(&r.d_key, key) < 0 or \
                push32(&r.d_value, C_CONFLICT if value == -2 else value) < 0 or \
                push64(&r.d_fact_ptr, r.d_fact_ids.size) < 0:
            return -1
    return 0


cdef object _spread_rows(Resolver* r, distinct_of_row):
    """The five output arrays: each row gets a copy of its distinct bitset's entries."""
    d_entry_ptr = _to_numpy64(&r.d_entry_ptr)
    d_fact_ptr = _to_numpy64(&r.d_fact_ptr)
    d_entries = np.diff(d_entry_ptr)
    d_facts = d_fact_ptr[d_entry_ptr[1:]] - d_fact_ptr[d_entry_ptr[:-1]]
    entry_indptr = np.zeros(r.n_rows + 1, np.int64)
    np.cumsum(d_entries[distinct_of_row], out=entry_indptr[1:])
    fact_start = np.zeros(r.n_rows + 1, np.int64)
    np.cumsum(d_facts[distinct_of_row], out=fact_start[1:])
    n_entries, n_fact_ids = int(entry_indptr[-1]), int(fact_start[-1])
    entry_key = np.empty(n_entries, np.int32)
    entry_value = np.empty(n_entries, np.int32)
    fact_indptr = np.zeros(n_entries + 1, np.int64)
    fact_ids = np.empty(n_fact_ids, np.int32)
    cdef const int32_t[::1] distinct_view = distinct_of_row
    cdef const int64_t[::1] entry_view = entry_indptr, start_view = fact_start
    cdef const int64_t[::1] d_entry_view = d_entry_ptr, d_fact_view = d_fact_ptr
    # raw pointers: an empty output still has a valid data pointer, unlike view[0]
    cdef int32_t* key_out = <int32_t*> <size_t> entry_key.ctypes.data
    cdef int32_t* value_out = <int32_t*> <size_t> entry_value.ctypes.data
    cdef int64_t* fact_ptr_out = <int64_t*> <size_t> fact_indptr.ctypes.data
    cdef int32_t* fact_ids_out = <int32_t*> <size_t> fact_ids.ctypes.data
    with nogil:
        _fill(r, distinct_view, entry_view, start_view, d_entry_view, d_fact_view,
              key_out, value_out, fact_ptr_out, fact_ids_out)
    return entry_indptr, entry_key, entry_value, fact_indptr, fact_ids


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _fill(Resolver* r, const int32_t[::1] distinct_of_row,
                const int64_t[::1] entry_indptr, const int64_t[::1] fact_start,
                const int64_t[::1] d_entry_ptr, const int64_t[::1] d_fact_ptr,
                int32_t* entry_key, int32_t* entry_value, int64_t* fact_indptr,
                int32_t* fact_ids) noexcept nogil:
    cdef Py_ssize_t row
    cdef int64_t first, count, facts_from, j, e0
    cdef int32_t d
    for row in range(r.n_rows):
        d = distinct_of_row[row]
        first, count = d_entry_ptr[d], d_entry_ptr[d + 1] - d_entry_ptr[d]
        e0 = entry_indptr[row]
        facts_from = d_fact_ptr[first]
        memcpy(&entry_key[e0], &r.d_key.data[first], count * sizeof(int32_t))
        memcpy(&entry_value[e0], &r.d_value.data[first], count * sizeof(int32_t))
        memcpy(&fact_ids[fact_start[row]], &r.d_fact_ids.data[facts_from],
               (d_fact_ptr[first + count] - facts_from) * sizeof(int32_t))
        for j in range(count):
            fact_indptr[e0 + j + 1] = fact_start[row] + d_fact_ptr[first + j + 1] - facts_from


# ---- merge_facts ----------------------------------------------------------------------

cdef int _row_order(const void* a, const void* b) noexcept nogil:
    cdef const MergeRow* x = <const MergeRow*> a
    cdef const MergeRow* y = <const MergeRow*> b
    if x.key != y.key:
        return -1 if x.key < y.key else 1
    if x.origin != y.origin:
        return -1 if x.origin < y.origin else 1
    if x.own != y.own:
        return -1 if x.own < y.own else 1
    return (x.value > y.value) - (x.value < y.value)


cdef bint _contains(const int64_t* sorted_values, Py_ssize_t n, int64_t item) noexcept nogil:
    cdef Py_ssize_t low = 0, high = n, middle
    while low < high:
        middle = (low + high) >> 1
        if sorted_values[middle] < item:
            low = middle + 1
        else:
            high = middle
    return low < n and sorted_values[low] == item


def merge_facts(origin, key, value, shadowed, own_origin, own_key, own_value, peers=None):
    """Merge the parents' fact tables (concatenated) and add the node's own facts;
    returns ``(origin, key, value, shadowed)`` sorted by (key, origin). See the
    reference for the rules and the errors."""
    origin, key, value, shadowed, own_origin, own_key, own_value, peers = \
        check_merge_inputs(origin, key, value, shadowed, own_origin, own_key, own_value,
                           peers)
    cdef Py_ssize_t n_rows = origin.shape[0] + own_origin.shape[0]
    exempt = np.unique(np.concatenate([own_origin, peers]))
    out_origin = np.empty(n_rows, np.int64)
    out_key = np.empty(n_rows, np.int32)
    out_value = np.empty(n_rows, np.int32)
    out_shadowed = np.empty(n_rows, np.bool_)
    cdef MergeRow* rows = <MergeRow*> PyMem_RawMalloc(max(n_rows, 1) * sizeof(MergeRow))
    cdef Py_ssize_t written
    cdef int64_t bad[4]
    bad[0] = bad[1] = bad[2] = bad[3] = 0
    if rows == NULL:
        raise MemoryError("merge_facts: out of memory")
    try:
        _fill_rows(rows, origin, key, value, shadowed, 0)
        _fill_rows(&rows[origin.shape[0]], own_origin, own_key, own_value, None, 1)
        written = _merge_sorted(rows, n_rows, exempt, out_origin, out_key, out_value,
                                out_shadowed.view(np.uint8), bad)
    finally:
        PyMem_RawFree(rows)
    if written == -1:
        raise ValueError(f"own_origin/own_key: fact (origin {bad[0]}, key {bad[1]}) "
                         "appears twice; expected each own (origin, key) once")
    if written == -2:
        raise ValueError(f"origin/key/value: fact (origin {bad[0]}, key {bad[1]}) has two "
                         f"values, {bad[2]} and {bad[3]}; expected one value per "
                         "(origin, key)")
    return (out_origin[:written], out_key[:written], out_value[:written],
            out_shadowed[:written])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _fill_rows(MergeRow* rows, const int64_t[::1] origin, const int32_t[::1] key,
                     const int32_t[::1] value, const uint8_t[::1] shadowed,
                     uint8_t own) noexcept:
    cdef Py_ssize_t i
    for i in range(origin.shape[0]):
        rows[i].origin = origin[i]
        rows[i].key = key[i]
        rows[i].value = value[i]
        rows[i].shadowed = shadowed[i] if shadowed is not None else 0
        rows[i].own = own


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _merge_sorted(MergeRow* rows, Py_ssize_t n_rows, const int64_t[::1] exempt,
                              int64_t[::1] out_origin, int32_t[::1] out_key,
                              int32_t[::1] out_value, uint8_t[::1] out_shadowed,
                              int64_t* bad) noexcept:
    """One output row per identity; -1 (own fact twice) or -2 (two values) with the
    identity in ``bad`` otherwise."""
    cdef Py_ssize_t i = 0, j, end, k = 0, n_exempt = exempt.shape[0]
    cdef Py_ssize_t key_end
    cdef bint key_has_own, has_own, hidden
    cdef const int64_t* exempt_ptr = &exempt[0] if n_exempt else NULL
    with nogil:
        qsort(rows, n_rows, sizeof(MergeRow), _row_order)
        while i < n_rows:
            key_end, key_has_own = i, False
            while key_end < n_rows and rows[key_end].key == rows[i].key:
                key_has_own = key_has_own or rows[key_end].own
                key_end += 1
            while i < key_end:
                end = i
                while end < key_end and rows[end].origin == rows[i].origin:
                    end += 1
                # rows[i:end] is one identity: parent rows by value, then own facts
                hidden, has_own = False, rows[end - 1].own
                if end - i > 1 and rows[end - 2].own:
                    bad[0], bad[1] = rows[i].origin, rows[i].key
                    return -1
                for j in range(i, end):
                    if rows[j].own:
                        break
                    hidden = hidden or rows[j].shadowed
                    if rows[j].value != rows[i].value:
                        bad[0], bad[1] = rows[j].origin, rows[j].key
                        bad[2], bad[3] = rows[i].value, rows[j].value
                        return -2
                out_origin[k] = rows[i].origin
                out_key[k] = rows[i].key
                out_value[k] = rows[end - 1].value  # the own fact's, when there is one
                if has_own:
                    hidden = False
                elif key_has_own and not hidden:
                    hidden = not _contains(exempt_ptr, n_exempt, rows[i].origin)
                out_shadowed[k] = hidden
                k += 1
                i = end
    return k


def lookup_fact(origin, key, value, shadowed, wanted_key):
    """Look ``wanted_key`` up in a fact table: ``(value, origins)``; value is CONFLICT
    (-1) when the live facts disagree and MISSING (-2) when there are none."""
    origin, key, value, shadowed, *_ = check_merge_inputs(
        origin, key, value, shadowed, [], [], [], None)
    cdef int64_t wanted = scalar_index("wanted_key", wanted_key)
    live = np.flatnonzero((key == wanted) & (shadowed == 0))
    if live.size == 0:
        return MISSING, np.zeros(0, np.int64)
    order = np.lexsort((value[live], origin[live]))
    live = live[order]
    values = value[live]
    found = int(values[0]) if (values == values[0]).all() else CONFLICT
    return found, origin[live]
