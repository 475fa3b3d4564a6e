# cython: cdivision=True
"""Placement scoring kernel (compiled): the best server of each ready vertex.

The inputs, the score and the tie rules are written down in the reference,
``serpytor/_core/_ref_placement.py``; the arguments are validated by the same function
(``check_place_inputs``) and the scores are computed with the same operations in the
same order, so both return the same servers bit for bit. Working state of one call::

    servers     ServerState[S]  load, capacity, added, fraction, term, host
    host_term   double[H]       locality_weight * share of the current vertex's bytes
                                on each host; zero again after each vertex
    excluded    uchar[S]        servers excluded for the current vertex; cleared after
    in_ptr      int64[V+1]      the triplets grouped by vertex, in their input order
    in_ids      int64[T]        (a stable counting sort, so sums run in input order)
    ex_ptr/ex_ids               the same for the exclusions

Policy stays in Python: this module only runs the O(V * S) scoring loop, without the
GIL, over ids that ``check_place_inputs`` range-checked.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

import numpy as np

from ._ref_placement import POLICIES, check_place_inputs, policy_weights

__all__ = ["place", "policy_weights", "POLICIES"]


def place(load, capacity, server_host, input_vertex, input_host, input_bytes, *,
          n_vertices, cost=None, exclude_vertex=None, exclude_server=None,
          locality_weight=0.0, load_weight=1.0):
    """The best server of each vertex, int32[n_vertices] (-1: no eligible server)."""
    a = check_place_inputs(load, capacity, server_host, input_vertex, input_host,
                           input_bytes, n_vertices, cost, exclude_vertex, exclude_server,
                           locality_weight, load_weight)
    cdef Py_ssize_t n = a["n_vertices"]
    # the loops index with these and run without the GIL: use arrays nobody else holds
    for name in ("server_host", "input_host", "exclude_server"):
        a[name] = np.array(a[name], copy=True)
    in_ptr, in_ids = _group_by(a["input_vertex"], n)
    ex_ptr, ex_ids = _group_by(a["exclude_vertex"], n)
    out = np.empty(n, np.int32)
    _place(a["load"], a["capacity"], a["server_host"], a["input_host"], a["input_bytes"],
           a["cost"], a["exclude_server"], in_ptr, in_ids, ex_ptr, ex_ids,
           a["n_hosts"], a["locality_weight"], a["load_weight"], out)
    return out


def _group_by(keys, Py_ssize_t n):
    """CSR of the positions of ``keys`` (ints in [0, n)) grouped by key, each group in
    input order."""
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, order.astype(np.int64)


def _place(const double[::1] load, const double[::1] capacity,
           const int32_t[::1] server_host, const int32_t[::1] input_host,
           const double[::1] input_bytes, const double[::1] cost,
           const int32_t[::1] exclude_server, const int64_t[::1] in_ptr,
           const int64_t[::1] in_ids, const int64_t[::1] ex_ptr, const int64_t[::1] ex_ids,
           Py_ssize_t n_hosts, double locality_weight, double load_weight,
           int32_t[::1] out):
    cdef Py_ssize_t n_servers = capacity.shape[0]
    cdef ServerState* servers = <ServerState*> malloc((n_servers + 1) * sizeof(ServerState))
    # host_term[0:H] and, after it, the per-host byte sums of the current vertex
    cdef double* host_term = <double*> malloc((2 * n_hosts + 1) * sizeof(double))
    cdef unsigned char* excluded = <unsigned char*> malloc(n_servers + 1)
    try:
        if servers == NULL or host_term == NULL or excluded == NULL:
            raise MemoryError("place: cannot allocate the scoring state")
        with nogil:
            _init_state(servers, load, capacity, server_host, load_weight,
                        host_term, n_hosts, excluded)
            _place_all(servers, n_servers, host_term, excluded, input_host, input_bytes,
                       cost, exclude_server, in_ptr, in_ids, ex_ptr, ex_ids, n_hosts,
                       locality_weight, load_weight, out)
    finally:
        free(servers)
        free(host_term)
        free(excluded)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _init_state(ServerState* servers, const double[::1] load,
                      const double[::1] capacity, const int32_t[::1] server_host,
                      double load_weight, double* host_term, Py_ssize_t n_hosts,
                      unsigned char* excluded) noexcept nogil:
    cdef Py_ssize_t s, h
    for s in range(capacity.shape[0]):
        servers[s].load = load[s]
        servers[s].capacity = capacity[s]
        servers[s].added = 0.0
        servers[s].fraction = (load[s] + 0.0) / capacity[s] if capacity[s] > 0 else 0.0
        servers[s].term = load_weight * servers[s].fraction
        servers[s].host = server_host[s]
        excluded[s] = 0
    for h in range(2 * n_hosts):
        host_term[h] = 0.0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _place_all(ServerState* servers, Py_ssize_t n_servers, double* host_term,
                     unsigned char* excluded, const int32_t[::1] input_host,
                     const double[::1] input_bytes, const double[::1] cost,
                     const int32_t[::1] exclude_server, const int64_t[::1] in_ptr,
                     const int64_t[::1] in_ids, const int64_t[::1] ex_ptr,
                     const int64_t[::1] ex_ids, Py_ssize_t n_hosts, double locality_weight,
                     double load_weight, int32_t[::1] out) noexcept nogil:
    cdef Py_ssize_t v
    cdef int64_t i
    cdef int32_t best
    for v in range(out.shape[0]):
        _set_host_terms(host_term, host_term + n_hosts, input_host, input_bytes, in_ptr,
                        in_ids, v, locality_weight)
        for i in range(ex_ptr[v], ex_ptr[v + 1]):
            excluded[exclude_server[ex_ids[i]]] = 1
        best = best_server(servers, n_servers, host_term, excluded)
        out[v] = best
        if best >= 0:
            servers[best].added += cost[v]
            servers[best].fraction = (servers[best].load + servers[best].added) / \
                servers[best].capacity
            servers[best].term = load_weight * servers[best].fraction
        for i in range(in_ptr[v], in_ptr[v + 1]):
            host_term[input_host[in_ids[i]]] = 0.0
            host_term[n_hosts + input_host[in_ids[i]]] = 0.0
        for i in range(ex_ptr[v], ex_ptr[v + 1]):
            excluded[exclude_server[ex_ids[i]]] = 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _set_host_terms(double* host_term, double* host_bytes,
                          const int32_t[::1] input_host, const double[::1] input_bytes,
                          const int64_t[::1] in_ptr, const int64_t[::1] in_ids,
                          Py_ssize_t v, double locality_weight) noexcept nogil:
    """host_term[h] = locality_weight * (v's bytes on h / v's bytes), the sums taken in
    triplet order like the reference's."""
    cdef int64_t i
    cdef int32_t h
    cdef double total = 0.0
    for i in range(in_ptr[v], in_ptr[v + 1]):
        host_bytes[input_host[in_ids[i]]] += input_bytes[in_ids[i]]
        total += input_bytes[in_ids[i]]
    if total > 0:
        for i in range(in_ptr[v], in_ptr[v + 1]):
            h = input_host[in_ids[i]]
            host_term[h] = locality_weight * (host_bytes[h] / total)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int32_t best_server(const ServerState* servers, Py_ssize_t n_servers,
                         const double* host_term, const unsigned char* excluded) noexcept nogil:
    """The eligible server with the highest score; ties: lower fraction, lower id."""
    cdef Py_ssize_t s
    cdef int32_t best = -1
    cdef double score, best_score = 0.0, best_fraction = 0.0
    for s in range(n_servers):
        if servers[s].capacity <= 0 or excluded[s]:
            continue
        score = host_term[servers[s].host] - servers[s].term
        if best < 0 or score > best_score or \
                (score == best_score and servers[s].fraction < best_fraction):
            best = <int32_t> s
            best_score = score
            best_fraction = servers[s].fraction
    return best
