"""Where ready vertices wait for a server (the paper's Gateway): one queue, or a silo.

* ``single``: one queue in the engine's priority order (longest path to a sink first),
  the default;
* ``stage``: a silo of queues, one per stage (template), served fairly: each dispatch
  takes one vertex from each stage in turn, so a wide stage does not hold back a narrow
  one that became ready at the same time (e.g. two pipelines' branches sharing servers).

Vertices taken from the engine are RUNNING there while they wait here; ``take`` skips
any that the gateway has sent back to the engine meanwhile (``still_waiting``).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

QUEUE_KINDS = ("single", "stage")


class ReadyQueue:
    """One queue: vertices leave in the order they came."""

    def __init__(self) -> None:
        self.waiting: deque[int] = deque()

    def push(self, vertices: Iterable[int]) -> None:
        self.waiting.extend(vertices)

    def take(self, count: int, still_waiting: Callable[[int], bool]) -> list[int]:
        taken: list[int] = []
        while self.waiting and len(taken) < count:
            vertex = self.waiting.popleft()
            if still_waiting(vertex):
                taken.append(vertex)
        return taken

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def wants(self) -> int:
        """How many more vertices it should hold beyond the free slots (a silo needs
        some of each class to choose from)."""
        return 0


class QueueSilo(ReadyQueue):
    """One queue per class (``class_of(vertex)``), served in turn."""

    def __init__(self, class_of: Callable[[int], int], reserve: int = 256) -> None:
        super().__init__()
        self.class_of = class_of
        self.queues: dict[int, deque[int]] = {}
        self.turn: deque[int] = deque()  # classes with waiting vertices, next first
        self.reserve = reserve

    def push(self, vertices: Iterable[int]) -> None:
        for vertex in vertices:
            key = self.class_of(vertex)
            queue = self.queues.get(key)
            if queue is None:
                queue = self.queues[key] = deque()
            if not queue:
                self.turn.append(key)
            queue.append(vertex)

    def take(self, count: int, still_waiting: Callable[[int], bool]) -> list[int]:
        taken: list[int] = []
        while self.turn and len(taken) < count:
            key = self.turn.popleft()
            queue = self.queues[key]
            vertex = queue.popleft()
            if queue:
                self.turn.append(key)
            if still_waiting(vertex):
                taken.append(vertex)
        return taken

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    @property
    def wants(self) -> int:
        return self.reserve
