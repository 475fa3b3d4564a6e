"""The gateway's connections to servers, and how it tells a live server from a lost one.

One :class:`Link` per server: a DEALER connected to the server's control address (with
a fixed routing id, so replies survive a reconnection), and a monitor socket that
reports the TCP connection dropping and coming back. A link is

* ``ready`` once the server answered a ``ping`` with its name, data address, host
  and *incarnation* (a token the server draws when its process starts);
* ``down`` from the moment the connection dropped: a server that restarts itself
  (after a vertex wedged in C code) comes back within seconds with a new
  incarnation, having lost its jobs and outputs; one that does not come back within
  ``reconnect_grace`` is lost;
* ``lost``: it died (its process exited, or it stayed silent or unreachable too long).

Silence is measured from the last message heard; the gateway pings a link that has
work in flight once it has been quiet for ``ping_interval``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .protocol import ProtocolError, decode, encode
from .security import HANDSHAKE_FAILED_EVENTS, SecurityConfig, secure_client

READY, DOWN, LOST = "ready", "down", "lost"
ZERO_COPY_MIN = 64 * 1024  # pyzmq's rule: share buffers above this, copy below
MONITORED = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


@dataclass
class Timing:
    """How patient the gateway is with servers (seconds)."""

    handshake: float = 10.0        # first answer of every server at the start
    ping_interval: float = 1.0     # ping servers, poll heartbeats, this often
    dead_after: float = 3.0        # silent this long (3 intervals): declared dead
    silence: float = 30.0          # no heartbeat to ask, no message this long: lost
    reconnect_grace: float = 5.0   # no heartbeat to ask, connection down this long: lost


@dataclass
class Link:
    """The gateway's connection to one server."""

    index: int
    address: str
    sock: zmq.Socket
    monitor: zmq.Socket
    process: Any = None            # a LocalServer in the embedded default
    name: str = ""
    data: str = ""
    host: str = ""
    incarnation: str = ""
    state: str = READY
    in_flight: dict[int, int] = field(default_factory=dict)  # vertex -> attempt
    last_heard: float = field(default_factory=time.monotonic)
    last_ping: float = 0.0
    down_since: float | None = None
    why_lost: str = ""
    running: dict | None = None    # what the server said it runs, in its last pong
    beat: dict | None = None       # its heartbeat's last answer (machine figures)
    heartbeat: str | None = None   # its heartbeat's address (from its pong)
    beat_client: Any = None        # a HeartbeatClient, once the address is known
    beat_at: float | None = None   # when the request its last answer answers was sent
    beat_asked: float = 0.0
    beat_since: float | None = None  # when the gateway started asking
    notes: set[str] = field(default_factory=set)  # conditions already reported once
    security: SecurityConfig | None = None
    refused_key: bool = False      # the CURVE handshake failed: our keys are not its
    alone: int | None = None       # a suspect vertex running here with nothing beside it

    @property
    def label(self) -> str:
        return f"{self.name} at {self.address}" if self.name else self.address

    @property
    def usable(self) -> bool:
        # a suspect runs alone, so that if the server dies again the culprit is known
        return self.state == READY and (self.alone is None or self.alone not in self.in_flight)

    @property
    def idle(self) -> bool:
        return self.usable and not self.in_flight

    def send(self, message: dict, *frames: Any) -> None:
        parts = encode(message, *frames)
        # a plan travels without a copy; a small header is cheaper copied than shared
        large = any(len(p) > ZERO_COPY_MIN for p in parts)
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK, copy=not large)
        except zmq.ZMQError:
            pass  # queued or dropped; silence handling covers a server that is gone

    def ping(self, now: float) -> None:
        self.last_ping = now
        self.send({"type": "ping"})

    def read(self) -> dict | None:
        """The next message (validated), or None for a garbled one."""
        frames = self.sock.recv_multipart(copy=False)
        self.last_heard = time.monotonic()
        try:
            return decode(frames)[0]
        except ProtocolError:
            return None  # a garbled reply is dropped; silence handling covers the rest

    def connection_events(self) -> list[int]:
        """Monitor events since the last call (disconnected, handshake succeeded)."""
        events = []
        while self.monitor.poll(0):
            try:
                event = int(recv_monitor_message(self.monitor)["event"])
            except (zmq.ZMQError, ValueError, KeyError):
                break
            if event & HANDSHAKE_FAILED_EVENTS:
                self.refused_key = True
            events.append(event)
        return events

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close(0)
        if self.beat_client is not None:
            self.beat_client.close()

    # ---- the heartbeat ---------------------------------------------------------------
    def watch_heartbeat(self, address: str) -> None:
        """Ask the heartbeat at address from now on: a server that came back at its
        address has a new heartbeat, and what the old one said is about the old one."""
        if address == self.heartbeat:
            return
        if self.beat_client is not None:
            self.beat_client.close()
        self.heartbeat, self.beat_client = address, None
        self.beat = self.beat_at = self.beat_since = None
        self.beat_asked = 0.0

    def poll_heartbeat(self, ctx: zmq.Context, now: float, interval: float) -> None:
        """Take the heartbeat's answers that came, and ask again once an interval."""
        if self.heartbeat is None:
            return
        if self.beat_client is None:
            from .heartbeat import HeartbeatClient

            self.beat_client = HeartbeatClient(ctx, self.heartbeat, self.security)
            self.beat_since = now
        for beat in self.beat_client.replies():
            # heard as of when it was asked: the heartbeat was alive then, and maybe
            # not since; so silence is counted from there, and a dead heartbeat is
            # noticed within dead_after of its death, however late its answer was read
            self.beat, self.beat_at = beat, self.beat_asked
        if now - self.beat_asked >= interval:
            self.beat_asked = now
            self.beat_client.request()

    def heartbeat_silent(self, now: float, dead_after: float) -> bool:
        """Has the heartbeat said nothing for ``dead_after`` seconds (since it was
        first asked)?"""
        if self.beat_since is None:
            return False
        return now - (self.beat_at or self.beat_since) > dead_after

    def beat_server(self) -> dict:
        """The heartbeat's report on its server ({} when none)."""
        server = (self.beat or {}).get("server")
        return server if isinstance(server, dict) else {}


