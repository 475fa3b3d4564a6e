"""``serpytor server`` as the gateway and hostile peers see it (DESIGN.md section 4):
admission hooks, unreachable addresses, and malformed control-plane messages, which
are rejected with an error reply, counted, and never stop the server.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import time

import pytest
from runtime_helpers import (
    EXAMPLES,
    ControlClient,
    fixture_pipeline,
    pong,
    run_cli,
    run_concurrently,
    shared_servers,
    start_servers,
    stop_all,
)

import serpytor
from serpytor.compiler.plan import encode_plan
from serpytor.runtime.api import run
from serpytor.runtime.gateway import AllServersRefusedError

MAX_HEADER = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def servers(request):
    return shared_servers(request.config)


@pytest.fixture(scope="module")
def refusers():
    """Two servers whose admission hook refuses every task."""
    pool = start_servers(2, "--admit", "tests.runtime_fixtures.admit:refuse_all",
                         prefix="refuser")
    try:
        yield pool
    finally:
        stop_all(pool)


@pytest.fixture(scope="module")
def victim():
    """A server only this module's garbage goes to."""
    pool = start_servers(1, prefix="victim")
    try:
        yield pool[0]
    finally:
        stop_all(pool)


# ---- admission ---------------------------------------------------------------------------
def test_a_refused_task_runs_elsewhere(refusers, servers):
    accepting = servers[0]
    expected = run(EXAMPLES / "average.spg", inline=True, journal=False).outputs
    result = run(EXAMPLES / "average.spg", journal=False,
                 servers=[refusers[0].address, accepting.address])
    assert result.outputs == expected
    assert {r.server for r in result.vertices.values()} == {accepting.name}
    assert result.stats["executed"] == 21
    assert pong(refusers[0].address)["tasks"] == 0


def test_every_server_refusing_is_a_clear_error(refusers):
    started = time.monotonic()
    with pytest.raises(AllServersRefusedError) as caught:
        run(EXAMPLES / "average.spg", journal=False,
            servers=[s.address for s in refusers])
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("every server refused vertex ")
    for server in refusers:
        assert server.name in message
    assert "full: no room for" in message


def test_every_server_refusing_on_the_command_line(refusers):
    done = run_cli("run", EXAMPLES / "average.spg", "--no-journal", "--servers",
                   ",".join(s.address for s in refusers), timeout=30)
    assert done.returncode == 1
    assert "every server refused vertex" in done.stderr
    assert "Traceback" not in done.stderr


# ---- nothing listening -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_where_nothing_listens_fails_naming_it():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_cli("run", EXAMPLES / "average.spg", "--no-journal", "--servers", address,
                   timeout=20)
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert address in done.stderr
    assert "Traceback" not in done.stderr


# ---- malformed messages ---------------------------------------------------------------------
def garbage_bytes() -> bytes:
    rng = random.Random(20240611)
    return bytes([0xFF, 0xFE]) + bytes(rng.randrange(256) for _ in range(62))


MALFORMED = {
    "random bytes": [garbage_bytes()],
    "empty frame": [b""],
    "invalid json": [b'{"type": "ping",'],
    "not an object": [b'["ping"]'],
    "unknown type": [json.dumps({"type": "frobnicate"}).encode()],
    "no type": [json.dumps({"job": "x"}).encode()],
    "oversized header": [b" " * (MAX_HEADER + 1)],
    "missing fields": [json.dumps({"type": "tasks"}).encode()],
    "tasks for an unknown job": [json.dumps(
        {"type": "tasks", "job": "no-such-job", "tasks": [{"v": 0}]}).encode()],
    "job without a plan": [json.dumps({"type": "job", "job": "j"}).encode()],
    "job with a damaged plan": [json.dumps({"type": "job", "job": "j"}).encode(),
                                b"SPGC\x01\x00\x00\x00garbage"],
    "release of non-integers": [json.dumps(
        {"type": "release", "job": "j", "vertices": ["all"]}).encode()],
    "a reply type": [json.dumps({"type": "pong"}).encode()],
}


