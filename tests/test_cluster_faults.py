"""Fault tolerance of a cluster of ``serpytor server`` processes (DESIGN.md section 4,
README "Placement and failures"): servers SIGKILLed, SIGSTOPped (hung) or left without
their heartbeat in the middle of a job, a straggler, a vertex that kills its server,
hostile bytes on every port, and a server that comes back at its address.

Every test runs real processes on 127.0.0.1 (random ports) with the gateway in this
process, on a thread (:class:`Background`), so that the test can strike while the job
runs; every wait is bounded, and every process started is killed in a ``finally``
(:func:`cluster`), a server's heartbeat child included -- found with psutil before the
server could die, because a dead server's heartbeat is reparented and lingers.

The pipelines are in ``tests/cluster_fixtures/``; their vertices append ``NAME PID`` to
an execution log when they *start*, so the log tells which server process began what,
and the outputs depend only on the graph, so a run with faults must give exactly the
outputs of a fault-free inline run.

The moment the gateway declares a server lost is recorded by wrapping
``Gateway._server_lost`` (:func:`spy_on_losses`); what the run reports is checked in
``RunResult.server_events``.

Some failures depend on timing in a whole-cluster run; each is also reproduced
deterministically on the wire, with hand-made messages (sections 6b and 6c).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from runtime_helpers import (
    START_TIMEOUT_S,
    ServerProcess,
    await_ready,
    journaled_vertices,
    launch_server,
    log_lines,
    start_servers,
    wait_for,
)

import serpytor
from serpytor.compiler.plan import encode_plan
from serpytor.errors import RemoteTaskError
from serpytor.runtime.api import run
from serpytor.runtime.gateway import Gateway
from serpytor.runtime.links import Timing
from serpytor.runtime.status import status_path

FIXTURES = Path(__file__).resolve().parent / "cluster_fixtures"
CLUSTER = FIXTURES / "cluster.spg"      # 1,901 vertices of `ms` milliseconds
CHAIN = FIXTURES / "chain.spg"          # 49 vertices of `ms` milliseconds
STRAGGLER = FIXTURES / "straggler.spg"  # 6 replicas, one slow on its first run
DIE = FIXTURES / "die.spg"              # `die` exits its server with status 3
PURE = FIXTURES / "pure.spg"            # side-effect free: what fuzzed tasks run

TIMING = Timing()
DEAD_AFTER = TIMING.dead_after
# A run with a fault must keep starting vertices: a gateway that needs longer than this
# to get going again after a loss (dead_after, plus generous margins for a loaded
# machine) is stuck, and the test fails then rather than at pytest's timeout.
STALL_S = 15.0
RUN_S = 90.0  # no run of this module may take longer


# ---- processes -----------------------------------------------------------------------
def heartbeat_child(server: ServerProcess) -> psutil.Process | None:
    """The heartbeat process a server started (its child running the heartbeat)."""
    try:
        children = psutil.Process(server.pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if any("heartbeat" in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


@dataclass
class Member:
    """One server of a test's cluster, and its heartbeat process."""

    server: ServerProcess
    heartbeat: psutil.Process | None = None

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def pid(self) -> int:
        return self.server.pid

    def named_in(self, label: str) -> bool:
        """Is this the server a gateway label (``NAME at ADDRESS``) names?"""
        return label == f"{self.name} at {self.address}"

    def signal(self, signum: int, heartbeat: bool = False) -> None:
        """Send ``signum`` to the server (and first to its heartbeat)."""
        if heartbeat:
            self.signal_heartbeat(signum)
        os.kill(self.pid, signum)

    def signal_heartbeat(self, signum: int) -> None:
        assert self.heartbeat is not None, f"server {self.name} has no heartbeat"
        self.heartbeat.send_signal(signum)

    def kill(self, heartbeat: bool = False) -> None:
        """SIGKILL the server -- its heartbeat first when ``heartbeat`` (the machine
        is gone: nothing answers for it), else the heartbeat lives on to say so."""
        self.signal(signal.SIGKILL, heartbeat)

    def shutdown(self) -> None:
        """Whatever state it is in: resume, stop (SIGTERM, then SIGKILL), reap; then
        make sure its heartbeat is gone too."""
        try:
            if self.server.process.poll() is None:
                os.kill(self.pid, signal.SIGCONT)
            if self.heartbeat is not None:
                self.heartbeat.send_signal(signal.SIGCONT)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        try:
            self.server.stop()
        finally:
            if self.heartbeat is not None:
                gone(self.heartbeat)
            # the status block of a server that could not remove it (killed, and its
            # heartbeat with it before the linger was over)
            if self.server.process.returncode is not None:
                Path(status_path(self.pid)).unlink(missing_ok=True)


def gone(process: psutil.Process, seconds: float = 5.0) -> None:
    """SIGKILL a process that may not be our child; wait until it is gone or a zombie
    (whoever its parent is reaps it)."""
    try:
        process.kill()
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {process.pid} survived SIGKILL for {seconds:g} s")


def members_of(servers: list[ServerProcess]) -> list[Member]:
    try:
        return [Member(server, heartbeat_child(server)) for server in servers]
    except BaseException:
        for server in servers:
            server.kill()
        raise


def addresses(members: list[Member]) -> list[str]:
    return [m.address for m in members]


@contextmanager
def cluster(count: int, prefix: str) -> Iterator[list[Member]]:
    """``count`` servers with their heartbeats; all killed and reaped at the end."""
    members = members_of(start_servers(count, prefix=prefix))
    try:
        for member in members:
            assert member.heartbeat is not None, f"server {member.name} has no heartbeat"
        yield members
    finally:
        shutdown_all(members)