def open_link(ctx: zmq.Context, index: int, address: str, routing_id: bytes,
              process: Any = None, security: SecurityConfig | None = None) -> Link:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    monitor = sock.get_monitor_socket(MONITORED | HANDSHAKE_FAILED_EVENTS)
    secure_client(sock, security)
    sock.connect(address)
    return Link(index, address, sock, monitor, process, security=security)


def learn(link: Link, pong: dict) -> bool:
    """Take a server's identity from its pong; True when its incarnation changed
    (the process restarted and lost what it held)."""
    link.name, link.data = str(pong.get("name", "")), str(pong.get("data", ""))
    link.host = str(pong.get("host", ""))
    running = pong.get("running")
    link.running = running if isinstance(running, dict) else None
    heartbeat = pong.get("heartbeat")
    if isinstance(heartbeat, str) and heartbeat.startswith("tcp://"):
        link.watch_heartbeat(reachable(heartbeat, link.address))
    incarnation = str(pong.get("incarnation", ""))
    restarted = bool(link.incarnation) and incarnation != link.incarnation
    link.incarnation = incarnation
    return restarted


def reachable(address: str, server_address: str) -> str:
    """A heartbeat bound to a wildcard host is reached at its server's host."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "*", "[::]", "::"):
        host = server_address.partition("://")[2].rpartition(":")[0]
    return f"{scheme}://{host}:{port}"


def handshake(links: list[Link], timeout: float) -> list[Link]:
    """Ping every link and wait for the pongs; returns the links that did not answer
    (at once for those whose CURVE handshake failed: they will not answer)."""
    for link in links:
        link.ping(time.monotonic())
    deadline = time.monotonic() + timeout
    waiting = {link.index: link for link in links}
    failed: list[Link] = []
    poller = zmq.Poller()
    for link in links:
        poller.register(link.sock, zmq.POLLIN)
    while waiting and time.monotonic() < deadline:
        events = dict(poller.poll(50))
        for link in list(waiting.values()):
            link.connection_events()
            if link.refused_key:
                waiting.pop(link.index)
                failed.append(link)
                continue
            while link.sock in events and link.sock.poll(0):
                message = link.read()
                if message and message["type"] == "pong":
                    learn(link, message)
                    waiting.pop(link.index, None)
    return failed + list(waiting.values())


HEARTBEAT_SILENT = ("heartbeat silent", "warning", None)  # the server itself answers


def diagnose(link: Link, now: float, t: Timing) -> tuple[str, str, int | None] | None:
    """Why link's server is dead, ``(why, kind, exit status)``; None when it is alive;
    :data:`HEARTBEAT_SILENT` when only its heartbeat is.

    The paper's rule: heartbeat silent -> a system-level failure (the machine, or the
    process group); heartbeat alive but the server dead, or silent while its status
    goes stale -> an application-level one. Without a heartbeat to ask, a connection
    down or a silence past their limits."""
    silent_for = now - link.last_heard
    if link.refused_key:
        return ("refused the connection (the CURVE handshake failed: wrong keys)",
                "system", None)
    if link.heartbeat is None or link.beat_since is None:
        if link.state == DOWN and now - link.down_since > t.reconnect_grace:
            return f"was unreachable for {now - link.down_since:.0f} s", "system", None
        if link.in_flight and silent_for > t.silence:
            return f"has not answered for {silent_for:.0f} s", "system", None
        return None
    if link.heartbeat_silent(now, t.dead_after):
        if link.state == DOWN or silent_for > t.dead_after:
            return f"and its heartbeat are silent ({silent_for:.0f} s)", "system", None
        return HEARTBEAT_SILENT
    server = link.beat_server()
    if server.get("alive") is False:
        status = server.get("exit")
        if not isinstance(status, int):
            return "died (its heartbeat says so)", "application", None
        return f"exited with status {status}", "application", status
    if silent_for > t.dead_after and float(server.get("status_age") or 0) > t.dead_after:
        return (f"is hung (its heartbeat answers, the server has been silent for "
                f"{silent_for:.0f} s)", "application", None)
    return None


def await_ended(links: list[Link], job: str, seconds: float) -> list[Link]:
    """Read the links until each answered the end of job with ``ended`` (what else they
    send, late results of the job, is dropped); the links that did not within seconds."""
    waiting = {link.sock: link for link in links}
    poller = zmq.Poller()
    for sock in waiting:
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + seconds
    while waiting and (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(max(1, int(left * 1000))):
            if _confirms_end(waiting[sock], job):
                poller.unregister(sock)
                del waiting[sock]
    return list(waiting.values())


def _confirms_end(link: Link, job: str) -> bool:
    """Read what link has now; True once it confirmed the end of job."""
    while link.sock.poll(0):
        message = link.read()
        if message is not None and message["type"] == "ended" and message["job"] == job:
            return True
    return False