@pytest.mark.parametrize("frames", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_control_message_is_rejected_and_counted(victim, frames):
    before = pong(victim.address)["rejected"]
    with ControlClient(victim.address) as client:
        client.send(*frames)
        reply = client.recv()
        assert reply["type"] == "error"
        assert isinstance(reply["message"], str) and reply["message"]
        after = client.ping()
    assert after["type"] == "pong"
    assert after["rejected"] == before + 1
    assert victim.alive()


DATA_MALFORMED = {
    "not a get": [json.dumps({"type": "ping"}).encode()],
    "get of non-integers": [json.dumps({"type": "get", "job": "j", "vertices": "all"}).encode()],
    "invalid json": [b"\x00{"],
}


@pytest.mark.parametrize("frames", list(DATA_MALFORMED.values()), ids=list(DATA_MALFORMED))
def test_a_malformed_data_message_is_rejected_and_counted(victim, frames):
    info = pong(victim.address)
    with ControlClient(info["data"]) as client:
        client.send(*frames)
        reply = client.recv()
    assert reply["type"] == "error" and reply["message"]
    assert pong(victim.address)["rejected"] == info["rejected"] + 1


def test_a_get_of_outputs_the_server_does_not_hold_is_an_error_reply(victim):
    info = pong(victim.address)
    with ControlClient(info["data"]) as client:
        client.send_json({"type": "get", "job": "nojob", "vertices": [0, 1]})
        reply = client.recv()
    assert reply["type"] == "error" and reply["missing"] == [0, 1]


def test_the_server_still_runs_pipelines_after_the_garbage(victim):
    with ControlClient(victim.address) as client:
        for frames in MALFORMED.values():
            client.send(*frames)
        replies = [client.recv() for _ in MALFORMED]
    assert [r["type"] for r in replies] == ["error"] * len(MALFORMED)
    result = run(EXAMPLES / "average.spg", journal=False, servers=[victim.address])
    assert result.outputs == run(EXAMPLES / "average.spg", inline=True, journal=False).outputs
    assert pong(victim.address)["rejected"] >= len(MALFORMED)


# ---- well-formed JSON with fields of the wrong type -----------------------------------------------
WRONG_TYPES = {
    "tasks is not a list": {"tasks": 5},
    "attempt is not a number": {"tasks": [{"v": 0, "attempt": "x"}]},
    "inputs is not a list": {"tasks": [{"v": 0, "attempt": 1, "inputs": 5}]},
    "context facts are not [key, value, origin, nearest]": {
        "tasks": [{"v": 0, "attempt": 1, "context": [[1]]}]},
}


@pytest.fixture(scope="module")
def fresh_servers():
    """One server per wrong-type case, so that a crash in one case shows in that case."""
    pool = start_servers(len(WRONG_TYPES), prefix="fresh")
    try:
        yield dict(zip(WRONG_TYPES, pool))
    finally:
        stop_all(pool)


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_a_task_with_fields_of_the_wrong_type_is_rejected(fresh_servers, case):
    """The server must reject the message (an error reply, counted) and keep running
    tasks: a valid task sent afterwards is done."""
    server = fresh_servers[case]
    plan = serpytor.compile_file(fixture_pipeline("fail_raises"))
    ok = plan.index_of("ok")
    with ControlClient(server.address) as client:
        client.send_json({"type": "job", "job": "known"}, encode_plan(plan))
        client.send_json({"type": "tasks", "job": "known", **WRONG_TYPES[case]})
        client.send_json({"type": "tasks", "job": "known",
                          "tasks": [{"v": ok, "attempt": 2}]})
        replies = receive_until_done(client, server, 2.0)
    what = (f"replies: {replies}; server exit status: {server.process.poll()}; "
            f"server stderr: {server.stderr().strip().splitlines()[-1:]}")
    assert replies and replies[0]["type"] in ("error", "failed"), what
    assert replies[-1]["type"] == "done" and replies[-1]["results"][0]["v"] == ok, what
    assert server.alive(), what


def receive_until_done(client: ControlClient, server, seconds: float) -> list[dict]:
    """Replies until a ``done`` arrives, the server exits, or ``seconds`` pass."""
    replies: list[dict] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.alive():
        if client.sock.poll(20):
            replies.append(json.loads(client.sock.recv_multipart()[0]))
            if replies[-1]["type"] == "done":
                break
    return replies


# ---- the server process ---------------------------------------------------------------------
def test_a_server_announces_itself_and_stops_on_sigterm():
    [server] = start_servers(1, prefix="lifecycle")
    try:
        assert re.fullmatch(r"lifecycle-0-\d+", server.name)
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", server.address)
        info = pong(server.address)
        assert info["name"] == server.name and info["pid"] == server.pid
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", info["data"])
        assert info["data"] != server.address
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(5) == 0
    finally:
        server.stop()


def test_a_server_cannot_bind_an_address_in_use(victim):
    done = run_cli("server", "--bind", victim.address, timeout=20)
    assert done.returncode == 1
    assert "cannot bind" in done.stderr and victim.address in done.stderr
    assert "Traceback" not in done.stderr


def test_gateways_running_at_the_same_time_share_servers(servers):
    """Three runs of one pipeline at once on the same servers: jobs stay apart."""
    expected = run(EXAMPLES / "average.spg", inline=True, journal=False).outputs
    results = run_concurrently(lambda: run(EXAMPLES / "average.spg", journal=False,
                                           servers=[s.address for s in servers]).outputs, 3)
    assert results == {0: expected, 1: expected, 2: expected}


# ---- the end of a job ------------------------------------------------------------------------
def test_a_server_confirms_the_end_of_a_job(victim):
    with ControlClient(victim.address) as client:
        client.send_json({"type": "end", "job": "never-started"})
        assert client.recv() == {"type": "ended", "job": "never-started"}


def test_when_a_run_returns_its_servers_hold_nothing_of_it(victim):
    result = run(EXAMPLES / "average.spg", journal=False, servers=[victim.address])
    assert result.stats["executed"] == 21
    assert pong(victim.address)["held"] == 0  # at once: the run waited for the end
