"""Small enumerations shared by the compiler's Plan and the runtime."""

from __future__ import annotations

import enum


class ChannelKind(enum.IntEnum):
    """How data moves along an edge (Dryad's channels). Stored as uint8 in plans."""

    AUTO = 0  # chosen at run time: shm on one host, tcp when both ends run together, else file
    SHM = 1   # POSIX shared memory between processes on one host; forces co-location
    TCP = 2   # ZeroMQ directly between producer and consumer processes
    FILE = 3  # a durable file named by vertex, port and execution version

    @classmethod
    def parse(cls, text: str) -> "ChannelKind":
        return cls[text.upper()]

    def __str__(self) -> str:
        return self.name.lower()


class EdgeKind(enum.IntEnum):
    """The DSL operator an edge came from."""

    PLAIN = 0      # a -> b
    POINTWISE = 1  # a => b   (Dryad >=, round-robin when widths differ)
    ALL = 2        # a >> b   (Dryad >>, complete bipartite)
    TREE = 3       # added by the aggregation pass: partial -> combiner


class VertexFlag(enum.IntFlag):
    """Per-vertex flags stored as uint8 in plans."""

    NONE = 0
    VOLATILE = 1   # never reused from the journal
    COMBINER = 2   # an inner vertex of an aggregation tree
    AGG_ROOT = 4   # the final reduce of an aggregate node
    INITIAL = 8    # an initial-reduce / accumulator vertex of an aggregation tree
