"""The server (Dryad's daemon): runs the vertices the gateway assigns; never schedules.

Sockets, all owned by the I/O thread:

* ``control`` (ROUTER, bound at the server's address): jobs, task batches, releases and
  pings from gateways; results go back on it.
* ``data`` (ROUTER, bound on the same host, random port): peers fetch outputs this
  server holds (``get`` -> ``data``). Payloads never pass through the gateway.
* an inproc PAIR to the executor thread, which runs vertices one at a time and hands
  its outgoing messages to the I/O thread (ZeroMQ sockets are not thread-safe).

State: ``jobs[job]`` the job's Plan and settings; ``objects`` the outputs held, until
released; ``stats`` counters (tasks run, refused, rejected messages per peer).

An admission hook ``admit(plan, vertex) -> bool | str`` may refuse a task (a string is
the reason); the gateway then places it elsewhere. A vertex past its ``timeout`` is
interrupted; if it cannot be (it is blocked in C code), the server reports the failure
and exits with status 75 so that its supervisor starts a fresh one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from ..compiler.plan import Plan, decode_plan
from ..errors import PlanFormatError, VertexTimeoutError
from .context import Context, ContextFact
from .invoke import run_vertex
from .objects import ObjectStore, pack, unpack
from .protocol import ProtocolError, decode, encode
from .store import OutputStore

log = logging.getLogger("serpytor.server")

EXIT_RESTART = 75  # "temporary failure": a supervisor restarts the server
POLL_MS = 50
FETCH_TIMEOUT_S = 120.0
RESULT_FLUSH_S = 0.002

Admission = Callable[[Plan, int], "bool | str"]


@dataclass
class Job:
    plan: Plan
    store: OutputStore | None


@dataclass
class Running:
    """The vertex the executor is running, for the timeout watchdog."""

    job: str
    vertex: int
    attempt: int
    deadline: float | None
    interrupted_at: float | None = None


@dataclass
class ServerStats:
    tasks: int = 0
    refused: int = 0
    failed: int = 0
    rejected: Counter = field(default_factory=Counter)


class Server:
    def __init__(self, bind: str, *, name: str | None = None,
                 admission: Admission | None = None,
                 allowed_modules: tuple[str, ...] | None = None,
                 store_dir: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.ctx = context or zmq.Context.instance()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.admission = admission
        self.allowed_modules = allowed_modules
        self.store_dir = store_dir
        self.control = self._socket(zmq.ROUTER)
        self.address = bind_socket(self.control, bind)
        host = self.address.split("://", 1)[1].rsplit(":", 1)[0]
        self.data = self._socket(zmq.ROUTER)
        self.data_address = bind_socket(self.data, f"tcp://{host}:*")
        self.jobs: dict[str, Job] = {}
        self.objects = ObjectStore()
        self.stats = ServerStats()
        self.tasks: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.running: Running | None = None
        self.warned_peers: set[bytes] = set()
        self._gateway_of: dict[str, bytes] = {}  # job -> identity of its gateway
        self.executor = threading.Thread(target=self._execute_loop, name="serpytor-executor",
                                         daemon=True)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1) if kind == zmq.ROUTER else None
        return sock

    # ---- I/O thread ---------------------------------------------------------------
    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever)."""
        self.executor.start()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
        try:
            while stop is None or not stop.is_set():
                events = dict(poller.poll(POLL_MS))
                if self.control in events:
                    self._drain(self.control, self._on_control)
                if self.data in events:
                    self._drain(self.data, self._on_data)
                self._send_outbox()
                self._watch_timeout()
        finally:
            self.close()

    def _drain(self, sock: zmq.Socket, handler: Callable) -> None:
        for _ in range(1000):  # bounded, so neither socket starves the other
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, payload = frames[0].bytes, frames[1:]
            try:
                handler(identity, *decode(payload))
            except ProtocolError as error:
                self._reject(sock, identity, str(error))

    def _reject(self, sock: zmq.Socket, identity: bytes, reason: str) -> None:
        self.stats.rejected[identity] += 1
        if identity not in self.warned_peers:
            self.warned_peers.add(identity)
            log.warning("server %s rejected a message from peer %r: %s", self.name,
                        identity, reason)
        self._send(sock, identity, encode({"type": "error", "message": reason}))

    def _send(self, sock: zmq.Socket, identity: bytes, frames: list) -> None:
        try:
            sock.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError:
            pass  # the peer is gone; ROUTER_MANDATORY tells us, and there is no one to tell

    def _send_outbox(self) -> None:
        while True:
            try:
                identity, frames = self.outbox.get_nowait()
            except queue.Empty:
                return
            self._send(self.control, identity, frames)

    def _on_control(self, identity: bytes, message: dict, frames: list) -> None:
        kind = message["type"]
        if kind == "ping":
            self._send(self.control, identity, encode(self._pong()))
        elif kind == "job":
            self._on_job(identity, message, frames)
        elif kind == "tasks":
            self._on_tasks(identity, message)
        elif kind == "release":
            self.objects.release(str(message["job"]), _vertex_list(message["vertices"]))
        elif kind == "end":
            self.jobs.pop(str(message["job"]), None)
            self.objects.drop_job(str(message["job"]))
        else:
            raise ProtocolError(f"a server does not take {kind!r} messages on its control port")

    def _pong(self) -> dict:
        return {"type": "pong", "name": self.name, "data": self.data_address,
                "host": socket.gethostname(), "pid": os.getpid(), "tasks": self.stats.tasks,
                "queued": self.tasks.qsize(), "held": len(self.objects),
                "rejected": sum(self.stats.rejected.values())}

    def _on_job(self, identity: bytes, message: dict, frames: list) -> None:
        job = str(message["job"])
        if not frames:
            raise ProtocolError("job message carries no plan")
        try:
            plan = decode_plan(frames[0].bytes, f"plan of job {job}")
        except PlanFormatError as error:
            raise ProtocolError(str(error)) from None
        refusal = self._refuse_modules(plan)
        if refusal:
            self._send(self.control, identity, encode({"type": "error", "job": job,
                                                       "message": refusal}))
            return
        store_dir = self.store_dir or message.get("store")
        store = OutputStore(store_dir, bool(message.get("durable"))) if store_dir else None
        self.jobs[job] = Job(plan, store)

    def _refuse_modules(self, plan: Plan) -> str | None:
        if self.allowed_modules is None:
            return None
        modules = {t["module"] for t in plan.templates}
        for t in plan.templates:
            if t.get("aggregate"):
                modules |= {m for m, _ in t["aggregate"]["functions"].values()}
        denied = sorted(m for m in modules if not _allowed(m, self.allowed_modules))
        if denied:
            return f"server {self.name} does not run modules {', '.join(denied)}"
        return None

    def _on_tasks(self, identity: bytes, message: dict) -> None:
        job = str(message["job"])
        if job not in self.jobs:
            raise ProtocolError(f"tasks for unknown job {job!r} (send the job first)")
        plan = self.jobs[job].plan
        accepted = []
        for task in message["tasks"]:
            vertex, attempt = _task_vertex(task, plan)
            reason = self._admit(plan, vertex)
            if reason is not None:
                self.stats.refused += 1
                self._send(self.control, identity, encode({
                    "type": "refused", "job": job, "v": vertex, "attempt": attempt,
                    "reason": reason}))
            else:
                accepted.append(task)
        if accepted:
            self.tasks.put((identity, job, accepted))

    def _admit(self, plan: Plan, vertex: int) -> str | None:
        if self.admission is None:
            return None
        try:
            verdict = self.admission(plan, vertex)
        except Exception as error:  # a broken hook refuses rather than crashing the server
            return f"admission hook failed: {type(error).__name__}: {error}"
        if verdict is True:
            return None
        return verdict if isinstance(verdict, str) else f"server {self.name} refused it"

    def _on_data(self, identity: bytes, message: dict, frames: list) -> None:
        if message["type"] != "get":
            raise ProtocolError(f"the data port takes only 'get', not {message['type']!r}")
        job = str(message["job"])
        vertices = _vertex_list(message["vertices"])
        missing = [v for v in vertices if not self.objects.has(job, v)]
        if missing:
            self._send(self.data, identity, encode({
                "type": "error", "message": f"server {self.name} holds no output of "
                f"vertices {missing[:10]} in job {job}", "missing": missing}))
            return
        items, payload = pack([(v, self.objects.get(job, v)) for v in vertices])
        self._send(self.data, identity, encode({"type": "data", "job": job, "items": items},
                                               *payload))

    def _watch_timeout(self) -> None:
        running = self.running
        if running is None or running.deadline is None:
            return
        now = time.monotonic()
        if running.interrupted_at is None and now > running.deadline:
            running.interrupted_at = now
            _raise_in_thread(self.executor, VertexTimeoutError)
        elif running.interrupted_at is not None and now > running.interrupted_at + 2.0:
            # the vertex is stuck where Python cannot interrupt it: report and restart
            self._report_stuck(running)
            self._send_outbox()
            time.sleep(0.05)
            os._exit(EXIT_RESTART)

    def _report_stuck(self, running: Running) -> None:
        plan = self.jobs[running.job].plan
        timeout = plan.vertex_template(running.vertex).get("timeout")
        identity = self._gateway_of.get(running.job, b"")
        self.outbox.put((identity, encode({
            "type": "failed", "job": running.job, "v": running.vertex,
            "attempt": running.attempt, "error_type": "serpytor.errors.VertexTimeoutError",
            "message": f"vertex {plan.vertex_name(running.vertex)} ran past its timeout "
                       f"of {timeout:g} s and could not be interrupted; server restarted",
            "traceback": ""})))

    def close(self) -> None:
        self.tasks.put(None)
        self.control.close(0)
        self.data.close(0)

    # ---- executor thread ----------------------------------------------------------
    def _execute_loop(self) -> None:
        fetcher = Fetcher(self.ctx)
        try:
            while True:
                item = self.tasks.get()
                if item is None:
                    return
                identity, job, tasks = item
                self._gateway_of[job] = identity
                self._execute_batch(identity, job, tasks, fetcher)
        finally:
            fetcher.close()

    def _execute_batch(self, identity: bytes, job_id: str, tasks: list, fetcher: "Fetcher") -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return  # the job ended while its tasks were queued
        try:
            remote = fetcher.fetch(job_id, tasks, self.objects)
        except FetchError as error:
            for task in tasks:
                self._fail(identity, job_id, job.plan, task, error, "")
            return
        results: list[dict] = []
        flushed = time.monotonic()
        for task in tasks:
            result = self._run_task(identity, job_id, job, task, remote)
            if result is not None:
                results.append(result)
            if results and time.monotonic() - flushed > RESULT_FLUSH_S:
                self.outbox.put((identity, encode({"type": "done", "job": job_id,
                                                   "results": results})))
                results, flushed = [], time.monotonic()
        if results:
            self.outbox.put((identity, encode({"type": "done", "job": job_id,
                                               "results": results})))

    def _run_task(self, identity: bytes, job_id: str, job: Job, task: dict,
                  remote: dict[int, Any]) -> dict | None:
        plan = job.plan
        vertex, attempt = int(task["v"]), int(task.get("attempt", 1))
        inputs = {}
        for source in task.get("inputs", ()):
            parent = int(source["v"])
            inputs[parent] = remote[parent] if parent in remote else \
                self._local_input(job, job_id, source)
        name = plan.vertex_name(vertex)
        context = Context(name, [ContextFact(*f) for f in task.get("context", ())])
        timeout = plan.vertex_template(vertex).get("timeout")
        started = time.monotonic()
        self.running = Running(job_id, vertex, attempt, started + timeout if timeout else None)
        try:
            value = run_vertex(plan, vertex, inputs, context)
        except BaseException as error:  # noqa: BLE001 - the vertex's failure is reported
            self.running = None
            self._fail(identity, job_id, plan, task, error, traceback.format_exc())
            return None
        self.running = None
        seconds = time.monotonic() - started
        self.stats.tasks += 1
        self.objects.put(job_id, vertex, value)
        result = {"v": vertex, "attempt": attempt, "seconds": seconds,
                  "published": context.published, "size": _size_of(value)}
        if task.get("key") and job.store is not None:
            try:
                result["path"], result["digest"], data = job.store.put(task["key"], name, value)
            except Exception as error:
                self._fail(identity, job_id, plan, task, error, traceback.format_exc())
                return None
            result["size"] = len(data)
        return result

    def _local_input(self, job: Job, job_id: str, source: dict) -> Any:
        parent = int(source["v"])
        if self.objects.has(job_id, parent):
            return self.objects.get(job_id, parent)
        if source.get("path") and job.store is not None:
            value = job.store.get(source["path"], source["digest"])
            self.objects.put(job_id, parent, value)
            return value
        raise FetchError(f"server {self.name} has no output of vertex "
                         f"{job.plan.vertex_name(parent)}")

    def _fail(self, identity: bytes, job_id: str, plan: Plan, task: dict,
              error: BaseException, text: str) -> None:
        self.stats.failed += 1
        kind = type(error)
        self.outbox.put((identity, encode({
            "type": "failed", "job": job_id, "v": int(task["v"]),
            "attempt": int(task.get("attempt", 1)),
            "error_type": f"{kind.__module__}.{kind.__qualname__}", "message": str(error),
            "traceback": text})))