def shutdown_all(members: list[Member]) -> None:
    errors = []
    for member in members:
        try:
            member.shutdown()
        except Exception as error:  # noqa: BLE001 - stop the others anyway
            errors.append(error)
    if errors:
        raise errors[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_at(address: str, name: str) -> Member:
    """A server bound at a fixed address (``--bind`` given last wins)."""
    server = launch_server("--bind", address, name=name)
    await_ready(server, time.monotonic() + START_TIMEOUT_S)
    member = Member(server, heartbeat_child(server))
    assert member.address == address, member.address
    return member


# ---- the gateway on a thread --------------------------------------------------------
class Background:
    """``target()`` on a daemon thread; :meth:`result` waits a bounded time."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._main, args=(target,), daemon=True,
                                       name="cluster-fault-gateway")
        self.thread.start()

    def _main(self, target: Callable[[], Any]) -> None:
        try:
            self.value = target()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error
        finally:
            self.ended = time.monotonic()

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def seconds(self) -> float:
        assert self.ended is not None
        return self.ended - self.started

    def result(self, seconds: float) -> Any:
        self.thread.join(seconds)
        if self.thread.is_alive():
            raise AssertionError(f"the run did not finish within {seconds:g} s")
        if self.error is not None:
            raise self.error
        return self.value


def in_background(pipeline: Path, members: list[Member], **options: Any) -> Background:
    options.setdefault("journal", False)
    return Background(lambda: run(pipeline, servers=addresses(members), **options))


def finish(job: Background, log: Path, seconds: float = RUN_S, stall: float = STALL_S) -> Any:
    """Wait for the run; fail if it takes ``seconds`` or starts no vertex for ``stall``
    seconds (then it is stuck: a lost server's work should be running elsewhere)."""
    deadline = time.monotonic() + seconds
    seen, changed = -1, time.monotonic()
    while not job.done:
        now = time.monotonic()
        count = len(log_lines(log))
        if count != seen:
            seen, changed = count, now
        if now - changed > stall:
            raise AssertionError(f"the run is stuck: no vertex started for {stall:g} s "
                                 f"({count} started so far)")
        if now > deadline:
            raise AssertionError(f"the run did not finish within {seconds:g} s")
        time.sleep(0.02)
    return job.result(5)


def wait_until_stopped(job: Background, seconds: float = 20.0) -> None:
    """After the servers are gone a gateway still running ends (every server lost)."""
    job.thread.join(seconds)


@dataclass
class Loss:
    at: float      # time.monotonic() when the gateway declared it
    label: str     # the server, NAME at ADDRESS
    details: tuple  # why, kind, exit status


@dataclass
class LossSpy:
    seen: list[Loss] = field(default_factory=list)

    def of(self, member: Member) -> list[Loss]:
        return [loss for loss in self.seen if member.named_in(loss.label)]


def spy_on_losses(patch: pytest.MonkeyPatch) -> LossSpy:
    """Record when (and why) the gateway declares each server lost."""
    spy = LossSpy()
    original = Gateway._server_lost

    def spying(self, link, *args, **kwargs):
        spy.seen.append(Loss(time.monotonic(), link.label, args))
        return original(self, link, *args, **kwargs)

    patch.setattr(Gateway, "_server_lost", spying)
    return spy


@pytest.fixture
def losses(monkeypatch) -> LossSpy:
    return spy_on_losses(monkeypatch)


# ---- logs, references, events ----------------------------------------------------------
def started(log: Path) -> list[tuple[str, int]]:
    """(vertex, pid of the server that started it), in order."""
    return [(name, int(pid)) for name, pid in (line.split() for line in log_lines(log))]


def started_by(log: Path, member: Member) -> list[str]:
    return [name for name, pid in started(log) if pid == member.pid]


_REFERENCES: dict[tuple[Path, str], dict] = {}


def reference(pipeline: Path, **overrides: Any) -> dict:
    """The outputs of a fault-free inline run (no sleeping, no log)."""
    key = (pipeline, json.dumps(overrides, sort_keys=True))
    if key not in _REFERENCES:
        _REFERENCES[key] = run(pipeline, inline=True, journal=False,
                               overrides=overrides or None).outputs
    return _REFERENCES[key]


def events(result: Any, event: str) -> list[dict]:
    return [e for e in result.server_events if e["event"] == event]


def lost_events(result: Any, member: Member) -> list[dict]:
    return [e for e in events(result, "lost") if member.named_in(e["server"])]


def all_names(pipeline: Path) -> set[str]:
    return set(serpytor.compile_file(pipeline).names)


# ---- 1. SIGKILL at random points of a 2,000-vertex job ---------------------------------
KILL_RUN_S = 30.0  # a fault-free run takes ~3-4 s


KILLS = [  # seed, journal, what dies
    pytest.param(1, True, "server", id="seed1-journal-server"),
    pytest.param(2, False, "server", id="seed2-memory-server"),
    pytest.param(3, True, "machine", id="seed3-journal-machine"),
]


@pytest.mark.slow
@pytest.mark.parametrize("seed,journaled,what", KILLS)
def test_a_server_sigkilled_mid_job_is_replaced_by_the_others(seed, journaled, what,
                                                               tmp_path, losses):
    """3 servers run cluster.spg (1,901 vertices of 3 ms); after k executions (seeded)
    one server is SIGKILLed -- alone ("server": its heartbeat lives to report the
    death, an application-level failure) or with its heartbeat ("machine": nothing
    answers for it, a system-level failure). The run must finish on the two others
    with the fault-free outputs, name the killed server (and only it) as lost, and
    redo what was lost with it; with a journal, a later run executes nothing.

    What the surviving servers had queued when the victim died varies from run to
    run; the two ways that can go wrong are pinned on the wire, by
    test_a_batch_whose_fetch_fails_fails_only_the_tasks_that_lost_inputs and
    test_a_failed_fetch_leaves_no_stale_reply_for_the_next_one."""
    rng = random.Random(seed)
    kill_after = rng.randrange(150, 1400)
    log, journal = tmp_path / "executions.log", tmp_path / "journal"
    overrides = {"log": str(log), "ms": 3}
    with cluster(3, f"kill{seed}") as members:
        victim = members[rng.randrange(3)]
        survivors = [m for m in members if m is not victim]
        job = in_background(CLUSTER, members, journal=journal if journaled else False,
                            overrides=overrides)
        try:
            wait_for(lambda: len(log_lines(log)) >= kill_after or job.done, 60,
                     f"{kill_after} executions")
            assert not job.done, f"the run ended before the kill point: {job.error!r}"
            victim.kill(heartbeat=(what == "machine"))
            killed_at = time.monotonic()
            result = finish(job, log, seconds=KILL_RUN_S)
        finally:
            shutdown_all([victim])
            if not job.done:
                shutdown_all(survivors)
                wait_until_stopped(job)

        assert result.outputs == reference(CLUSTER)
        names = all_names(CLUSTER)
        assert {n for n, r in result.vertices.items() if r.status == "executed"} == names
        assert {name for name, _ in started(log)} == names
        assert [loss.label for loss in losses.seen] == [f"{victim.name} at {victim.address}"]
        assert losses.seen[0].at - killed_at < DEAD_AFTER + 5
        [lost] = events(result, "lost")
        assert victim.named_in(lost["server"]), result.server_events
        assert lost["kind"] == ("system" if what == "machine" else "application"), lost
        assert not events(result, "rejoined")
        assert result.lost_attempts >= 1  # its tasks in flight ran again elsewhere
        assert not [p for _, p in started(log)[kill_after + 50:] if p == victim.pid]

        if journaled:
            assert sorted(journaled_vertices(journal)) == sorted(names)
            before = len(log_lines(log))
            again = Background(lambda: run(CLUSTER, servers=addresses(survivors),
                                           journal=journal, overrides=overrides)).result(60)
            assert again.stats["executed"] == 0 and again.stats["reused"] == len(names)
            assert len(log_lines(log)) == before, "a journaled vertex ran again"
            assert again.outputs == result.outputs


# ---- 2. SIGSTOP: a hung server, a frozen machine -----------------------------------------
@pytest.mark.parametrize("what", ["server", "machine"])
def test_a_stopped_server_is_declared_dead_and_its_work_done_elsewhere(what, tmp_path,
                                                                       losses):
    """SIGSTOP of a server while it runs a vertex. "server": its heartbeat still
    answers and reports the server alive but its status going stale -- it is hung, an
    application-level failure; "machine": its heartbeat is stopped too -- a
    system-level one. Either way the gateway must declare it dead in bounded time
    (about dead_after), finish the job on the others with the right outputs, and not
    be disturbed when the server is resumed (SIGCONT) mid-run; the resumed server
    then serves the next run correctly."""
    log = tmp_path / "executions.log"
    with cluster(3, f"stop-{what}") as members:
        victim = members[1]
        job = in_background(CHAIN, members, overrides={"log": str(log), "ms": 200})
        stopped_at = None
        try:
            wait_for(lambda: started_by(log, victim) or job.done, 30,
                     f"server {victim.name} to start a vertex")
            victim.signal(signal.SIGSTOP, heartbeat=(what == "machine"))
            stopped_at = time.monotonic()
            assert not job.done
            wait_for(lambda: losses.of(victim) or job.done, DEAD_AFTER + 20,
                     f"the gateway to declare server {victim.name} dead")
            victim.signal(signal.SIGCONT, heartbeat=(what == "machine"))
            result = finish(job, log)
        finally:
            victim.signal(signal.SIGCONT, heartbeat=(what == "machine"))
            if not job.done:
                shutdown_all(members)
                wait_until_stopped(job)

        assert result.outputs == reference(CHAIN)
        [loss] = losses.of(victim)
        delay = loss.at - stopped_at
        assert DEAD_AFTER - 1.5 < delay < DEAD_AFTER + 5, f"declared dead after {delay:.1f} s"
        assert len(losses.seen) == 1, losses.seen
        [lost] = lost_events(result, victim)
        if what == "server":
            assert lost["kind"] == "application" and "hung" in lost["why"], lost
        else:
            assert lost["kind"] == "system" and "heartbeat" in lost["why"], lost
        # the vertex it was running when it stopped ran again on another server
        first = started_by(log, victim)[0]
        assert [p for n, p in started(log) if n == first and p != victim.pid]

        # resumed, it is a server like the others
        again = in_background(CHAIN, members, overrides={"log": str(log), "ms": 20}).result(60)
        assert again.outputs == reference(CHAIN)
        assert not events(again, "lost"), again.server_events
        assert victim.name in {r.server for r in again.vertices.values()}


# ---- 3. a heartbeat killed, its server alive ------------------------------------------------
def test_a_silent_heartbeat_of_a_live_server_is_a_warning_not_a_loss(tmp_path, losses):
    """The heartbeat of one of 3 servers is SIGKILLed early in a ~6 s job. Its server
    still answers, so it is not lost: it keeps running vertices, the run finishes
    correctly with nothing re-run, and a warning event says the heartbeat is silent
    while the server answers."""
    log = tmp_path / "executions.log"
    with cluster(3, "beatless") as members:
        victim = members[0]
        job = in_background(CHAIN, members, overrides={"log": str(log), "ms": 400})
        try:
            wait_for(lambda: started_by(log, victim) or job.done, 30,
                     f"server {victim.name} to start a vertex")
            victim.signal_heartbeat(signal.SIGKILL)
            killed_at = len(log_lines(log))
            assert not job.done
            result = finish(job, log)
        finally:
            if not job.done:
                shutdown_all(members)
                wait_until_stopped(job)
        assert victim.server.alive()

    assert result.outputs == reference(CHAIN)
    assert not losses.seen and not events(result, "lost"), result.server_events
    assert result.lost_attempts == 0
    assert {r.status for r in result.vertices.values()} == {"executed"}
    warnings = [e for e in events(result, "warning") if victim.named_in(e["server"])]
    assert len(warnings) == 1, result.server_events
    why = warnings[0]["why"]
    assert "heartbeat" in why and "silent" in why and "answers" in why, why
    assert [p for _, p in started(log)[killed_at:] if p == victim.pid], \
        "the server whose heartbeat died got no more work"


# ---- 4. a straggler ------------------------------------------------------------------
@pytest.mark.parametrize("slow", [
    pytest.param(0, id="first-partition"),
    pytest.param(5, id="last-partition")])
def test_a_straggler_is_duplicated_and_the_copy_wins(slow, tmp_path):
    """A stage of 6 replicas on 3 servers: partition ``slow`` sleeps 6 s on its first
    execution only, the others 0.2 s. Once half the stage is done, a vertex running
    longer than max(2 x median, 1 s) gets a duplicate on another server, which takes
    0.2 s: the run must finish well before the slow copy would (< 5 s) with the
    right output, and count the duplicate and its win."""
    log, marker = tmp_path / "executions.log", tmp_path / "ran-once"
    overrides = {"log": str(log), "marker": str(marker), "slow": slow}
    with cluster(3, f"straggle{slow}") as members:
        job = in_background(STRAGGLER, members, overrides=overrides)
        try:
            result = job.result(30)
        finally:
            if not job.done:
                shutdown_all(members)
                wait_until_stopped(job)
            for member in members:  # one sleeps in the slow copy: SIGTERM would wait 5 s
                member.kill(heartbeat=True)
        seconds = job.seconds

    assert marker.exists()
    assert result.outputs == reference(STRAGGLER, slow=slow, marker=str(tmp_path / "none"),
                                       seconds=0, usual=0)
    assert result.duplicates >= 1 and result.duplicates_won >= 1, \
        (result.duplicates, result.duplicates_won)
    assert seconds < 5.0, f"the run took {seconds:.1f} s (the slow copy takes 6 s)"
    straggler = result.vertices[f"s[{slow}]"]
    assert straggler.status == "executed" and straggler.attempts >= 2
    assert [name for name, _ in started(log)].count(f"s[{slow}]") >= 2


# ---- 5. a vertex that kills its server ------------------------------------------------------
@pytest.mark.parametrize("keep_going", [False, True], ids=["fail", "keep-going"])
def test_a_vertex_exiting_its_server_fails_naming_vertex_server_and_status(keep_going,
                                                                           tmp_path):
    """``die`` calls os._exit(3) on one of 2 servers. The run fails within 10 s with a
    RemoteTaskError naming the vertex and the server and saying it exited with status
    3 (it is not retried: only that server is dead); with keep_going the rest
    finishes and server_events says it was an application-level loss."""
    log = tmp_path / "executions.log"
    with cluster(2, f"die{int(keep_going)}") as members:
        job = in_background(DIE, members, overrides={"log": str(log)},
                            keep_going=keep_going)
        try:
            job.thread.join(20)
            assert job.done, "the run did not end within 20 s"
        finally:
            if not job.done:
                shutdown_all(members)
                wait_until_stopped(job)
        seconds = job.seconds
        dead = [m for m in members if not m.server.alive()]

    assert seconds < 10, f"the run took {seconds:.1f} s"
    assert len(dead) == 1, "exactly the server that ran `die` must be dead"
    victim = dead[0]
    assert victim.server.process.returncode == 3
    if keep_going:
        assert job.error is None, job.error
        result = job.value
        error = result.error
        assert result.outputs == {"fine": {"values": [1], "sum": 1}}  # ok's value is 1
        assert result.vertices["die"].status == "failed"
        [lost] = lost_events(result, victim)
        assert lost["kind"] == "application", lost
        assert "status 3" in lost["why"], lost
        assert len(events(result, "lost")) == 1
    else:
        error = job.error
    assert isinstance(error, RemoteTaskError), repr(error)
    assert error.vertex == "die"
    message = str(error)
    assert victim.name in message or victim.address in message, message
    assert "exited with status 3" in message, message
    assert started_by(log, victim).count("die") == 1
    assert [name for name, _ in started(log)].count("die") == 1


# ---- 6. fuzzed frames on every port ----------------------------------------------------------
JOB = "fuzzjob0123456789"
REPLY_TYPES = {"error", "pong", "done", "failed", "refused", "data"}


class Mutator:
    """Seeded mutations of valid messages (lists of frames)."""

    SCALARS: tuple = (None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -2 ** 64, 1e308,
                      float("nan"), "", "x", "\x00", "\u00ff" * 3, "tcp://", "ping",
                      "tasks", "job", [], {}, [1], {"v": 1}, [None, "x"])

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def frames(self, valid: list[bytes]) -> list[bytes]:
        how = self.rng.choice([self.flip, self.truncate, self.splice, self.retype,
                               self.drop_key, self.add_key, self.frame_count, self.noise])
        return how([bytes(f) for f in valid])

    def _pick(self, frames: list[bytes]) -> int:
        return self.rng.randrange(len(frames))

    def flip(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        data = bytearray(frames[i] or b"\x00")
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        frames[i] = bytes(data)
        return frames

    def truncate(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        frames[i] = frames[i][:self.rng.randrange(len(frames[i]) + 1)]
        return frames

    def splice(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        at = self.rng.randrange(len(frames[i]) + 1)
        junk = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 16)))
        frames[i] = frames[i][:at] + junk + frames[i][at:]
        return frames

    def _json(self, frames: list[bytes]) -> dict | None:
        try:
            header = json.loads(frames[0])
        except ValueError:
            return None
        return header if isinstance(header, dict) else None

    def _paths(self, value: Any, path: tuple = ()) -> list[tuple]:
        found = [path] if path else []
        if isinstance(value, dict):
            for key, item in value.items():
                found += self._paths(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                found += self._paths(item, (*path, index))
        return found

    def _set(self, header: dict, path: tuple, value: Any) -> None:
        target = header
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    def _dump(self, header: Any, frames: list[bytes]) -> list[bytes]:
        frames[0] = json.dumps(header, allow_nan=True).encode()
        return frames

    def retype(self, frames: list[bytes]) -> list[bytes]:
        """One value anywhere in the header replaced by a value of another type."""
        header = self._json(frames)
        if header is None:
            return self.flip(frames)
        path = self.rng.choice(self._paths(header) or [("type",)])
        self._set(header, path, self.rng.choice(self.SCALARS))
        return self._dump(header, frames)

    def drop_key(self, frames: list[bytes]) -> list[bytes]:
        header = self._json(frames)
        if header is None:
            return self.truncate(frames)
        paths = [p for p in self._paths(header) if isinstance(p[-1], str)]
        if paths:
            path = self.rng.choice(paths)
            target = header
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]
        return self._dump(header, frames)

    def add_key(self, frames: list[bytes]) -> list[bytes]:
        header = self._json(frames)
        if header is None:
            return self.splice(frames)
        key = self.rng.choice(["v", "attempt", "inputs", "context", "key", "at", "path",
                               "digest", "ch", "vertices", "hints", "host", "id",
                               "overrides", "durable", "results", "items", "stored"])
        header[key] = self.rng.choice(self.SCALARS)
        return self._dump(header, frames)

    def frame_count(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) > 1 and self.rng.random() < 0.5:
            return frames[:self.rng.randrange(1, len(frames))]
        return frames + [frames[-1]] * self.rng.randint(1, 3)

    def noise(self, frames: list[bytes]) -> list[bytes]:
        return [bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 64)))
                for _ in range(self.rng.randint(1, 3))]


