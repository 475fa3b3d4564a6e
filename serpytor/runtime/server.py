"""The server (Dryad's daemon): runs the vertices the gateway assigns; never schedules.

Sockets, all owned by the I/O thread:

* ``control`` (ROUTER, bound at the server's address): jobs, task batches, releases and
  pings from gateways; results go back on it.
* ``data`` (ROUTER, bound on the same host, random port): peers fetch the outputs this
  server holds (``get`` -> ``data``, see :mod:`serpytor.runtime.transfer`). Payloads
  never pass through the gateway.
* the executor thread runs vertices one at a time and hands its outgoing messages to
  the I/O thread through a queue (ZeroMQ sockets are not thread-safe).

State: ``jobs[job]`` the job's Plan and settings; ``table`` the outputs held, until
released; ``stats`` counters (tasks run, refused, rejected messages per peer);
``incarnation`` a token that changes when the process restarts, so a gateway can tell
a restarted server (which lost its outputs and jobs) from one that was only slow.

An admission hook ``admit(plan, vertex) -> bool | str`` may refuse a task (a string is
the reason); the gateway then places it elsewhere. A vertex past its ``timeout`` is
interrupted; if it cannot be (it is blocked in C code), the server reports the failure
and restarts itself: it re-executes its own command line (``restart``), which keeps
its pid and address, or exits with status 75 when it has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

from ..compiler.kinds import ChannelKind
from ..compiler.plan import Plan, decode_plan
from ..errors import PlanFormatError, VertexTimeoutError
from .channels import close_pools, default_directory, sweep_segments
from .context import Context, ContextTracker
from .invoke import FunctionNotFoundError, Invoker, plan_modules, refresh_modules
from .protocol import ProtocolError, decode, encode
from .security import check_bind, load_security, secure_server, trusted
from .store import OutputError, OutputStore, StoredFile, serialize
from .tasks import Source, Task, parse_tasks
from .timeouts import Interruptible, timeout_error
from .transfer import (FetchError, Fetched, Holder, InputFetcher, OutputTable,
                       TransferCounts, encoded_size, vertex_list)
from .vitals import Vitals

log = logging.getLogger("serpytor.server")

EXIT_RESTART = 75  # "temporary failure": a supervisor restarts the server
POLL_MS = 50
RESULT_FLUSH_S = 0.002
STUCK_GRACE_S = 2.0  # after the interrupt, how long a vertex may take to notice it
CONTROL_LIMIT = 1 << 30       # bytes: a job message carries its plan
DATA_REQUEST_LIMIT = 1 << 20  # bytes: a get names vertices, nothing more
PLAN_CACHE = 8                # distinct plans kept decoded
HOUSEKEEPING_S = 0.1          # the status block is refreshed this often
JOB_IDLE_S = 900.0            # a job nothing was heard of this long is ended
REPORT_PATIENCE_S = 10.0  # how long a restarted server waits for its gateway to return
PENDING_REPORT = "SERPYTOR_PENDING_REPORT"  # carries that report across the re-exec

Admission = Callable[[Plan, int], "bool | str"]


@dataclass
class Job:
    plan: Plan
    store: OutputStore | None
    tracker: ContextTracker
    invoker: Invoker
    files: OutputStore | None = None  # [channel = file] outputs when nothing is journaled
    file_edges: np.ndarray | None = None  # vertices with a file out-edge

    def writes_file(self, vertex: int) -> bool:
        return self.file_edges is not None and bool(self.file_edges[vertex])


@dataclass
class Running:
    """The vertex the executor is running, for the timeout watchdog."""

    job: str
    vertex: int
    attempt: int
    started: float
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
                 context: zmq.Context | None = None,
                 restart: Callable[[str], None] | None = None,
                 heartbeat: bool = True, keys: str | None = None,
                 insecure: bool = False) -> None:
        self.security = load_security(keys)
        check_bind(bind, self.security, insecure)
        self.ctx = context or zmq.Context.instance()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.host = socket.gethostname()
        self.incarnation = secrets.token_hex(8)
        self.admission = admission
        self.allowed_modules = allowed_modules
        self.store_dir = store_dir
        self.restart = restart
        self.control = self._socket(zmq.ROUTER, CONTROL_LIMIT)
        self.address = bind_socket(self.control, bind)
        data_host = self.address.split("://", 1)[1].rsplit(":", 1)[0]
        self.data = self._socket(zmq.ROUTER, DATA_REQUEST_LIMIT)
        self.data_address = bind_socket(self.data, f"tcp://{data_host}:*")
        self.vitals = Vitals(data_host, self.name, self.incarnation, store_dir, heartbeat,
                             keys, insecure)
        self.jobs: dict[str, Job] = {}
        self.table = OutputTable()
        self.holder = Holder(self.table, self.name, self.host, data_host, self.security,
                             self._read_job_store)
        self.transfers = TransferCounts()
        self.stats = ServerStats()
        self.tasks: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        # the executor's wake-up call to the I/O thread (one socket per thread)
        self.wake = self.ctx.socket(zmq.PULL)
        self.wake.bind(f"inproc://serpytor-wake-{id(self):x}")
        self.wake_sender = self.ctx.socket(zmq.PUSH)
        self.wake_sender.setsockopt(zmq.SNDHWM, 1)
        self.wake_sender.setsockopt(zmq.LINGER, 0)
        self.wake_sender.connect(f"inproc://serpytor-wake-{id(self):x}")
        self.running: Running | None = None
        self.vertex_region = Interruptible()  # where the watchdog may interrupt a vertex
        self.pending: tuple[bytes, list, float] | None = None  # a report from before a restart
        self.warned_peers: set[bytes] = set()
        self.cancelled: set[tuple[str, int, int]] = set()  # (job, vertex, attempt) not to start
        self.job_seen: dict[str, float] = {}  # job -> when its gateway last spoke
        self.plans: dict[bytes, Plan] = {}  # digest of a plan's bytes -> the plan
        self.last_sweep = time.monotonic()
        self.last_housekeeping = 0.0
        self._gateway_of: dict[str, bytes] = {}  # job -> identity of its gateway
        self.executor = threading.Thread(target=self._execute_loop, name="serpytor-executor",
                                         daemon=True)

    def _socket(self, kind: int, max_message: int) -> zmq.Socket:
        """A bound ROUTER: CURVE when keys are configured; a peer sending a message
        larger than ``max_message`` is disconnected by ZeroMQ before it is buffered."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        return secure_server(sock, self.security)

    # ---- I/O thread ---------------------------------------------------------------
    def _post(self, identity: bytes, frames: list) -> None:
        """From the executor: queue a message for the I/O thread and wake it up (it may
        be waiting in poll; without the wake-up a result would wait for the poll to
        time out)."""
        self.outbox.put((identity, frames))
        try:
            self.wake_sender.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a wake-up is already pending

    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever)."""
        self._take_pending_report()
        self.executor.start()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        try:
            while stop is None or not stop.is_set():
                events = dict(poller.poll(POLL_MS))
                if self.control in events:
                    self._drain(self.control, self._on_control)
                if self.data in events:
                    self._drain(self.data, self._on_data)
                if self.wake in events:
                    _discard_all(self.wake)
                self._send_outbox()
                if self.pending is not None:
                    self._deliver_pending()
                self._watch_timeout()
                self._housekeeping()
        finally:
            self.close()

    def _drain(self, sock: zmq.Socket, handler: Callable) -> None:
        for _ in range(1000):  # bounded, so neither socket starves the other
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, payload = frames[0].bytes, frames[1:]
            if not trusted(sock, frames[0], self.security):
                self._reject(sock, identity, "the peer is not authenticated")
                continue
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
            pass  # the peer is gone (ROUTER_MANDATORY); there is no one to tell

    def _send_outbox(self) -> None:
        while True:
            try:
                identity, frames = self.outbox.get_nowait()
            except queue.Empty:
                return
            self._send(self.control, identity, frames)

    def _on_control(self, identity: bytes, message: dict, frames: list) -> None:
        kind = message["type"]
        if "job" in message:
            self.job_seen[str(message["job"])] = time.monotonic()
        if kind == "ping":
            self._heard_from(identity)
            if self.pending is not None:
                self._deliver_pending()  # the failure first: the pong says we restarted
            self._send(self.control, identity, encode(self._pong()))
        elif kind == "job":
            self._on_job(identity, message, frames)
        elif kind == "tasks":
            self._on_tasks(identity, message)
        elif kind == "release":
            self.table.release(str(message["job"]), vertex_list(message["vertices"]))
        elif kind == "cancel":
            # a duplicate finished first elsewhere, or the task moved to another server:
            # skip these attempts if they have not started
            self.cancelled.update(cancelled_attempts(message))
        elif kind == "end":
            job = str(message["job"])
            self._end_job(job)
            self._send(self.control, identity, encode({"type": "ended", "job": job}))
        else:
            raise ProtocolError(f"a server does not take {kind!r} messages on its control port")

    def _pong(self) -> dict:
        running = self.running
        return {"type": "pong", "name": self.name, "data": self.data_address,
                "host": self.host, "pid": os.getpid(), "incarnation": self.incarnation,
                "tasks": self.stats.tasks, "queued": self.tasks.qsize(),
                "held": len(self.table), "rejected": sum(self.stats.rejected.values()),
                "heartbeat": self.vitals.address,
                "running": None if running is None else {
                    "job": running.job, "v": running.vertex, "attempt": running.attempt,
                    "seconds": time.monotonic() - running.started}}

    def _on_job(self, identity: bytes, message: dict, frames: list) -> None:
        job = str(message["job"])
        if not frames:
            raise ProtocolError("job message carries no plan")
        plan = self._plan(frames[0], job)
        overrides = message.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ProtocolError("job field 'overrides' must be an object")
        refusal = self._refuse_modules(plan)
        if refusal:
            self._send(self.control, identity, encode({"type": "error", "job": job,
                                                       "message": refusal}))
            return
        try:
            refresh_modules(plan)  # run the code the gateway keyed, not a stale import
        except FunctionNotFoundError as error:
            log.warning("server %s: %s", self.name, error)  # its tasks will fail with it
        store_dir = self.store_dir or message.get("store")
        durable = bool(message.get("durable"))
        store = OutputStore(store_dir, durable) if store_dir else None
        self.jobs[job] = Job(plan, store, ContextTracker(plan, overrides), Invoker(plan),
                             None if store else OutputStore(default_directory(job), durable,
                                                            pack_limit=0),
                             _file_producers(plan))
        self._gateway_of[job] = identity

    def _plan(self, frame: Any, job: str) -> Plan:
        """The job's plan, decoded once per distinct plan: a gateway re-running the same
        pipeline sends the same bytes, and hashing them is ~20x cheaper than parsing
        the header of a large plan."""
        data = frame.bytes
        digest = hashlib.blake2b(data, digest_size=16).digest()
        plan = self.plans.get(digest)
        if plan is None:
            try:
                plan = decode_plan(data, f"plan of job {job}")
            except PlanFormatError as error:
                raise ProtocolError(str(error)) from None
            self.plans[digest] = plan
            while len(self.plans) > PLAN_CACHE:
                del self.plans[next(iter(self.plans))]
        return plan

    def _refuse_modules(self, plan: Plan) -> str | None:
        if self.allowed_modules is None:
            return None
        denied = sorted(m for m in plan_modules(plan) if not _allowed(m, self.allowed_modules))
        if denied:
            return f"server {self.name} does not run modules {', '.join(denied)}"
        return None

    def _on_tasks(self, identity: bytes, message: dict) -> None:
        job = str(message["job"])
        if job not in self.jobs:
            raise ProtocolError(f"tasks for unknown job {job!r} (send the job first)")
        plan = self.jobs[job].plan
        accepted = []
        for task in parse_tasks(message["tasks"], plan):
            reason = self._admit(plan, task.vertex)
            if reason is not None:
                self.stats.refused += 1
                self._send(self.control, identity, encode({
                    "type": "refused", "job": job, "v": task.vertex,
                    "attempt": task.attempt, "reason": reason}))
            else:
                accepted.append(task)
        if accepted:
            self._gateway_of[job] = identity
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
        self._send(self.data, identity, self.holder.answer(message))

    def _housekeeping(self) -> None:
        """What the I/O thread does a few times a second, not at every message."""
        now = time.monotonic()
        if now - self.last_housekeeping < HOUSEKEEPING_S:
            return
        self.last_housekeeping = now
        self.vitals.counts(self.stats.tasks, self.tasks.qsize(), len(self.table))
        self._forget_abandoned_jobs()

    def _heard_from(self, identity: bytes) -> None:
        """A gateway's ping keeps its jobs alive (a vertex may run for hours)."""
        now = time.monotonic()
        for job, gateway in self._gateway_of.items():
            if gateway == identity and job in self.jobs:
                self.job_seen[job] = now

    def _forget_abandoned_jobs(self) -> None:
        """A job whose gateway vanished without ending it (killed) would hold its
        outputs forever: end it once nothing was heard of it for JOB_IDLE_S."""
        now = time.monotonic()
        if now - self.last_sweep < 10.0:
            return
        self.last_sweep = now
        busy = self.running.job if self.running else None
        for job in [j for j, seen in self.job_seen.items()
                    if now - seen > JOB_IDLE_S and j != busy]:
            log.warning("server %s ends job %s: nothing heard of it for %.0f s", self.name,
                        job, now - self.job_seen[job])
            self.job_seen.pop(job, None)
            self._end_job(job)

    def _read_job_store(self, job: str, path: str, digest: str) -> Any:
        store = self.jobs[job].store
        if store is None:
            raise LookupError(f"job {job} keeps no journal on server {self.name}")
        return store.get(path, digest)

    def _end_job(self, job: str) -> None:
        ended = self.jobs.pop(job, None)
        self.job_seen.pop(job, None)
        self.table.drop_job(job)
        self.cancelled = {c for c in self.cancelled if c[0] != job}
        sweep_segments(job)
        if ended is None:
            return
        for store in (ended.store, ended.files):
            if store is not None:
                store.close()
        if ended.files is not None:
            shutil.rmtree(ended.files.root.parent, ignore_errors=True)

    def _watch_timeout(self) -> None:
        running = self.running
        if running is None or running.deadline is None:
            return
        now = time.monotonic()
        if running.interrupted_at is None and now > running.deadline:
            running.interrupted_at = now
            self.vertex_region.interrupt(VertexTimeoutError)
        elif running.interrupted_at is not None and now > running.interrupted_at + STUCK_GRACE_S:
            self._restart_stuck(running)

    def _restart_stuck(self, running: Running) -> None:
        """The vertex is stuck where Python cannot interrupt it: start afresh (a thread
        blocked in C ends only with its process). The failure is reported by the new
        process, once its gateway has reconnected: a gateway that hears of the failure
        finds the server answering again."""
        report = self._stuck_report(running)
        close_pools()
        if self.restart is not None:
            os.environ[PENDING_REPORT] = json.dumps(report)
            self.vitals.before_exec()
            self.restart(self.address)
        self._send(self.control, bytes.fromhex(report["identity"]),
                   encode(report["message"]))
        time.sleep(0.05)  # let ZeroMQ hand the report to the network
        self.vitals.exiting(EXIT_RESTART)
        os._exit(EXIT_RESTART)

    def _stuck_report(self, running: Running) -> dict:
        plan = self.jobs[running.job].plan
        timeout = plan.vertex_template(running.vertex).get("timeout")
        identity = self._gateway_of.get(running.job, b"")
        return {"identity": identity.hex(), "message": {
            "type": "failed", "job": running.job, "v": running.vertex,
            "attempt": running.attempt, "error_type": "serpytor.errors.VertexTimeoutError",
            "message": f"vertex {plan.vertex_name(running.vertex)} ran past its timeout "
                       f"of {timeout:g} s and could not be interrupted; server "
                       f"{self.name} restarted",
            "traceback": ""}}

    def _take_pending_report(self) -> None:
        """After a restart: the report the previous process left, to be delivered."""
        text = os.environ.pop(PENDING_REPORT, None)
        if not text:
            return
        try:
            report = json.loads(text)
            self.pending = (bytes.fromhex(report["identity"]), encode(report["message"]),
                            time.monotonic() + REPORT_PATIENCE_S)
        except (ValueError, KeyError, TypeError):
            log.warning("server %s: unreadable report from before its restart", self.name)

    def _deliver_pending(self) -> None:
        identity, frames, deadline = self.pending
        try:
            self.control.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError:
            if time.monotonic() < deadline:
                return  # the gateway has not reconnected yet
        self.pending = None

    def close(self) -> None:
        self.tasks.put(None)
        self.executor.join(5.0)  # it owns wake_sender until it returns
        for sock in (self.control, self.data, self.wake, self.wake_sender):
            sock.close(0)
        self.vitals.close()

    # ---- executor thread ----------------------------------------------------------
    def _execute_loop(self) -> None:
        fetcher = InputFetcher(self.ctx, self.host, self.transfers, security=self.security)
        try:
            while True:
                item = self.tasks.get()
                if item is None:
                    return
                identity, job, tasks = item
                self._execute_batch(identity, job, tasks, fetcher)
        finally:
            fetcher.close()

    def _execute_batch(self, identity: bytes, job_id: str, tasks: list[Task],
                       fetcher: InputFetcher) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return  # the job ended while its tasks were queued
        # an input that could not be fetched fails the tasks that read it, only them
        fetched = fetcher.fetch(job_id, self._remote_inputs(job_id, tasks),
                                job.plan.vertex_name)
        try:
            self._run_batch(identity, job_id, job, tasks, fetched)
        finally:
            fetched.close()

    def _remote_inputs(self, job_id: str, tasks: list[Task]) -> dict[str, list[tuple[int, int]]]:
        wanted: dict[str, dict[int, int]] = {}
        for task in tasks:
            for source in task.inputs:
                if source.at and not self.table.has(job_id, source.vertex):
                    wanted.setdefault(source.at, {})[source.vertex] = source.hint
        return {address: sorted(inputs.items()) for address, inputs in wanted.items()}

    def _run_batch(self, identity: bytes, job_id: str, job: Job, tasks: list[Task],
                   fetched: Fetched) -> None:
        results: list[dict] = []
        flushed = time.monotonic()
        for task in tasks:
            if job_id not in self.jobs:
                return  # ended meanwhile
            if (job_id, task.vertex, task.attempt) in self.cancelled:
                self.cancelled.discard((job_id, task.vertex, task.attempt))
                continue
            result = self._run_task(identity, job_id, job, task, fetched)
            if result is not None:
                results.append(result)
            if results and time.monotonic() - flushed > RESULT_FLUSH_S:
                self._report_done(identity, job_id, results)
                results, flushed = [], time.monotonic()
        if results:
            self._report_done(identity, job_id, results)

    def _report_done(self, identity: bytes, job_id: str, results: list[dict]) -> None:
        job = self.jobs.get(job_id)
        try:
            for store in (job.store, job.files) if job else ():
                if store is not None:
                    store.commit()  # stored outputs are visible before they are reported
        except OutputError as error:  # they are not stored: the vertices failed
            for result in results:
                self.table.release(job_id, [result["v"]])
                self._post(identity, encode(self._failure(job_id, result["v"],
                                                          result["attempt"], error, "")))
            return
        self._post(identity, encode({"type": "done", "job": job_id, "results": results,
                                     "channels": self.transfers.take()}))

    def _run_task(self, identity: bytes, job_id: str, job: Job, task: Task,
                  fetched: Fetched) -> dict | None:
        """Run one task; whatever goes wrong is reported as its failure, so the executor
        thread never dies (a gateway would wait for its results forever)."""
        try:
            return self._run_task_reporting(identity, job_id, job, task, fetched)
        except Exception as error:  # noqa: BLE001 - reported, never lost
            log.exception("server %s: task %s of job %s", self.name, task.vertex, job_id)
            self.table.release(job_id, [task.vertex])
            self._fail(identity, job_id, task, error, traceback.format_exc())
            return None

    def _run_task_reporting(self, identity: bytes, job_id: str, job: Job, task: Task,
                            fetched: Fetched) -> dict | None:
        plan = job.plan
        vertex = task.vertex
        try:
            inputs = {s.vertex: self._input(job, job_id, s, fetched) for s in task.inputs}
        except (FetchError, OutputError) as error:
            self._fail(identity, job_id, task, error, "")
            return None
        context = Context(plan.vertex_name(vertex), list(task.context) if task.context
                          is not None else job.tracker.facts_for(vertex))
        timeout = plan.vertex_template(vertex).get("timeout")
        started = time.monotonic()
        self.running = Running(job_id, vertex, task.attempt, started,
                               started + timeout if timeout else None)
        self.vitals.running(job_id, vertex, task.attempt)
        try:
            with self.vertex_region.region():
                value = job.invoker.run(vertex, inputs, context)
        except BaseException as error:  # noqa: BLE001 - the vertex's failure is reported
            self.running = None
            self.vitals.idle()
            if isinstance(error, VertexTimeoutError) and not error.args:
                error = timeout_error(plan.vertex_name(vertex), timeout)
            self._fail(identity, job_id, task, error, traceback.format_exc())
            return None
        self.running = None
        self.vitals.idle()
        seconds = time.monotonic() - started
        self.stats.tasks += 1
        result = {"v": vertex, "attempt": task.attempt, "seconds": seconds,
                  "published": context.published, "size": _size_of(value)}
        try:
            encoded = self._keep(job, task, context.vertex, value, result)
        except OutputError as error:
            self._fail(identity, job_id, task, error, "")
            return None
        self.table.put(job_id, vertex, value, encoded)
        if job_id not in self.jobs:  # ended while it ran: the end's drop came first
            self.table.drop_job(job_id)
        return result

    def _keep(self, job: Job, task: Task, name: str, value: Any,
              result: dict) -> tuple[bytes, list[Any]] | None:
        """Store the output when it is journaled, or when a file channel leaves it; its
        serialization, kept for transfers (None when nothing is stored)."""
        store = job.store if task.key else job.files if job.writes_file(task.vertex) else None
        if store is None:
            return None
        encoded = serialize(value, name)
        # a file channel is named by vertex; the store picks the next execution version
        stored: StoredFile = store.put_serialized(task.key or f"v{task.vertex}", name,
                                                  *encoded)
        result["size"] = encoded_size(encoded)
        if task.key:
            result["path"], result["digest"] = stored.path, stored.digest
        else:
            result["file"] = str(store.root.parent / stored.path)
            result["digest"] = stored.digest
        return encoded

    def _input(self, job: Job, job_id: str, source: Source, fetched: Fetched) -> Any:
        if source.vertex in fetched.values:
            return fetched.values[source.vertex]
        if source.vertex in fetched.failed:
            raise fetched.failed[source.vertex]
        if self.table.has(job_id, source.vertex):
            self.transfers.add("memory")
            return self.table.get(job_id, source.vertex)
        if source.path and source.digest:
            try:
                value = self._read_stored(job, source)
            except OutputError as error:  # gone or damaged: its producer must run again
                raise FetchError(str(error), [source.vertex]) from None
            self.transfers.add("file")
            return value
        raise FetchError(f"server {self.name} has no output of vertex "
                         f"{job.plan.vertex_name(source.vertex)}", [source.vertex])

    def _read_stored(self, job: Job, source: Source) -> Any:
        # a journaled output (a path relative to the journal) or a file channel of this
        # job (an absolute path, which the store reads as it is)
        store = job.store or job.files
        if store is None:
            raise OutputError(f"server {self.name} has no store to read {source.path} from")
        return store.get(source.path, source.digest)

    def _fail(self, identity: bytes, job_id: str, task: Task, error: BaseException,
              text: str) -> None:
        message = self._failure(job_id, task.vertex, task.attempt, error, text)
        if isinstance(error, FetchError):
            # inputs whose outputs are gone: the gateway re-runs their producers
            inputs = {s.vertex for s in task.inputs}
            message["lost_inputs"] = sorted(inputs & set(error.lost))
        self._post(identity, encode(message))

    def _failure(self, job_id: str, vertex: int, attempt: int, error: BaseException,
                 text: str) -> dict:
        self.stats.failed += 1
        kind = type(error)
        return {"type": "failed", "job": job_id, "v": vertex, "attempt": attempt,
                "error_type": f"{kind.__module__}.{kind.__qualname__}",
                "message": str(error), "traceback": text}


