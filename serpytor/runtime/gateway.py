"""The gateway (Dryad's job manager): places ready vertices on servers, in batches.

It carries metadata only: task descriptions, context facts, where each output lives;
vertex payloads move server to server over the servers' data ports.

State (n vertices):

* ``engine``: the ``_core`` ready-set engine (which vertices may run, in which order);
* ``holder[v]``: index of the link whose server holds v's output, -1 when none
  (``stored[v]`` then says where the journal keeps it);
* ``size[v]``: bytes of v's output, for locality; ``consumers_left[v]``: consumers of v
  that have not finished (0: the holder may drop it);
* ``attempt[v]``: attempt number, so a late result of a superseded attempt is ignored;
* ``refused[v]``: links that refused v;
* per link, ``in_flight``: ``{vertex: attempt}`` sent and not yet answered.

Placement: locality first (the server already holding most of the vertex's input
bytes), then the fewest tasks in flight; at most ``window`` tasks in flight per server.
"""

from __future__ import annotations

import builtins
import importlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import zmq

from .. import _core
from ..compiler.plan import Plan, encode_plan
from ..errors import RemoteTaskError, SerpytorError, remote_task_error
from .context import ContextTracker
from .durable import Durability
from .inline import descendants
from .objects import unpack
from .protocol import ProtocolError, decode, encode
from .result import RunResult, VertexRecord

HANDSHAKE_TIMEOUT_S = 10.0
SILENCE_TIMEOUT_S = 30.0
POLL_MS = 20


class ServerUnavailableError(SerpytorError):
    """A server could not be reached, stopped answering, or died during the run."""


class AllServersRefusedError(SerpytorError):
    """Every server refused a vertex (their admission hooks said no)."""


@dataclass
class Link:
    """The gateway's connection to one server."""

    index: int
    address: str
    sock: zmq.Socket
    name: str = ""
    data: str = ""
    in_flight: dict[int, int] = field(default_factory=dict)
    last_heard: float = field(default_factory=time.monotonic)
    process: Any = None  # a LocalServer in the embedded default


