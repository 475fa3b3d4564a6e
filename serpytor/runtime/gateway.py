"""The gateway (Dryad's job manager): places ready vertices on servers, in batches.

It carries metadata only: task descriptions, context facts, where each output lives;
vertex payloads move server to server (:mod:`serpytor.runtime.transfer`).

State (n vertices; the engine also holds the schedule's barrier nodes, see
:mod:`serpytor.runtime.schedule`):

* ``engine``: the ``_core`` ready-set engine (which vertices may run, in which order);
* ``holder[v]``: index of the link whose server holds v's output, -1 when none
  (``stored[v]`` then says where the store keeps it, if anywhere);
* ``size[v]``: bytes of v's output, for locality; ``consumers_left[v]``: consumers of v
  that have not finished (0: the holder may drop it, and ``released[v]`` is set);
* ``attempt[v]``: attempt number, so a late result of a superseded attempt is ignored;
* ``avoid[v]``: links that refused v (placement tries the others);
* per link (:mod:`serpytor.runtime.links`), ``in_flight``: ``{vertex: attempt}``.

Transitions that lose work (a server restarted, an input found missing) go through
:meth:`Gateway._lost_attempt` and :meth:`Gateway._lost_output`: the vertex goes back
to the engine, and so, recursively, do the producers of inputs that are no longer
anywhere (Dryad's re-execution). A vertex that loses ``MAX_ATTEMPTS`` attempts fails.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import os
import time
import uuid
from typing import Any, Mapping

import numpy as np
import zmq

from .. import _core
from ..compiler.kinds import ChannelKind
from ..compiler.plan import Plan, encode_plan
from ..errors import RemoteTaskError, SerpytorError, remote_task_error
from .allocation import Allocator
from .channels import sweep_segments
from .channels.descriptor import this_host
from .context import ContextTracker
from .durable import Durability
from .invoke import refresh_modules
from .links import DOWN, LOST, READY, Link, Timing, handshake, learn, open_link
from .result import RunResult
from .schedule import build_schedule
from .transfer import FetchError, InputFetcher, TransferCounts

log = logging.getLogger("serpytor.gateway")

POLL_MS = 20
MAX_ATTEMPTS = 6  # Dryad: a vertex that fails this often fails the job


class ServerUnavailableError(SerpytorError):
    """A server could not be reached, stopped answering, or died during the run."""


class AllServersRefusedError(SerpytorError):
    """Every server refused a vertex (their admission hooks said no)."""


class OutputUnavailableError(SerpytorError):
    """A vertex's output could not be brought back from the server holding it (it
    cannot be serialized, or its server is gone)."""


class Gateway:
    def __init__(self, plan: Plan, addresses: list[str], durability: Durability,
                 overrides: Mapping[str, Any] | None = None, keep_going: bool = False,
                 window: int = 256, processes: list[Any] | None = None,
                 context: zmq.Context | None = None, progress: Any = None,
                 policy: str = "locality", timing: Timing | None = None) -> None:
        self.plan = plan
        self.ctx = context or zmq.Context.instance()
        self.job = uuid.uuid4().hex[:16]
        self.durability = durability
        self.overrides = dict(overrides or {})
        self.keep_going = keep_going
        self.window = window
        self.progress = progress
        self.timing = timing or Timing()
        self.tracker = ContextTracker(plan, overrides)
        self.allocator = Allocator(plan, policy, window)
        processes = processes or [None] * len(addresses)
        self.links = [open_link(self.ctx, i, a, f"{self.job}-{i}".encode(), processes[i])
                      for i, a in enumerate(addresses)]
        n = plan.n_vertices
        self.schedule = build_schedule(plan)
        self.engine = _core.ReadyEngine(self.schedule.indptr, self.schedule.indices)
        self.holder = np.full(n, -1, np.int32)
        self.size = np.zeros(n, np.int64)
        self.stored: dict[int, tuple[str, str]] = {}
        self.attempt = np.zeros(n, np.int32)
        self.consumers_left = np.diff(plan.arrays["succ_indptr"]).astype(np.int64)
        self.released = np.zeros(n, bool)
        self.hints = plan.arrays["edge_channel"][plan.arrays["pred_edges"]]
        self.sinks = set(plan.sinks().tolist())
        self.avoid: dict[int, set[int]] = {}
        self.unplaced: list[int] = []
        self.blocked: set[int] = set()
        self.finished = 0
        self.result = RunResult.for_plan(plan)
        self.first_error: RemoteTaskError | None = None
        self.poller: zmq.Poller | None = None  # of the links not lost (rebuilt on a loss)

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            refresh_modules(self.plan)
            self._connect()
            while self.finished + len(self.blocked) < self.plan.n_vertices:
                progressed = self._dispatch()
                self._receive(0 if progressed else POLL_MS)
                self._watch_links()
            self.result.outputs = self._gather_sinks()
        finally:
            self._end()
            self.durability.close()
        self.result.seconds = time.perf_counter() - started
        self.result.error = self.first_error
        return self.result

    def _connect(self) -> None:
        silent = handshake(self.links, self.timing.handshake)
        if silent:
            addresses = ", ".join(link.address for link in silent)
            raise ServerUnavailableError(f"no server answered at {addresses} within "
                                         f"{self.timing.handshake:g} s")
        plan_bytes = encode_plan(self.plan)  # not kept: as large as the plan's arrays
        for link in self.links:
            self._send_job(link, plan_bytes)

    def _send_job(self, link: Link, plan_bytes: bytes | None = None) -> None:
        store = self.durability.store
        link.send({"type": "job", "job": self.job, "overrides": self.overrides,
                   "store": str(store.root.parent) if store else None,
                   "durable": bool(store and store.durable)},
                  plan_bytes or encode_plan(self.plan))

    # ---- dispatch -----------------------------------------------------------------------
    def _dispatch(self) -> bool:
        free = sum(max(0, self.window - len(link.in_flight)) for link in self.links
                   if link.usable)
        if free == 0:
            return False
        # vertices waiting for a server, unless a lost input sent them back meanwhile
        vertices = [v for v in self.unplaced if self.engine.state_of(v) == _core.RUNNING]
        self.unplaced = []
        vertices += self._pop_vertices(free - len(vertices))
        if not vertices:
            return False
        to_place, reused = [], []
        for vertex in vertices:
            record = self._journaled(vertex)
            if record is not None:
                self._reuse(vertex, record)
                reused.append(vertex)
            else:
                to_place.append(vertex)
        self._send_batches(to_place)
        if reused:
            self._completed(reused)
        return True

    def _pop_vertices(self, limit: int) -> list[int]:
        """Up to ``limit`` ready vertices; barriers are completed on the way."""
        vertices: list[int] = []
        n = self.plan.n_vertices
        while len(vertices) < limit:
            ready = self.engine.pop_ready(limit - len(vertices))
            if len(ready) == 0:
                break
            barriers = ready[ready >= n]
            if len(barriers):
                self.engine.complete_many(barriers)
            vertices += ready[ready < n].tolist()
        return vertices

    def _journaled(self, vertex: int):
        if not self.durability.enabled:
            return None
        return self.durability.lookup(vertex, self.tracker.facts_for(vertex),
                                      self.tracker.static_key(vertex))

    def _reuse(self, vertex: int, record) -> None:
        self.stored[vertex] = (record.output, record.output_digest)
        self.tracker.record_published(vertex, record.published)
        self.result.vertices.set(vertex, "reused", record.seconds)

    def _send_batches(self, vertices: list[int]) -> None:
        if not vertices:
            return
        chosen = self.allocator.place(vertices, self.links, self.holder, self.size,
                                      self.avoid)
        batches: dict[int, list[dict]] = {}
        for vertex, index in zip(vertices, chosen):
            if index < 0:
                self._unplaceable(vertex)
                continue
            link = self.links[index]
            batches.setdefault(index, []).append(self._task(vertex, link))
        for index, tasks in batches.items():
            self.links[index].send({"type": "tasks", "job": self.job, "tasks": tasks})

    def _unplaceable(self, vertex: int) -> None:
        """No usable server may take vertex: every one refused it, or none is up."""
        refused = self.avoid.get(vertex, set())
        if self.result.refusals.get(vertex) and \
                all(l.index in refused for l in self.links if l.state != LOST):
            raise self._refused_everywhere(vertex)
        if not any(l.state != LOST for l in self.links):
            raise ServerUnavailableError("every server is lost: " + "; ".join(
                f"{l.label} {l.why_lost}" for l in self.links))
        self.avoid.pop(vertex, None)  # servers that are only down may take it later
        self.unplaced.append(vertex)

    def _task(self, vertex: int, link: Link) -> dict:
        self.attempt[vertex] += 1
        a = self.plan.arrays
        start, stop = int(a["pred_indptr"][vertex]), int(a["pred_indptr"][vertex + 1])
        inputs = []
        for parent, hint in zip(a["pred_indices"][start:stop].tolist(),
                                self.hints[start:stop].tolist()):
            source: dict[str, Any] = {"v": parent}
            holder = int(self.holder[parent])
            if holder < 0 or (hint == ChannelKind.FILE and parent in self.stored):
                source["path"], source["digest"] = self.stored[parent]
            elif holder != link.index:
                source["at"] = self.links[holder].data
            if hint:
                source["ch"] = hint
            inputs.append(source)
        task: dict[str, Any] = {"v": vertex, "attempt": int(self.attempt[vertex]),
                                "inputs": inputs}
        if self.tracker.published_reach(vertex):
            task["context"] = [[f.key, f.value, f.origin, f.nearest]
                               for f in self.tracker.facts_for(vertex)]
        if self.durability.enabled:
            task["key"] = self.durability.keys[vertex][0]
        link.in_flight[vertex] = int(self.attempt[vertex])
        return task

    # ---- messages -----------------------------------------------------------------------
    def _receive(self, timeout_ms: int) -> None:
        if self.poller is None:
            self.poller = zmq.Poller()
            for link in self.links:
                if link.state != LOST:
                    self.poller.register(link.sock, zmq.POLLIN)
        events = dict(self.poller.poll(timeout_ms))
        for link in self.links:
            if link.sock not in events:
                continue
            for _ in range(1000):
                if link.state == LOST or not link.sock.poll(0):
                    break
                message = link.read()
                if message is not None:
                    self._on_message(link, message)

    def _on_message(self, link: Link, message: dict) -> None:
        kind = message["type"]
        if message.get("job") not in (None, self.job):
            return
        try:
            if kind == "done":
                self._on_done(link, message)
            elif kind == "failed":
                self._on_failed(link, message)
            elif kind == "refused":
                self._on_refused(link, message)
            elif kind == "pong":
                self._on_pong(link, message)
            elif kind == "error":
                raise ServerUnavailableError(f"server {link.label} reported: "
                                             f"{message['message']}")
        except (KeyError, TypeError, ValueError, IndexError) as error:
            if isinstance(error, SerpytorError):
                raise  # a vertex's failure (a RemoteValueError is a ValueError too)
            # a well-formed header with garbage inside: drop it; silence and attempt
            # bookkeeping recover whatever it was about
            self.result.rejected_messages += 1
            if self.result.rejected_messages == 1:
                log.warning("gateway dropped a malformed %s message from %s: %r", kind,
                            link.label, error)

    def _current(self, link: Link, vertex: int, attempt: int) -> bool:
        if link.in_flight.get(vertex) != attempt:
            return False
        del link.in_flight[vertex]
        return True

    def _on_done(self, link: Link, message: dict) -> None:
        done = []
        for r in message["results"]:
            vertex = int(r["v"])
            if not self._current(link, vertex, int(r["attempt"])):
                continue
            self.holder[vertex] = link.index
            self.size[vertex] = int(r.get("size", 0))
            published = r.get("published") or {}
            if "path" in r:
                self.durability.record_stored(vertex, r["path"], r["digest"], published,
                                              float(r["seconds"]))
                self.stored[vertex] = (str(r["path"]), str(r["digest"]))
            elif "file" in r:
                self.stored[vertex] = (str(r["file"]), str(r["digest"]))
            self.tracker.record_published(vertex, published)
            self.result.vertices.set(vertex, "executed", float(r["seconds"]),
                                     int(self.attempt[vertex]), link.name)
            done.append(vertex)
        self.result.add_channels(message.get("channels") or {})
        if done:
            self._completed(done)

    def _completed(self, vertices: list[int]) -> None:
        self.engine.complete_many(np.asarray(vertices, np.int32))
        self.finished += len(vertices)
        if self.progress is not None:
            self.progress.update(self.finished)
        releases: dict[int, list[int]] = {}
        for vertex in vertices:
            for parent in self.plan.predecessors(vertex).tolist():
                self.consumers_left[parent] -= 1
                if self.consumers_left[parent] == 0 and parent not in self.sinks:
                    self.released[parent] = True
                    holder = int(self.holder[parent])
                    if holder >= 0:
                        releases.setdefault(holder, []).append(parent)
        for holder, parents in releases.items():
            self.links[holder].send({"type": "release", "job": self.job, "vertices": parents})

    def _on_failed(self, link: Link, message: dict) -> None:
        vertex, attempt = int(message["v"]), int(message["attempt"])
        if not self._current(link, vertex, attempt):
            return
        lost = [int(v) for v in message.get("lost_inputs") or ()]
        if lost:  # not the vertex's fault: the outputs it reads are gone
            for parent in lost:
                self._lost_output(parent)
            self._lost_attempt(vertex, f"inputs lost ({message['message']})")
            return
        self._vertex_failed(vertex, rebuild_error(self.plan, vertex, message), link)

    def _vertex_failed(self, vertex: int, error: RemoteTaskError, link: Link | None) -> None:
        self.result.failed_attempts += 1
        self.result.vertices.set(vertex, "failed", 0.0, int(self.attempt[vertex]),
                                 link.name if link else None, str(error))
        if not self.keep_going:
            raise error
        self.first_error = self.first_error or error
        self.engine.fail(vertex, retry=False)
        self.blocked |= {vertex} | self.schedule.descendants(vertex)

    def _on_refused(self, link: Link, message: dict) -> None:
        vertex, attempt = int(message["v"]), int(message["attempt"])
        if not self._current(link, vertex, attempt):
            return
        self.avoid.setdefault(vertex, set()).add(link.index)
        self.result.refusals.setdefault(vertex, {})[link.label] = str(message["reason"])
        self.unplaced.append(vertex)

    def _refused_everywhere(self, vertex: int) -> AllServersRefusedError:
        reasons = "; ".join(f"{label}: {reason}" for label, reason in
                            self.result.refusals.get(vertex, {}).items())
        return AllServersRefusedError(f"every server refused vertex "
                                      f"{self.plan.vertex_name(vertex)} ({reasons})")

    # ---- lost work ----------------------------------------------------------------------
    def _available(self, vertex: int) -> bool:
        """Can a consumer read vertex's output now (from its server or the store)?"""
        return (self.holder[vertex] >= 0 and not self.released[vertex]) or \
            vertex in self.stored

    def _lost_attempt(self, vertex: int, why: str) -> None:
        """The attempt's result will never come: run the vertex again (after any of its
        inputs that are gone), unless it has lost too many attempts."""
        self.result.lost_attempts += 1
        if self.attempt[vertex] >= MAX_ATTEMPTS:
            error = remote_task_error(ServerUnavailableError, f"lost {MAX_ATTEMPTS} "
                                      f"attempts; the last: {why}", self.plan.vertex_name(vertex),
                                      self.plan.vertex_template(vertex).get("line"), "")
            self._vertex_failed(vertex, error, None)
            return
        self.engine.invalidate(vertex)  # RUNNING -> READY
        self._ensure_inputs(vertex, rerun_of_done=False)

    def _lost_output(self, vertex: int) -> None:
        """vertex's server no longer holds its output: if the store does not have it
        and a consumer still needs it, vertex runs again."""
        self.holder[vertex] = -1
        needed = self.consumers_left[vertex] > 0 or vertex in self.sinks
        if vertex not in self.stored and needed:
            self._rerun(vertex)

    def _rerun(self, vertex: int) -> None:
        """A finished vertex whose output is gone runs again (its running consumers
        are cancelled: the engine puts them back to waiting)."""
        if self.engine.state_of(vertex) != _core.DONE:
            return  # already on its way again
        for consumer in self.engine.invalidate(vertex).tolist():
            self._cancel(consumer)
        self.finished -= 1
        self._ensure_inputs(vertex, rerun_of_done=True)

    def _ensure_inputs(self, vertex: int, rerun_of_done: bool) -> None:
        """Parents whose outputs are nowhere any more must run again first (Dryad's
        recursive re-execution), as far back as needed and no further."""
        for parent in self.plan.predecessors(vertex).tolist():
            if rerun_of_done:  # vertex consumed parent once already; it will again
                self.consumers_left[parent] += 1
            if self._available(parent):
                continue
            self.released[parent] = False
            self.holder[parent] = -1
            self._rerun(parent)

    def _cancel(self, vertex: int) -> None:
        """A running vertex whose input vanished: forget its attempt (a late result is
        ignored); the engine has put it back to waiting."""
        for link in self.links:
            link.in_flight.pop(vertex, None)

    # ---- liveness -----------------------------------------------------------------------
    def _watch_links(self) -> None:
        now = time.monotonic()
        for link in self.links:
            if link.state == LOST:
                continue
            process = link.process
            if process is not None and not process.alive():
                self._server_lost(link, f"exited with status {process.process.returncode}")
                continue
            self._connection_changes(link, now)
            if link.state == DOWN and now - link.down_since > self.timing.reconnect_grace:
                self._server_lost(link, f"was unreachable for {now - link.down_since:.0f} s")
            elif link.in_flight and now - link.last_heard > self.timing.silence:
                self._server_lost(link, f"has not answered for {now - link.last_heard:.0f} s")
            elif link.in_flight and now - link.last_heard > self.timing.ping_interval and \
                    now - link.last_ping > self.timing.ping_interval:
                link.ping(now)

    def _connection_changes(self, link: Link, now: float) -> None:
        for event in link.connection_events():
            if event == zmq.EVENT_DISCONNECTED and link.state == READY:
                link.state, link.down_since = DOWN, now
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and link.state == DOWN:
                link.ping(now)  # which incarnation came back? the pong says

    def _on_pong(self, link: Link, message: dict) -> None:
        restarted = learn(link, message)
        if restarted:
            self._server_restarted(link)
        elif link.state == DOWN:
            # the same process after a dropped connection: what was in flight may be
            # lost in either direction, so it runs again; held outputs are still there
            link.state, link.down_since = READY, None
            for vertex in list(link.in_flight):
                del link.in_flight[vertex]
                self._lost_attempt(vertex, f"connection to {link.label} dropped")

    def _server_restarted(self, link: Link) -> None:
        """The server restarted itself (a vertex wedged it): it lost its jobs and its
        outputs; give it the job again and redo what was lost with it."""
        link.state, link.down_since = READY, None
        self._send_job(link)
        self._recover(link, f"server {link.label} restarted")

    def _server_lost(self, link: Link, why: str) -> None:
        link.state, link.why_lost = LOST, why
        self.poller = None
        running = ", ".join(self.plan.vertex_name(v) for v in sorted(link.in_flight)[:10])
        doing = f" while running {running}" if running else ""
        raise ServerUnavailableError(f"server {link.label} {why}{doing}")

    def _recover(self, link: Link, why: str) -> None:
        in_flight, link.in_flight = list(link.in_flight), {}
        for vertex in np.flatnonzero(self.holder == link.index).tolist():
            self._lost_output(vertex)
        self.allocator.forget(link.index)
        for vertex in in_flight:
            self._lost_attempt(vertex, why)

    # ---- the end ------------------------------------------------------------------------
    def _gather_sinks(self) -> dict[str, Any]:
        by_holder: dict[int, list[int]] = {}
        outputs: dict[int, Any] = {}
        for sink in sorted(self.sinks - self.blocked):
            holder = int(self.holder[sink])
            if holder >= 0:
                by_holder.setdefault(holder, []).append(sink)
            else:
                path, digest = self.stored[sink]
                outputs[sink] = self.durability.store.get(path, digest)
        fetcher = InputFetcher(self.ctx, this_host(), TransferCounts())
        try:
            wanted = {self.links[h].data: [(v, 0) for v in vs] for h, vs in by_holder.items()}
            fetched = fetcher.fetch(self.job, wanted, self.plan.vertex_name)
            outputs.update(fetched.values)
        except FetchError as error:
            raise OutputUnavailableError(f"the result of {error}") from None
        finally:
            fetcher.close()
        return {self.plan.vertex_name(v): outputs[v] for v in sorted(outputs)}

    def _end(self) -> None:
        for link in self.links:
            if link.state != LOST:
                link.send({"type": "end", "job": self.job})
            link.close()
        sweep_segments(self.job)