class FetchError(Exception):
    """An input could not be fetched from the server holding it."""


class Fetcher:
    """The executor's DEALER sockets to peers' data ports, one per address."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.sockets: dict[str, zmq.Socket] = {}

    def socket_for(self, address: str) -> zmq.Socket:
        if address not in self.sockets:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self.sockets[address] = sock
        return self.sockets[address]

    def fetch(self, job: str, tasks: list[dict], objects: ObjectStore) -> dict[int, Any]:
        """Every input of ``tasks`` held by another server, one request per server."""
        wanted: dict[str, set[int]] = {}
        for task in tasks:
            for source in task.get("inputs", ()):
                address = source.get("at")
                if address and not objects.has(job, int(source["v"])):
                    wanted.setdefault(address, set()).add(int(source["v"]))
        for address, vertices in wanted.items():
            self.socket_for(address).send_multipart(
                encode({"type": "get", "job": job, "vertices": sorted(vertices)}))
        values: dict[int, Any] = {}
        for address in wanted:
            values.update(self._receive(address))
        return values

    def _receive(self, address: str) -> dict[int, Any]:
        sock = self.socket_for(address)
        if not sock.poll(FETCH_TIMEOUT_S * 1000):
            self._reset(address)
            raise FetchError(f"the server at {address} did not send the inputs within "
                             f"{FETCH_TIMEOUT_S:g} s")
        frames = sock.recv_multipart(copy=False)
        try:
            message, payload = decode(frames)
            if message["type"] != "data":
                raise FetchError(f"the server at {address} answered: "
                                 f"{message.get('message', message['type'])}")
            return unpack(message["items"], [f.buffer for f in payload])
        except (ProtocolError, ValueError, KeyError) as error:
            raise FetchError(f"bad data from the server at {address}: {error}") from None

    def _reset(self, address: str) -> None:
        self.sockets.pop(address).close(0)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(0)


def bind_socket(sock: zmq.Socket, address: str) -> str:
    """Bind; ``tcp://HOST:*`` or port 0 picks a free port. Returns the real endpoint."""
    if address.startswith("tcp://") and address.endswith((":0", ":*")):
        address = address.rsplit(":", 1)[0] + ":*"
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _allowed(module: str, patterns: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in patterns)


def _vertex_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ProtocolError("vertices must be a list of integers")
    return value


def _task_vertex(task: Any, plan: Plan) -> tuple[int, int]:
    if not isinstance(task, dict) or not isinstance(task.get("v"), int):
        raise ProtocolError("a task must be an object with an integer 'v'")
    vertex = task["v"]
    if not 0 <= vertex < plan.n_vertices:
        raise ProtocolError(f"task vertex {vertex} is not in the plan")
    return vertex, int(task.get("attempt", 1))


def _size_of(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    return 0


def _raise_in_thread(thread: threading.Thread, exception: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                               ctypes.py_object(exception))
