#!/usr/bin/env python3
"""Cluster benchmark: a server lost mid-job, CURVE encryption, and 3 servers against Dask.

It follows ``benchmarks/run_bench.py`` and imports its helpers: the layered DAG
(``make_dag``, ``dag_spg``, ``dag_dask``), alternating rounds with medians and CPU
accounting (``alternate``, ``Rounds``), deadlines, the Dask cluster, the machine
description. Every figure is measured against a baseline in the same run; servers and
the Dask cluster are started (and warmed up with a small job) before anything is
timed; sides alternate round by round, the order flipping every round; outputs of the
two sides are checked equal outside the timing.

1. Fault detection and recovery. A job of vertices that each sleep a few milliseconds
   (``run_tasks.nap``: the DAG of run_bench, 20 layers x 100 = 2,000 vertices of 3 ms;
   12 x 100 of 2 ms with ``--quick``) on 3 local servers, the gateway in this process on
   a thread. Each vertex appends a line to a log file when it finishes; once a third
   of the vertices are in the log, one server is SIGKILLed:

   * ``system``: its heartbeat child first, then the server -- nothing answers for it
     (a system-level failure, detected when the heartbeat stays silent for
     ``dead_after``);
   * ``application``: the server alone -- its heartbeat lives on and reports the death
     (an application-level failure).

   Baseline: the same job without a fault (it polls the log the same way and does not
   kill). Reported: the run's wall time minus the fault-free median (``extra_s``), and
   the detection time, from the kill to the moment the gateway declared the server
   lost. ``RunResult.server_events`` has no time stamps, so the moment is taken by
   wrapping ``Gateway._server_lost`` in this process (it records ``time.monotonic()``
   on entry, then calls the original). Target: detection within 3 heartbeat
   intervals (the gateway's ``Timing``: ping every 1 s, dead after 3 s), for every
   strike. The outputs of every faulty run must equal the fault-free run's (and the
   inline run of the trivial DAG, whose arithmetic ``nap`` repeats), and the run must
   name the victim, and only it, as lost, with the expected kind. A faulty run that
   raises instead of finishing is reported as such (its error, and the detection time
   if the loss was declared before it ended). After a strike the victim's lingering
   heartbeat (application case) is stopped and its status block removed; the next
   round starts on 3 fresh, warmed-up servers, so that no round inherits a struck
   pool's state. This repair is not part of ``run_s`` (it is part of the rounds'
   ``round_s`` and CPU figures).
   Figure 1 has its own servers; figures 2 and 3 run on servers never struck.
2. CURVE on against off: run_bench's figure-2 DAG (100 x 100 trivial tasks; 10 x 100
   with ``--quick``) on 2 servers started with keys (``--keys DIR`` after
   ``security.keygen(DIR)``, the run given ``keys=DIR``) against 2 servers without.
   Also a data-heavy variant: one chain of vertices passing 8 MB float64 arrays
   (``block`` -> ``bump`` x N -> ``checksum``) with ``[channel = tcp]`` and
   ``round_robin`` placement, so that each array crosses from one server to the other
   over TCP (encrypted with keys); the crossings and the bytes ``RunResult.channels``
   counts are reported. Target: task throughput with CURVE at least 0.8x without. Bulk
   data over CURVE is bound by libzmq's encryption (one core; raw pyzmq PUSH/PULL with
   CURVE moves ~0.3x of what it moves without, here), so for the data variant the
   same run also measures raw pyzmq with and without CURVE (``raw_curve_ratio``), and
   the target is at least 0.8x raw pyzmq's throughput with CURVE.
3. The 10,000-vertex trivial DAG (100 layers x 100; 10 x 100 with ``--quick``) on 3
   servers (started once, passed with ``servers=``) against a Dask ``LocalCluster``
   (``n_workers=3, threads_per_worker=1``) and ``Client``: tasks per second. Target:
   at least 10x for ours.

Usage::

    python benchmarks/cluster_bench.py            # the full run (a few minutes)
    python benchmarks/cluster_bench.py --quick    # smaller sizes, fewer rounds; < 60 s

Human-readable lines go to stdout; the last line is one JSON object with every figure,
``targets_met`` and the machine. A figure that raises or hangs is reported under
``errors`` and the benchmark goes on (with fresh servers). Everything started is
stopped in ``finally`` blocks; at the end the benchmark checks with psutil that no
process it started survives (``leftover_processes``; any found are killed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run_bench (imported next) sets the servers' PYTHONPATH

import psutil  # noqa: E402

from benchmarks.run_bench import (  # noqa: E402
    TASKS, UNMEASURABLE, Dag, DeadlineExceeded, ServerPool, alternate, bounded,
    compile_text, dag_spg, fmt_s, guarded, make_dag, rounds_vs_dask, small_dag_plan,
    targets_text)
from benchmarks.machine import machine  # noqa: E402
from serpytor.runtime import gateway as gateway_module  # noqa: E402
from serpytor.runtime.api import run  # noqa: E402
from serpytor.runtime.links import Timing  # noqa: E402
from serpytor.runtime.local import LocalServers  # noqa: E402
from serpytor.runtime.security import keygen  # noqa: E402
from serpytor.runtime.status import status_path  # noqa: E402

SIZES = {  # mode -> sizes and rounds
    "full": {"fault_layers": 20, "fault_width": 100, "fault_ms": 3.0, "rounds_fault": 3,
             "curve_layers": 100, "curve_width": 100, "rounds_curve": 3,
             "data_mb": 8.0, "data_hops": 12, "rounds_data": 3,
             "dask_layers": 100, "dask_width": 100, "rounds_dask": 3,
             "deadline_s": 120.0, "fault_deadline_s": 60.0},
    "quick": {"fault_layers": 12, "fault_width": 100, "fault_ms": 2.0, "rounds_fault": 1,
              "curve_layers": 10, "curve_width": 100, "rounds_curve": 5,
              "data_mb": 8.0, "data_hops": 4, "rounds_data": 3,
              "dask_layers": 10, "dask_width": 100, "rounds_dask": 1,
              "deadline_s": 20.0, "fault_deadline_s": 15.0},
}
TIMING = Timing()  # the gateway's defaults: what serpytor.run uses
HEARTBEAT_INTERVALS = 3
TARGETS = {"detection_s": HEARTBEAT_INTERVALS * TIMING.ping_interval,
           "curve_throughput_ratio": 0.8, "servers_vs_dask_distributed": 10.0}
KILL_FRACTION = 1 / 3
FAULT_KINDS = ("system", "application")  # what the kill leaves: nothing, or the heartbeat


# ---- processes --------------------------------------------------------------------------
class Started:
    """Every process this benchmark started, directly or not (servers, their heartbeat
    children, Dask's workers), seen while alive, so that the final check also finds
    those that outlived their parent and were re-parented away from this process."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create time (a pid may be reused)

    def note_descendants(self) -> None:
        for process in psutil.Process().children(recursive=True):
            try:
                self.seen.setdefault(process.pid, process.create_time())
            except psutil.NoSuchProcess:
                pass

    def alive(self) -> list[psutil.Process]:
        self.note_descendants()
        found = []
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) < 0.01 and \
                        process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.NoSuchProcess:
                pass
        return found

    def leftovers(self, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """Processes still alive after ``wait_s`` (they are then killed, by pid). The
        resource tracker that Dask's worker processes made ``multiprocessing`` start in
        this process (it would exit with it) is stopped first, the way it is meant to be."""
        from multiprocessing import resource_tracker

        stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
        if stop is not None:
            stop()
        end = time.monotonic() + wait_s
        while self.alive() and time.monotonic() < end:
            time.sleep(0.1)
        survivors = []
        for process in self.alive():
            try:
                survivors.append({"pid": process.pid,
                                  "cmdline": " ".join(process.cmdline())[:200]})
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return survivors


STARTED = Started()


def heartbeat_of(pid: int) -> psutil.Process | None:
    """The heartbeat of server ``pid``: its child started with ``--watch PID``."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            words = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(a == "--watch" and b == str(pid) for a, b in zip(words, words[1:])):
            return child
    return None


def kill_and_wait(process: psutil.Process | None, seconds: float = 5.0,
                  signum: int = signal.SIGKILL) -> bool:
    """Signal a process (maybe no longer our child) and wait until it is gone or a
    zombie (its parent reaps it); whether it went in time."""
    if process is None:
        return True
    try:
        process.send_signal(signum)
        end = time.monotonic() + seconds
        while process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    return True


def bury(server_pid: int, beat: psutil.Process | None) -> None:
    """What a SIGKILLed server leaves: its heartbeat, if it still lingers, is asked to
    stop (SIGTERM: it then removes the server's status block), else killed; a block
    nobody removed (its heartbeat was killed too) is removed here."""
    if not kill_and_wait(beat, signum=signal.SIGTERM):
        kill_and_wait(beat)
    with contextlib.suppress(FileNotFoundError):
        os.remove(status_path(server_pid))


def started_pool(pool: ServerPool) -> list[str]:
    """``pool``'s addresses (servers started and warmed up on first use), noting the
    processes."""
    addresses = pool.addresses()
    STARTED.note_descendants()
    return addresses


@contextmanager
def local_servers(count: int, extra: list[str] | None = None) -> Iterator[LocalServers]:
    local = LocalServers(count, extra)
    try:
        STARTED.note_descendants()
        yield local
    finally:
        local.close()


def spg_with_naps(dag: Dag, ms: float) -> str:
    """run_bench's DAG text with every vertex a ``nap`` of ``ms`` milliseconds (the same
    arithmetic, so the same values) and a context fact ``log``, set per run."""
    text = dag_spg(dag).replace("pipeline run_bench_dag", "pipeline cluster_bench_naps", 1)
    text = text.replace(" = t.step\n", f" = t.nap(ms = {ms:g})\n")
    for j in range(dag.width):
        text = text.replace(f" = t.source({j})\n", f" = t.nap(seed = {j}, ms = {ms:g})\n")
    head, _, body = text.partition("\n\n")
    return f'{head}\n\ncontext {{\n    log = ""\n}}\n\n{body}'


# ---- figure 1 ---------------------------------------------------------------------------
@dataclass
class Loss:
    at: float   # time.monotonic() when Gateway._server_lost was entered
    label: str  # the server, "NAME at ADDRESS"
    why: str
    kind: str


@contextmanager
def watching_losses() -> Iterator[list[Loss]]:
    """Wrap ``Gateway._server_lost`` (in this process, where the gateway runs) to record
    when each loss is declared: ``server_events`` entries carry no time stamp."""
    seen: list[Loss] = []
    original = gateway_module.Gateway._server_lost

    def recording(self: Any, link: Any, why: str, kind: str = "system", *rest: Any,
                  **named: Any) -> Any:
        # the detection moment: server_events has no time stamp, so it is taken here,
        # on entry, before the gateway starts recovering
        seen.append(Loss(time.monotonic(), link.label, why, kind))
        return original(self, link, why, kind, *rest, **named)

    gateway_module.Gateway._server_lost = recording
    try:
        yield seen
    finally:
        gateway_module.Gateway._server_lost = original


class OnThread:
    """``call()`` on a daemon thread, its start and end (``time.monotonic``) kept."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.began = time.monotonic()
        self.thread = threading.Thread(target=self._body, args=(call,), daemon=True,
                                       name="cluster-bench-gateway")
        self.thread.start()

    def _body(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as error:  # noqa: BLE001 - handed to the waiter
            self.error = error
        finally:
            self.ended = time.monotonic()

    def wait(self, seconds: float, what: str) -> Any:
        self.thread.join(seconds)
        if self.thread.is_alive():
            raise DeadlineExceeded(f"{what} did not finish within {seconds:g} s")
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def seconds(self) -> float:
        assert self.ended is not None
        return self.ended - self.began


def lines_in(path: Path) -> int:
    try:
        with open(path, "rb") as log:
            return log.read().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Strike:
    """One round of figure 1 (``kind`` None: the fault-free baseline)."""

    kind: str | None
    victim: str
    run_s: float
    finished_at_kill: int
    kill_after_s: float | None
    detection_s: float | None
    declared: list[dict]        # every loss the gateway declared (the wrapper saw it)
    lost_events: list[dict]     # RunResult.server_events "lost" (none when it raised)
    warnings: list[dict]
    lost_attempts: int | None
    error: str | None           # the run raised this instead of finishing
    outputs: dict | None = field(default=None, repr=False)


class FaultRounds:
    """Figure 1's rounds on a pool of 3 servers: run the job with the gateway on a
    thread; for a faulty kind, kill one server (each kind kills them in turn) once a
    third of the vertices have finished; the next round starts on a fresh pool."""

    def __init__(self, plan: Any, pool: ServerPool, workdir: Path, sizes: dict,
                 losses: list[Loss]) -> None:
        self.plan, self.pool, self.workdir, self.sizes = plan, pool, workdir, sizes
        self.losses = losses
        self.kill_at = max(1, round(plan.n_vertices * KILL_FRACTION))
        self.strikes: dict[str, list[Strike]] = {}
        self.count = 0
        self.struck = False  # the pool's servers were struck: replace them first

    def side(self, kind: str | None) -> Callable[[], Strike]:
        def call() -> Strike:
            strike = self.strike(kind)
            self.strikes.setdefault(kind or "fault_free", []).append(strike)
            return strike
        return call

    def strike(self, kind: str | None) -> Strike:
        if self.struck:
            # a strike may leave the survivors in a state no round should inherit (a peer
            # fetch that failed part-way leaves the other holders' replies unread, and
            # each later fetch from them then reads the previous one's reply): the next
            # round, whatever its kind, gets fresh, warmed-up servers (not timed)
            self.pool.close()
            self.struck = False
        addresses = started_pool(self.pool)
        local = self.pool.local
        assert local is not None
        self.count += 1
        # each kind strikes the servers in turn (kind k starts at server k)
        index = (len(self.strikes.get(kind or "fault_free", ())) +
                 (FAULT_KINDS.index(kind) if kind else 0)) % len(addresses)
        victim = local.servers[index]
        label = f"{victim.name} at {victim.address}"
        beat = heartbeat_of(victim.process.pid)
        if beat is None:
            raise RuntimeError(f"server {label} has no heartbeat child")
        log = self.workdir / f"finished-{self.count}.log"
        losses_before = len(self.losses)
        job = OnThread(lambda: run(self.plan, servers=addresses, journal=False,
                                   overrides={"log": str(log)}))
        killed = None
        try:
            finished = 0
            while finished < self.kill_at and job.ended is None:
                time.sleep(0.002)
                finished = lines_in(log)
            if kind is not None:
                if job.ended is not None:
                    raise RuntimeError(f"the job ended before {self.kill_at} vertices "
                                       f"had finished ({finished}), nothing to strike: "
                                       f"{type(job.error).__name__}: {job.error}")
                if kind == "system":
                    beat.kill()  # first, so that it cannot report the death
                os.kill(victim.process.pid, signal.SIGKILL)
                killed = time.monotonic()
            try:
                result, error = job.wait(self.sizes["fault_deadline_s"],
                                         f"the {kind or 'fault-free'} run"), None
            except DeadlineExceeded:
                raise
            except Exception as failure:  # noqa: BLE001 - a faulty run's failure is a figure
                if kind is None:
                    raise
                result, error = None, f"{type(failure).__name__}: {failure}"
        finally:
            if killed is not None:
                bury(victim.process.pid, beat)
            self.struck = killed is not None
            if job.ended is None:  # hung: stop the servers, so that the gateway ends
                self.pool.close()
                job.thread.join(10)
        declared = self.losses[losses_before:]
        mine = [loss for loss in declared if loss.label == label]
        events = result.server_events if result is not None else []
        return Strike(
            kind, label, job.seconds, finished,
            None if killed is None else killed - job.began,
            None if killed is None or not mine else mine[0].at - killed,
            [{"server": loss.label, "kind": loss.kind, "why": loss.why,
              "after_kill_s": None if killed is None else loss.at - killed}
             for loss in declared],
            [e for e in events if e.get("event") == "lost"],
            [e for e in events if e.get("event") == "warning"],
            None if result is None else result.lost_attempts, error,
            None if result is None else result.outputs)


def bench_faults(pool: ServerPool, workdir: Path, sizes: dict, out: dict) -> None:
    """Figure 1 (see the module docstring)."""
    dag = make_dag(sizes["fault_layers"], sizes["fault_width"])
    plan = compile_text(workdir, "naps", spg_with_naps(dag, sizes["fault_ms"]))
    reference = run(compile_text(workdir, "naps_reference", dag_spg(dag)), inline=True,
                    journal=False).outputs
    started_pool(pool)
    with watching_losses() as losses:
        rounds = FaultRounds(plan, pool, workdir, sizes, losses)
        timing = alternate(sizes["rounds_fault"], {
            "fault_free": rounds.side(None),
            **{kind: rounds.side(kind) for kind in FAULT_KINDS}})
    clean = rounds.strikes["fault_free"]
    clean_s = statistics.median(s.run_s for s in clean)
    anomalies = [f"fault-free run: servers declared lost: {s.declared}" for s in clean
                 if s.declared]
    anomalies += ["fault-free run: outputs differ from the inline run's" for s in clean
                  if s.outputs != reference]
    fig: dict[str, Any] = {
        "vertices": plan.n_vertices, "edges": plan.n_edges, "ms_per_vertex": sizes["fault_ms"],
        "servers": 3, "kill_after_vertices": rounds.kill_at,
        "timing": {"ping_interval_s": TIMING.ping_interval, "dead_after_s": TIMING.dead_after},
        "detection_target_s": TARGETS["detection_s"],
        "fault_free": {"run_s": [s.run_s for s in clean], "median_run_s": clean_s,
                       **without_seconds(timing.summary("fault_free"))}}
    print(f"1. a server lost mid-job: {plan.n_vertices} vertices of {sizes['fault_ms']:g} ms "
          f"on 3 servers; fault-free {fmt_s(clean_s)} (median of {len(clean)}); kill after "
          f"{rounds.kill_at} vertices finished; detection target <= "
          f"{TARGETS['detection_s']:g} s ({HEARTBEAT_INTERVALS} heartbeat intervals of "
          f"{TIMING.ping_interval:g} s, dead_after {TIMING.dead_after:g} s)")
    for kind in FAULT_KINDS:
        fig[kind] = strike_figures(kind, rounds.strikes[kind], clean, reference, anomalies)
        fig[kind].update(without_seconds(timing.summary(kind)))
    fig["results_equal"] = all(fig[kind]["results_equal"] for kind in FAULT_KINDS)
    fig["anomalies"] = anomalies
    out["fault"] = fig
    print("".join(f"   !! {a}\n" for a in anomalies), end="")


def strike_figures(kind: str, group: list[Strike], clean: list[Strike], reference: dict,
                   anomalies: list[str]) -> dict[str, Any]:
    """The figures of one kind of strike; what went wrong is added to ``anomalies``."""
    clean_s = statistics.median(s.run_s for s in clean)
    for strike in group:
        what = f"{kind} kill of {strike.victim}"
        if strike.error is not None:
            anomalies.append(f"{what}: the run failed after {strike.run_s:.2f} s (killed at "
                             f"{strike.kill_after_s:.2f} s): {strike.error}")
        elif strike.outputs != reference or any(s.outputs != strike.outputs for s in clean):
            anomalies.append(f"{what}: outputs differ from the fault-free run's")
        if strike.error is not None and not strike.declared:
            ended = strike.run_s - (strike.kill_after_s or 0.0)
            anomalies.append(f"{what}: the run failed {ended:.2f} s after the kill, before "
                             "the gateway declared any server lost")
        elif [(d["server"], d["kind"]) for d in strike.declared] != [(strike.victim, kind)]:
            anomalies.append(f"{what}: the gateway declared {strike.declared} "
                             f"(expected the victim alone, kind {kind!r})")
        if strike.error is None and len(strike.lost_events) != 1:
            anomalies.append(f"{what}: server_events 'lost': {strike.lost_events}")
    finished = [s for s in group if s.error is None]
    detections = [s.detection_s for s in group if s.detection_s is not None]
    run_s = [s.run_s for s in finished]
    figure = {
        "runs": len(group), "finished": len(finished),
        "results_equal": len(finished) == len(group) and all(
            s.outputs == reference for s in group),
        "run_s": run_s, "median_run_s": statistics.median(run_s) if run_s else None,
        "extra_s": [r - clean_s for r in run_s],
        "median_extra_s": statistics.median(run_s) - clean_s if run_s else None,
        "detection_s": detections,
        "median_detection_s": statistics.median(detections) if detections else None,
        "max_detection_s": max(detections) if len(detections) == len(group) else None,
        "killed_after_s": [s.kill_after_s for s in group],
        "finished_at_kill": [s.finished_at_kill for s in group],
        "declared": [s.declared for s in group],
        "lost_events": [s.lost_events for s in group],
        "warnings": [s.warnings for s in group],
        "lost_attempts": [s.lost_attempts for s in group],
        "errors": [s.error for s in group if s.error is not None],
        "failed_run_s": [s.run_s for s in group if s.error is not None]}
    detected = ", ".join(f"after {d:.2f} s" for d in detections) or "never"
    how = "server and its heartbeat" if kind == "system" else "server only; heartbeat lives"
    outcome = (f"run {fmt_s(figure['median_run_s'])}, +{figure['median_extra_s']:.2f} s vs "
               "fault-free" if run_s else "no run finished")
    print(f"   {kind} kill ({how}): {outcome} ({len(finished)}/{len(group)} finished, "
          f"outputs {'equal' if figure['results_equal'] else 'NOT equal / missing'}); "
          f"declared lost {detected} (target <= {TARGETS['detection_s']:g} s), "
          f"as {[d['kind'] for s in group for d in s.declared]}")
    return figure


def without_seconds(summary: dict) -> dict:
    """Rounds.summary renamed: a round's seconds include replacing a struck pool first, so
    they are kept as ``round_s``; the figure is ``run_s``."""
    return {"round_s": summary["s"], "cpu_ours_s": summary["cpu_ours_s"],
            "others_cores": summary["others_cores"]}


# ---- figure 2 ---------------------------------------------------------------------------
def data_spg(megabytes: float, hops: int) -> str:
    """One chain ``block -> bump x hops -> checksum``, every edge ``[channel = tcp]``:
    with round_robin placement its vertices alternate between 2 servers."""
    names = ["gen", *(f"bump{i}" for i in range(hops)), "total"]
    lines = ["pipeline cluster_bench_data", f"use {TASKS} as t", "",
             f"node gen = t.block(mb = {megabytes:g})"]
    lines += [f"node bump{i} = t.bump" for i in range(hops)]
    lines += ["node total = t.checksum", "", " -> ".join(names) + " [channel = tcp]"]
    return "\n".join(lines) + "\n"


def crossings(plan: Any, result: Any) -> int:
    """Edges whose two ends ran on different servers."""
    server = {name: record.server for name, record in result.vertices.items()}
    count = 0
    for vertex in range(plan.n_vertices):
        child = plan.vertex_name(vertex)
        count += sum(server[plan.vertex_name(p)] != server[child]
                     for p in plan.predecessors(vertex).tolist())
    return count


def curve_rounds(plan: Any, plain: list[str], secure: list[str], keys: Path, rounds: int,
                 limit: float, what: str, **options: Any) -> Any:
    return alternate(rounds, {
        "plain": bounded(lambda: run(plan, servers=plain, journal=False, **options), limit,
                         f"{what} without keys"),
        "curve": bounded(lambda: run(plan, servers=secure, keys=str(keys), journal=False,
                                     **options), limit, f"{what} with CURVE")})


def raw_curve_ratio(megabytes: float, frame_mb: float, rounds: int = 3) -> dict[str, float]:
    """What CURVE costs ZeroMQ itself: raw pyzmq PUSH -> PULL over tcp on 127.0.0.1
    (``copy=False``, a receiving thread), ``megabytes`` in frames of ``frame_mb``, with
    and without CURVE keys; medians of ``rounds``. Encryption runs on one core in
    libzmq, so this bounds what any channel over CURVE can reach."""
    import numpy as np
    import zmq

    ctx = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    frame = memoryview(np.random.default_rng(1).random(int(frame_mb * 2 ** 17))).cast("B")
    count = max(1, round(megabytes / frame_mb))
    seconds: dict[str, float] = {}
    try:
        for side in ("plain", "curve"):
            pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
            for sock in (pull, push):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, 10_000)
            if side == "curve":
                pull.curve_server, pull.curve_secretkey = True, server_secret
                pull.curve_publickey = server_public
                push.curve_serverkey, push.curve_publickey = server_public, client_public
                push.curve_secretkey = client_secret
            push.connect(f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}")
            push.send(b"hello")
            pull.recv()
            timed = []
            for _ in range(rounds):
                receiver = threading.Thread(target=lambda: [pull.recv(copy=False)
                                                            for _ in range(count)])
                began = time.perf_counter()
                receiver.start()
                for _ in range(count):
                    push.send(frame, copy=False)
                receiver.join(30)
                timed.append(time.perf_counter() - began)
            seconds[side] = statistics.median(timed)
            pull.close()
            push.close()
    finally:
        ctx.term()
    total = count * frame.nbytes / 1e6
    return {"mb": total, "mb_per_s_plain": total / seconds["plain"],
            "mb_per_s_curve": total / seconds["curve"],
            "throughput_ratio": seconds["plain"] / seconds["curve"]}


def bench_curve(pool: ServerPool, workdir: Path, sizes: dict, out: dict) -> None:
    """CURVE on (2 servers with keys) against off (2 servers of the pool)."""
    keys = workdir / "keys"
    keygen(keys)
    dag = make_dag(sizes["curve_layers"], sizes["curve_width"])
    plan = compile_text(workdir, "curve_dag", dag_spg(dag))
    data = compile_text(workdir, "curve_data", data_spg(sizes["data_mb"], sizes["data_hops"]))
    plain = started_pool(pool)[:2]
    limit = sizes["deadline_s"]
    with local_servers(2, ["--keys", str(keys)]) as secure_servers:
        secure = secure_servers.addresses
        run(pool.warm_plan, servers=secure, keys=str(keys), journal=False)
        run(data, servers=secure, keys=str(keys), journal=False, placement="round_robin")
        run(data, servers=plain, journal=False, placement="round_robin")
        dag_rounds = curve_rounds(plan, plain, secure, keys, sizes["rounds_curve"], limit,
                                  "the DAG on 2 servers")
        data_rounds = curve_rounds(data, plain, secure, keys, sizes["rounds_data"], limit,
                                   "the 8 MB chain", placement="round_robin")
    reference = run(plan, inline=True, journal=False).outputs
    for side, result in dag_rounds.last.items():
        if result.outputs != reference:
            raise AssertionError(f"DAG outputs ({side}) differ from the inline run's")
    data_reference = run(data, inline=True, journal=False).outputs
    fig: dict[str, Any] = {"dag": {"layers": dag.layers, "width": dag.width,
                                   "vertices": plan.n_vertices}}
    n = plan.n_vertices
    plain_rate, curve_rate = n / dag_rounds.median("plain"), n / dag_rounds.median("curve")
    fig["dag"].update({"tasks_per_s_plain": plain_rate, "tasks_per_s_curve": curve_rate,
                       "throughput_ratio": curve_rate / plain_rate,
                       "plain": dag_rounds.summary("plain"), "curve": dag_rounds.summary("curve")})
    print(f"2. CURVE on vs off, {n} trivial tasks on 2 servers: without keys "
          f"{plain_rate:,.0f} tasks/s, with CURVE {curve_rate:,.0f} tasks/s -> "
          f"{curve_rate / plain_rate:.2f}x (target >= {TARGETS['curve_throughput_ratio']:g}x); "
          f"medians of {sizes['rounds_curve']}, outputs equal")
    moved: dict[str, Any] = {}
    for side, result in data_rounds.last.items():
        if result.outputs != data_reference:
            raise AssertionError(f"8 MB chain outputs ({side}) differ from the inline run's")
        tcp = result.channels.get("tcp", [0, 0])
        moved[side] = {"tcp_inputs": tcp[0], "tcp_bytes": tcp[1],
                       "crossings": crossings(data, result), "channels": result.channels}
    edges = data.n_edges
    for side in ("plain", "curve"):
        if moved[side]["crossings"] != edges or moved[side]["tcp_inputs"] < edges:
            raise AssertionError(f"8 MB chain ({side}): {moved[side]['crossings']} of {edges} "
                                 f"edges crossed servers, tcp carried {moved[side]['tcp_inputs']} "
                                 "inputs; every edge should cross over tcp")
    megabytes = moved["curve"]["tcp_bytes"] / 1e6
    plain_s, curve_s = data_rounds.median("plain"), data_rounds.median("curve")
    fig["data"] = {"array_mb": sizes["data_mb"], "hops": sizes["data_hops"], "edges": edges,
                   "mb_over_tcp": megabytes, "mb_per_s_plain": megabytes / plain_s,
                   "mb_per_s_curve": megabytes / curve_s, "throughput_ratio": plain_s / curve_s,
                   "moved": moved, "plain": data_rounds.summary("plain"),
                   "curve": data_rounds.summary("curve")}
    raw = raw_curve_ratio(megabytes, sizes["data_mb"])
    fig["data"]["raw_zmq"] = raw
    fig["data"]["vs_raw_curve"] = fig["data"]["mb_per_s_curve"] / raw["mb_per_s_curve"]
    out["curve"] = fig
    print(f"   8 MB arrays along a chain of {data.n_vertices} vertices, round_robin, "
          f"[channel = tcp] ({edges} crossings, {megabytes:.0f} MB over tcp): without keys "
          f"{fmt_s(plain_s)} ({megabytes / plain_s:.0f} MB/s), with CURVE {fmt_s(curve_s)} "
          f"({megabytes / curve_s:.0f} MB/s) -> {plain_s / curve_s:.2f}x; raw pyzmq "
          f"{raw['mb_per_s_plain']:.0f} / {raw['mb_per_s_curve']:.0f} MB/s -> "
          f"{raw['throughput_ratio']:.2f}x; ours with CURVE is {fig['data']['vs_raw_curve']:.2f}x "
          f"raw pyzmq with CURVE (target >= {TARGETS['curve_throughput_ratio']:g}x); medians of "
          f"{sizes['rounds_data']}, checksums equal")


# ---- figure 3 ---------------------------------------------------------------------------
def bench_vs_dask(pool: ServerPool, workdir: Path, sizes: dict, out: dict) -> None:
    """Tasks per second, 3 servers against Dask distributed with 3 worker processes."""
    dag = make_dag(sizes["dask_layers"], sizes["dask_width"])
    plan = compile_text(workdir, "dask_dag", dag_spg(dag))
    rounds, cluster_s = rounds_vs_dask(plan, dag, started_pool(pool), sizes["rounds_dask"],
                                       sizes["deadline_s"], workdir, STARTED.note_descendants)
    n = plan.n_vertices
    ours, dask = n / rounds.median("ours"), n / rounds.median("dask")
    out["vs_dask"] = {"layers": dag.layers, "width": dag.width, "vertices": n,
                      "tasks_per_s": ours, "dask_distributed_tasks_per_s": dask,
                      "ratio_vs_dask_distributed": ours / dask,
                      "ours": rounds.summary("ours"), "dask_distributed": rounds.summary("dask"),
                      "servers_start_s": pool.started_s, "dask_cluster_start_s": cluster_s,
                      "reduced_for_quick": dag.layers != SIZES["full"]["dask_layers"]}
    print(f"3. 3 servers vs dask distributed (3 workers x 1 thread), {n} tasks"
          f"{' (reduced for --quick)' if out['vs_dask']['reduced_for_quick'] else ''}: ours "
          f"{ours:,.0f} tasks/s, dask {dask:,.0f} tasks/s -> {ours / dask:.2f}x (target >= "
          f"{TARGETS['servers_vs_dask_distributed']:g}x); medians of {sizes['rounds_dask']}, "
          f"sinks equal; start-up (not timed): servers {fmt_s(pool.started_s)}, cluster "
          f"{fmt_s(cluster_s)}; other jobs busy on {rounds.others_cores('ours'):.1f} / "
          f"{rounds.others_cores('dask'):.1f} cores")


# ---- verdicts and main --------------------------------------------------------------------
def dig(node: Any, *path: str) -> Any:
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


CHECKS: dict[str, tuple[str, tuple[str, ...], Callable[[Any], bool]]] = {
    # target -> (figure, path to its value in the output, test)
    "fault_detection_system_le_3s": (
        "fault", ("fault", "system", "max_detection_s"),
        lambda v: v <= TARGETS["detection_s"]),
    "fault_detection_application_le_3s": (
        "fault", ("fault", "application", "max_detection_s"),
        lambda v: v <= TARGETS["detection_s"]),
    "fault_results_equal_fault_free": ("fault", ("fault", "results_equal"), bool),
    "curve_dag_throughput_ge_0_8x": (
        "curve", ("curve", "dag", "throughput_ratio"),
        lambda v: v >= TARGETS["curve_throughput_ratio"]),
    "curve_data_ge_0_8x_raw_zmq_curve": (
        "curve", ("curve", "data", "vs_raw_curve"),
        lambda v: v >= TARGETS["curve_throughput_ratio"]),
    "servers3_ge_10x_dask_distributed_tasks_per_s": (
        "vs_dask", ("vs_dask", "ratio_vs_dask_distributed"),
        lambda v: v >= TARGETS["servers_vs_dask_distributed"]),
}


def targets_met(out: dict) -> dict[str, bool | None]:
    """Met or not; not met when its figure failed or never gave a value (a detection
    that never happened), None when a baseline is not installed."""
    met: dict[str, bool | None] = {}
    for name, (figure, path, test) in CHECKS.items():
        value, error = dig(out, *path), out.get("errors", {}).get(figure, "")
        if value is not None:
            met[name] = bool(test(value))
        else:
            met[name] = None if error.startswith(UNMEASURABLE) else False
    verdicts = list(met.values())
    met["all"] = False if False in verdicts else None if None in verdicts else True
    return met


def run_figures(sizes: dict, workdir: Path, out: dict) -> None:
    warm = small_dag_plan(workdir)
    struck = ServerPool(3, warm)  # figure 1 kills servers: its own pool, then closed
    try:
        guarded("fault", lambda: bench_faults(struck, workdir, sizes, out), out, struck)
    finally:
        struck.close()
    pool = ServerPool(3, warm)
    try:
        guarded("curve", lambda: bench_curve(pool, workdir, sizes, out), out, pool)
        guarded("vs_dask", lambda: bench_vs_dask(pool, workdir, sizes, out), out, pool)
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 60 s)")
    mode = "quick" if parser.parse_args(argv).quick else "full"
    # a SIGTERM becomes SystemExit, so that the finally blocks stop every process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: dict[str, Any] = {"mode": mode, "sizes": SIZES[mode]}
    sizes, info = SIZES[mode], machine("zmq", "dask", "distributed", "psutil")
    print(f"SerPyTor cluster benchmark ({mode}) on {info['cpu']}, {info['cores']} cores, "
          f"Python {info['python']}, dask {info['dask']}")
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
            run_figures(sizes, Path(tmp), out)
    finally:
        out["leftover_processes"] = STARTED.leftovers()
    out["targets_met"] = targets_met(out)
    info["loadavg_1m_end"] = os.getloadavg()[0]
    out["machine"] = info
    out["wall_s"] = time.perf_counter() - began
    print(f"targets: {targets_text(out['targets_met'])}"
          + f"; leftover processes: {len(out['leftover_processes'])}"
          + f"; wall {out['wall_s']:.1f} s")
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
