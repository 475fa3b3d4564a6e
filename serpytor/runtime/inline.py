"""``--inline``: run a plan synchronously in this process, one vertex at a time, in
the order the ready-set engine gives over the plan's schedule (like Dask's
``get_sync``), for debugging and tests.

State: ``outputs[v]`` holds v's output (or a :class:`StoredOutput` for a reused vertex)
until every consumer of v has finished; sinks' outputs are kept for the result.
With ``keep_going``, a failed vertex is marked failed in the engine, so nothing
downstream of it ever becomes ready.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Mapping

import numpy as np

from .. import _core
from ..compiler.plan import Plan
from ..errors import RemoteTaskError, remote_task_error
from .context import Context, ContextTracker
from .durable import Durability, StoredOutput
from .invoke import Invoker, refresh_modules
from .result import RunResult
from .schedule import build_schedule
from .timeouts import time_limit

READY_BATCH = 64  # vertices taken from the engine (and completed) at a time


def run_inline(plan: Plan, durability: Durability | None = None,
               overrides: Mapping[str, Any] | None = None,
               keep_going: bool = False, progress: Any = None) -> RunResult:
    refresh_modules(plan)
    return InlineRun(plan, durability or Durability(plan, None, None), overrides,
                     keep_going, progress).run()


class InlineRun:
    """One ``--inline`` run; see the module docstring for its state."""

    def __init__(self, plan: Plan, durability: Durability,
                 overrides: Mapping[str, Any] | None, keep_going: bool, progress: Any) -> None:
        self.plan = plan
        self.durability = durability
        self.keep_going = keep_going
        self.progress = progress
        self.tracker = ContextTracker(plan, overrides)
        self.invoker = Invoker(plan)
        self.schedule = build_schedule(plan)
        self.engine = _core.ReadyEngine(self.schedule.indptr, self.schedule.indices)
        self.consumers_left = np.diff(plan.arrays["succ_indptr"]).tolist()
        self.outputs: dict[int, Any] = {}
        self.sinks = set(plan.sinks().tolist())
        self.result = RunResult.for_plan(plan)

    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            while len(ready := self.engine.pop_ready(READY_BATCH)):
                # every popped vertex is ready, so the batch runs before any completes
                done = [v for v in ready.tolist() if self._run_one(v)]
                self.engine.complete_many(done)
                if self.progress is not None:
                    self.progress.update(len(self.result.vertices))
        finally:
            self.durability.close()
        self.result.outputs = {self.plan.vertex_name(v): self.durability.load(self.outputs[v])
                               for v in sorted(self.sinks) if v in self.outputs}
        self.result.seconds = time.perf_counter() - started
        return self.result

    def _run_one(self, vertex: int) -> bool:
        """Run (or reuse) one vertex; False when it failed (with ``keep_going``)."""
        if self.schedule.is_barrier(vertex):
            return True
        try:
            self._step(vertex)
        except RemoteTaskError as error:
            self.result.vertices.set(vertex, "failed", error=str(error))
            self.result.failed_attempts += 1
            if not self.keep_going:
                raise
            self.result.error = self.result.error or error
            self.engine.fail(vertex, retry=False)  # its descendants never become ready
            return False
        self._release_inputs(vertex)
        return True

    def _step(self, vertex: int) -> None:
        plan, durability, outputs = self.plan, self.durability, self.outputs
        name = plan.vertex_name(vertex)
        facts = self.tracker.facts_for(vertex)
        record = durability.lookup(vertex, facts, self.tracker.static_key(vertex)) \
            if durability.enabled else None
        if record is not None:
            outputs[vertex] = StoredOutput(record.output, record.output_digest)
            self.tracker.record_published(vertex, record.published)
            self.result.vertices.set(vertex, "reused", record.seconds)
            return
        if durability.enabled:
            for parent in plan.predecessors(vertex).tolist():
                outputs[parent] = durability.load(outputs[parent])
        context = Context(name, facts)
        t0 = time.perf_counter()
        value = call_user_vertex(plan, self.invoker, vertex, outputs, context)
        seconds = time.perf_counter() - t0
        try:
            durability.record(vertex, value, context.published, seconds)
        except Exception as error:
            raise as_task_error(plan, vertex, error) from None
        outputs[vertex] = value
        self.tracker.record_published(vertex, context.published)
        self.result.vertices.set(vertex, "executed", seconds)

    def _release_inputs(self, vertex: int) -> None:
        invoker, left = self.invoker, self.consumers_left
        for i in range(invoker.pred_indptr[vertex], invoker.pred_indptr[vertex + 1]):
            parent = invoker.pred_indices[i]
            left[parent] -= 1
            if left[parent] == 0 and parent not in self.sinks:
                self.outputs.pop(parent, None)


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


def call_user_vertex(plan: Plan, invoker: Invoker, vertex: int, outputs: Mapping[int, Any],
                     context: Any) -> Any:
    """Run the vertex; whatever it raises comes back as a RemoteTaskError subclass."""
    timeout = plan.vertex_template(vertex).get("timeout")
    try:
        if not timeout:
            return invoker.run(vertex, outputs, context)
        with time_limit(timeout, plan.vertex_name(vertex)):
            return invoker.run(vertex, outputs, context)
    except Exception as error:
        raise as_task_error(plan, vertex, error) from None


def as_task_error(plan: Plan, vertex: int, error: BaseException) -> RemoteTaskError:
    if isinstance(error, RemoteTaskError):
        return error
    text = "".join(traceback.format_exception(error))
    return remote_task_error(type(error), str(error), plan.vertex_name(vertex),
                             plan.vertex_template(vertex).get("line"), text)
