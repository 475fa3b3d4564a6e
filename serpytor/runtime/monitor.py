"""Watching servers without a job: what ``serpytor status`` and the gateway service
show -- each server's state (ready, down, lost and why, with the paper's system- or
application-level diagnosis) and its heartbeat's figures.

A :class:`ServerMonitor` keeps a link to every server (as a gateway does), pings it and
polls its heartbeat every interval, and judges it with
:func:`serpytor.runtime.links.diagnose`.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from .links import DOWN, HEARTBEAT_SILENT, LOST, READY, Link, Timing, diagnose, learn, open_link
from .security import SecurityConfig


class ServerMonitor:
    def __init__(self, ctx: zmq.Context, addresses: list[str],
                 security: SecurityConfig | None = None, timing: Timing | None = None) -> None:
        self.ctx = ctx
        self.timing = timing or Timing()
        self.links = [open_link(ctx, i, a, f"monitor-{id(self):x}-{i}".encode(),
                                security=security) for i, a in enumerate(addresses)]
        self.verdicts: dict[int, tuple[str, str]] = {}  # link -> (kind, why) when lost
        self.answered: set[int] = set()
        self.last_tick = 0.0
        for link in self.links:
            link.ping(time.monotonic())

    def tick(self) -> None:
        """Read what came and judge every server (at most once an interval/10)."""
        now = time.monotonic()
        if now - self.last_tick < self.timing.ping_interval / 10:
            return
        self.last_tick = now
        for link in self.links:
            self._read(link)
            self._events(link, now)
            link.poll_heartbeat(self.ctx, now, self.timing.ping_interval)
            self._judge(link, now)
            if now - link.last_ping > self.timing.ping_interval:
                link.ping(now)

    def _read(self, link: Link) -> None:
        while link.sock.poll(0):
            message = link.read()
            if message is not None and message["type"] == "pong":
                learn(link, message)
                self.answered.add(link.index)
                if link.state != READY:
                    link.state, link.down_since = READY, None
                    self.verdicts.pop(link.index, None)

    def _events(self, link: Link, now: float) -> None:
        for event in link.connection_events():
            if event == zmq.EVENT_DISCONNECTED and link.state == READY:
                link.state, link.down_since = DOWN, now

    def _judge(self, link: Link, now: float) -> None:
        if link.index not in self.answered:
            if link.refused_key:
                self.verdicts[link.index] = ("system", "refused our keys (the CURVE "
                                                       "handshake failed)")
                link.state = LOST
            return
        verdict = diagnose(link, now, self.timing)
        if verdict is not None and verdict != HEARTBEAT_SILENT and link.state != LOST:
            link.state = LOST
            self.verdicts[link.index] = (verdict[1], verdict[0])

    def settle(self, seconds: float) -> None:
        """Watch for ``seconds`` (a one-off status: let every server answer once)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()
            if len(self.answered) == len(self.links) and \
                    all(link.beat is not None or link.heartbeat is None for link in self.links):
                return
            time.sleep(0.02)

    def report(self) -> list[dict[str, Any]]:
        """One row per server: identity, state, diagnosis and heartbeat figures."""
        return [self._row(link) for link in self.links]

    def _row(self, link: Link) -> dict[str, Any]:
        beat = link.beat or {}
        server = link.beat_server()
        kind, why = self.verdicts.get(link.index, ("", ""))
        state = link.state if link.index in self.answered else "silent"
        return {"name": link.name or "?", "address": link.address, "state": state,
                "failure": kind, "why": why, "host": link.host,
                "heartbeat": link.heartbeat, "cpu": (beat.get("cpu") or {}).get("total"),
                "memory": (beat.get("memory") or {}).get("percent"),
                "load": (beat.get("load") or [None])[0], "gpu": beat.get("gpu"),
                "running": server.get("running"), "done": server.get("done"),
                "queued": server.get("queued"), "held": server.get("held")}

    def close(self) -> None:
        for link in self.links:
            link.close()


def status_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table (what ``serpytor status`` prints)."""
    header = ("SERVER", "ADDRESS", "STATE", "CPU%", "MEM%", "LOAD", "RUNNING", "DONE",
              "QUEUED", "HELD")
    lines = [header]
    for row in rows:
        running = row["running"]
        state = row["state"] if not row["failure"] else \
            f"{row['state']} ({row['failure']}: {row['why']})"
        lines.append((row["name"], row["address"], state, _number(row["cpu"]),
                      _number(row["memory"]), _number(row["load"]),
                      f"{running['job']}:{running['vertex']}" if running else "-",
                      _number(row["done"]), _number(row["queued"]), _number(row["held"])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
