"""Durable execution for one run: journal keys, reuse, and recording.

Used by every executor the same way: before a vertex runs, :meth:`Durability.lookup`
computes its key from its parents' output digests and its context, and returns the
journal record if the vertex can be reused; after it runs, :meth:`Durability.record`
stores the output and journals it. A reused output is not read until a vertex that
runs needs it (:class:`StoredOutput`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..compiler.kinds import VertexFlag
from ..compiler.plan import Plan
from .identity import KeyMaker, input_entry, joined_inputs
from .journal import Journal, JournalRecord
from .store import OutputStore


@dataclass(frozen=True)
class StoredOutput:
    """An output in the store, read on first use."""

    path: str
    digest: str


class StoredPlaces:
    """Per vertex, where the store keeps its output: ``(path, digest)``. Held as one
    string per vertex (a path holds no NUL): a tuple per vertex is an object the
    garbage collector counts, and a large plan's set off collections that traverse
    the whole heap."""

    def __init__(self) -> None:
        self._places: dict[int, str] = {}

    def __setitem__(self, vertex: int, place: tuple[str, str]) -> None:
        path, digest = place
        self._places[vertex] = f"{path}\0{digest}"

    def __getitem__(self, vertex: int) -> tuple[str, str]:
        path, _, digest = self._places[vertex].partition("\0")
        return path, digest

    def __contains__(self, vertex: object) -> bool:
        return vertex in self._places


class Durability:
    def __init__(self, plan: Plan, journal: Journal | None, store: OutputStore | None,
                 fresh: bool = False) -> None:
        self.plan = plan
        self.journal = journal
        self.store = store
        self.fresh = fresh
        # per vertex whose output is known: ``name=digest``, its share of a child's
        # inputs part (serpytor.runtime.identity.joined_inputs)
        self.inputs_of: dict[int, str] = {}
        # per vertex: its key, and the key's parts as the journal's JSON text (strings:
        # a tuple or a dictionary per vertex is an object the garbage collector counts,
        # and those of a large plan set off collections that traverse the whole heap)
        self.keys: dict[int, str] = {}
        self.parts: dict[int, str] = {}
        self.names: dict[int, str] = {}  # of vertices looked up, until they are recorded
        self.pipeline = plan.pipeline
        self.volatile: list[bool] | None = None  # per vertex, once a lookup needs it
        self.pred_ptr: list[int] = []
        self.pred_idx: list[int] = []
        if journal is not None and store is not None:
            self.key_maker = KeyMaker(plan)
            journal.before_commit.append(store.commit)
            self.pred_ptr = plan.arrays["pred_indptr"].tolist()
            self.pred_idx = plan.arrays["pred_indices"].tolist()

    @property
    def enabled(self) -> bool:
        return self.journal is not None

    def lookup(self, vertex: int, context_facts: list[Any],
               context_key: Any = None) -> JournalRecord | None:
        """:meth:`lookup_many` of one vertex, whose facts are ``context_facts``."""
        return self.lookup_many([vertex], lambda _: context_facts, lambda _: [context_key])[0]

    def lookup_many(self, vertices: list[int], facts_for: Callable[[int], list[Any]],
                    context_keys: Callable[[list[int]], list[Any]]
                    ) -> list[JournalRecord | None]:
        """Compute each vertex's key (its parents' outputs are known); per vertex, the
        journal record to reuse, or None. ``context_keys(vertices)`` names each one's
        static context (:meth:`ContextTracker.static_keys`); ``facts_for(v)`` is asked
        only for a context whose digest is not known yet. One call per dispatched batch:
        the gateway runs this for every vertex."""
        if not self.enabled:
            return [None] * len(vertices)
        of, ptr, idx = self.inputs_of, self.pred_ptr, self.pred_idx
        inputs = [joined_inputs([of[p] for p in idx[ptr[v]:ptr[v + 1]]]) for v in vertices]
        names = self.plan.vertex_names(vertices)
        self.key_maker.keys_of(vertices, names, inputs, context_keys(vertices), facts_for,
                               self.keys, self.parts)
        self.names.update(zip(vertices, names))
        if self.fresh:
            return [None] * len(vertices)
        return [self._reusable(vertex) for vertex in vertices]

    def _reusable(self, vertex: int) -> JournalRecord | None:
        if self._volatile(vertex):
            return None
        record = self.journal.lookup(self.keys[vertex], self.pipeline)
        if record is None or not self.store.exists(record.output):
            return None
        self.inputs_of[vertex] = input_entry(self._name(vertex), record.output_digest)
        return record

    def _name(self, vertex: int) -> str:
        """vertex's name, from the names its lookup kept (taken: it is needed once)."""
        name = self.names.pop(vertex, None)
        return name if name is not None else self.plan.vertex_name(vertex)

    def _volatile(self, vertex: int) -> bool:
        if self.volatile is None:
            self.volatile = ((self.plan.arrays["vertex_flags"] & VertexFlag.VOLATILE) != 0
                             ).tolist()
        return self.volatile[vertex]

    def record(self, vertex: int, value: Any, published: dict[str, Any], seconds: float) -> None:
        if not self.enabled:
            return
        key, name = self.keys[vertex], self._name(vertex)
        stored = self.store.put(key, name, value)
        self.inputs_of[vertex] = input_entry(name, stored.digest)
        self.journal.record(key, self.pipeline, name, self.parts[vertex], stored.path,
                            stored.digest, published, seconds)

    def record_stored(self, vertex: int, path: str, digest: str, published: dict[str, Any],
                      seconds: float) -> None:
        """Journal an output a server already stored at ``path``."""
        self.record_stored_many([(vertex, path, digest, published, seconds)])

    def record_stored_many(self, stored: list[tuple[int, str, str, dict[str, Any], float]]
                           ) -> None:
        """:meth:`record_stored` of each ``(vertex, path, digest, published, seconds)``:
        one call per reported batch."""
        if not self.enabled or not stored:
            return
        keys, parts, of, name_of = self.keys, self.parts, self.inputs_of, self._name
        pipeline, finished = self.pipeline, time.time()
        rows = []
        for vertex, path, digest, published, seconds in stored:
            name = name_of(vertex)
            of[vertex] = input_entry(name, digest)
            rows.append((keys[vertex], pipeline, name, parts[vertex], path, digest, published,
                         seconds, finished))
        self.journal.record_rows(rows)

    def load(self, value: Any) -> Any:
        if isinstance(value, StoredOutput):
            return self.store.get(value.path, value.digest)
        return value

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.store is not None:
            self.store.close()