def collect_replies(sock: zmq.Socket, sentinel: Callable[[dict], bool],
                    member: Member | None = None, seconds: float = 15.0) -> list[dict]:
    """Replies until one satisfies ``sentinel``; every reply must be a JSON object."""
    replies: list[dict] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not sock.poll(50):
            if member is not None and not member.server.alive():
                break  # it exited: nothing more will come
            continue
        frames = sock.recv_multipart()
        while len(frames) > 1 and frames[0] == b"":
            frames = frames[1:]  # the envelope a REQ-shaped request gets back
        try:
            reply = json.loads(frames[0])
        except ValueError:
            raise AssertionError(f"a reply that is not JSON: {frames!r:.300}") from None
        assert isinstance(reply, dict), reply
        replies.append(reply)
        if sentinel(reply):
            return replies
    state = ""
    if member is not None:
        state = (f"; server alive: {member.server.alive()}, heartbeat alive: "
                 f"{member.heartbeat.is_running()}; server stderr: "
                 f"{member.server.stderr()[-1500:]}")
    raise AssertionError(f"no final reply (waited up to {seconds:g} s) after {len(replies)} replies "
                         f"(last: {replies[-3:]}){state}")


def dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


FUZZ_ROUNDS = 500


@pytest.mark.slow
def test_fuzzed_frames_on_the_control_data_and_heartbeat_ports(tmp_path):
    """Seeded random and mutated frames -- valid job, tasks, release, cancel, get and
    heartbeat messages with bytes flipped, cut or spliced in, values replaced by
    values of other types, keys dropped or added, frames added or dropped, or plain
    noise -- at a server's control port, its data port and its heartbeat's port. Each
    socket answers errors (or, for a mutation that is still a valid message, its
    normal reply) and keeps serving; both processes stay alive, and pipelines run on
    the server afterwards give the right outputs."""
    plan = serpytor.compile_file(PURE)
    plan_bytes = encode_plan(plan)
    a0, b = plan.index_of("a[0]"), plan.index_of("b")
    ctx = zmq.Context()
    with cluster(1, "fuzz") as [member]:
        control = dealer(ctx, member.address)
        try:
            control.send_multipart([json.dumps({"type": "ping"}).encode()])
            [pong] = collect_replies(control, lambda r: r["type"] == "pong", member)
            data, beat = dealer(ctx, pong["data"]), dealer(ctx, pong["heartbeat"])
            try:
                # a job, and an output it holds, so gets and tasks have something to act on
                job_frames = [json.dumps({"type": "job", "job": JOB, "overrides": {}}).encode(),
                              plan_bytes]
                control.send_multipart(job_frames)
                control.send_multipart([json.dumps({"type": "tasks", "job": JOB, "tasks": [
                    {"v": a0, "attempt": 1, "inputs": []}]}).encode()])
                collect_replies(control, lambda r: r["type"] == "done", member)
                valid_control = [
                    job_frames,
                    [json.dumps({"type": "tasks", "job": JOB, "tasks": [
                        {"v": a0, "attempt": 2, "inputs": []},
                        {"v": b, "attempt": 1, "inputs": [{"v": a0, "ch": 0}],
                         "context": [["k", 1, "context", True]], "key": "k0"}]}).encode()],
                    [json.dumps({"type": "release", "job": JOB, "vertices": [a0 + 1]}).encode()],
                    [json.dumps({"type": "cancel", "job": JOB, "vertices": [b]}).encode()],
                    [json.dumps({"type": "ping"}).encode()],
                ]
                valid_get = [json.dumps({"type": "get", "job": JOB, "host": "elsewhere",
                                         "vertices": [a0], "hints": [0],
                                         "stored": [[b, "v0", "0" * 32]]}).encode()]
                valid_beat = [json.dumps({"type": "heartbeat", "id": 7}).encode()]
                mutate = Mutator(20240917)

                def mutated(valid: list[bytes]) -> list[bytes]:
                    return mutate.frames(list(valid))

                for round_ in range(FUZZ_ROUNDS):
                    control.send_multipart(mutated(mutate.rng.choice(valid_control)))
                    data.send_multipart(mutated(valid_get))
                    beat.send_multipart(mutated(valid_beat))
                    if round_ % 100 == 99:  # each port still answers a valid request
                        check_ports(control, data, beat, member)
                control.send_multipart([json.dumps({"type": "ping"}).encode()])
                [*_, pong] = collect_replies(control, lambda r: r["type"] == "pong", member)
                assert pong["rejected"] > 0 and pong["pid"] == member.pid
                beat.send_multipart([json.dumps({"type": "heartbeat", "id": "last"}).encode()])
                [*_, last] = collect_replies(beat, lambda r: r.get("id") == "last", member)
                assert last["type"] == "beat" and last["rejected"] > 0
                assert last["server"]["alive"] is True
                control.send_multipart([json.dumps({"type": "end", "job": JOB}).encode()])
            finally:
                data.close(0)
                beat.close(0)
        finally:
            control.close(0)
            ctx.term()
        assert member.server.alive(), member.server.stderr()[-3000:]
        assert member.heartbeat.is_running()

        # the server still runs pipelines, and right
        log = tmp_path / "executions.log"
        result = finish(in_background(CLUSTER, [member], overrides={"log": str(log), "ms": 0}),
                        log, seconds=60)
        assert result.outputs == reference(CLUSTER)
        assert Background(lambda: run(PURE, servers=[member.address], journal=False)
                          ).result(30).outputs == reference(PURE)
        assert member.server.alive()


