"""Pure-Python reference of the placement scoring kernel in ``placement.pyx``.

The gateway decides *how* to place (policy, fallbacks, retries); this kernel only scores
every (ready vertex, server) pair and returns the best server of each vertex, in one
call per batch of ready vertices.

Inputs (S servers, H hosts, V ready vertices, T input triplets, X exclusions)::

    load            float64[S]  load of each server, from its heartbeat (>= 0)
    capacity        float64[S]  capacity of each server (>= 0; 0 takes nothing)
    server_host     int32[S]    host of each server, in [0, H)
    input_vertex    int32[T]    triplet t: vertex input_vertex[t] reads input_bytes[t]
    input_host      int32[T]    bytes that already live on host input_host[t]
    input_bytes     float64[T]  (>= 0; a vertex may have several triplets per host)
    n_vertices      int         V; vertex ids are 0 .. V-1, placed in that order
    cost            float64[V]  load a vertex adds to its server (default 1.0 each)
    exclude_vertex  int32[X]    pairs (exclude_vertex[x], exclude_server[x]): never put
    exclude_server  int32[X]    that vertex on that server (say, it just failed there)

H is one more than the largest host id in ``server_host`` and ``input_host``.

Scores, computed in this order so the kernel gets the same bits::

    total[v]         = sum of v's input_bytes, in triplet order
    host_term[v, h]  = locality_weight * (bytes of v on h / total[v])   (0 if no bytes)
    fraction[s]      = (load[s] + added[s]) / capacity[s]
    server_term[s]   = load_weight * fraction[s]
    score[v, s]      = host_term[v, server_host[s]] - server_term[s]

``added[s]`` is the cost of the vertices of this batch already placed on s, so a batch
spreads out instead of piling onto the server that was idle when it started. A server
is eligible for v when its capacity is > 0 and (v, s) is not excluded. The best server
has the highest score; ties go to the lower fraction, then to the lower server id; a
vertex with no eligible server gets -1.

Policies are weight pairs (see :func:`policy_weights`): least-loaded is (0, 1),
locality-first is (1, 0) (ties among equal locality still go to the least loaded).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import float_array, integer_array, scalar_index

POLICIES = ("least_loaded", "locality", "mixed")


def policy_weights(policy: str, locality_share: float = 0.5) -> tuple[float, float]:
    """``(locality_weight, load_weight)`` of a named policy; ``mixed`` gives locality
    ``locality_share`` of the weight and load the rest.

    >>> policy_weights("locality")
    (1.0, 0.0)
    """
    if policy == "least_loaded":
        return 0.0, 1.0
    if policy == "locality":
        return 1.0, 0.0
    if policy == "mixed":
        if not 0.0 <= locality_share <= 1.0:
            raise ValueError(f"locality_share must be in [0, 1], got {locality_share!r}")
        return float(locality_share), 1.0 - float(locality_share)
    raise ValueError(f"unknown placement policy {policy!r}; expected one of {POLICIES}")


def check_place_inputs(load: Any, capacity: Any, server_host: Any, input_vertex: Any,
                       input_host: Any, input_bytes: Any, n_vertices: Any, cost: Any,
                       exclude_vertex: Any, exclude_server: Any, locality_weight: Any,
                       load_weight: Any) -> dict[str, Any]:
    """Validate and convert the arguments of :func:`place` (shared with the kernel)."""
    capacity = float_array("capacity", capacity, length=_length(capacity), nonnegative=True)
    n_servers = capacity.shape[0]
    load = float_array("load", load, length=n_servers, nonnegative=True)
    server_host = integer_array("server_host", server_host, length=n_servers, lower=0)
    n_vertices = scalar_index("n_vertices", n_vertices)
    if n_vertices < 0:
        raise ValueError(f"n_vertices: expected an integer >= 0, got {n_vertices}")
    input_vertex = integer_array("input_vertex", input_vertex, lower=0, upper=n_vertices)
    n_inputs = input_vertex.shape[0]
    input_host = integer_array("input_host", input_host, length=n_inputs, lower=0)
    input_bytes = float_array("input_bytes", input_bytes, length=n_inputs, nonnegative=True)
    cost = np.ones(n_vertices) if cost is None else \
        float_array("cost", cost, length=n_vertices, nonnegative=True)
    exclude_vertex = integer_array("exclude_vertex", [] if exclude_vertex is None
                                   else exclude_vertex, lower=0, upper=n_vertices)
    exclude_server = integer_array("exclude_server", [] if exclude_server is None
                                   else exclude_server, length=exclude_vertex.shape[0],
                                   lower=0, upper=n_servers)
    weights = [_weight(name, w) for name, w in
               (("locality_weight", locality_weight), ("load_weight", load_weight))]
    n_hosts = 1 + max(int(server_host.max(initial=-1)), int(input_host.max(initial=-1)))
    return dict(load=load, capacity=capacity, server_host=server_host,
                input_vertex=input_vertex, input_host=input_host, input_bytes=input_bytes,
                n_vertices=n_vertices, cost=cost, exclude_vertex=exclude_vertex,
                exclude_server=exclude_server, locality_weight=weights[0],
                load_weight=weights[1], n_hosts=n_hosts)


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        raise ValueError(f"capacity: expected a 1-D float64 array of shape (S,), got "
                         f"{type(value).__name__}") from None


def _weight(name: str, value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}") from None
    if not (np.isfinite(weight) and weight >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return weight


def place(load: Any, capacity: Any, server_host: Any, input_vertex: Any, input_host: Any,
          input_bytes: Any, *, n_vertices: int, cost: Any = None, exclude_vertex: Any = None,
          exclude_server: Any = None, locality_weight: float = 0.0,
          load_weight: float = 1.0) -> np.ndarray:
    """The best server of each vertex, int32[n_vertices] (-1: no eligible server)."""
    a = check_place_inputs(load, capacity, server_host, input_vertex, input_host,
                           input_bytes, n_vertices, cost, exclude_vertex, exclude_server,
                           locality_weight, load_weight)
    host_bytes, totals = _bytes_by_host(a["input_vertex"].tolist(), a["input_host"].tolist(),
                                        a["input_bytes"].tolist(), a["n_vertices"])
    excluded = _exclusions(a["exclude_vertex"].tolist(), a["exclude_server"].tolist())
    load_, capacity_ = a["load"].tolist(), a["capacity"].tolist()
    hosts, costs = a["server_host"].tolist(), a["cost"].tolist()
    lw, bw = a["locality_weight"], a["load_weight"]
    added = [0.0] * len(capacity_)
    fraction = [(load_[s] + added[s]) / c if c > 0 else 0.0 for s, c in enumerate(capacity_)]
    server_term = [bw * f for f in fraction]
    best_of = []
    for v in range(a["n_vertices"]):
        host_term = {h: lw * (b / totals[v]) for h, b in host_bytes[v].items()} \
            if totals[v] > 0 else {}
        best = _best_server(host_term, hosts, capacity_, fraction, server_term,
                            excluded.get(v, ()))
        best_of.append(best)
        if best >= 0:
            added[best] += costs[v]
            fraction[best] = (load_[best] + added[best]) / capacity_[best]
            server_term[best] = bw * fraction[best]
    return np.array(best_of, np.int32)


def _bytes_by_host(vertices: list[int], hosts: list[int], sizes: list[float],
                   n_vertices: int) -> tuple[list[dict[int, float]], list[float]]:
    host_bytes: list[dict[int, float]] = [{} for _ in range(n_vertices)]
    totals = [0.0] * n_vertices
    for v, h, b in zip(vertices, hosts, sizes):
        host_bytes[v][h] = host_bytes[v].get(h, 0.0) + b
        totals[v] += b
    return host_bytes, totals


def _exclusions(vertices: list[int], servers: list[int]) -> dict[int, set[int]]:
    excluded: dict[int, set[int]] = {}
    for v, s in zip(vertices, servers):
        excluded.setdefault(v, set()).add(s)
    return excluded


def _best_server(host_term: dict[int, float], hosts: list[int], capacity: list[float],
                 fraction: list[float], server_term: list[float], excluded) -> int:
    best, best_score, best_fraction = -1, 0.0, 0.0
    for s, host in enumerate(hosts):
        if capacity[s] <= 0 or s in excluded:
            continue
        score = host_term.get(host, 0.0) - server_term[s]
        if best < 0 or score > best_score or \
                (score == best_score and fraction[s] < best_fraction):
            best, best_score, best_fraction = s, score, fraction[s]
    return best
