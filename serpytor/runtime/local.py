"""Start and stop local servers for the embedded default (``serpytor run`` with no
``--servers``): each is a ``serpytor server`` process on 127.0.0.1, random ports.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time

from ..errors import SerpytorError

READY_PREFIX = "serpytor server "
START_TIMEOUT_S = 30.0


class ServerStartError(SerpytorError):
    """A local server did not start (it printed an error or did not answer in time)."""


class LocalServer:
    """One ``serpytor server`` child process."""

    def __init__(self, name: str, extra: list[str] | None = None) -> None:
        self.name = name
        command = [sys.executable, "-m", "serpytor", "server", "--bind", "tcp://127.0.0.1:*",
                   "--name", name, *(extra or [])]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, env=env, text=True)
        self.address = self._await_ready()

    def _await_ready(self) -> str:
        """Read the server's first line: ``serpytor server NAME listening on ADDR``."""
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
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
        if self.process.poll() is None:
            return ""
        return (self.process.stderr.read() or "").strip().splitlines()[-1:][0] \
            if self.process.stderr else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
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
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    def replace(self, index: int) -> LocalServer:
        """Restart server ``index`` (after it exited to get rid of a stuck vertex)."""
        self.servers[index].stop()
        self.servers[index] = LocalServer(f"local-{index}", self.extra)
        return self.servers[index]

    def close(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> "LocalServers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