def check_ports(control: zmq.Socket, data: zmq.Socket, beat: zmq.Socket,
                member: Member) -> None:
    """Each port answers a valid request after the garbage (every reply before it
    being a JSON object of a protocol type); both processes live."""
    control.send_multipart([json.dumps({"type": "ping"}).encode()])
    replies = collect_replies(control, lambda r: r.get("type") == "pong", member)
    assert {r.get("type") for r in replies} <= REPLY_TYPES, replies
    data.send_multipart([json.dumps({"type": "get", "job": "no-such-job", "vertices": [0],
                                     "host": "sentinel"}).encode()])
    replies = collect_replies(data, lambda r: r.get("missing") == [0] and
                              "no-such-job" in r.get("message", ""), member)
    assert {r.get("type") for r in replies} <= {"error", "data"}, replies
    beat.send_multipart([json.dumps({"type": "heartbeat", "id": "check"}).encode()])
    replies = collect_replies(beat, lambda r: r.get("id") == "check" and r["type"] == "beat",
                              member)
    assert {r.get("type") for r in replies} <= {"error", "beat"}, replies
    assert member.server.alive(), member.server.stderr()[-3000:]
    assert member.heartbeat.is_running()


# ---- 6b. hostile messages, one by one ----------------------------------------------------
def nested_json(depth: int = 20_000) -> bytes:
    """Deeper than any recursion limit, yet under the heartbeat's 64 KiB request limit."""
    return b"[" * depth + b"]" * depth


