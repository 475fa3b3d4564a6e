"""What a run returns: sink outputs, per-vertex status and timings, counts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

STATUSES = ("", "executed", "reused", "failed")  # 0: not finished (yet)


@dataclass
class VertexRecord:
    """How one vertex ended in a run."""

    name: str
    status: str  # "executed", "reused" or "failed"
    seconds: float = 0.0
    attempts: int = 1
    server: str | None = None
    error: str | None = None


class VertexTable(Mapping[str, VertexRecord]):
    """Every finished vertex's record, by name, kept as arrays (a few bytes a vertex,
    so a gateway holding a million-vertex run stays small); a :class:`VertexRecord` is
    built when one is looked at."""

    def __init__(self, n_vertices: int, name_of: Callable[[int], str],
                 index_of: Callable[[str], int]) -> None:
        self.status = np.zeros(n_vertices, np.uint8)
        self.seconds = np.zeros(n_vertices, np.float64)
        self.attempts = np.ones(n_vertices, np.int32)
        self.server = np.full(n_vertices, -1, np.int32)
        self.servers: list[str] = []
        self.errors: dict[int, str] = {}
        self._name_of, self._index_of = name_of, index_of

    def set(self, vertex: int, status: str, seconds: float = 0.0, attempts: int = 1,
            server: str | None = None, error: str | None = None) -> None:
        self.status[vertex] = STATUSES.index(status)
        self.seconds[vertex] = seconds
        self.attempts[vertex] = attempts
        self.server[vertex] = self._server_id(server)
        if error is not None:
            self.errors[vertex] = error
        else:
            self.errors.pop(vertex, None)

    def _server_id(self, server: str | None) -> int:
        if server is None:
            return -1
        if server not in self.servers:
            self.servers.append(server)
        return self.servers.index(server)

    def record(self, vertex: int) -> VertexRecord:
        server = int(self.server[vertex])
        return VertexRecord(self._name_of(vertex), STATUSES[int(self.status[vertex])],
                            float(self.seconds[vertex]), int(self.attempts[vertex]),
                            self.servers[server] if server >= 0 else None,
                            self.errors.get(vertex))

    def count(self, status: str) -> int:
        return int(np.count_nonzero(self.status == STATUSES.index(status)))

    def __getitem__(self, name: str) -> VertexRecord:
        try:
            vertex = self._index_of(name)
        except KeyError:
            raise KeyError(name) from None
        if not self.status[vertex]:
            raise KeyError(name)
        return self.record(vertex)

    def __iter__(self) -> Iterator[str]:
        return (self._name_of(int(v)) for v in np.flatnonzero(self.status))

    def __len__(self) -> int:
        return int(np.count_nonzero(self.status))


@dataclass
class RunResult:
    """``outputs`` maps each sink vertex's name to its output; ``vertices`` each
    finished vertex's :class:`VertexRecord`.

    ``channels`` counts how inputs reached the servers that ran their consumers:
    ``{kind: [inputs, bytes]}`` for ``memory`` (the same server), ``shm``, ``tcp`` and
    ``file``. ``lost_attempts`` counts attempts redone because a server was lost or
    restarted or an input was gone; ``server_events`` says which servers were lost (and
    why) or rejoined; ``refusals`` the admission hooks' reasons, by vertex.
    """

    pipeline: str
    outputs: dict[str, Any]
    vertices: VertexTable
    seconds: float = 0.0
    failed_attempts: int = 0
    lost_attempts: int = 0
    duplicates: int = 0        # copies started for stragglers
    duplicates_won: int = 0    # vertices a copy finished first
    rejected_messages: int = 0
    server_events: list[dict[str, str]] = field(default_factory=list)
    channels: dict[str, list[int]] = field(default_factory=dict)
    refusals: dict[int, dict[str, str]] = field(default_factory=dict)
    error: BaseException | None = None  # the first failure, with keep_going

    @classmethod
    def for_plan(cls, plan: Any) -> "RunResult":
        return cls(plan.pipeline, {}, VertexTable(plan.n_vertices, plan.vertex_name,
                                                  plan.index_of))

    def count(self, status: str) -> int:
        return self.vertices.count(status)

    @property
    def stats(self) -> dict[str, Any]:
        return {"vertices": len(self.vertices), "executed": self.count("executed"),
                "reused": self.count("reused"), "failed_attempts": self.failed_attempts,
                "seconds": round(self.seconds, 6)}

    def add_channels(self, report: dict[str, Any]) -> None:
        """Add a server's transfer counts ``{kind: [items, bytes]}``."""
        for kind, (items, nbytes) in report.items():
            totals = self.channels.setdefault(str(kind), [0, 0])
            totals[0] += int(items)
            totals[1] += int(nbytes)

    def __getitem__(self, sink: str) -> Any:
        return self.outputs[sink]
