"""``serpytor gateway``: the gateway as a service (Dryad's job manager as a daemon).

It owns a set of servers and runs the jobs clients submit (``serpytor run --gateway
ADDR``), several at once on the same servers, each job in a thread of its own driving a
:class:`~serpytor.runtime.gateway.Gateway`. It carries metadata only: when a job ends,
the client is told where the sink outputs are and fetches them from the servers.

Messages (JSON, on a ROUTER at the service's address; CURVE with ``--keys``)::

    client  -> service   submit {options} + frame: the plan (.spgc bytes)
    service -> client    accepted {job, vertices}
    client  -> service   poll {job}
    service -> client    job-state {job, state: running|done|failed, done, total,
                                    [result]}   (result: stats, sinks, error, events)
    client  -> service   collected {job}  (the outputs are fetched: end the job)
    service -> client    ended {job}      (sent once every server dropped the job)
    client  -> service   status
    service -> client    status-report {servers, jobs}

State is journaled in SQLite (``STATE_DIR/gateway.sqlite3``): every job's plan,
options and outcome. A restarted service resumes the jobs that were running; with a
journal (the default, ``STATE_DIR/journal``) every vertex recorded before the crash is
reused, so a resumed job recomputes only what was missing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..compiler.plan import Plan, decode_plan
from ..errors import PlanFormatError, RemoteTaskError, SerpytorError
from .allocation import resolve_policy
from .api import open_durability
from .gateway import Gateway
from .monitor import ServerMonitor
from .protocol import ProtocolError, decode, encode
from .security import check_bind, load_security, secure_server, trusted
from .server import bind_socket

log = logging.getLogger("serpytor.gateway")

POLL_MS = 50
COLLECT_TIMEOUT_S = 600.0   # a finished job's outputs wait this long for their client
FORGET_AFTER_S = 3600.0     # ended jobs stay listed this long
CONTROL_LIMIT = 1 << 30     # a submit carries its plan

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, submitted REAL NOT NULL, pipeline TEXT NOT NULL,
    plan BLOB NOT NULL, options TEXT NOT NULL, state TEXT NOT NULL, result TEXT
);
"""
OPTIONS = {"overrides": dict, "keep_going": bool, "fresh": bool, "durable": bool,
           "journal": bool, "placement": str, "queues": str}


class ServiceError(SerpytorError):
    """The gateway service cannot start (its state cannot be opened, its address is
    taken) or refused a job (a malformed plan or option)."""


@dataclass
class JobRun:
    """One submitted job and the thread running it."""

    id: str
    plan: Plan
    options: dict[str, Any]
    state: str = "running"
    gateway: Gateway | None = None
    result: dict[str, Any] | None = None
    collected: threading.Event = field(default_factory=threading.Event)
    # set once the servers dropped the job; a failed job is reported only then
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    thread: threading.Thread | None = None

    def progress(self) -> tuple[int, int]:
        done = self.gateway.finished if self.gateway is not None else 0
        return (self.plan.n_vertices if self.state != "running" else done), self.plan.n_vertices