def rebuild_error(plan: Plan, vertex: int, message: dict) -> RemoteTaskError:
    """The remote exception as a subclass of RemoteTaskError and its original type."""
    original = exception_type(str(message["error_type"]))
    return remote_task_error(original, str(message["message"]), plan.vertex_name(vertex),
                             plan.vertex_template(vertex).get("line"),
                             str(message.get("traceback", "")),
                             str(message["error_type"]).rsplit(".", 1)[-1])


def exception_type(qualified: str) -> type[BaseException]:
    """Find an exception class by ``module.Name`` without unpickling anything."""
    module, _, name = qualified.rpartition(".")
    try:
        owner = builtins if module == "builtins" else importlib.import_module(module)
        found = getattr(owner, name)
    except (ImportError, AttributeError, ValueError):
        return Exception
    return found if isinstance(found, type) and issubclass(found, BaseException) else Exception


def run_distributed(plan: Plan, durability: Durability, overrides: Mapping[str, Any] | None,
                    keep_going: bool, workers: int | None = None,
                    servers: list[str] | None = None, progress: Any = None,
                    placement: str = "locality") -> RunResult:
    """The embedded default (local servers) or ``--servers``."""
    Allocator.check_policy(placement)
    if servers:
        return Gateway(plan, servers, durability, overrides, keep_going,
                       progress=progress, policy=placement).run()
    from .local import LocalServers

    count = workers or os.cpu_count() or 1
    with LocalServers(count) as local:
        gateway = Gateway(plan, local.addresses, durability, overrides, keep_going,
                          processes=local.servers, progress=progress, policy=placement)
        return gateway.run()
