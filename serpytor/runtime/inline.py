"""``--inline``: run a plan synchronously in this process, vertex by vertex in
topological order (like Dask's ``get_sync``), for debugging and tests.

State: ``outputs[v]`` holds v's output (or a :class:`StoredOutput` for a reused vertex)
until every consumer of v has finished; sinks' outputs are kept for the result.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from ..compiler.plan import Plan
from .context import ContextTracker
from .durable import Durability, StoredOutput
from .invoke import run_vertex
from .result import RunResult, VertexRecord


def run_inline(plan: Plan, durability: Durability | None = None,
               overrides: Mapping[str, Any] | None = None) -> RunResult:
    durability = durability or Durability(plan, None, None)
    started = time.perf_counter()
    tracker = ContextTracker(plan, overrides)
    consumers_left = np.diff(plan.arrays["succ_indptr"]).astype(np.int64)
    outputs: dict[int, Any] = {}
    records: dict[str, VertexRecord] = {}
    sinks = set(plan.sinks().tolist())
    for vertex in plan.arrays["topo_order"].tolist():
        records[plan.vertex_name(vertex)] = _step(plan, vertex, tracker, durability, outputs)
        for parent in plan.predecessors(vertex).tolist():
            consumers_left[parent] -= 1
            if consumers_left[parent] == 0 and parent not in sinks:
                del outputs[parent]
    result = {plan.vertex_name(v): durability.load(outputs[v]) for v in sorted(sinks)}
    durability.close()
    return RunResult(plan.pipeline, result, records, time.perf_counter() - started)


def _step(plan: Plan, vertex: int, tracker: ContextTracker, durability: Durability,
          outputs: dict[int, Any]) -> VertexRecord:
    name = plan.vertex_name(vertex)
    facts = tracker.facts_for(vertex)
    record = durability.lookup(vertex, facts)
    if record is not None:
        outputs[vertex] = StoredOutput(record.output, record.output_digest)
        tracker.record_published(vertex, record.published)
        return VertexRecord(name, "reused", record.seconds)
    for parent in plan.predecessors(vertex).tolist():
        outputs[parent] = durability.load(outputs[parent])
    context = tracker.context_for(vertex)
    t0 = time.perf_counter()
    value = run_vertex(plan, vertex, outputs, context)
    seconds = time.perf_counter() - t0
    durability.record(vertex, value, context.published, seconds)
    outputs[vertex] = value
    tracker.record_published(vertex, context.published)
    return VertexRecord(name, "executed", seconds)