class JobJournal:
    """The service's own journal: jobs, their plans and outcomes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(directory / "gateway.sqlite3", isolation_level=None,
                                      check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ServiceError(f"cannot open the gateway's state in {directory}: "
                               f"{error}") from None
        self.lock = threading.Lock()

    def add(self, job: JobRun, plan_bytes: bytes) -> None:
        with self.lock:
            self.db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, NULL)",
                            (job.id, time.time(), job.plan.pipeline, plan_bytes,
                             json.dumps(job.options), job.state))

    def update(self, job: JobRun) -> None:
        with self.lock:
            self.db.execute("UPDATE jobs SET state = ?, result = ? WHERE id = ?",
                            (job.state, json.dumps(job.result) if job.result else None, job.id))

    def unfinished(self) -> list[tuple[str, bytes, dict[str, Any]]]:
        with self.lock:
            rows = self.db.execute("SELECT id, plan, options FROM jobs WHERE state = "
                                   "'running'").fetchall()
        return [(job_id, plan, json.loads(options)) for job_id, plan, options in rows]

    def close(self) -> None:
        with self.lock:
            self.db.close()


class GatewayService:
    def __init__(self, bind: str, servers: list[str], state_dir: str | Path, *,
                 keys: str | None = None, insecure: bool = False,
                 journal_dir: str | Path | None = None) -> None:
        if not servers:
            raise ServiceError("a gateway needs servers: --servers ADDR,...")
        self.security = load_security(keys)
        check_bind(bind, self.security, insecure)
        self.servers = servers
        self.keys = keys
        self.state_dir = Path(state_dir)
        self.journal_dir = Path(journal_dir) if journal_dir else self.state_dir / "journal"
        self.journal = JobJournal(self.state_dir)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_LIMIT)
        secure_server(self.sock, self.security)
        try:
            self.address = bind_socket(self.sock, bind)
        except zmq.ZMQError as error:
            self.sock.close(0)
            raise ServiceError(f"error: cannot bind {bind}: {error}") from None
        self.jobs: dict[str, JobRun] = {}
        self.monitor = ServerMonitor(self.ctx, servers, self.security)
        self.rejected = 0
        # (client, job): a ``collected`` answered once the job has ended
        self.end_waiters: list[tuple[bytes, JobRun]] = []

    # ---- the service loop -------------------------------------------------------------
    def serve(self, stop: threading.Event | None = None) -> None:
        for job_id, plan_bytes, options in self.journal.unfinished():
            self._resume(job_id, plan_bytes, options)
        try:
            while stop is None or not stop.is_set():
                if self.sock.poll(POLL_MS):
                    self._drain()
                self._confirm_ends()
                self.monitor.tick()
                self._expire()
        finally:
            self.close()

    def _drain(self) -> None:
        for _ in range(1000):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                if not trusted(self.sock, frames[0], self.security):
                    raise ProtocolError("the peer is not authenticated")
                reply = self._answer(identity, *decode(frames[1:]))
            except (ProtocolError, ServiceError) as error:
                self.rejected += 1
                reply = {"type": "error", "message": str(error)}
            if reply is not None:
                self._send(identity, reply)

    def _confirm_ends(self) -> None:
        """Answer the clients whose ``collected`` waits for a job that has now ended."""
        if not self.end_waiters:
            return
        waiting = []
        for identity, job in self.end_waiters:
            if job.ended.is_set():
                self._send(identity, {"type": "ended", "job": job.id})
            else:
                waiting.append((identity, job))
        self.end_waiters = waiting

    def _send(self, identity: bytes, reply: dict) -> None:
        try:
            self.sock.send_multipart([identity, *encode(reply)])
        except zmq.ZMQError:
            pass  # the client is gone; it may poll again

    def _answer(self, identity: bytes, message: dict, frames: list) -> dict | None:
        """The reply to one message; None when it is sent later (see _confirm_ends)."""
        kind = message["type"]
        if kind == "submit":
            return self._submit(message, frames)
        if kind == "poll":
            return self._job_state(self._job(message))
        if kind == "collected":
            # answered once the servers dropped the job: when the client's run returns,
            # nothing of it is left on them, even if this service dies right after
            job = self._job(message)
            job.collected.set()
            self.end_waiters.append((identity, job))
            return None
        if kind == "status":
            return {"type": "status-report", "servers": self.monitor.report(),
                    "jobs": [self._job_line(j) for j in self.jobs.values()]}
        raise ProtocolError(f"a gateway does not take {kind!r} messages")

    def _job(self, message: dict) -> JobRun:
        job = self.jobs.get(str(message.get("job")))
        if job is None:
            raise ServiceError(f"no job {message.get('job')!r} on this gateway")
        return job

    # ---- jobs -------------------------------------------------------------------------
    def _submit(self, message: dict, frames: list) -> dict:
        if not frames:
            raise ProtocolError("submit carries no plan")
        plan_bytes = frames[0].bytes
        try:
            plan = decode_plan(plan_bytes, "the submitted plan")
        except PlanFormatError as error:
            raise ServiceError(str(error)) from None
        options = _options(message.get("options"))
        job = JobRun(uuid.uuid4().hex[:16], plan, options)
        self.journal.add(job, plan_bytes)
        self._start(job)
        return {"type": "accepted", "job": job.id, "vertices": plan.n_vertices}

    def _resume(self, job_id: str, plan_bytes: bytes, options: dict[str, Any]) -> None:
        try:
            plan = decode_plan(plan_bytes, f"the plan of job {job_id}")
        except PlanFormatError as error:
            log.warning("cannot resume job %s: %s", job_id, error)
            return
        log.warning("resuming job %s (%s)", job_id, plan.pipeline)
        self._start(JobRun(job_id, plan, options))

    def _start(self, job: JobRun) -> None:
        self.jobs[job.id] = job
        job.thread = threading.Thread(target=self._run_job, args=(job,), daemon=True,
                                      name=f"serpytor-job-{job.id}")
        job.thread.start()

    def _run_job(self, job: JobRun) -> None:
        """The job's thread: run it, publish where its outputs are, wait for the client
        to collect them, then end it on the servers. A failed job is ended first and
        reported after: its client gets the error when nothing of the job is left."""
        options = job.options
        journal = self.journal_dir if options.get("journal", True) else False
        durability = open_durability(job.plan, job.plan, journal, options.get("fresh", False),
                                     options.get("durable", False))
        gateway = None
        try:
            gateway = Gateway(job.plan, self.servers, durability, options.get("overrides"),
                              options.get("keep_going", False),
                              policy=resolve_policy(options.get("placement"), job.plan),
                              queues=options.get("queues", "single"),
                              security=self.security)
            job.gateway = gateway
            result = gateway.execute()
            summary = _result_summary(result, gateway)
        except Exception as error:
            if not isinstance(error, SerpytorError):  # a bug must not take the service down
                log.exception("job %s failed", job.id)
            self._end_job(gateway, durability, job)
            self._publish(job, "failed", {"error": _error_summary(error)})
            return
        self._publish(job, "done", summary)
        job.collected.wait(COLLECT_TIMEOUT_S)
        self._end_job(gateway, durability, job)

    def _publish(self, job: JobRun, state: str, result: dict[str, Any]) -> None:
        job.result = result
        job.state = state
        job.ended_at = time.monotonic()
        self.journal.update(job)

    @staticmethod
    def _end_job(gateway: Gateway | None, durability: Any, job: JobRun) -> None:
        try:
            if gateway is not None:
                gateway.close()
            else:
                durability.close()
        finally:
            job.ended.set()

    def _job_state(self, job: JobRun) -> dict:
        done, total = job.progress()
        reply = {"type": "job-state", "job": job.id, "state": job.state, "done": done,
                 "total": total}
        if job.state != "running":
            reply["result"] = job.result
        return reply

    def _job_line(self, job: JobRun) -> dict:
        done, total = job.progress()
        return {"job": job.id, "pipeline": job.plan.pipeline, "state": job.state,
                "done": done, "total": total}

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [j.id for j in self.jobs.values()
                       if j.ended_at and now - j.ended_at > FORGET_AFTER_S]:
            del self.jobs[job_id]

    def close(self) -> None:
        for job in self.jobs.values():
            job.collected.set()
        for job in self.jobs.values():
            if job.thread is not None:
                job.thread.join(1.0)
        self.monitor.close()
        self.sock.close(0)
        self.journal.close()


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("submit options must be an object")
    unknown = set(value) - set(OPTIONS)
    if unknown:
        raise ProtocolError(f"unknown submit options {sorted(unknown)}")
    for name, kind in OPTIONS.items():
        if name in value and value[name] is not None and not isinstance(value[name], kind):
            raise ProtocolError(f"submit option {name!r} must be {kind.__name__}")
    return dict(value)


def _result_summary(result: Any, gateway: Gateway) -> dict[str, Any]:
    table = result.vertices
    return {"stats": result.stats, "lost_attempts": result.lost_attempts,
            "server_events": result.server_events, "channels": result.channels,
            "server_job": gateway.job, "sinks": gateway.sink_locations(),
            "status": table.status.tolist(), "seconds": table.seconds.tolist(),
            "error": _error_summary(result.error) if result.error else None}


def _error_summary(error: BaseException) -> dict[str, Any]:
    """The error as JSON, so the client raises it again as the same type."""
    if isinstance(error, RemoteTaskError):
        bases = type(error).__bases__  # (RemoteTaskError, the original type) when built
        original = bases[1] if len(bases) == 2 else Exception
        return {"error_type": f"{original.__module__}.{original.__qualname__}",
                "message": error.args[0] if error.args else "", "vertex": error.vertex,
                "line": error.line, "traceback": error.remote_traceback, "remote": True}
    kind = type(error)
    return {"error_type": f"{kind.__module__}.{kind.__qualname__}", "message": str(error),
            "remote": False}
