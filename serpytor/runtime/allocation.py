"""Where each ready vertex runs: the gateway's allocation policy.

Policies (the paper's Gateway, Dryad's job manager):

* ``locality`` (default): the server already holding most of the vertex's input
  bytes, so large outputs do not move; for vertices whose inputs are all small (below
  ``LOCALITY_MIN_BYTES``), the server holding most of them unless it is
  ``AFFINITY_SLACK`` tasks busier than the least loaded;
* ``least_loaded``: the server with the lowest load relative to its capacity;
* ``round_robin``: servers in turn;
* a function of the user's, ``choose(vertex: VertexInfo, servers: list[ServerInfo])``
  returning a server's name (or None: locality decides), named in the ``.spg``
  (``placement alias.function``) or on the command line (``--placement MODULE:FUNCTION``).

Load is the number of tasks in flight on a server over its window, plus, when its
heartbeat reports the host's CPU, a share for how busy the machine is. Scoring every
(vertex, server) pair of a batch is the ``_core.place`` kernel's job; this module
builds its arrays and keeps the rules the kernel does not know:

* a vertex never goes to a server that refused it (or, for a retry, the server it
  just failed on) while another server is usable;
* the vertices of a co-location gang (joined by ``shm`` edges) go to one host: the
  first placed member anchors the gang on its server.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import _core
from ..compiler.plan import Plan
from ..errors import SerpytorError
from .links import Link

LOCALITY_MIN_BYTES = 64 * 1024  # below: inputs are cheap to move; place mostly by load
AFFINITY_SLACK = 8  # tasks a server may be busier than the idlest and still get a vertex
                    # whose small inputs it holds
POLICIES = ("locality", "least_loaded", "round_robin")


class PlacementError(SerpytorError, ValueError):
    """An unknown placement policy was asked for, or a placement function could not be
    loaded or answered something that is not a usable server."""


@dataclass(frozen=True)
class ServerInfo:
    """What a placement function knows of one server it may choose."""

    name: str
    host: str
    address: str
    in_flight: int                 # tasks sent and not answered
    window: int                    # tasks it may have in flight
    cpu_percent: float | None      # of its host, from its heartbeat (None: unknown)
    memory_percent: float | None


@dataclass(frozen=True)
class VertexInfo:
    """The vertex a placement function places."""

    name: str
    stage: str                     # its template's name
    partition: int
    input_bytes: dict[str, int]    # server name -> bytes of its inputs held there


Policy = str | Callable[[VertexInfo, list[ServerInfo]], Any]


def resolve_policy(spec: str | None, plan: Plan) -> Policy:
    """The policy to use: ``spec`` from the command line (a name or MODULE:FUNCTION),
    else the plan's ``placement`` statement, else locality."""
    if spec is None:
        declared = plan.meta.get("placement") or {}
        if "module" in declared:
            return _load_policy(declared["module"], declared["function"], plan)
        return declared.get("policy", "locality")
    if ":" in spec:
        module, _, function = spec.partition(":")
        return _load_policy(module, function, plan)
    Allocator.check_policy(spec)
    return spec


def _load_policy(module: str, function: str, plan: Plan) -> Callable:
    from .invoke import FunctionNotFoundError, load_function

    try:
        found = load_function(module, function, tuple(plan.meta.get("module_paths", ())))
    except FunctionNotFoundError as error:
        raise PlacementError(f"placement function {module}:{function}: {error}") from None
    if not callable(found):
        raise PlacementError(f"placement {module}:{function} is not a function")
    return found


