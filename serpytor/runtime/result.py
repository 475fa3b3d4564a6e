"""What a run returns: sink outputs, per-vertex status and timings, counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class VertexRecord:
    """How one vertex ended in a run."""

    name: str
    status: str  # "executed", "reused" or "failed"
    seconds: float = 0.0
    attempts: int = 1
    server: str | None = None
    error: str | None = None


@dataclass
class RunResult:
    """``outputs`` maps each sink vertex's name to its output."""

    pipeline: str
    outputs: dict[str, Any]
    vertices: dict[str, VertexRecord] = field(default_factory=dict)
    seconds: float = 0.0
    failed_attempts: int = 0
    error: BaseException | None = None  # the first failure, with keep_going

    def count(self, status: str) -> int:
        return sum(1 for r in self.vertices.values() if r.status == status)

    @property
    def stats(self) -> dict[str, Any]:
        return {"vertices": len(self.vertices), "executed": self.count("executed"),
                "reused": self.count("reused"), "failed_attempts": self.failed_attempts,
                "seconds": round(self.seconds, 6)}

    def __getitem__(self, sink: str) -> Any:
        return self.outputs[sink]
