"""A server's vital signs: the status block it writes, and the heartbeat process that
reads it and answers on its own port (:mod:`serpytor.runtime.heartbeat`).

The heartbeat is a child of the server, so it outlives it: when the server process
dies, its heartbeat keeps answering for a while, saying so, with the exit status and
the vertex that was running -- what lets a gateway tell an application-level failure
(heartbeat alive, server dead or hung) from a system-level one (heartbeat silent) and
name the vertex that killed its server.

A server that restarts itself by re-executing its command line keeps its pid, so its
heartbeat (which watches the pid and re-reads the status block, recreated by the new
process image) stays; the new image adopts it through ``SERPYTOR_HEARTBEAT``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Any

from .heartbeat import HeartbeatError, spawn_heartbeat
from .status import StatusBlock, status_path

log = logging.getLogger("serpytor.server")

ADOPT = "SERPYTOR_HEARTBEAT"  # "PID ADDRESS" of the heartbeat across a re-exec


class Vitals:
    def __init__(self, host: str, name: str, incarnation: str, channel_dir: str | None,
                 heartbeat: bool = True, keys: str | None = None,
                 insecure: bool = False) -> None:
        self.status = StatusBlock.create(status_path(), incarnation=incarnation)
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self.address: str | None = None
        self.keys, self.insecure = keys, insecure
        if heartbeat:
            self._start(host, name, channel_dir)

    def _start(self, host: str, name: str, channel_dir: str | None) -> None:
        adopted = os.environ.pop(ADOPT, "")
        if adopted:
            pid, _, address = adopted.partition(" ")
            self.pid, self.address = int(pid), address
            return
        try:
            self.process, address = spawn_heartbeat(host, os.getpid(), self.status.path,
                                                    name, channel_dir, keys=self.keys,
                                                    insecure=self.insecure)
        except HeartbeatError as error:  # the server still serves; gateways see no beat
            log.warning("server %s runs without a heartbeat: %s", name, error)
            return
        self.pid, self.address = self.process.pid, address

    # ---- what the server is doing --------------------------------------------------
    def running(self, job: str, vertex: int, attempt: int) -> None:
        self.status.running(job, vertex, attempt)

    def idle(self) -> None:
        self.status.idle()

    def counts(self, done: int, queued: int, held: int) -> None:
        self.status.counts(done=done, queued=queued, held=held)

    # ---- the end, or a new image ---------------------------------------------------
    def before_exec(self) -> None:
        """The process image is about to be replaced: hand the heartbeat over."""
        if self.pid is not None and self.address:
            os.environ[ADOPT] = f"{self.pid} {self.address}"

    def exiting(self, status: int) -> None:
        """The process exits with ``status`` without closing (its heartbeat reports it)."""
        self.status.exited(status)

    def close(self) -> None:
        self.status.exited(0)
        if self.pid is not None:
            self._stop_heartbeat()
        self.status.close()

    def _stop_heartbeat(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            _reap(self.pid, self.process)
        except ProcessLookupError:
            pass


def _reap(pid: int, process: Any) -> None:
    """Wait for the heartbeat to exit (a few seconds at most, then SIGKILL)."""
    if process is not None:
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # adopted: still our child (same pid)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
