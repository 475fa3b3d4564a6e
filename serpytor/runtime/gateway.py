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
* ``refused[v]``: links that refused v, ``last_failed[v]``: the link v's last attempt
  was lost or failed on (placement tries the others: never the same server twice in a
  row while another may take it);
* ``copies[v]``: links running a copy of v (more than one when v straggled and got a
  duplicate; the first to finish wins, the others are cancelled);
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
from typing import Any, Callable, Mapping

import numpy as np
import zmq

from .. import _core
from ..compiler.kinds import ChannelKind
from ..compiler.plan import Plan, encode_plan
from ..errors import RemoteTaskError, SerpytorError, remote_task_error
from .allocation import Allocator, resolve_policy
from .channels import sweep_segments
from .channels.descriptor import this_host
from .context import ContextTracker
from .durable import Durability, StoredPlaces
from .invoke import refresh_modules
from .links import (DOWN, HEARTBEAT_SILENT, LOST, READY, Link, Timing, await_ended, diagnose,
                    handshake, learn, open_link)
from .result import RunResult
from .queues import QueueSilo, ReadyQueue
from .schedule import build_schedule
from .security import SecurityConfig, load_security
from .stragglers import StragglerWatch
from .transfer import FetchError, InputFetcher, TransferCounts

log = logging.getLogger("serpytor.gateway")