class Gateway:
    def __init__(self, plan: Plan, addresses: list[str], durability: Durability,
                 overrides: Mapping[str, Any] | None = None, keep_going: bool = False,
                 window: int = 256, processes: list[Any] | None = None,
                 context: zmq.Context | None = None, progress: Any = None) -> None:
        self.progress = progress
        self.plan = plan
        self.ctx = context or zmq.Context.instance()
        self.job = uuid.uuid4().hex[:16]
        self.durability = durability
        self.keep_going = keep_going
        self.window = window
        self.tracker = ContextTracker(plan, overrides)
        self.links = [self._link(i, a, (processes or [None] * len(addresses))[i])
                      for i, a in enumerate(addresses)]
        n = plan.n_vertices
        self.engine = _core.ReadyEngine(plan.arrays["succ_indptr"], plan.arrays["succ_indices"])
        self.holder = np.full(n, -1, np.int32)
        self.size = np.zeros(n, np.int64)
        self.stored: dict[int, tuple[str, str]] = {}
        self.attempt = np.zeros(n, np.int32)
        self.consumers_left = np.diff(plan.arrays["succ_indptr"]).astype(np.int64)
        self.sinks = set(plan.sinks().tolist())
        self.refused: dict[int, dict[int, str]] = {}
        self.blocked: set[int] = set()
        self.finished = 0
        self.result = RunResult(plan.pipeline, {})
        self.first_error: RemoteTaskError | None = None

    def _link(self, index: int, address: str, process: Any) -> Link:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        return Link(index, address, sock, process=process)

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            self._handshake()
            self._send_job()
            while self.finished + len(self.blocked) < self.plan.n_vertices:
                progressed = self._dispatch()
                self._receive(0 if progressed else POLL_MS)
                self._check_servers()
            self.result.outputs = self._gather_sinks()
        finally:
            self._end()
            self.durability.close()
        self.result.seconds = time.perf_counter() - started
        self.result.error = self.first_error
        return self.result

    def _handshake(self) -> None:
        for link in self.links:
            link.sock.send_multipart(encode({"type": "ping"}))
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        waiting = {link.index for link in self.links}
        while waiting and time.monotonic() < deadline:
            for link in [self.links[i] for i in waiting]:
                if link.sock.poll(10):
                    message, _ = self._read(link)
                    if message and message["type"] == "pong":
                        link.name, link.data = str(message["name"]), str(message["data"])
                        waiting.discard(link.index)
        if waiting:
            addresses = ", ".join(self.links[i].address for i in sorted(waiting))
            raise ServerUnavailableError(f"no server answered at {addresses} within "
                                         f"{HANDSHAKE_TIMEOUT_S:g} s")

    def _send_job(self) -> None:
        plan_bytes = encode_plan(self.plan)
        store = self.durability.store
        message = {"type": "job", "job": self.job,
                   "store": str(store.root.parent) if store else None,
                   "durable": bool(store and store.durable)}
        for link in self.links:
            link.sock.send_multipart(encode(message, plan_bytes))

    # ---- dispatch -----------------------------------------------------------------------
    def _dispatch(self) -> bool:
        free = sum(max(0, self.window - len(link.in_flight)) for link in self.links)
        if free == 0:
            return False
        ready = self.engine.pop_ready(free)
        if len(ready) == 0:
            return False
        batches: dict[int, list[dict]] = {}
        reused = []
        for vertex in ready.tolist():
            facts = self.tracker.facts_for(vertex)
            record = self.durability.lookup(vertex, facts)
            if record is not None:
                self._reuse(vertex, record)
                reused.append(vertex)
                continue
            link = self._place(vertex)
            batches.setdefault(link.index, []).append(self._task(vertex, facts, link))
        for index, tasks in batches.items():
            self._send_tasks(self.links[index], tasks)
        if reused:
            self._completed(reused)
        return True

    def _reuse(self, vertex: int, record) -> None:
        self.stored[vertex] = (record.output, record.output_digest)
        self.tracker.record_published(vertex, record.published)
        name = self.plan.vertex_name(vertex)
        self.result.vertices[name] = VertexRecord(name, "reused", record.seconds)

    def _place(self, vertex: int, exclude: set[int] = frozenset()) -> Link:
        candidates = [l for l in self.links if l.index not in exclude
                      and l.index not in self.refused.get(vertex, {})]
        if not candidates:
            raise self._refused_everywhere(vertex)
        local_bytes = np.zeros(len(self.links), np.int64)
        parents = self.plan.predecessors(vertex)
        holders = self.holder[parents]
        held = holders >= 0
        np.add.at(local_bytes, holders[held], self.size[parents][held] + 1)
        return max(candidates, key=lambda l: (len(l.in_flight) < self.window,
                                              local_bytes[l.index], -len(l.in_flight)))

    def _task(self, vertex: int, facts, link: Link) -> dict:
        self.attempt[vertex] += 1
        inputs = []
        for parent in self.plan.predecessors(vertex).tolist():
            source: dict[str, Any] = {"v": parent}
            holder = int(self.holder[parent])
            if holder >= 0 and holder != link.index:
                source["at"] = self.links[holder].data
            elif holder < 0:
                source["path"], source["digest"] = self.stored[parent]
            inputs.append(source)
        task = {"v": vertex, "attempt": int(self.attempt[vertex]), "inputs": inputs,
                "context": [[f.key, f.value, f.origin, f.nearest] for f in facts]}
        if self.durability.enabled:
            task["key"] = self.durability.keys[vertex][0]
        link.in_flight[vertex] = int(self.attempt[vertex])
        return task

    def _send_tasks(self, link: Link, tasks: list[dict]) -> None:
        link.sock.send_multipart(encode({"type": "tasks", "job": self.job, "tasks": tasks}))

    # ---- results ------------------------------------------------------------------------
    def _receive(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        for link in self.links:
            poller.register(link.sock, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        for link in self.links:
            if link.sock not in events:
                continue
            for _ in range(1000):
                if not link.sock.poll(0):
                    break
                message, frames = self._read(link)
                if message is not None:
                    self._on_message(link, message)

    def _read(self, link: Link) -> tuple[dict | None, list]:
        frames = link.sock.recv_multipart(copy=False)
        link.last_heard = time.monotonic()
        try:
            return decode(frames)
        except ProtocolError:
            return None, []  # a garbled reply is dropped; silence handling covers the rest

    def _on_message(self, link: Link, message: dict) -> None:
        kind = message["type"]
        if message.get("job") not in (None, self.job):
            return
        if kind == "done":
            self._on_done(link, message["results"])
        elif kind == "failed":
            self._on_failed(link, message)
        elif kind == "refused":
            self._on_refused(link, message)
        elif kind == "error":
            raise ServerUnavailableError(f"server {link.name or link.address} reported: "
                                         f"{message['message']}")

    def _current(self, link: Link, vertex: int, attempt: int) -> bool:
        if link.in_flight.get(vertex) != attempt:
            return False
        del link.in_flight[vertex]
        return True

    def _on_done(self, link: Link, results: list[dict]) -> None:
        done = []
        for r in results:
            vertex = int(r["v"])
            if not self._current(link, vertex, int(r["attempt"])):
                continue
            self.holder[vertex] = link.index
            self.size[vertex] = int(r.get("size", 0))
            published = r.get("published") or {}
            if "path" in r:
                self.durability.record_stored(vertex, r["path"], r["digest"], published,
                                              float(r["seconds"]))
            self.tracker.record_published(vertex, published)
            name = self.plan.vertex_name(vertex)
            self.result.vertices[name] = VertexRecord(name, "executed", float(r["seconds"]),
                                                      int(self.attempt[vertex]), link.name)
            done.append(vertex)
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
                holder = int(self.holder[parent])
                if self.consumers_left[parent] == 0 and parent not in self.sinks and holder >= 0:
                    releases.setdefault(holder, []).append(parent)
        for holder, parents in releases.items():
            self.links[holder].sock.send_multipart(encode(
                {"type": "release", "job": self.job, "vertices": parents}))

    def _on_failed(self, link: Link, message: dict) -> None:
        vertex, attempt = int(message["v"]), int(message["attempt"])
        if not self._current(link, vertex, attempt):
            return
        error = rebuild_error(self.plan, vertex, message)
        self._vertex_failed(vertex, error, link)

    def _vertex_failed(self, vertex: int, error: RemoteTaskError, link: Link | None) -> None:
        name = self.plan.vertex_name(vertex)
        self.result.failed_attempts += 1
        self.result.vertices[name] = VertexRecord(name, "failed", attempts=int(self.attempt[vertex]),
                                                  server=link.name if link else None,
                                                  error=str(error))
        if not self.keep_going:
            raise error
        self.first_error = self.first_error or error
        self.engine.fail(vertex, retry=False)
        self.blocked |= {vertex} | descendants(self.plan, vertex)

    def _on_refused(self, link: Link, message: dict) -> None:
        vertex, attempt = int(message["v"]), int(message["attempt"])
        if not self._current(link, vertex, attempt):
            return
        self.refused.setdefault(vertex, {})[link.index] = str(message["reason"])
        other = self._place(vertex)
        self._send_tasks(other, [self._task(vertex, self.tracker.facts_for(vertex), other)])

    def _refused_everywhere(self, vertex: int) -> AllServersRefusedError:
        reasons = "; ".join(f"{self.links[i].name or self.links[i].address}: {r}"
                            for i, r in self.refused.get(vertex, {}).items())
        return AllServersRefusedError(f"every server refused vertex "
                                      f"{self.plan.vertex_name(vertex)} ({reasons})")

    # ---- liveness -----------------------------------------------------------------------
    def _check_servers(self) -> None:
        now = time.monotonic()
        for link in self.links:
            process = link.process
            if process is not None and not process.alive():
                raise self._lost(link, f"exited with status {process.process.returncode}")
            if link.in_flight and now - link.last_heard > SILENCE_TIMEOUT_S:
                link.sock.send_multipart(encode({"type": "ping"}))
                if now - link.last_heard > 2 * SILENCE_TIMEOUT_S:
                    raise self._lost(link, f"has not answered for {now - link.last_heard:.0f} s")

    def _lost(self, link: Link, what: str) -> ServerUnavailableError:
        running = ", ".join(self.plan.vertex_name(v) for v in sorted(link.in_flight)[:10])
        doing = f" while running {running}" if running else ""
        return ServerUnavailableError(f"server {link.name or link.address} {what}{doing}")

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
        for holder, sinks in by_holder.items():
            outputs.update(fetch_outputs(self.ctx, self.links[holder], self.job, sinks))
        return {self.plan.vertex_name(v): outputs[v] for v in sorted(outputs)}

    def _end(self) -> None:
        for link in self.links:
            try:
                link.sock.send_multipart(encode({"type": "end", "job": self.job}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            link.sock.close(0)


def fetch_outputs(ctx: zmq.Context, link: Link, job: str, vertices: list[int],
                  timeout_s: float = 120.0) -> dict[int, Any]:
    """Read outputs from a server's data port (the gateway as a client, for results)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(link.data)
    try:
        sock.send_multipart(encode({"type": "get", "job": job, "vertices": vertices}))
        if not sock.poll(timeout_s * 1000):
            raise ServerUnavailableError(f"server {link.name} did not send the results "
                                         f"within {timeout_s:g} s")
        message, frames = decode(sock.recv_multipart(copy=False))
        if message["type"] != "data":
            raise ServerUnavailableError(f"server {link.name}: {message.get('message')}")
        return unpack(message["items"], [f.buffer for f in frames])
    finally:
        sock.close(0)


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
                    servers: list[str] | None = None, progress: Any = None) -> RunResult:
    """The embedded default (local servers) or ``--servers``."""
    if servers:
        return Gateway(plan, servers, durability, overrides, keep_going,
                       progress=progress).run()
    from .local import LocalServers
    import os

    count = workers or os.cpu_count() or 1
    with LocalServers(count) as local:
        gateway = Gateway(plan, local.addresses, durability, overrides, keep_going,
                          processes=local.servers, progress=progress)
        return gateway.run()