def damaged_plan_header(plan_bytes: bytes) -> bytes:
    assert plan_bytes.count(b'"edge_decls"') == 1
    return plan_bytes.replace(b'"edge_decls"', b'"edge_declz"')


def job_message(plan_bytes: bytes, job: str = JOB) -> list[bytes]:
    return [json.dumps({"type": "job", "job": job, "overrides": {}}).encode(), plan_bytes]


def tasks_message(*tasks: dict, job: str = JOB) -> list[bytes]:
    return [json.dumps({"type": "tasks", "job": job, "tasks": list(tasks)}).encode()]


# case: (port, frames(plan bytes) -> [[frames], ...] sent in order); the last message of
# a case is answered: an error, or the failure of the task it asks for
HOSTILE: dict[str, tuple[str, Callable[[bytes], list[list[bytes]]]]] = {
    "control-nested-json": ("control", lambda plan: [[nested_json()]]),
    "data-nested-json": ("data", lambda plan: [[nested_json()]]),
    "heartbeat-nested-json": ("heartbeat", lambda plan: [[nested_json()]]),
    "control-type-is-a-list": ("control", lambda plan: [[b'{"type": []}']]),
    "data-type-is-an-object": ("data", lambda plan: [
        [b'{"type": {}, "job": "j", "vertices": [0]}']]),
    "heartbeat-type-is-a-list": ("heartbeat", lambda plan: [[b'{"type": []}']]),
    "job-with-a-damaged-plan-header": ("control", lambda plan: [
        job_message(damaged_plan_header(plan), "damaged")]),
    "job-id-with-a-lone-surrogate": ("control", lambda plan: [
        [b'{"type": "job", "job": "\\udb5a", "overrides": {}}', plan]]),
    "end-of-a-job-id-with-a-lone-surrogate": ("control", lambda plan: [
        [b'{"type": "end", "job": "\\udb5a"}']]),
    "task-attempt-beyond-int64": ("control", lambda plan: [
        job_message(plan), tasks_message({"v": 0, "attempt": 2 ** 63, "inputs": []})]),
    "task-input-at-no-endpoint": ("control", lambda plan: [
        job_message(plan), tasks_message({"v": 4, "attempt": 1,
                                          "inputs": [{"v": 0, "at": "x"}]})]),
}


