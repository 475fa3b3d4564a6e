"""Helpers shared by the runtime tests (tests/test_runtime_*.py).

* :class:`ServerProcess` — a ``python -m serpytor server`` child on 127.0.0.1 with a
  random port, started and stopped explicitly (``stop`` in a ``finally`` or a fixture);
* :func:`start_servers` — several servers started in parallel (each takes ~1 s to
  import numpy and pyzmq);
* :func:`run_cli` / :func:`spawn_cli` — ``python -m serpytor ...`` as a subprocess, with
  a deadline; ``spawn_cli`` starts it in a new session so the whole process group (the
  gateway and its local servers) can be killed;
* :class:`ControlClient` — a DEALER socket to a server's control port, every receive
  with a timeout;
* journal and execution-log readers; :func:`write_pipeline` for ``.spg`` text in tmp.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from serpytor.runtime.daemon import terminate
from serpytor.runtime.local import READY_PREFIX

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "runtime_fixtures"
EXAMPLES = ROOT / "examples"
CORPUS = EXAMPLES / "data" / "corpus.txt"

START_TIMEOUT_S = 30.0
RECV_TIMEOUT_MS = 5000


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every process the tests start: the checkout importable, the
    example corpus at an absolute path, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    env["CORPUS"] = str(CORPUS)
    env.update(extra)
    return env


# ---- servers ------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """One ``serpytor server`` child. ``name`` and ``address`` come from its first line
    (``serpytor server NAME listening on ADDR``)."""

    process: subprocess.Popen
    name: str = ""
    address: str = ""
    errors: Any = None  # the file its stderr goes to

    def stderr(self) -> str:
        if self.errors is None or self.errors.closed:
            return ""
        self.errors.seek(0)
        return self.errors.read()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        terminate(self.process, timeout)
        for stream in (self.process.stdout, self.errors):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        """SIGKILL (no chance to clean up), then reap and close the streams."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.stop()


def launch_server(*extra: str, name: str | None = None) -> ServerProcess:
    """Start a server; call :meth:`ServerProcess.await_ready` (via start_servers)."""
    command = [sys.executable, "-m", "serpytor", "server", "--bind", "tcp://127.0.0.1:*"]
    if name:
        command += ["--name", name]
    command += list(extra)
    # stderr goes to a file, not a pipe nobody drains (a full pipe would block the server)
    errors = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                               stdin=subprocess.DEVNULL, env=child_env(), cwd=ROOT, text=True)
    return ServerProcess(process, errors=errors)


def await_ready(server: ServerProcess, deadline: float) -> None:
    """Read the ready line before ``deadline`` (monotonic); raise with stderr if not."""
    selector = selectors.DefaultSelector()
    selector.register(server.process.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = server.process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    words = line.split()
                    server.name, server.address = words[2], words[-1]
                    return
                if not line:
                    break
            if server.process.poll() is not None:
                break
    finally:
        selector.close()
    error = server.stderr()
    server.stop()
    raise RuntimeError(f"server did not start: {error[-2000:] or 'timed out'}")


def start_servers(count: int, *extra: str, prefix: str = "srv") -> list[ServerProcess]:
    """``count`` servers started in parallel; on any failure all are stopped."""
    servers: list[ServerProcess] = []
    try:
        for index in range(count):
            servers.append(launch_server(*extra, name=f"{prefix}-{index}-{os.getpid()}"))
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in servers:
            await_ready(server, deadline)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: Iterable[ServerProcess]) -> None:
    for server in servers:
        server.stop()


@contextmanager
def server_pool(count: int, prefix: str) -> Iterator[list[ServerProcess]]:
    """``count`` servers for the block (a fixture's ``with``); all stopped after it."""
    servers = start_servers(count, prefix=prefix)
    try:
        yield servers
    finally:
        stop_all(servers)


def run_concurrently(call: Callable[[], Any], count: int, seconds: float = 60) -> dict:
    """``call()`` on ``count`` threads at once: index -> its result or its exception;
    fails if a thread is still running after ``seconds``."""
    results: dict[int, Any] = {}

    def one(index: int) -> None:
        try:
            results[index] = call()
        except Exception as error:  # noqa: BLE001 - handed to the test
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
    assert not any(thread.is_alive() for thread in threads), "a run did not finish"
    return results


_SHARED: list[ServerProcess] = []
_SHARED_CLEANUP: list[bool] = []