def cancelled_attempts(message: dict) -> list[tuple[str, int, int]]:
    """(job, vertex, attempt) of a cancel message: ``vertices`` and, pairwise, their
    ``attempts`` (a later attempt of the same vertex is not cancelled)."""
    vertices = vertex_list(message["vertices"])
    attempts = vertex_list(message.get("attempts"))
    if len(attempts) != len(vertices):
        raise ProtocolError("cancel message: attempts must pair with vertices")
    return [(str(message["job"]), v, a) for v, a in zip(vertices, attempts)]


def _file_producers(plan: Plan) -> np.ndarray | None:
    """Which vertices have an out-edge hinted ``[channel = file]``."""
    file_edges = plan.arrays["edge_channel"] == ChannelKind.FILE
    if not file_edges.any():
        return None
    producers = np.zeros(plan.n_vertices, bool)
    producers[plan.arrays["edge_src"][file_edges]] = True
    return producers


def _discard_all(sock: zmq.Socket) -> None:
    while True:
        try:
            sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def bind_socket(sock: zmq.Socket, address: str) -> str:
    """Bind; ``tcp://HOST:*`` or port 0 picks a free port. Returns the real endpoint."""
    if address.startswith("tcp://") and address.endswith((":0", ":*")):
        address = address.rsplit(":", 1)[0] + ":*"
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def reexec_restart(argv: list[str]) -> Callable[[str], None]:
    """A ``restart`` that replaces this process by a fresh server at the same address
    (same pid, so a supervisor or a gateway holding the process sees it live on)."""

    def restart(address: str) -> None:
        args = list(argv)
        if "--bind" in args:
            args[args.index("--bind") + 1] = address
        else:
            args += ["--bind", address]
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "serpytor", *args])

    return restart


def _allowed(module: str, patterns: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in patterns)


def _size_of(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    return 0


__all__ = ["Admission", "EXIT_RESTART", "Server", "bind_socket", "reexec_restart"]