POLL_MS = 20
WATCH_S = 0.05  # how often server liveness is looked at (it costs a few calls a link)
MAX_ATTEMPTS = 6  # Dryad: a vertex that fails this often fails the job
MAX_REVIVALS = 3  # times the embedded default restarts one dead local server
REVIVE_WAIT_S = 15.0  # how long a restarted local server has to rejoin
EXTERNAL_KILLS = (-9, -15, -2)  # SIGKILL, SIGTERM, SIGINT: not the vertex's doing
END_WAIT_S = 2.0  # how long the end waits for servers to say they dropped the job


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
                 policy: Any = "locality", timing: Timing | None = None,
                 revive: Callable[[int], Any] | None = None, queues: str = "single",
                 security: SecurityConfig | None = None) -> None:
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
        self.security = security
        self.links = [open_link(self.ctx, i, a, f"{self.job}-{i}".encode(), processes[i],
                                security) for i, a in enumerate(addresses)]
        n = plan.n_vertices
        self.schedule = build_schedule(plan)
        self.engine = _core.ReadyEngine(self.schedule.indptr, self.schedule.indices)
        self.holder = np.full(n, -1, np.int32)
        self.size = np.zeros(n, np.int64)
        self.stored = StoredPlaces()
        # per-vertex counters the hot paths touch one element at a time: plain lists
        # (a numpy scalar update costs several times a list's)
        self.attempt = [0] * n
        self.consumers_left = np.diff(plan.arrays["succ_indptr"]).tolist()
        self.released = [False] * n
        self.pred_ptr = plan.arrays["pred_indptr"].tolist()
        self.pred_idx = plan.arrays["pred_indices"].tolist()
        self.pred_hint = plan.arrays["edge_channel"][plan.arrays["pred_edges"]].tolist()
        self.template_of = plan.arrays["vertex_template"].tolist()
        self.sinks = set(plan.sinks().tolist())
        self.refused: dict[int, set[int]] = {}
        self.last_failed: dict[int, int] = {}
        # vertices in flight when a server exited by itself and the one running was not
        # known: each runs alone from then on
        self.suspects: set[int] = set()
        self.copies: dict[int, set[int]] = {}
        self.parked: dict[int, list[int]] = {}  # link -> consumers awaiting its verdict
        self.history: dict[int, list[str]] = {}  # what happened to each lost attempt
        self.stragglers = StragglerWatch([int(t["width"]) for t in plan.templates])
        self.revive = revive  # restarts a dead local server (the embedded default)
        self.revivals = [0] * len(addresses)
        self.revived_at: dict[int, float] = {}
        template_of = plan.arrays["vertex_template"]
        self.queue = QueueSilo(lambda v: int(template_of[v]), window) if queues == "stage" \
            else ReadyQueue()
        self.blocked: set[int] = set()
        self.finished = 0
        self.result = RunResult.for_plan(plan)
        self.first_error: RemoteTaskError | None = None
        self.poller: zmq.Poller | None = None  # of every link's socket
        self.last_watch = 0.0

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the job here and bring the sink outputs to this process."""
        try:
            self.execute()
            self.result.outputs = self._gather_sinks()
        finally:
            self.close()
        return self.result

    def execute(self) -> RunResult:
        """Run every vertex (the sink outputs stay where they are: see
        :meth:`sink_locations`); the result without outputs."""
        started = time.perf_counter()
        refresh_modules(self.plan)
        self._connect()
        while self.finished + len(self.blocked) < self.plan.n_vertices:
            progressed = self._dispatch()
            self._receive(0 if progressed else POLL_MS)
            self._watch_links()
        self.result.seconds = time.perf_counter() - started
        self.result.error = self.first_error
        return self.result

    def close(self) -> None:
        """End the job on every server (they drop its outputs) and close the journal."""
        try:
            self._end()
        finally:
            self.durability.close()

    def sink_locations(self) -> dict[str, dict[str, Any]]:
        """Where each sink's output is: ``{"at": data address}`` of the server holding
        it, or ``{"path", "digest", "via"}``: stored, readable through server ``via``."""
        via = next((l.data for l in self.links if l.usable), None)
        locations: dict[str, dict[str, Any]] = {}
        for sink in sorted(self.sinks - self.blocked):
            name = self.plan.vertex_name(sink)
            holder = int(self.holder[sink])
            if holder >= 0:
                locations[name] = {"v": sink, "at": self.links[holder].data}
            else:
                path, digest = self.stored[sink]
                locations[name] = {"v": sink, "path": path, "digest": digest, "via": via}
        return locations

    def _connect(self) -> None:
        silent = handshake(self.links, self.timing.handshake)
        if len(silent) == len(self.links):
            raise ServerUnavailableError("; ".join(_silence(link, self.timing.handshake)
                                                   for link in silent))
        for link in silent:  # run on the others; these join if they come up
            link.state, link.why_lost = LOST, _silence(link, self.timing.handshake)
            log.warning("server at %s did not answer; running without it", link.address)
            self.result.server_events.append({"server": link.label, "event": "lost",
                                              "why": link.why_lost})
        plan_bytes = encode_plan(self.plan)  # not kept: as large as the plan's arrays
        for link in self.links:
            if link.state != LOST:
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
        wanted = free + self.queue.wants - len(self.queue)
        if wanted > 0:
            self.queue.push(self._pop_vertices(wanted))
        # unless a lost input sent them back to the engine meanwhile, or they failed
        vertices = self.queue.take(free, lambda v: self.engine.state_of(v) == _core.RUNNING
                                   and v not in self.blocked)
        if not vertices:
            return False
        to_place, reused = [], []
        records = self.durability.lookup_many(vertices, self.tracker.facts_for,
                                              self.tracker.static_keys)
        for vertex, record in zip(vertices, records):
            if record is not None:
                self._reuse(vertex, record)
                reused.append(vertex)
            else:
                to_place.append(vertex)
        sent = self._send_batches(to_place)
        if reused:
            self._completed(reused)
        return bool(sent or reused)

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

    def _reuse(self, vertex: int, record) -> None:
        self.stored[vertex] = (record.output, record.output_digest)
        self.tracker.record_published(vertex, record.published)
        self.result.vertices.set(vertex, "reused", record.seconds)

    def _send_batches(self, vertices: list[int]) -> int:
        """Send vertices to the servers placement chooses; the number sent."""
        if self.suspects:
            vertices = self._send_suspects(vertices)
        if not vertices:
            return 0
        chosen = self.allocator.place(vertices, self.links, self.holder, self.size,
                                      self._avoid(vertices))
        batches: dict[int, list[dict]] = {}
        for vertex, index in zip(vertices, chosen):
            if index < 0:
                self._unplaceable(vertex)
                continue
            link = self.links[index]
            batches.setdefault(index, []).append(self._task(vertex, link))
        for index, tasks in batches.items():
            self.links[index].send({"type": "tasks", "job": self.job, "tasks": tasks})
        return sum(len(tasks) for tasks in batches.values())

    def _send_suspects(self, vertices: list[int]) -> list[int]:
        """Each suspect goes alone to an idle server (or waits for one); the rest is
        returned for placement."""
        rest, waiting = [], []
        for vertex in vertices:
            if vertex not in self.suspects:
                rest.append(vertex)
                continue
            avoid = self._avoid([vertex]).get(vertex, set())
            idle = [l for l in self.links if l.idle]
            idle = [l for l in idle if l.index not in avoid] or idle
            if not idle:
                waiting.append(vertex)
                continue
            link = idle[0]
            link.alone = vertex
            link.send({"type": "tasks", "job": self.job, "tasks": [self._task(vertex, link)]})
        if waiting:
            self.queue.push(waiting)
        return rest

    def _avoid(self, vertices: list[int]) -> dict[int, set[int]]:
        """Per vertex, the links placement should pass over (it falls back to them only
        when nothing else is usable: see _unplaceable)."""
        avoid: dict[int, set[int]] = {}
        for vertex in vertices:
            banned = set(self.refused.get(vertex, ()))
            if vertex in self.last_failed:
                banned.add(self.last_failed[vertex])
            if banned:
                avoid[vertex] = banned
        return avoid

    def _unplaceable(self, vertex: int) -> None:
        """No usable server may take vertex: every one refused it, none is up, or the
        only one up is the one it just failed on (then it may go there after all)."""
        refused = self.refused.get(vertex, set())
        alive = [l for l in self.links if l.state != LOST]
        if not alive:
            raise ServerUnavailableError("every server is lost: " + "; ".join(
                f"{l.label} {l.why_lost}" for l in self.links))
        if self.result.refusals.get(vertex) and all(l.index in refused for l in alive):
            raise self._refused_everywhere(vertex)
        self.last_failed.pop(vertex, None)
        self.queue.push([vertex])

    def _task(self, vertex: int, link: Link) -> dict:
        self.attempt[vertex] += 1
        inputs = []
        for i in range(self.pred_ptr[vertex], self.pred_ptr[vertex + 1]):
            parent, hint = self.pred_idx[i], self.pred_hint[i]
            source: dict[str, Any] = {"v": parent}
            holder = int(self.holder[parent])
            if holder < 0 or (hint == ChannelKind.FILE and parent in self.stored):
                source["path"], source["digest"] = self.stored[parent]
            elif holder != link.index:
                source["at"] = self.links[holder].data
            if hint:
                source["ch"] = hint
            inputs.append(source)
        task: dict[str, Any] = {"v": vertex, "attempt": self.attempt[vertex],
                                "inputs": inputs}
        if self.tracker.published_reach(vertex):
            task["context"] = [[f.key, f.value, f.origin, f.nearest]
                               for f in self.tracker.facts_for(vertex)]
        if self.durability.enabled:
            task["key"] = self.durability.keys[vertex]
        link.in_flight[vertex] = self.attempt[vertex]
        self.copies.setdefault(vertex, set()).add(link.index)
        return task

    # ---- messages -----------------------------------------------------------------------
    def _receive(self, timeout_ms: int) -> None:
        if self.poller is None:
            self.poller = zmq.Poller()
            for link in self.links:
                self.poller.register(link.sock, zmq.POLLIN)
        events = dict(self.poller.poll(timeout_ms))
        for link in self.links:
            if link.sock not in events:
                continue
            for _ in range(1000):
                if not link.sock.poll(0):
                    break
                message = link.read()
                if message is not None and (link.state != LOST or message["type"] == "pong"):
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
        """Is this the answer to an attempt still in flight on link? (Then it is no
        longer in flight.)"""
        if link.in_flight.get(vertex) != attempt:
            return False
        del link.in_flight[vertex]
        self._drop_copy(vertex, link.index)
        return True

    def _drop_copy(self, vertex: int, index: int) -> None:
        copies = self.copies.get(vertex)
        if copies is not None:
            copies.discard(index)
            if not copies:
                del self.copies[vertex]

    def _cancel_copies(self, vertex: int) -> None:
        """vertex finished: the duplicates still running elsewhere are not needed."""
        for index in list(self.copies.pop(vertex, ())):
            self._withdraw(self.links[index], [vertex])

    def _withdraw(self, link: Link, vertices: list[int]) -> None:
        """Take these attempts back from link (it skips them if not yet started; a
        result that comes anyway is for an attempt no longer in flight)."""
        pairs = [(v, link.in_flight.pop(v)) for v in vertices if v in link.in_flight]
        for vertex, _ in pairs:
            self._drop_copy(vertex, link.index)
        if pairs:
            link.send({"type": "cancel", "job": self.job, "vertices": [v for v, _ in pairs],
                       "attempts": [a for _, a in pairs]})

    def _on_done(self, link: Link, message: dict) -> None:
        done: list[int] = []
        journaled: list[tuple[int, str, str, dict, float]] = []
        try:
            for r in message["results"]:
                self._on_result(link, r, done, journaled)
        finally:  # the results before a malformed one are stored: journal them
            self.durability.record_stored_many(journaled)
        self.result.add_channels(message.get("channels") or {})
        if done:
            self._completed(done)

    def _on_result(self, link: Link, r: dict, done: list[int],
                   journaled: list[tuple[int, str, str, dict, float]]) -> None:
        """One vertex's result of a done message: into ``done`` when it counts, and
        into ``journaled`` when its output was stored for the journal."""
        vertex = int(r["v"])
        if not self._current(link, vertex, int(r["attempt"])):
            return
        self.holder[vertex] = link.index
        self.size[vertex] = nbytes = int(r.get("size", 0))
        self.allocator.output_size(nbytes)
        published = r.get("published") or {}
        seconds = float(r["seconds"])
        if "path" in r:
            path, output_digest = str(r["path"]), str(r["digest"])
            journaled.append((vertex, path, output_digest, published, seconds))
            self.stored[vertex] = (path, output_digest)
        elif "file" in r:
            self.stored[vertex] = (str(r["file"]), str(r["digest"]))
        self.tracker.record_published(vertex, published)
        self.result.vertices.set(vertex, "executed", seconds, self.attempt[vertex], link.name)
        self.stragglers.finished(self.template_of[vertex], seconds)
        if vertex in self.copies:
            self.result.duplicates_won += 1
            self._cancel_copies(vertex)
        done.append(vertex)

    def _completed(self, vertices: list[int]) -> None:
        self.engine.complete_many(np.asarray(vertices, np.int32))
        self.finished += len(vertices)
        if self.progress is not None:
            self.progress.update(self.finished)
        releases: dict[int, list[int]] = {}
        left, ptr, idx = self.consumers_left, self.pred_ptr, self.pred_idx
        for vertex in vertices:
            for i in range(ptr[vertex], ptr[vertex + 1]):
                parent = idx[i]
                left[parent] -= 1
                if left[parent] == 0 and parent not in self.sinks:
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
            self._inputs_lost(vertex, lost, link, str(message["message"]))
            return
        self._vertex_failed(vertex, rebuild_error(self.plan, vertex, message), link)

    def _inputs_lost(self, vertex: int, lost: list[int], link: Link, why: str) -> None:
        """A consumer could not fetch some inputs. If their server's connection is down,
        its fate is not known yet: the consumer waits (parked) for the verdict, which
        handles what was on that server in order -- the vertex it was running first.
        Otherwise the outputs are gone from a live server: their producers run again."""
        holders = {int(self.holder[p]) for p in lost if 0 <= self.holder[p] < len(self.links)}
        down = [h for h in holders if self.links[h].state == DOWN]
        self._drop_copy(vertex, link.index)
        if down:
            self.parked.setdefault(down[0], []).append(vertex)
            return
        for parent in lost:
            self._lost_output(parent)
        self._lost_attempt(vertex, f"inputs lost ({why})", link)

    def _unpark(self, link: Link) -> None:
        """link's verdict is in: the consumers that waited for it go back to the queue
        (unless a lost input sent them back to the engine meanwhile)."""
        for vertex in self.parked.pop(link.index, []):
            if self.engine.state_of(vertex) == _core.RUNNING and vertex not in self.blocked:
                self.queue.push([vertex])

    def _vertex_failed(self, vertex: int, error: RemoteTaskError, link: Link | None) -> None:
        self.result.failed_attempts += 1
        self.result.vertices.set(vertex, "failed", 0.0, self.attempt[vertex],
                                 link.name if link else None, str(error))
        if not self.keep_going:
            raise error
        self.first_error = self.first_error or error
        if self.engine.state_of(vertex) == _core.RUNNING:
            self.engine.fail(vertex, retry=False)
        # everything downstream will never run (the dispatcher skips blocked vertices)
        self.blocked |= {v for v in {vertex} | self.schedule.descendants(vertex)
                         if self.engine.state_of(v) != _core.DONE}

    def _on_refused(self, link: Link, message: dict) -> None:
        vertex, attempt = int(message["v"]), int(message["attempt"])
        if not self._current(link, vertex, attempt):
            return
        self.refused.setdefault(vertex, set()).add(link.index)
        self.result.refusals.setdefault(vertex, {})[link.label] = str(message["reason"])
        self.queue.push([vertex])

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

    def _lost_attempt(self, vertex: int, why: str, link: Link | None = None) -> None:
        """The attempt's result will never come: run the vertex again (after any of its
        inputs that are gone), elsewhere if possible, unless a copy still runs or it
        has lost too many attempts (then it fails, with its history)."""
        self.result.lost_attempts += 1
        where = f" on {link.label}" if link else ""
        self.history.setdefault(vertex, []).append(f"attempt {self.attempt[vertex]}{where}: {why}")
        if link is not None:
            self.last_failed[vertex] = link.index
            self._drop_copy(vertex, link.index)
        if self.copies.get(vertex):
            return  # a duplicate is still running; it may yet finish
        if self.attempt[vertex] >= MAX_ATTEMPTS:
            history = "; ".join(self.history[vertex])
            error = remote_task_error(ServerUnavailableError,
                                      f"lost {MAX_ATTEMPTS} attempts ({history})",
                                      self.plan.vertex_name(vertex),
                                      self.plan.vertex_template(vertex).get("line"), "")
            self._vertex_failed(vertex, error, link)
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
        if now - self.last_watch < WATCH_S:
            return
        self.last_watch = now
        for link in self.links:
            if link.state == LOST:
                self._try_rejoin(link, now)
                continue
            process = link.process
            if process is not None and not process.alive():
                status = process.process.returncode
                self._server_lost(link, f"exited with status {status}", "application", status)
                continue
            self._connection_changes(link, now)
            link.poll_heartbeat(self.ctx, now, self.timing.ping_interval)
            verdict = diagnose(link, now, self.timing)
            if verdict == HEARTBEAT_SILENT:
                self._note(link, "heartbeat", "heartbeat silent; the server still answers")
            elif verdict is not None:
                self._server_lost(link, *verdict)
            elif now - link.last_ping > self.timing.ping_interval:
                link.ping(now)  # liveness, and which vertex it is running (stragglers)
        self._check_servers_left()

    def _note(self, link: Link, key: str, what: str) -> None:
        """Report a condition of a server once (in the run's server events)."""
        if key not in link.notes:
            link.notes.add(key)
            self.result.server_events.append({"server": link.label, "event": "warning",
                                              "why": what})

    def _connection_changes(self, link: Link, now: float) -> None:
        for event in link.connection_events():
            if event == zmq.EVENT_DISCONNECTED and link.state == READY:
                link.state, link.down_since = DOWN, now
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and link.state == DOWN:
                link.ping(now)  # which incarnation came back? the pong says

    def _on_pong(self, link: Link, message: dict) -> None:
        restarted = learn(link, message)
        if link.state == LOST:
            self._rejoin(link)
        elif restarted:
            self._server_restarted(link)
        elif link.state == DOWN:
            # the same process after a dropped connection: what was in flight may be
            # lost in either direction, so it runs again; held outputs are still there
            link.state, link.down_since = READY, None
            for vertex in list(link.in_flight):
                del link.in_flight[vertex]
                self._lost_attempt(vertex, "the connection dropped", link)
            self._unpark(link)
        self._check_straggler(link, message.get("running"))

    def _check_straggler(self, link: Link, running: Any) -> None:
        """Duplicate the vertex link runs if it straggles (once, on another server)."""
        if not isinstance(running, dict) or running.get("job") != self.job:
            return
        vertex, seconds = int(running["v"]), float(running["seconds"])
        if link.in_flight.get(vertex) != running.get("attempt") or \
                len(self.copies.get(vertex, ())) > 1 or vertex in self.suspects:
            return
        stage = int(self.plan.arrays["vertex_template"][vertex])
        if not self.stragglers.is_straggler(stage, seconds):
            return
        others = [l for l in self.links if l.usable and l.index != link.index]
        if others:
            target = min(others, key=lambda l: len(l.in_flight))
            self.result.duplicates += 1
            target.send({"type": "tasks", "job": self.job, "tasks": [self._task(vertex, target)]})
            self._move_queued(link, vertex)

    def _move_queued(self, link: Link, running: int) -> None:
        """The tasks queued on a straggler's server behind it go elsewhere: they would
        wait for the slow vertex however fast its copy is."""
        queued = [v for v in link.in_flight
                  if v != running and len(self.copies.get(v, ())) == 1]  # no duplicate
        if not queued:
            return
        self._withdraw(link, queued)
        for vertex in queued:
            self.last_failed[vertex] = link.index  # placed elsewhere, if anywhere else
        self.queue.push(queued)

    def _server_restarted(self, link: Link) -> None:
        """The server restarted itself (a vertex wedged it): it lost its jobs and its
        outputs; give it the job again and redo what was lost with it."""
        link.state, link.down_since = READY, None
        self._send_job(link)
        self._recover(link, f"server {link.label} restarted")

    def _server_lost(self, link: Link, why: str, kind: str = "system",
                     exit_status: int | None = None) -> None:
        """A server died or stopped answering: its work runs elsewhere (and its outputs
        are recomputed where still needed). A vertex that was running when its server
        exited on its own (not killed by a signal from outside) killed it: it fails,
        rather than killing the next server too."""
        link.state, link.why_lost, link.down_since = LOST, why, None
        self.result.server_events.append({"server": link.label, "event": "lost",
                                          "kind": kind, "why": why})
        culprit = self._culprit(link, exit_status)
        if culprit is None and exit_status is not None and exit_status not in EXTERNAL_KILLS:
            self.suspects.update(link.in_flight)
        if culprit is not None:
            link.in_flight.pop(culprit, None)
            self._cancel_copies(culprit)  # a copy elsewhere would kill that server too
            error = remote_task_error(ServerUnavailableError,
                                      f"server {link.label} {why} while running it",
                                      self.plan.vertex_name(culprit),
                                      self.plan.vertex_template(culprit).get("line"), "")
            self._vertex_failed(culprit, error, link)
        running = sorted(link.in_flight)[:10]
        self._recover(link, f"server {link.label} {why}")
        self._revive(link)
        self._check_servers_left(running)

    def _check_servers_left(self, running: list[int] = ()) -> None:
        """Fail the run when every server is lost and none is being restarted."""
        if any(l.state != LOST for l in self.links) or any(map(self._reviving, self.links)):
            return
        names = ", ".join(self.plan.vertex_name(v) for v in running)
        raise ServerUnavailableError(
            "every server is lost: " + "; ".join(f"{l.label} {l.why_lost}" for l in self.links)
            + (f" (last running {names})" if names else ""))

    def _reviving(self, link: Link) -> bool:
        """Was link's local server restarted moments ago, and may it still rejoin?"""
        since = self.revived_at.get(link.index)
        return since is not None and time.monotonic() - since < REVIVE_WAIT_S and \
            link.process is not None and link.process.alive()

    def _culprit(self, link: Link, exit_status: int | None) -> int | None:
        """The vertex link's server was running when it exited by itself, if known."""
        if exit_status is None or exit_status in EXTERNAL_KILLS:
            return None
        beat_running = link.beat_server().get("running")
        running = {"job": beat_running.get("job"), "v": beat_running.get("vertex"),
                   "attempt": beat_running.get("attempt")} \
            if isinstance(beat_running, dict) else link.running
        # the vertex it said it ran, even if its attempt was sent back meanwhile (an
        # input lost with this server can cancel it before the death is diagnosed)
        if running and running.get("job") == self.job and \
                isinstance(running.get("v"), int) and 0 <= running["v"] < self.plan.n_vertices \
                and self.engine.state_of(running["v"]) != _core.DONE:  # else: said before
            return int(running["v"])                                 # it finished
        if len(link.in_flight) == 1:  # a server runs one vertex at a time
            return next(iter(link.in_flight))
        return None

    def _recover(self, link: Link, why: str) -> None:
        in_flight, link.in_flight = list(link.in_flight), {}
        for vertex in np.flatnonzero(self.holder == link.index).tolist():
            self._lost_output(vertex)
        self.allocator.forget(link.index)
        for vertex in in_flight:
            self._lost_attempt(vertex, why, link)
        for vertex in self.parked.get(link.index, []):  # their inputs run again, or are
            self._ensure_inputs(vertex, rerun_of_done=False)  # in the store
        self._unpark(link)

    def _revive(self, link: Link) -> None:
        """Restart a dead local server (the embedded default) at its address."""
        if self.revive is None or link.process is None or \
                self.revivals[link.index] >= MAX_REVIVALS:
            return
        self.revivals[link.index] += 1
        self.revived_at[link.index] = time.monotonic()
        link.process = self.revive(link.index)

    def _try_rejoin(self, link: Link, now: float) -> None:
        if link.process is not None and not link.process.alive():
            return
        if now - link.last_ping > self.timing.ping_interval:
            link.ping(now)  # a server that comes back at its address rejoins

    def _rejoin(self, link: Link) -> None:
        link.state, link.why_lost = READY, ""
        link.in_flight = {}
        link.connection_events()  # what the monitor saw while it was lost is over
        self.result.server_events.append({"server": link.label, "event": "rejoined"})
        self._send_job(link)

    # ---- the end ------------------------------------------------------------------------
    def _gather_sinks(self) -> dict[str, Any]:
        return collect_outputs(self.ctx, self.job, self.sink_locations(), self.security,
                               self.durability.store)

    def _end(self) -> None:
        """Tell the servers the job is over and wait (briefly) until each said it dropped
        the job's outputs: a socket closed at once discards what it has not sent yet,
        and a server that missed the end would hold them for JOB_IDLE_S."""
        ending = [link for link in self.links if link.state != LOST]
        for link in ending:
            link.send({"type": "end", "job": self.job})
        unanswered = await_ended(ending, self.job, END_WAIT_S)
        if unanswered:
            log.warning("gateway: no end of job %s confirmed by %s", self.job,
                        ", ".join(link.label for link in unanswered))
        for link in self.links:
            link.close()
        sweep_segments(self.job)


def collect_outputs(ctx: zmq.Context, job: str, locations: dict[str, dict[str, Any]],
                    security: SecurityConfig | None = None,
                    store: Any = None) -> dict[str, Any]:
    """The sink outputs ``locations`` names (see :meth:`Gateway.sink_locations`):
    fetched from the servers holding them, and stored ones read from ``store`` when
    this process has it, else through the server the location names."""
    names = {int(where["v"]): name for name, where in locations.items()}
    outputs: dict[int, Any] = {}
    held: dict[str, list[tuple[int, int]]] = {}
    stored: dict[str, list[tuple[int, str, str]]] = {}
    for name, where in locations.items():
        vertex = int(where["v"])
        if "at" in where:
            held.setdefault(where["at"], []).append((vertex, 0))
        elif store is not None:
            outputs[vertex] = store.get(where["path"], where["digest"])
        else:
            stored.setdefault(where["via"], []).append((vertex, where["path"], where["digest"]))
    fetcher = InputFetcher(ctx, this_host(), TransferCounts(), security=security)
    try:
        fetched = fetcher.fetch(job, held, lambda v: names.get(v, str(v)), stored)
        fetched.check()
        outputs.update(fetched.values)
    except FetchError as error:
        raise OutputUnavailableError(f"the result of {error}") from None
    finally:
        fetcher.close()
    return {names[v]: outputs[v] for v in sorted(outputs)}


def _silence(link: Link, timeout: float) -> str:
    if link.refused_key:
        return (f"the server at {link.address} refused the connection: the CURVE handshake "
                f"failed (wrong server key, or this client's key is not authorized there)")
    return f"no server answered at {link.address} within {timeout:g} s"


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
                    placement: str | None = None, queues: str = "single",
                    keys: str | None = None) -> RunResult:
    """The embedded default (local servers) or ``--servers``. ``placement``: a policy
    name or MODULE:FUNCTION; None: the plan's, else locality. ``keys``: a directory of
    CURVE keys (``serpytor keygen``) for every connection."""
    placement = resolve_policy(placement, plan)
    security = load_security(keys)
    if servers:
        return Gateway(plan, servers, durability, overrides, keep_going,
                       progress=progress, policy=placement, queues=queues,
                       security=security).run()
    from .local import LocalServers

    count = workers or os.cpu_count() or 1
    with LocalServers(count, ["--keys", str(keys)] if keys else None) as local:
        gateway = Gateway(plan, local.addresses, durability, overrides, keep_going,
                          processes=local.servers, progress=progress, policy=placement,
                          revive=local.revive, queues=queues, security=security)
        return gateway.run()