def shared_servers(config: Any, count: int = 3) -> list[ServerProcess]:
    """Servers shared by every ``--servers`` test of the session, started on first use.

    Call it from a module-scoped fixture: pytest sets module fixtures up before the
    function-scoped leak check of conftest.py, so the check sees these servers as
    already running. Dead servers are replaced at that point; all are stopped when the
    session ends (``config.add_cleanup``)."""
    for server in [s for s in _SHARED if not s.alive()]:
        server.stop()
        _SHARED.remove(server)
    if not _SHARED_CLEANUP:
        config.add_cleanup(_stop_shared)
        _SHARED_CLEANUP.append(True)
    if len(_SHARED) < count:
        _SHARED.extend(start_servers(count - len(_SHARED), prefix=f"shared{len(_SHARED)}"))
    return list(_SHARED[:count])


def _stop_shared() -> None:
    stop_all(_SHARED)
    _SHARED.clear()


# ---- the three modes ----------------------------------------------------------------------
MODES = ("inline", "embedded", "servers")


def run_in_mode(pipeline: Any, mode: str, servers: list[ServerProcess] | None = None,
                **options: Any) -> Any:
    """Run ``pipeline`` (no journal unless given) inline, embedded on 2 local servers,
    or on ``servers``."""
    from serpytor.runtime.api import run

    options.setdefault("journal", False)
    if mode == "inline":
        return run(pipeline, inline=True, **options)
    if mode == "embedded":
        return run(pipeline, workers=2, **options)
    return run(pipeline, servers=[s.address for s in servers or ()], **options)


# ---- the control port -----------------------------------------------------------------
class ControlClient:
    """A DEALER socket to a server's control (or data) port; linger 0, timed receives."""

    def __init__(self, address: str, context: zmq.Context | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def send_json(self, message: Any, *payload: bytes) -> None:
        self.send(json.dumps(message).encode(), *payload)

    def recv(self, timeout_ms: int = RECV_TIMEOUT_MS) -> dict:
        """The next reply's header, decoded; AssertionError if nothing comes in time."""
        if not self.sock.poll(timeout_ms):
            raise AssertionError(f"no reply within {timeout_ms} ms")
        frames = self.sock.recv_multipart()
        return json.loads(frames[0])

    def ping(self, timeout_ms: int = RECV_TIMEOUT_MS) -> dict:
        self.send_json({"type": "ping"})
        return self.recv(timeout_ms)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the command line ---------------------------------------------------------------------
def serpytor_command(*argv: str | Path) -> list[str]:
    return [sys.executable, "-m", "serpytor", *[str(a) for a in argv]]


def run_cli(*argv: str | Path, timeout: float = 60.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m serpytor ARGV`` to completion within ``timeout`` seconds (the whole
    process group is killed if it overruns, and the test fails)."""
    process = spawn_cli(*argv, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        raise AssertionError(f"serpytor {' '.join(map(str, argv))} did not finish within "
                             f"{timeout:g} s\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
                             ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def spawn_cli(*argv: str | Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
    """``python -m serpytor ARGV`` in a new session (its own process group)."""
    return subprocess.Popen(serpytor_command(*argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env or child_env(), cwd=cwd or ROOT, text=True,
                            start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and its whole group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def group_gone(pgid: int, seconds: float = 10.0) -> bool:
    """True once no process of group ``pgid`` is left (polled with a deadline)."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        if not alive:
            return True
        time.sleep(0.05)
    return False


def run_json(*argv: str | Path, timeout: float = 60.0, env: dict[str, str] | None = None
             ) -> dict:
    """``serpytor run ... --output json``; the parsed stdout (asserts exit status 0)."""
    done = run_cli("run", *argv, "--output", "json", timeout=timeout, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\nstderr: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


# ---- polling ------------------------------------------------------------------------
def pong(address: str) -> dict:
    """A server's pong (its name, counts and what it holds), asked now."""
    with ControlClient(address) as client:
        reply = client.ping()
    assert reply["type"] == "pong"
    return reply


def wait_for(predicate: Callable[[], Any], seconds: float, what: str,
             interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


# ---- journals and logs ------------------------------------------------------------------
def journaled_vertices(journal_dir: Path) -> list[str]:
    """Names of the vertices recorded in a journal (one entry per record)."""
    database = journal_dir / "journal.sqlite3"
    if not database.exists():
        return []
    # read-write, so that a journal left by a killed process (WAL and all) is recovered
    # the way the next run recovers it
    connection = sqlite3.connect(database, timeout=10)
    try:
        return [row[0] for row in connection.execute("SELECT vertex FROM vertices")]
    finally:
        connection.close()


def log_lines(path: Path) -> list[str]:
    """The vertex names an execution log holds, in order (only whole lines)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [line for line in text.split("\n")[:-1] if line] if text else []


def write_pipeline(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.spg"
    path.write_text(text, encoding="utf-8")
    return path


def fixture_pipeline(name: str) -> Path:
    return FIXTURES / f"{name}.spg"
