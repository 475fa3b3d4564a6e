"""``--inline``: run a plan synchronously in this process, vertex by vertex in
topological order (like Dask's ``get_sync``), for debugging and tests.

State: ``outputs[v]`` holds v's output (or a :class:`StoredOutput` for a reused vertex)
until every consumer of v has finished; sinks' outputs are kept for the result.
``blocked`` holds the vertices downstream of a failure (with ``keep_going``).
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Mapping

import numpy as np

from ..compiler.plan import Plan
from ..errors import RemoteTaskError, remote_task_error
from .context import Context, ContextTracker
from .durable import Durability, StoredOutput
from .invoke import run_vertex
from .result import RunResult, VertexRecord
from .timeouts import time_limit


def run_inline(plan: Plan, durability: Durability | None = None,
               overrides: Mapping[str, Any] | None = None,
               keep_going: bool = False, progress: Any = None) -> RunResult:
    durability = durability or Durability(plan, None, None)
    started = time.perf_counter()
    tracker = ContextTracker(plan, overrides)
    consumers_left = np.diff(plan.arrays["succ_indptr"]).astype(np.int64)
    outputs: dict[int, Any] = {}
    result = RunResult(plan.pipeline, {})
    sinks = set(plan.sinks().tolist())
    blocked: set[int] = set()
    first_error: RemoteTaskError | None = None
    try:
        for vertex in plan.arrays["topo_order"].tolist():
            if vertex in blocked:
                continue
            try:
                result.vertices[plan.vertex_name(vertex)] = _step(
                    plan, vertex, tracker, durability, outputs)
            except RemoteTaskError as error:
                result.vertices[error.vertex] = VertexRecord(error.vertex, "failed", error=str(error))
                result.failed_attempts += 1
                if not keep_going:
                    raise
                first_error = first_error or error
                blocked |= descendants(plan, vertex)
                continue
            _release_inputs(plan, vertex, consumers_left, outputs, sinks)
            if progress is not None:
                progress.update(len(result.vertices))
    finally:
        durability.close()
    result.outputs = {plan.vertex_name(v): durability.load(outputs[v])
                      for v in sorted(sinks) if v in outputs}
    result.seconds = time.perf_counter() - started
    result.error = first_error
    return result


def _release_inputs(plan: Plan, vertex: int, consumers_left: np.ndarray,
                    outputs: dict[int, Any], sinks: set[int]) -> None:
    for parent in plan.predecessors(vertex).tolist():
        consumers_left[parent] -= 1
        if consumers_left[parent] == 0 and parent not in sinks:
            outputs.pop(parent, None)


def descendants(plan: Plan, vertex: int) -> set[int]:
    return reachable(plan.successors, vertex)


def ancestors(plan: Plan, vertex: int) -> set[int]:
    return reachable(plan.predecessors, vertex)


def reachable(neighbours, vertex: int) -> set[int]:
    """Every vertex reachable from ``vertex`` through ``neighbours`` (not itself)."""
    seen: set[int] = set()
    stack = [vertex]
    while stack:
        for other in neighbours(stack.pop()).tolist():
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


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
    context = Context(name, facts)
    t0 = time.perf_counter()
    value = call_user_vertex(plan, vertex, outputs, context)
    seconds = time.perf_counter() - t0
    try:
        durability.record(vertex, value, context.published, seconds)
    except Exception as error:
        raise as_task_error(plan, vertex, error) from None
    outputs[vertex] = value
    tracker.record_published(vertex, context.published)
    return VertexRecord(name, "executed", seconds)


def call_user_vertex(plan: Plan, vertex: int, outputs: Mapping[int, Any], context: Any) -> Any:
    """Run the vertex; whatever it raises comes back as a RemoteTaskError subclass."""
    timeout = plan.vertex_template(vertex).get("timeout")
    try:
        with time_limit(timeout, plan.vertex_name(vertex)):
            return run_vertex(plan, vertex, outputs, context)
    except Exception as error:
        raise as_task_error(plan, vertex, error) from None


def as_task_error(plan: Plan, vertex: int, error: BaseException) -> RemoteTaskError:
    if isinstance(error, RemoteTaskError):
        return error
    text = "".join(traceback.format_exception(error))
    return remote_task_error(type(error), str(error), plan.vertex_name(vertex),
                             plan.vertex_template(vertex).get("line"), text)
