"""The heartbeat: a separate process on its own port that says how a machine and its
server are doing, so the gateway can tell a system-level failure (the heartbeat is
silent: the machine, its network or the whole process tree is gone) from an
application-level one (the heartbeat answers, but reports the server dead, or alive
with a status block that stopped being updated: hung).

Normally a server starts its heartbeat as a child (:func:`spawn_heartbeat`) and writes
its :class:`~serpytor.runtime.status.StatusBlock`; the heartbeat watches the server's
pid. When the server dies the heartbeat keeps answering for ``--linger`` seconds with
``"alive": false``, the vertex that was running and the exit status (when known), then
removes the block and exits. Started without ``--watch`` it reports machine figures
only (``"server": null``) until SIGTERM or SIGINT.

Protocol (JSON, never pickle), on a ROUTER socket::

    request   {"type": "heartbeat", "id": N}      ("id" optional, echoed)
    reply     {"type": "beat", "id": N, "identity", "host", "pid", "time",
               "cpu": {"total", "per_core"}, "memory": {"total", "available", "percent"},
               "disk": {"path", "total", "free", "percent"}, "gpu": null | [...],
               "load": [1, 5, 15 min], "server": null | {...}, "rejected": n}
    error     {"type": "error", "message", "rejected": n}   (a request it cannot answer)

``server``: ``{"pid", "alive", "incarnation", "running": null | {"job", "vertex",
"attempt", "seconds"}, "done", "queued", "held", "status_age", "exit"}``. A request
of more than :data:`MAX_REQUEST_BYTES` is answered with an error; one beyond
:data:`TRANSPORT_LIMIT` makes ZeroMQ drop the connection (it is never buffered whole).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import psutil
import zmq

from ..errors import SerpytorError
from .daemon import configure_logging, serve_until_signalled, terminate
from .security import SecurityConfig, check_bind, load_security, secure_client, secure_server
from .status import StatusBlock, status_path

log = logging.getLogger("serpytor.heartbeat")

READY_PREFIX = "serpytor heartbeat "
MAX_REQUEST_BYTES = 64 * 1024
TRANSPORT_LIMIT = 1024 * 1024  # ZeroMQ disconnects a peer sending a bigger message
MAX_WARNED_PEERS = 1024  # peers whose first rejection was logged (bounded memory)
POLL_MS = 100
WATCH_INTERVAL_S = 0.1
CPU_SAMPLE_S = 0.5
DEFAULT_LINGER_S = 30.0
START_TIMEOUT_S = 20.0
# the child's entry point; `python -m serpytor heartbeat` works too once the CLI has it
_ENTRY = "import sys; from serpytor.runtime.heartbeat import main; sys.exit(main(sys.argv[1:]))"

Clock = Callable[[], float]


class HeartbeatError(SerpytorError):
    """The heartbeat could not start: its address could not be bound, or (from
    :func:`spawn_heartbeat`) it did not print its ready line in time. The message says
    which; a log file given to ``spawn_heartbeat`` holds the child's own account."""


class RequestError(SerpytorError):
    """A request the heartbeat does not answer (oversized, several frames, not JSON,
    not an object, unknown type). It is answered with an error and counted."""


# ---- machine figures ----------------------------------------------------------------
class CpuSampler:
    """CPU use over the last ``interval_s``. psutil measures between two calls;
    sampling on the serve loop's clock means a reply reads a figure and never waits
    for one. Until the first interval has passed the figure is the use since boot (a
    sample over a few milliseconds would say 0 or 100)."""

    def __init__(self, interval_s: float = CPU_SAMPLE_S, clock: Clock = time.monotonic) -> None:
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        psutil.cpu_percent(interval=None, percpu=True)
        self.interval_s = interval_s
        self.sampled_at = clock()
        self.figures: dict[str, Any] = {"total": _busy_since_boot(psutil.cpu_times()),
                                        "per_core": [_busy_since_boot(times) for times
                                                     in psutil.cpu_times(percpu=True)]}

    def tick(self, now: float) -> None:
        if now - self.sampled_at >= self.interval_s:
            self.sampled_at = now
            self.figures = {"total": psutil.cpu_percent(interval=None),
                            "per_core": psutil.cpu_percent(interval=None, percpu=True)}


def _busy_since_boot(times: Any) -> float:
    """Percent of the time not idle, counted as psutil counts it (iowait is idle;
    guest time is already inside user time)."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return round(100.0 * (total - idle) / total, 1) if total > 0 else 0.0


def memory_figures() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {"total": memory.total, "available": memory.available, "percent": memory.percent}


def disk_figures(path: str) -> dict[str, Any]:
    """Use of the file system holding ``path`` (or its nearest existing ancestor: a
    channel directory may not exist yet)."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    usage = psutil.disk_usage(existing)
    return {"path": path, "total": usage.total, "free": usage.free, "percent": usage.percent}