@pytest.fixture(scope="module")
def crash_servers():
    """A server per case (a case that crashes its server shows in that case only)."""
    members = members_of(start_servers(len(HOSTILE), prefix="crash"))
    try:
        yield dict(zip(HOSTILE, members))
    finally:
        shutdown_all(members)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_message_is_rejected_and_the_server_serves_on(case, crash_servers):
    """Each message is answered (an error, or the failure of the task it asks for), and
    the server goes on serving: a ping is answered, and a valid job and task are done,
    so its executor lives too; the heartbeat lives."""
    member = crash_servers[case]
    port, build = HOSTILE[case]
    plan = serpytor.compile_file(PURE)
    plan_bytes = encode_plan(plan)
    ctx = zmq.Context()
    try:
        control = dealer(ctx, member.address)
        control.send_multipart([b'{"type": "ping"}'])
        [pong] = collect_replies(control, lambda r: r["type"] == "pong", member)
        address = {"control": member.address, "data": pong["data"],
                   "heartbeat": pong["heartbeat"]}[port]
        sock = control if port == "control" else dealer(ctx, address)
        messages = build(plan_bytes)
        for frames in messages:
            sock.send_multipart(frames)
        expected = {"error", "failed"} if b'"tasks"' in messages[-1][0] else {"error"}
        [reply] = collect_replies(sock, lambda r: True, member, seconds=4)
        assert reply["type"] in expected, reply
        time.sleep(0.5)  # time for the server's periodic work (its status block) to run

        control.send_multipart([b'{"type": "ping"}'])
        replies = collect_replies(control, lambda r: r["type"] == "pong", member, seconds=4)
        assert {r["type"] for r in replies} <= expected | {"pong"}, replies
        control.send_multipart(job_message(plan_bytes, "after"))
        control.send_multipart(tasks_message({"v": 0, "attempt": 1, "inputs": []}, job="after"))
        replies = collect_replies(control, lambda r: r["type"] == "done", member, seconds=4)
        assert replies[-1]["results"][0]["v"] == 0
        control.send_multipart([b'{"type": "end", "job": "after"}'])
        control.send_multipart([json.dumps({"type": "end", "job": JOB}).encode()])
        assert member.server.alive() and member.heartbeat.is_running()
    finally:
        ctx.destroy(0)