class Allocator:
    def __init__(self, plan: Plan, policy: Policy = "locality", window: int = 256) -> None:
        self.check_policy(policy)
        self.plan = plan
        self.policy = policy
        self.window = window
        self.gang = plan.arrays["vertex_gang"]
        self.gang_link: dict[int, int] = {}   # gang -> link index it is anchored on
        self.turn = itertools.count()
        self.pred_ptr: list[int] | None = None  # predecessor CSR as lists, when needed
        self.pred_idx: list[int] = []
        # has any vertex produced a large output yet? Until one has, placement by input
        # bytes has nothing to weigh (the usual case for small tasks: skip its arrays)
        self.large_outputs = False

    def output_size(self, nbytes: int) -> None:
        """A vertex finished with an output of ``nbytes``."""
        if nbytes >= LOCALITY_MIN_BYTES:
            self.large_outputs = True

    @staticmethod
    def check_policy(policy: Policy) -> None:
        if not callable(policy) and policy not in POLICIES:
            raise PlacementError(f"unknown placement policy {policy!r}; expected one of "
                                 f"{', '.join(POLICIES)} or MODULE:FUNCTION")

    def place(self, vertices: Sequence[int], links: list[Link], holder: np.ndarray,
              size: np.ndarray, avoid: dict[int, set[int]]) -> list[int]:
        """A link index per vertex (-1 when no usable server may take it)."""
        usable = [link for link in links if link.usable]
        if not usable:
            return [-1] * len(vertices)
        if self.policy == "round_robin":
            chosen = self._round_robin(vertices, usable, avoid)
        else:
            chosen = self._scored(vertices, usable, holder, size, avoid)
            if callable(self.policy):
                chosen = self._ask_user(vertices, chosen, usable, links, holder, size, avoid)
        return self._anchor_gangs(vertices, chosen, usable, avoid)

    def _ask_user(self, vertices: Sequence[int], default: list[int], usable: list[Link],
                  links: list[Link], holder: np.ndarray, size: np.ndarray,
                  avoid: dict[int, set[int]]) -> list[int]:
        """The user's function chooses among the servers a vertex may use; None keeps
        the locality choice."""
        chosen = []
        for vertex, fallback in zip(vertices, default):
            allowed = [l for l in usable if l.index not in avoid.get(vertex, ())] or usable
            answer = self.policy(self._vertex_info(vertex, links, holder, size),
                                 [server_info(l, self.window) for l in allowed])
            chosen.append(fallback if answer is None else self._link_named(answer, allowed))
        return chosen

    def _vertex_info(self, vertex: int, links: list[Link], holder: np.ndarray,
                     size: np.ndarray) -> VertexInfo:
        held: dict[str, int] = {}
        for parent in self.plan.predecessors(vertex).tolist():
            if holder[parent] >= 0:
                name = links[int(holder[parent])].name
                held[name] = held.get(name, 0) + int(size[parent])
        template = self.plan.vertex_template(vertex)
        return VertexInfo(self.plan.vertex_name(vertex), template["name"],
                          int(self.plan.arrays["vertex_partition"][vertex]), held)

    def _link_named(self, answer: Any, allowed: list[Link]) -> int:
        for link in allowed:
            if answer == link.name or answer == link.address:
                return link.index
        raise PlacementError(f"placement function {getattr(self.policy, '__name__', '?')} "
                             f"chose {answer!r}, which is none of the servers it was offered "
                             f"({', '.join(l.name for l in allowed)})")

    def _round_robin(self, vertices: Sequence[int], usable: list[Link],
                     avoid: dict[int, set[int]]) -> list[int]:
        chosen = []
        for vertex in vertices:
            banned = avoid.get(vertex, ())
            for _ in range(len(usable)):
                link = usable[next(self.turn) % len(usable)]
                if link.index not in banned:
                    chosen.append(link.index)
                    break
            else:
                chosen.append(-1)
        return chosen

    def _scored(self, vertices: Sequence[int], usable: list[Link], holder: np.ndarray,
                size: np.ndarray, avoid: dict[int, set[int]]) -> list[int]:
        position = np.full(max(link.index for link in usable) + 1, -1, np.int32)
        for i, link in enumerate(usable):
            position[link.index] = i
        tv, th, tb = self._input_triplets(vertices, holder, size, position)
        ev, es = [], []
        for i, vertex in enumerate(vertices):
            for index in avoid.get(vertex, ()):
                if index < len(position) and position[index] >= 0:
                    ev.append(i)
                    es.append(int(position[index]))
        if not len(tv) and not ev:  # small inputs only: no need for the scoring kernel
            if self.policy == "locality":
                return self._near_inputs(vertices, usable, holder)
            return _balanced(len(vertices), usable, self.window)
        load = np.array([link_load(link, self.window) for link in usable], np.float64)
        capacity = np.full(len(usable), float(self.window))
        locality, load_weight = _core.policy_weights(
            "locality" if self.policy == "locality" else "least_loaded")
        best = _core.place(load, capacity, np.arange(len(usable), dtype=np.int32),
                           tv, th, tb, n_vertices=len(vertices),
                           exclude_vertex=np.asarray(ev, np.int32),
                           exclude_server=np.asarray(es, np.int32),
                           locality_weight=locality, load_weight=load_weight)
        return [usable[b].index if b >= 0 else -1 for b in best.tolist()]

    def _input_triplets(self, vertices: Sequence[int], holder: np.ndarray, size: np.ndarray,
                        position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vertex, server, bytes) for every large input already held by a usable server,
        in batch and usable-server positions: servers stand in for hosts, since outputs
        live in server memory."""
        if self.policy != "locality" or not self.large_outputs:
            empty = np.zeros(0, np.int32)
            return empty, empty, np.zeros(0, np.float64)
        a = self.plan.arrays
        ready = np.asarray(vertices, np.int64)
        starts = a["pred_indptr"][ready]
        counts = a["pred_indptr"][ready + 1] - starts
        owner = np.repeat(np.arange(len(ready), dtype=np.int32), counts)
        first = np.cumsum(counts) - counts  # where each vertex's parents start in the batch
        parents = a["pred_indices"][np.repeat(starts - first, counts) +
                                    np.arange(int(counts.sum()))]
        held_by, nbytes = holder[parents], size[parents]
        known = (held_by >= 0) & (held_by < len(position))
        server = np.where(known, position[np.where(known, held_by, 0)], -1)
        keep = (server >= 0) & (nbytes >= LOCALITY_MIN_BYTES)
        return owner[keep], server[keep].astype(np.int32), nbytes[keep].astype(np.float64)

    def _anchor_gangs(self, vertices: Sequence[int], chosen: list[int], usable: list[Link],
                      avoid: dict[int, set[int]]) -> list[int]:
        live = {link.index for link in usable}
        for i, vertex in enumerate(vertices):
            gang = int(self.gang[vertex])
            if gang < 0:
                continue
            anchor = self.gang_link.get(gang)
            if anchor in live and anchor not in avoid.get(vertex, ()):
                chosen[i] = anchor
            elif chosen[i] >= 0:
                self.gang_link[gang] = chosen[i]
        return chosen

    def forget(self, link_index: int) -> None:
        """A server was lost: gangs anchored on it may anchor elsewhere."""
        self.gang_link = {g: l for g, l in self.gang_link.items() if l != link_index}


    def _near_inputs(self, vertices: Sequence[int], usable: list[Link],
                     holder: np.ndarray) -> list[int]:
        """Vertices with small inputs: on the server holding most of them, while it is
        at most AFFINITY_SLACK tasks busier than the least loaded one, else on that one.
        Moving a small input costs both servers more CPU than a trivial vertex does, so
        a little imbalance is the better deal; more, and the idle server should work."""
        if self.pred_ptr is None:
            self.pred_ptr = self.plan.arrays["pred_indptr"].tolist()
            self.pred_idx = self.plan.arrays["pred_indices"].tolist()
        load = {link.index: len(link.in_flight) for link in sorted(usable, key=lambda l: l.index)}
        ptr, idx, chosen = self.pred_ptr, self.pred_idx, []
        for vertex in vertices:
            counts: dict[int, int] = {}
            for parent in idx[ptr[vertex]:ptr[vertex + 1]]:
                where = int(holder[parent])
                if where in load:
                    counts[where] = counts.get(where, 0) + 1
            least = min(load, key=load.__getitem__)  # the first of equals: the lowest index
            near = max(counts, key=lambda index: (counts[index], -load[index])) \
                if counts else least
            pick = near if load[near] <= load[least] + AFFINITY_SLACK else least
            load[pick] += 1
            chosen.append(pick)
        return chosen


def link_load(link: Link, window: int) -> float:
    """A server's load: its tasks in flight, plus, when its heartbeat reports the host's
    CPU, a quarter window for a fully busy host (so a host busy with other work gets
    less, and two idle servers on one host still share evenly)."""
    cpu = (link.beat or {}).get("cpu")
    total = cpu.get("total") if isinstance(cpu, dict) else None
    busy = float(total) / 100.0 if isinstance(total, (int, float)) else 0.0
    return len(link.in_flight) + busy * window / 4


def _balanced(count: int, usable: list[Link], window: int) -> list[int]:
    """``count`` vertices spread over the usable links, each to the least loaded one
    (its load plus what this batch already gave it; ties to the lower index)."""
    heap = [(link_load(link, window), position) for position, link in enumerate(usable)]
    heapq.heapify(heap)
    chosen = []
    for _ in range(count):
        load, position = heapq.heappop(heap)
        chosen.append(usable[position].index)
        heapq.heappush(heap, (load + 1, position))
    return chosen


def server_info(link: Link, window: int) -> ServerInfo:
    beat = link.beat or {}
    cpu = (beat.get("cpu") or {}).get("total") if isinstance(beat.get("cpu"), dict) else None
    memory = (beat.get("memory") or {}).get("percent") \
        if isinstance(beat.get("memory"), dict) else None
    return ServerInfo(link.name, link.host, link.address, len(link.in_flight), window,
                      cpu, memory)
