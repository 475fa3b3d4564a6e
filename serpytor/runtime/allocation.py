"""Where each ready vertex runs: the gateway's allocation policy.

Policies (the paper's Gateway, Dryad's job manager):

* ``locality`` (default): the server already holding most of the vertex's input
  bytes, so large outputs do not move; among equals (and for vertices whose inputs
  are small, below ``LOCALITY_MIN_BYTES``), the least loaded;
* ``least_loaded``: the server with the lowest load relative to its capacity;
* ``round_robin``: servers in turn.

Load is the number of tasks in flight on a server over its window. Scoring every
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
from typing import Sequence

import numpy as np

from .. import _core
from ..compiler.plan import Plan
from ..errors import SerpytorError
from .links import Link

LOCALITY_MIN_BYTES = 64 * 1024  # smaller inputs move for free: place those by load
POLICIES = ("locality", "least_loaded", "round_robin")


class PlacementError(SerpytorError, ValueError):
    """An unknown placement policy was asked for."""


class Allocator:
    def __init__(self, plan: Plan, policy: str = "locality", window: int = 256) -> None:
        self.check_policy(policy)
        self.plan = plan
        self.policy = policy
        self.window = window
        self.gang = plan.arrays["vertex_gang"]
        self.gang_link: dict[int, int] = {}   # gang -> link index it is anchored on
        self.turn = itertools.count()

    @staticmethod
    def check_policy(policy: str) -> None:
        if policy not in POLICIES:
            raise PlacementError(f"unknown placement policy {policy!r}; expected one of "
                                 f"{', '.join(POLICIES)}")

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
        return self._anchor_gangs(vertices, chosen, usable, avoid)

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
        if not len(tv) and not ev:  # only load to weigh: no need for the scoring kernel
            return _balanced(len(vertices), usable)
        load = np.array([len(link.in_flight) for link in usable], np.float64)
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
        if self.policy != "locality":
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


def _balanced(count: int, usable: list[Link]) -> list[int]:
    """``count`` vertices spread over the usable links, each to the least loaded one
    (in flight plus what this batch already gave it; ties to the lower index)."""
    heap = [(len(link.in_flight), position) for position, link in enumerate(usable)]
    heapq.heapify(heap)
    chosen = []
    for _ in range(count):
        load, position = heapq.heappop(heap)
        chosen.append(usable[position].index)
        heapq.heappush(heap, (load + 1, position))
    return chosen