# ---- 6c. a holder gone in the middle of a batch -------------------------------------------

def test_a_batch_whose_fetch_fails_fails_only_the_tasks_that_lost_inputs():
    """On the wire: one tasks message -- a[1] (no inputs) and b with a[0] at an address
    where nothing listens. b fails naming a[0] as lost; a[1] must still be done."""
    plan = serpytor.compile_file(PURE)
    a0, a1, b = plan.index_of("a[0]"), plan.index_of("a[1]"), plan.index_of("b")
    ctx = zmq.Context()
    try:
        with cluster(1, "batch") as [server]:
            sock = dealer(ctx, server.address)
            sock.send_multipart(job_message(encode_plan(plan)))
            nowhere = f"tcp://127.0.0.1:{free_port()}"
            sock.send_multipart(tasks_message(
                {"v": a1, "attempt": 1, "inputs": []},
                {"v": b, "attempt": 1, "inputs": [{"v": a0, "at": nowhere}]}))
            answered: dict[int, dict] = {}

            def note(reply: dict) -> bool:
                if reply["type"] == "failed":
                    answered[reply["v"]] = reply
                for item in reply.get("results", ()):
                    answered[item["v"]] = {"type": "done", **item}
                return len(answered) == 2

            collect_replies(sock, note, server, seconds=30)
            assert answered[b]["type"] == "failed" and answered[b]["lost_inputs"] == [a0]
            assert answered[a1]["type"] == "done", answered[a1]
            sock.send_multipart([json.dumps({"type": "end", "job": JOB}).encode()])
    finally:
        ctx.destroy(0)


