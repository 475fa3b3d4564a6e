# Declarations of the placement scoring kernel (placement.pyx), for other Cython modules.
from libc.stdint cimport int32_t, int64_t


# The mutable per-server state of one placement batch.
cdef struct ServerState:
    double load          # load from the heartbeat
    double capacity      # 0: the server takes nothing
    double added         # cost of the vertices of this batch placed on it so far
    double fraction      # (load + added) / capacity
    double term          # load_weight * fraction
    int32_t host


cdef int32_t best_server(const ServerState* servers, Py_ssize_t n_servers,
                         const double* host_term, const unsigned char* excluded) noexcept nogil