def load_figures() -> list[float]:
    return list(os.getloadavg())


def load_nvml() -> Any:
    """pynvml, initialized, or None: it is not a dependency, and most machines have no
    NVIDIA driver. Imported here, lazily, so a heartbeat without it starts as fast."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError, a broken driver: no GPU
        return None
    return pynvml


def gpu_figures(nvml: Any) -> list[dict[str, Any]] | None:
    """One entry per device, or None without NVML or devices."""
    if nvml is None:
        return None
    try:
        devices = [_gpu_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - a device vanished or the driver failed
        return None
    return devices or None


def _gpu_device(nvml: Any, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
            "utilization": nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "memory": {"total": memory.total, "used": memory.used,
                       "percent": 100.0 * memory.used / memory.total if memory.total else 0.0}}


# ---- watching a server --------------------------------------------------------------
class ServerWatch:
    """Whether the watched server lives, and what its status block last said.

    Death is seen when the pid is gone, is a zombie, belongs to a newer process (pid
    reuse), or — when the server is this process's parent — when this process was
    reparented. The exit status is the zombie's (``/proc/PID/stat``, while its parent
    has not reaped it) or else the one the server wrote in its block before exiting.
    """

    def __init__(self, pid: int, status_file: str, linger_s: float,
                 clock: Clock = time.monotonic) -> None:
        self.pid = pid
        self.status_file = status_file
        self.linger_s = linger_s
        self.parented = os.getppid() == pid
        self.created = _create_time(pid)
        self.status: dict[str, Any] | None = None
        self.checked = float("-inf")
        self.dead_at: float | None = None  # monotonic, when the death was seen
        self.died_wall: float | None = None
        self.exit: int | None = None
        self._refresh_status()
        if self.created is None:
            self._died(clock())

    @property
    def alive(self) -> bool:
        return self.dead_at is None

    def tick(self, now: float) -> None:
        if not self.alive or now - self.checked < WATCH_INTERVAL_S:
            return
        self.checked = now
        self._refresh_status()
        if not self._server_lives():
            self._died(now)

    def finished(self, now: float) -> bool:
        """The server died and the linger is over: time for the heartbeat to go."""
        return self.dead_at is not None and now - self.dead_at >= self.linger_s

    def report(self, now_wall: float) -> dict[str, Any]:
        status = self.status or {}
        updated = status.get("updated_at")
        return {"pid": self.pid, "alive": self.alive, "incarnation": status.get("incarnation"),
                "running": self._running(status, now_wall), "done": status.get("done"),
                "queued": status.get("queued"), "held": status.get("held"),
                "status_age": max(0.0, now_wall - updated) if updated else None,
                "exit": None if self.alive else self._exit_status(status)}

    def cleanup(self) -> None:
        """Remove a dead server's block (a live server removes its own)."""
        if self.alive:
            return
        block = StatusBlock.read(self.status_file)
        if block is None or block["pid"] == self.pid:
            try:
                os.unlink(self.status_file)
            except FileNotFoundError:
                pass

    def _running(self, status: dict[str, Any], now_wall: float) -> dict[str, Any] | None:
        running = status.get("running")
        if running is None:
            return None
        until = now_wall if self.died_wall is None else self.died_wall
        return {"job": running["job"], "vertex": running["vertex"],
                "attempt": running["attempt"],
                "seconds": max(0.0, until - running["started_at"])}

    def _exit_status(self, status: dict[str, Any]) -> int | None:
        return self.exit if self.exit is not None else status.get("exit")

    def _refresh_status(self) -> None:
        block = StatusBlock.read(self.status_file)
        # a block of another pid is a stale file; a torn one keeps the last whole copy
        if block is not None and block["pid"] == self.pid:
            self.status = block

    def _server_lives(self) -> bool:
        if self.parented and os.getppid() != self.pid:
            return False
        try:
            process = psutil.Process(self.pid)
            return (abs(process.create_time() - self.created) < 0.01
                    and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True  # it exists; we may not look at it

    def _died(self, now: float) -> None:
        self.dead_at, self.died_wall = now, time.time()
        self.exit = _zombie_exit_status(self.pid, self.created)
        self._refresh_status()  # the last word, if it wrote one while dying
        running = (self.status or {}).get("running")
        log.warning("heartbeat: server %d is gone (exit status %s)%s; answering for %g s more",
                    self.pid, self._exit_status(self.status or {}),
                    f" while running vertex {running['vertex']} of job {running['job']}"
                    if running else "", self.linger_s)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _zombie_exit_status(pid: int, created: float | None) -> int | None:
    """The exit status of a zombie not yet reaped, as subprocess reports it (a code,
    or minus the signal): field 52 of /proc/PID/stat (Linux 3.5+)."""
    try:
        process = psutil.Process(pid)
        if created is None or abs(process.create_time() - created) >= 0.01:
            return None
        if process.status() != psutil.STATUS_ZOMBIE:
            return None
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        status = int(fields[49])  # fields after the command name start at field 3
    except (psutil.Error, OSError, IndexError, ValueError):
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


# ---- requests -----------------------------------------------------------------------
def split_envelope(payload: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A REQ socket puts an empty delimiter before its request; its reply must too."""
    if len(payload) == 2 and payload[0] == b"":
        return [b""], payload[1:]
    return [], payload


def parse_request(body: list[bytes]) -> dict[str, Any]:
    """The request (a heartbeat request), or :class:`RequestError` saying what is wrong."""
    size = sum(len(frame) for frame in body)
    if size > MAX_REQUEST_BYTES:
        raise RequestError(f"request of {size} bytes exceeds the {MAX_REQUEST_BYTES} limit")
    if len(body) != 1:
        raise RequestError(f"a request is one JSON frame, not {len(body)}")
    try:
        request = json.loads(body[0])
    except (ValueError, RecursionError) as error:  # RecursionError: nesting too deep
        raise RequestError(f"request is not JSON: {str(error)[:120]}") from None
    if not isinstance(request, dict):
        raise RequestError(f"request is a JSON {type(request).__name__}, not an object")
    if request.get("type") != "heartbeat":
        raise RequestError(f"unknown request type {str(request.get('type'))[:40]!r}")
    return request


def _request_id(request: Any) -> Any:
    """The id to echo: a number or a short string; anything else is not echoed."""
    if not isinstance(request, dict):
        return None
    ident = request.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (int, str)):
        return None
    return ident if not isinstance(ident, str) or len(ident) <= 64 else None


# ---- the server ---------------------------------------------------------------------
class HeartbeatServer:
    """A ROUTER at ``bind`` answering heartbeat requests; it never blocks on a peer
    (replies are sent without waiting; a peer that is gone or not reading loses its)."""

    def __init__(self, bind: str, *, name: str | None = None, watch: ServerWatch | None = None,
                 channel_dir: str | None = None, context: zmq.Context | None = None,
                 clock: Clock = time.monotonic, security: SecurityConfig | None = None,
                 insecure: bool = False) -> None:
        check_bind(bind, security, insecure)
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_LIMIT)
        secure_server(self.sock, security)
        self.address = _bind(self.sock, bind)
        self.host = socket.gethostname()
        self.name = name or f"{self.host}:{watch.pid if watch else os.getpid()}"
        self.watch = watch
        self.channel_dir = channel_dir or tempfile.gettempdir()
        self.clock = clock
        self.cpu = CpuSampler(clock=clock)
        self.nvml = load_nvml()
        self.rejected = 0
        self.warned_peers: set[bytes] = set()

    def serve(self, stop: threading.Event | None = None) -> None:
        """Answer until ``stop`` is set, or the watched server died and lingered."""
        while stop is None or not stop.is_set():
            if self.sock.poll(POLL_MS):
                self._drain()
            now = self.clock()
            self.cpu.tick(now)
            if self.watch is not None:
                self.watch.tick(now)
                if self.watch.finished(now):
                    return

    def _drain(self) -> None:
        for _ in range(1000):  # bounded: the watch must get its turn
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[1:]
            self._send(identity, self.answer(identity, payload))

    def answer(self, identity: bytes, payload: list[bytes]) -> list[bytes]:
        """The reply frames (after the identity) to one request."""
        envelope, body = split_envelope(payload)
        try:
            request = parse_request(body)
        except RequestError as error:
            ident = _request_id(_loads_quietly(body))
            return [*envelope, _dump(self._reject(identity, str(error), ident))]
        return [*envelope, _dump(self.beat(_request_id(request)))]

    def beat(self, ident: Any = None) -> dict[str, Any]:
        now = time.time()
        reply: dict[str, Any] = {"type": "beat", "identity": self.name, "host": self.host,
                                 "pid": os.getpid(), "time": now}
        if ident is not None:
            reply["id"] = ident
        reply["cpu"] = self.cpu.figures
        reply["memory"] = _figure("memory", memory_figures)
        reply["disk"] = _figure("disk", lambda: disk_figures(self.channel_dir))
        reply["gpu"] = gpu_figures(self.nvml)
        reply["load"] = _figure("load", load_figures)
        reply["server"] = self.watch.report(now) if self.watch is not None else None
        reply["rejected"] = self.rejected
        return reply

    def _reject(self, identity: bytes, reason: str, ident: Any) -> dict[str, Any]:
        self.rejected += 1
        if identity not in self.warned_peers and len(self.warned_peers) < MAX_WARNED_PEERS:
            self.warned_peers.add(identity)
            log.warning("heartbeat %s rejected a request from peer %r: %s", self.name,
                        identity, reason)
        reply: dict[str, Any] = {"type": "error", "message": reason, "rejected": self.rejected}
        if ident is not None:
            reply["id"] = ident
        return reply

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer left (ROUTER_MANDATORY) or is not reading; nobody to tell

    def close(self) -> None:
        self.sock.close(0)
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass


def _bind(sock: zmq.Socket, address: str) -> str:
    """Bind (``tcp://HOST:*`` or port 0 picks a free port); the real endpoint. The
    server module has the same helper, but it imports this one (to spawn us)."""
    if address.startswith("tcp://") and address.endswith((":0", ":*")):
        address = address.rsplit(":", 1)[0] + ":*"
    try:
        sock.bind(address)
    except zmq.ZMQError as error:
        sock.close(0)
        raise HeartbeatError(f"error: heartbeat cannot bind {address}: {error}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _figure(what: str, measure: Callable[[], Any]) -> Any:
    """A figure, or None when the system would not give it (the beat still goes)."""
    try:
        return measure()
    except (psutil.Error, OSError) as error:
        log.debug("heartbeat: no %s figures: %s", what, error)
        return None


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _loads_quietly(body: list[bytes]) -> Any:
    """The request as JSON if it is one small frame of JSON (to echo its id)."""
    if len(body) != 1 or len(body[0]) > MAX_REQUEST_BYTES:
        return None
    try:
        return json.loads(body[0])
    except (ValueError, RecursionError):
        return None


# ---- the gateway's side ------------------------------------------------------------
class HeartbeatClient:
    """A DEALER to one heartbeat. Each request carries a number its reply echoes, so a
    late reply to an earlier request is never taken for the current one. Use
    :meth:`poll` to wait, or :meth:`request` + :meth:`replies` from a poll loop."""

    def __init__(self, ctx: zmq.Context, address: str,
                 security: SecurityConfig | None = None) -> None:
        self.address = address
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 16)  # requests to a dead heartbeat do not pile up
        self.sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_LIMIT)
        secure_client(self.sock, security)
        self.sock.connect(address)
        self.last_id = 0

    def request(self) -> int:
        """Send a request without waiting; its id."""
        self.last_id += 1
        try:
            self.sock.send(_dump({"type": "heartbeat", "id": self.last_id}), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected and the queue is full: the reply will not come
        return self.last_id

    def replies(self) -> list[dict[str, Any]]:
        """The replies to the latest request that have arrived (garbage is dropped)."""
        found = []
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return found
            reply = _parse_reply(frames)
            if reply is not None and reply.get("id") == self.last_id:
                found.append(reply)

    def poll(self, timeout_s: float) -> dict[str, Any] | None:
        """Ask and wait up to ``timeout_s``: the reply, or None (silence or garbage)."""
        self.request()
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if self.sock.poll(max(1, int(remaining * 1000))):
                found = self.replies()
                if found:
                    return found[0]
        return None

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> HeartbeatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def poll_heartbeat(ctx: zmq.Context, address: str, timeout_s: float) -> dict[str, Any] | None:
    """One request on a fresh connection: the reply, or None."""
    with HeartbeatClient(ctx, address) as client:
        return client.poll(timeout_s)


def _parse_reply(frames: list[bytes]) -> dict[str, Any] | None:
    if len(frames) != 1:
        return None
    try:
        reply = json.loads(frames[0])
    except (ValueError, RecursionError):
        return None
    return reply if isinstance(reply, dict) else None


# ---- starting and stopping the process ---------------------------------------------
def spawn_heartbeat(bind_host: str, watch_pid: int, status_path: str, name: str,
                    channel_dir: str | None = None, *, linger_s: float = DEFAULT_LINGER_S,
                    log_path: str | None = None, timeout_s: float = START_TIMEOUT_S,
                    keys: str | None = None,
                    insecure: bool = False) -> tuple[subprocess.Popen, str]:
    """Start the heartbeat of server ``watch_pid`` and wait for its ready line; the
    process and its address. ``bind_host`` is a host (a free port is picked) or a
    whole ``tcp://HOST:PORT``. Its stderr (rejections, errors) goes to ``log_path``,
    else nowhere: never to a pipe, which would fill up, or to the server's stderr,
    which would keep a reader of that waiting for the heartbeat's linger."""
    bind = bind_host if "://" in bind_host else f"tcp://{bind_host}:*"
    command = [sys.executable, "-c", _ENTRY, "--bind", bind, "--watch", str(watch_pid),
               "--status", status_path, "--name", name, "--linger", str(linger_s)]
    if channel_dir:
        command += ["--channel-dir", channel_dir]
    if keys:
        command += ["--keys", keys]
    if insecure:
        command.append("--insecure")
    errors = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=errors, env=_child_env(), text=True)
    finally:
        if log_path:
            errors.close()  # the child has its own descriptor
    return process, _await_ready(process, time.monotonic() + timeout_s)


def stop_heartbeat(process: subprocess.Popen, timeout_s: float = 5.0) -> int | None:
    """SIGTERM, wait, SIGKILL if it would not go; its exit status."""
    terminate(process, timeout_s)
    return process.returncode


def _child_env() -> dict[str, str]:
    """This process's environment, with this serpytor first on the path (the child
    must run the same code, also from a checkout that is not installed)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _await_ready(process: subprocess.Popen, deadline: float) -> str:
    """Read ``serpytor heartbeat NAME listening on ADDR``; then close the pipe (the
    heartbeat writes nothing more to it)."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    process.stdout.close()
                    return line.rsplit(" ", 1)[-1].strip()
                if not line:
                    break
            elif process.poll() is not None:
                break
    finally:
        selector.close()
    status = stop_heartbeat(process)
    process.stdout.close()
    raise HeartbeatError(f"error: the heartbeat did not start (exit status {status}, "
                         "or no ready line in time)")


# ---- command line -------------------------------------------------------------------
def add_heartbeat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", metavar="ADDR", default="tcp://127.0.0.1:*",
                        help="address, e.g. tcp://0.0.0.0:5556 (port * picks one)")
    parser.add_argument("--watch", metavar="PID", type=int, help="the server to watch: "
                        "report on it, and exit --linger seconds after it died")
    parser.add_argument("--status", metavar="PATH", help="the watched server's status "
                        "block (default: its pid's file in the temp directory)")
    parser.add_argument("--name", help="the identity in replies (default HOST:PID of the "
                        "watched server, or of this process)")
    parser.add_argument("--channel-dir", metavar="DIR", help="report the disk holding "
                        "DIR (default: the temp directory)")
    parser.add_argument("--linger", metavar="SECONDS", type=float, default=DEFAULT_LINGER_S,
                        help="keep answering this long after the server died "
                        f"(default {DEFAULT_LINGER_S:g})")
    from ..cli import add_key_arguments

    add_key_arguments(parser, binds=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def heartbeat_command(args: argparse.Namespace) -> int:
    """Run the heartbeat until SIGTERM/SIGINT or the end of the linger; 0."""
    configure_logging(args.verbose)
    watch = None
    if args.watch is not None:
        watch = ServerWatch(args.watch, args.status or status_path(args.watch), args.linger)
    server = HeartbeatServer(args.bind, name=args.name, watch=watch,
                             channel_dir=args.channel_dir,
                             security=load_security(args.keys), insecure=args.insecure)
    def serve(stop: threading.Event) -> None:
        _quiet_stdout()
        server.serve(stop)

    try:
        return serve_until_signalled(f"{READY_PREFIX}{server.name} listening on "
                                     f"{server.address}", serve)
    finally:
        server.close()
        if watch is not None:
            watch.cleanup()


def _quiet_stdout() -> None:
    """After the ready line stdout goes nowhere: the spawner closed its end of the
    pipe, and a stray write would fail with a broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """``serpytor heartbeat`` on its own (until the CLI carries it)."""
    parser = argparse.ArgumentParser(prog="serpytor heartbeat",
                                     description="report this machine and its server")
    add_heartbeat_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return heartbeat_command(args)
    except SerpytorError as error:
        print(str(error), file=sys.stderr)
        return 1


__all__ = ["DEFAULT_LINGER_S", "HeartbeatClient", "HeartbeatError", "HeartbeatServer",
           "MAX_REQUEST_BYTES", "READY_PREFIX", "RequestError", "ServerWatch",
           "add_heartbeat_arguments", "heartbeat_command", "main", "poll_heartbeat",
           "spawn_heartbeat", "stop_heartbeat"]
