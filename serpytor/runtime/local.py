"""Start and stop local servers for the embedded default (``serpytor run`` with no
``--servers``): each is a ``serpytor server`` process on 127.0.0.1, random ports.
"""

from __future__ import annotations

import collections
import os
import selectors
import subprocess
import sys
import threading
import time

from ..errors import SerpytorError
from .daemon import terminate

READY_PREFIX = "serpytor server "
START_TIMEOUT_S = 30.0


class ServerStartError(SerpytorError):
    """A local server did not start (it printed an error or did not answer in time)."""


class LocalServer:
    """One ``serpytor server`` child process. Its output is forwarded to this process's
    stderr line by line (what vertices print shows up, and a full pipe never blocks
    the server); the last lines are kept for error messages."""

    def __init__(self, name: str, extra: list[str] | None = None,
                 bind: str = "tcp://127.0.0.1:*") -> None:
        self.name = name
        command = [sys.executable, "-m", "serpytor", "server", "--bind", bind,
                   "--name", name, *(extra or [])]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, env=env, text=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.address = ""
        self.forwarders: list[threading.Thread] = []

    def wait_ready(self, deadline: float) -> None:
        """Wait for the server's ready line (spawn several servers first, then wait for
        each: they import numpy and pyzmq in parallel)."""
        self.address = self._await_ready(deadline)
        self.forwarders = [threading.Thread(target=self._forward, args=(stream,), daemon=True,
                                            name=f"serpytor-{self.name}-output")
                           for stream in (self.process.stdout, self.process.stderr)]
        for thread in self.forwarders:
            thread.start()

    def _await_ready(self, deadline: float) -> str:
        """Read the server's first line: ``serpytor server NAME listening on ADDR``."""
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    line = self.process.stdout.readline()
                    if line.startswith(READY_PREFIX):
                        return line.rsplit(" ", 1)[-1].strip()
                    if not line:
                        break
                if self.process.poll() is not None:
                    break
        finally:
            selector.close()
        error = self._stderr_tail()
        self.stop()
        raise ServerStartError(f"local server {self.name} did not start: {error or 'timed out'}")

    def _stderr_tail(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        lines = (self.process.stderr.read() or "").strip().splitlines()
        return lines[-1] if lines else ""

    def _forward(self, stream) -> None:
        """Copy the child's lines until it exits (the pipe then ends), then close."""
        with stream:
            for line in stream:
                if line.startswith(READY_PREFIX):
                    continue  # a restarted server announcing itself again
                self.tail.append(line.rstrip("\n"))
                sys.stderr.write(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        terminate(self.process, timeout)
        for thread in self.forwarders:
            thread.join(2.0)  # the pipes end with the process
        if not self.forwarders:
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


class LocalServers:
    """A context manager holding ``count`` local servers."""

    def __init__(self, count: int, extra: list[str] | None = None) -> None:
        self.extra = extra
        self.servers: list[LocalServer] = []
        try:
            for index in range(count):
                self.servers.append(LocalServer(f"local-{index}", extra))
            deadline = time.monotonic() + START_TIMEOUT_S
            for server in self.servers:
                server.wait_ready(deadline)
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    def revive(self, index: int) -> LocalServer:
        """Start server ``index`` again at its address (it died)."""
        old = self.servers[index]
        old.stop()
        server = LocalServer(old.name, self.extra, bind=old.address)
        self.servers[index] = server
        server.wait_ready(time.monotonic() + START_TIMEOUT_S)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> "LocalServers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