def test_a_failed_fetch_leaves_no_stale_reply_for_the_next_one():
    """On the wire: a holder runs a[0..3]; a consumer is asked to run b with a[0] at an
    address where nothing listens and a[1..3] at the holder -- it fails, naming a[0] as
    lost. Then it is asked to run b again with all four at the holder, which holds
    them: it must run it (not read the holder's earlier reply as the answer)."""
    plan = serpytor.compile_file(PURE)
    plan_bytes = encode_plan(plan)
    parts = [plan.index_of(f"a[{i}]") for i in range(4)]
    b = plan.index_of("b")
    ctx = zmq.Context()
    try:
        with cluster(2, "stale") as [holder, consumer]:
            to_holder, to_consumer = dealer(ctx, holder.address), dealer(ctx, consumer.address)
            to_holder.send_multipart([b'{"type": "ping"}'])
            [pong] = collect_replies(to_holder, lambda r: r["type"] == "pong", holder)
            for sock in (to_holder, to_consumer):
                sock.send_multipart(job_message(plan_bytes))
            to_holder.send_multipart(tasks_message(
                *[{"v": v, "attempt": 1, "inputs": []} for v in parts]))
            done: set[int] = set()
            collect_replies(to_holder, lambda r: done.update(x["v"] for x in r.get(
                "results", ())) or done == set(parts), holder)

            nowhere = f"tcp://127.0.0.1:{free_port()}"
            first = [{"v": parts[0], "at": nowhere}] + \
                [{"v": v, "at": pong["data"]} for v in parts[1:]]
            to_consumer.send_multipart(tasks_message({"v": b, "attempt": 1, "inputs": first}))
            [failed] = collect_replies(to_consumer, lambda r: True, consumer, seconds=30)
            assert failed["type"] == "failed" and failed["lost_inputs"] == [parts[0]], failed

            again = [{"v": v, "at": pong["data"]} for v in parts]
            to_consumer.send_multipart(tasks_message({"v": b, "attempt": 2, "inputs": again}))
            [reply] = collect_replies(to_consumer, lambda r: True, consumer, seconds=30)
            assert reply["type"] == "done", reply
            assert reply["results"][0]["v"] == b
            for sock in (to_holder, to_consumer):
                sock.send_multipart([json.dumps({"type": "end", "job": JOB}).encode()])
    finally:
        ctx.destroy(0)


# ---- 7. a server that comes back ------------------------------------------------------------
@dataclass
class Comeback:
    result: Any
    first: Member    # the server killed
    second: Member   # the one started at its address
    steady: Member
    losses: LossSpy
    log: Path


@pytest.fixture(scope="module")
def comeback(tmp_path_factory) -> Comeback:
    """2 servers, one bound at a fixed port, run chain.spg (49 vertices of 250 ms,
    ~6 s). The fixed one is SIGKILLed mid-run with its heartbeat; once the gateway has
    declared it lost, a new server is started at the same address (a second after the
    kill, or at once if the verdict took longer). The scenario runs once; the tests
    below look at what happened."""
    log = tmp_path_factory.mktemp("comeback") / "executions.log"
    address = f"tcp://127.0.0.1:{free_port()}"
    members: list[Member] = []
    with pytest.MonkeyPatch.context() as patch:
        spy = spy_on_losses(patch)
        try:
            members.append(server_at(address, f"phoenix-{os.getpid()}"))
            members += members_of(start_servers(1, prefix="steady"))
            first, steady = members
            job = in_background(CHAIN, members, overrides={"log": str(log), "ms": 250})
            try:
                wait_for(lambda: len(started_by(log, first)) >= 2 or job.done, 30,
                         f"server {first.name} to start 2 vertices")
                first.kill(heartbeat=True)
                killed_at = time.monotonic()
                assert not job.done
                wait_for(lambda: spy.of(first) or job.done, DEAD_AFTER + 15,
                         "the gateway to declare the killed server lost")
                assert not job.done, "the run ended before the server could come back"
                time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))
                members.append(server_at(address, first.name))  # same name and address
                result = finish(job, log)
            finally:
                if not job.done:
                    shutdown_all(members)
                    wait_until_stopped(job)
        finally:
            shutdown_all(members)
    return Comeback(result, first, members[2], steady, spy, log)


def test_a_server_restarted_at_its_address_rejoins_the_run(comeback):
    """The new server rejoins (server_events: lost, then rejoined) and gets work; the
    run finishes with the right outputs."""
    result, first = comeback.result, comeback.first
    assert result.outputs == reference(CHAIN)
    mine = [e for e in result.server_events if first.named_in(e["server"])]
    assert [e["event"] for e in mine[:2]] == ["lost", "rejoined"], result.server_events
    assert mine[0]["kind"] == "system", mine[0]
    assert not lost_events(result, comeback.steady)
    assert comeback.losses.of(first)
    assert started_by(comeback.log, comeback.second), "the server that came back got no work"


def test_a_rejoined_server_is_watched_through_its_new_heartbeat(comeback):
    """After it rejoined, the new server (alive, with a live heartbeat) is neither
    declared lost again nor reported with a silent heartbeat, and the work it does
    counts (some vertex is recorded as executed by it)."""
    result = comeback.result
    mine = [e for e in result.server_events if comeback.first.named_in(e["server"])]
    assert [e["event"] for e in mine] == ["lost", "rejoined"], mine
    assert len(comeback.losses.seen) == 1
    assert comeback.second.name in {r.server for r in result.vertices.values()}
