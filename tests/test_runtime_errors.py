"""Errors in user code, in every mode: a vertex that raises, returns something that
cannot be pickled, runs past its ``timeout`` (in Python or blocked in C), or kills its
server. Each ends the run in bounded time with an error naming the vertex; a raised
exception comes back as a subclass of both RemoteTaskError and its original type.

The fixture pipelines (tests/runtime_fixtures/fail_*.spg) all look like::

    ok --> KIND --> tail          KIND is the failing vertex (line 7 of the file)
     +---> fine
"""

from __future__ import annotations

import time

import pytest
from runtime_helpers import (
    MODES,
    ControlClient,
    fixture_pipeline,
    run_cli,
    run_in_mode,
    server_pool,
    shared_servers,
    wait_for,
)

from serpytor.errors import RemoteTaskError, SerpytorError, VertexTimeoutError
from serpytor.runtime.api import run

FAILING_LINE = 7


@pytest.fixture(scope="module")
def servers(request):
    return shared_servers(request.config)


def run_mode(mode: str, name: str, servers=None, **options):
    return run_in_mode(fixture_pipeline(name), mode, servers, **options)


# ---- a vertex that raises ------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_raised_error_is_remote_and_of_its_own_type(mode, servers):
    with pytest.raises(RemoteTaskError) as caught:
        run_mode(mode, "fail_raises", servers)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.vertex == "raises"
    assert error.line == FAILING_LINE
    assert str(error) == "vertex raises (line 7) failed: ValueError: bad value in raises"
    assert "Traceback" in error.remote_traceback
    assert 'raise ValueError("bad value in raises")' in error.remote_traceback
    assert "failmod.py" in error.remote_traceback


@pytest.mark.parametrize("mode", ("inline", "servers"))
def test_a_raised_error_on_the_command_line(mode, servers):
    where = ["--inline"] if mode == "inline" else \
        ["--servers", ",".join(s.address for s in servers)]
    done = run_cli("run", fixture_pipeline("fail_raises"), *where, "--no-journal")
    assert done.returncode == 1
    assert "vertex raises (line 7) failed: ValueError: bad value in raises" in done.stderr
    assert "Traceback" not in done.stderr
    verbose = run_cli("run", fixture_pipeline("fail_raises"), *where, "--no-journal", "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


# ---- a value that cannot be pickled ------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_an_unpicklable_output_cannot_be_journaled(mode, servers, tmp_path):
    with pytest.raises(RemoteTaskError) as caught:
        run_mode(mode, "fail_unpicklable", servers, journal=tmp_path / "journal")
    error = caught.value
    assert error.vertex == "unpicklable"
    assert "vertex unpicklable returned a value that cannot be stored" in str(error)
    assert "lock" in str(error)


def test_an_unpicklable_sink_output_fails_with_the_vertex_named():
    """No journal: the value stays on its server until the gateway fetches the sinks.
    Pickling it there fails; the run must end promptly with an error naming the vertex
    (not wait for a fetch timeout, not crash the server)."""
    done = run_cli("run", fixture_pipeline("fail_unpicklable_sink"), "--workers", "2",
                   "--no-journal", timeout=10)
    assert done.returncode == 1
    assert "unpicklable" in done.stderr
    assert "Traceback" not in done.stderr


# ---- timeouts ----------------------------------------------------------------------------
def assert_timed_out(error: BaseException, vertex: str, line: int | None = FAILING_LINE) -> None:
    assert isinstance(error, VertexTimeoutError) and isinstance(error, TimeoutError)
    assert isinstance(error, RemoteTaskError)
    assert error.vertex == vertex
    assert line is None or error.line == line
    assert vertex in str(error) and "timeout" in str(error).lower()


@pytest.mark.parametrize("mode", MODES)
def test_a_python_loop_past_its_timeout_is_interrupted(mode, servers):
    started = time.monotonic()
    with pytest.raises(RemoteTaskError) as caught:
        run_mode(mode, "fail_spin", servers)
    assert_timed_out(caught.value, "spin")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("mode", ("inline", "embedded"))
def test_a_vertex_blocked_in_c_past_its_timeout_ends_the_run(mode):
    started = time.monotonic()
    with pytest.raises(RemoteTaskError) as caught:
        run_mode(mode, "fail_block")
    assert_timed_out(caught.value, "block")
    assert time.monotonic() - started < 15


def test_an_inline_run_in_a_worker_thread_still_enforces_timeouts():
    """``run(inline=True)`` called from a thread other than the main one (a web
    handler, a notebook kernel's worker): SIGALRM is not available there, yet the
    vertex's ``timeout 1`` must still hold. spin loops for 3 s."""
    import threading

    outcome: dict[str, object] = {}

    def go() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = run(fixture_pipeline("fail_spin_short"), inline=True,
                                   journal=False).outputs
        except BaseException as error:  # examined below
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=go)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert "error" in outcome, f"the run ignored the timeout and returned {outcome}"
    assert_timed_out(outcome["error"], "spin", line=None)
    assert outcome["seconds"] < 2.5


