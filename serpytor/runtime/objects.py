"""A server's in-memory outputs and how they cross to other processes.

``ObjectStore`` holds the outputs a server produced, by ``(job, vertex)``, until the
gateway releases them. Outputs leave the process only when a peer asks for them over
the data socket: :func:`pack` turns values into ZeroMQ frames with the channel layer's
pickle serializer (numpy buffers go out of band, as zero-copy frames) and
:func:`unpack` rebuilds them on the other side.
"""

from __future__ import annotations

import threading
from typing import Any

from .channels.serialize import get_serializer

SERIALIZER = get_serializer("pickle")


class ObjectStore:
    def __init__(self) -> None:
        self._values: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def put(self, job: str, vertex: int, value: Any) -> None:
        with self._lock:
            self._values[(job, vertex)] = value

    def get(self, job: str, vertex: int) -> Any:
        with self._lock:
            return self._values[(job, vertex)]

    def has(self, job: str, vertex: int) -> bool:
        with self._lock:
            return (job, vertex) in self._values

    def release(self, job: str, vertices: list[int]) -> None:
        with self._lock:
            for vertex in vertices:
                self._values.pop((job, vertex), None)

    def drop_job(self, job: str) -> None:
        with self._lock:
            for key in [k for k in self._values if k[0] == job]:
                del self._values[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


def pack(values: list[tuple[int, Any]]) -> tuple[list[dict[str, int]], list[Any]]:
    """Item descriptions and frames for ``(vertex, value)`` pairs."""
    items, frames = [], []
    for vertex, value in values:
        header, buffers = SERIALIZER.dumps(value)
        items.append({"v": vertex, "buffers": len(buffers)})
        frames.append(header)
        frames.extend(buffers)
    return items, frames


def unpack(items: list[dict[str, Any]], frames: list[Any]) -> dict[int, Any]:
    """Inverse of :func:`pack`; raises ValueError when frames are missing."""
    values: dict[int, Any] = {}
    position = 0
    for item in items:
        count = int(item["buffers"])
        if position + 1 + count > len(frames):
            raise ValueError("data message is truncated")
        header = memoryview(frames[position])
        buffers = [memoryview(f) for f in frames[position + 1:position + 1 + count]]
        values[int(item["v"])] = SERIALIZER.loads(header, buffers)
        position += 1 + count
    return values
