"""Servers on distinct hosts: each in a network namespace of its own (``ip netns``,
veth pairs), with its own address and host name, the gateway in this process::

    this process (10.231.1.1, 10.231.2.1)  --veth--  host-a: 10.231.1.2  server, heartbeat
                                           --veth--  host-b: 10.231.2.2  server, heartbeat

Outputs between the two hosts cannot use shared memory: ``auto`` picks tcp, and a
large output streams over a tcp channel; every connection is CURVE-encrypted (a public
address without keys would need --insecure). Skipped, with the reason, where the
machine does not allow network namespaces (no root, no ``ip``, no ``unshare``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import zmq
from runtime_helpers import ROOT, ServerProcess, await_ready, child_env, stop_all, write_pipeline

import serpytor
from serpytor.runtime.monitor import ServerMonitor
from serpytor.runtime.security import keygen, load_security
from serpytor.runtime.transfer import STREAM_MIN_BYTES

HOSTS = {"a": "10.231.1", "b": "10.231.2"}  # namespace -> /24 (.1 here, .2 there)
PREFIX = "spt-t"


def sh(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


def namespaces_allowed() -> str | None:
    """None when namespaces work here, else why not."""
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs the ip and unshare commands"
    probe = sh("ip", "netns", "add", f"{PREFIX}-probe")
    if probe.returncode != 0:
        return f"network namespaces are not allowed here: {probe.stderr.strip()}"
    sh("ip", "netns", "del", f"{PREFIX}-probe")
    return None


def make_hosts() -> None:
    for name, net in HOSTS.items():
        ns, here, there = f"{PREFIX}-{name}", f"{PREFIX}h{name}", f"{PREFIX}n{name}"
        for command in (("ip", "netns", "add", ns),
                        ("ip", "link", "add", here, "type", "veth", "peer", "name", there),
                        ("ip", "link", "set", there, "netns", ns),
                        ("ip", "addr", "add", f"{net}.1/24", "dev", here),
                        ("ip", "link", "set", here, "up"),
                        ("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/24",
                         "dev", there),
                        ("ip", "netns", "exec", ns, "ip", "link", "set", there, "up"),
                        ("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"),
                        ("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via",
                         f"{net}.1")):
            done = sh(*command)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def remove_hosts() -> None:
    for name in HOSTS:
        sh("ip", "link", "del", f"{PREFIX}h{name}")
        sh("ip", "netns", "del", f"{PREFIX}-{name}")


@pytest.fixture(scope="module")
def hosts():
    reason = namespaces_allowed()
    if reason:
        pytest.skip(reason)
    forward = sh("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    try:
        make_hosts()
        sh("sysctl", "-w", "net.ipv4.ip_forward=1")  # host-a reaches host-b through here
        yield HOSTS
    finally:
        sh("sysctl", "-w", f"net.ipv4.ip_forward={forward or 0}")
        remove_hosts()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    keygen(directory)
    return directory


def start_on(name: str, keys) -> ServerProcess:
    """A server (and its heartbeat) in host ``name``'s namespace, with its host name."""
    bind = f"tcp://{HOSTS[name]}.2:*"
    inner = " ".join([sys.executable, "-m", "serpytor", "server", "--bind", bind,
                      "--name", f"host-{name}", "--keys", str(keys)])
    command = ["ip", "netns", "exec", f"{PREFIX}-{name}", "unshare", "--uts", "sh", "-c",
               f"hostname host-{name} && exec {inner}"]
    errors = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                               stdin=subprocess.DEVNULL, env=child_env(), cwd=ROOT, text=True)
    server = ServerProcess(process, errors=errors)
    await_ready(server, time.monotonic() + 30)
    return server


@pytest.fixture(scope="module")
def servers(hosts, keys):
    started = []
    try:
        for name in HOSTS:
            started.append(start_on(name, keys))
        yield started
    finally:
        stop_all(started)


PIPELINE = """pipeline hosts
use tests.runtime_fixtures.planemod as p
node big  = p.array(size = {size})
node look = p.describe
big -> look
"""


@pytest.mark.parametrize("size", [200_000, STREAM_MIN_BYTES // 8 + 1000],
                         ids=["tcp", "stream"])
def test_outputs_cross_hosts_over_tcp(servers, keys, tmp_path, monkeypatch, size):
    monkeypatch.chdir(ROOT)
    path = write_pipeline(tmp_path, "hosts", PIPELINE.format(size=size))
    result = serpytor.run(path, servers=[s.address for s in servers], keys=keys,
                          journal=False, placement="round_robin")
    look = result.outputs["look"]
    assert (look["sum"], look["size"]) == (float(size * (size - 1) / 2), size)
    assert {result.vertices["big"].server, result.vertices["look"].server} == \
        {"host-a", "host-b"}
    assert "shm" not in result.channels and result.channels["tcp"][0] == 1


def test_the_heartbeats_report_their_hosts(servers, keys):
    monitor = ServerMonitor(zmq.Context.instance(), [s.address for s in servers],
                            load_security(keys))
    try:
        monitor.settle(5.0)
        rows = {row["name"]: row for row in monitor.report()}
    finally:
        monitor.close()
    assert set(rows) == {"host-a", "host-b"}
    assert rows["host-a"]["host"] == "host-a" and rows["host-b"]["host"] == "host-b"
    assert all(row["state"] == "ready" and row["cpu"] is not None for row in rows.values())