@pytest.fixture
def own_servers():
    """Two servers for one test (it may kill or wedge them)."""
    with server_pool(2, "own") as pool:
        yield pool


def test_a_server_blocked_in_c_past_a_timeout_restarts_itself(own_servers):
    """--servers: the run fails in bounded time naming the vertex, and the server that
    could not interrupt the vertex restarts itself: its address answers again."""
    started = time.monotonic()
    with pytest.raises(RemoteTaskError) as caught:
        run_mode("servers", "fail_block", own_servers)
    assert_timed_out(caught.value, "block")
    assert time.monotonic() - started < 15
    for server in own_servers:
        with ControlClient(server.address) as client:
            client.send_json({"type": "ping"})
            reply = wait_for(lambda: client.sock.poll(200), 5,
                             f"server {server.name} at {server.address} to answer again")
            assert reply
            assert client.recv()["type"] == "pong"


def test_keep_going_after_a_vertex_blocked_in_c():
    """Embedded mode restarts the local server that had to exit; the rest finishes."""
    started = time.monotonic()
    result = run_mode("embedded", "fail_block", keep_going=True)
    assert time.monotonic() - started < 20
    assert isinstance(result.error, VertexTimeoutError) and result.error.vertex == "block"
    assert result.outputs == {"fine": ["ok"]}
    assert result.vertices["fine"].status == "executed"
    assert result.vertices["block"].status == "failed"


@pytest.mark.parametrize("mode", ("inline", "servers"))
def test_keep_going_after_a_timeout(mode, servers):
    result = run_mode(mode, "fail_spin", servers, keep_going=True)
    assert_timed_out(result.error, "spin")
    assert result.outputs == {"fine": ["ok"]}
    assert {n: r.status for n, r in result.vertices.items()} == {
        "ok": "executed", "spin": "failed", "fine": "executed"}


# ---- a vertex that kills its server --------------------------------------------------------
def test_a_vertex_that_kills_its_local_server():
    started = time.monotonic()
    with pytest.raises(SerpytorError) as caught:
        run_mode("embedded", "fail_die")
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "die" in message and "local-" in message


def test_the_vertex_that_killed_a_server_beside_others_is_found():
    """One local server gets 'die' and 'fine' together; when it exits nobody knows yet
    which of them killed it, so each runs alone on the restarted server: 'die' is named,
    'fine' finishes."""
    from serpytor.runtime.api import run

    started = time.monotonic()
    result = run(fixture_pipeline("fail_die"), workers=1, journal=False, keep_going=True)
    assert time.monotonic() - started < 20
    assert result.error is not None and result.error.vertex == "die"
    assert "local-0" in str(result.error)
    assert result.outputs == {"fine": ["ok"]}
    assert result.vertices["die"].status == "failed"


def test_a_vertex_that_kills_a_remote_server(own_servers):
    """--servers: the gateway has no process handle; it must still notice the server is
    gone (its connection drops, heartbeats stop) and end the run within 10 s naming the
    vertex and the server."""
    addresses = ",".join(s.address for s in own_servers)
    done = run_cli("run", fixture_pipeline("fail_die"), "--servers", addresses,
                   "--no-journal", timeout=10)
    assert done.returncode == 1
    assert "die" in done.stderr
    dead = [s for s in own_servers if not s.alive()]
    assert len(dead) == 1
    assert dead[0].name in done.stderr or dead[0].address in done.stderr
