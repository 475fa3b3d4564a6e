"""``serpytor explain PIPELINE VERTEX``: would the vertex be reused or re-run, and why.

It replays the journal lookups of the vertex's ancestors in topological order without
running anything: an ancestor that would re-run has no known output digest, so every
vertex downstream of it re-runs because of its inputs.
"""

from __future__ import annotations

import json

from ..compiler.kinds import VertexFlag
from ..compiler.plan import Plan
from .context import ContextTracker
from .durable import Durability
from .inline import ancestors

PART_WORDS = {
    "function": "its function's code changed",
    "arguments": "its arguments changed",
    "inputs": "its inputs changed",
    "context": "its context changed",
    "vertex": "it was recorded under another name",
}


def explain_vertex(plan: Plan, durability: Durability, vertex: int) -> str:
    name = plan.vertex_name(vertex)
    if not durability.enabled:
        return f"{name}: would run (the journal is off)"
    tracker = ContextTracker(plan)
    rerun: set[int] = set()
    needed = ancestors(plan, vertex) | {vertex}
    for v in plan.arrays["topo_order"].tolist():
        if v not in needed:
            continue
        if any(p in rerun for p in plan.predecessors(v).tolist()):
            rerun.add(v)
            continue
        record = durability.lookup(v, tracker.facts_for(v))
        if record is None:
            rerun.add(v)
        else:
            tracker.record_published(v, record.published)
    if vertex not in rerun:
        return f"{name}: would be reused (recorded with key {durability.keys[vertex][:12]})"
    return f"{name}: would run: " + _reason(plan, durability, vertex, rerun)


def _reason(plan: Plan, durability: Durability, vertex: int, rerun: set[int]) -> str:
    if plan.flags(vertex) & VertexFlag.VOLATILE:
        return "it is volatile"
    if durability.fresh:
        return "--fresh ignores the journal"
    parents = [plan.vertex_name(p) for p in plan.predecessors(vertex).tolist() if p in rerun]
    if parents:
        return f"its inputs will be recomputed ({', '.join(parents[:5])}" + \
            (", ..." if len(parents) > 5 else "") + ")"
    latest = durability.journal.latest(plan.pipeline, plan.vertex_name(vertex))
    if latest is None:
        return "it has never been recorded"
    parts = json.loads(durability.parts[vertex])
    changed = [PART_WORDS[k] for k in PART_WORDS if latest.parts.get(k) != parts.get(k)]
    if not changed:
        return "its recorded output is missing from the store"
    return "; ".join(changed) + " since it was recorded"


__all__ = ["explain_vertex"]
