"""``serpytor gateway`` as a service (DESIGN.md section 4, Gateway): clients submit with
``serpytor run --gateway ADDR``; jobs share the gateway's servers; a job's outputs go
from the servers to the client, not through the gateway; a restarted gateway resumes
its jobs from its journal; ``serpytor status`` shows servers and jobs; garbage sent to
the gateway is rejected and counted while it keeps serving.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from runtime_helpers import (
    EXAMPLES,
    ROOT,
    ControlClient,
    child_env,
    fixture_pipeline,
    journaled_vertices,
    kill_group,
    log_lines,
    pong,
    run_cli,
    run_concurrently,
    serpytor_command,
    server_pool,
    spawn_cli,
    wait_for,
)

import serpytor
from serpytor.compiler.plan import encode_plan
from serpytor.errors import RemoteTaskError

SLOW = fixture_pipeline("slow")


@pytest.fixture(scope="module")
def servers():
    with server_pool(2, "gwsrv") as pool:
        yield pool


class GatewayProcess:
    """A ``serpytor gateway`` child on a port of its own (kept across a restart)."""

    def __init__(self, servers, state: Path, port: int) -> None:
        self.command = serpytor_command(
            "gateway", "--bind", f"tcp://127.0.0.1:{port}", "--servers",
            ",".join(s.address for s in servers), "--state", state)
        self.address = f"tcp://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=child_env(), cwd=ROOT,
                                        text=True, start_new_session=True)
        line = self.process.stdout.readline()
        assert line.startswith("serpytor gateway listening on"), line
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)
        self.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(15)
        self.close()
        return status

    def close(self) -> None:
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gateway(servers, tmp_path):
    service = GatewayProcess(servers, tmp_path / "state", free_port()).start()
    try:
        yield service
    finally:
        service.kill()


def test_a_submitted_run_gives_the_inline_result(gateway):
    expected = serpytor.run(EXAMPLES / "wordcount.spg", inline=True, journal=False).outputs
    result = serpytor.run(EXAMPLES / "wordcount.spg", gateway=gateway.address)
    assert result.outputs == expected
    assert result.stats["executed"] == 21 and result.stats["vertices"] == 21
    again = serpytor.run(EXAMPLES / "wordcount.spg", gateway=gateway.address)
    assert again.outputs == expected
    assert again.stats["reused"] == 20  # the gateway's journal; archive is volatile


def held_outputs(servers) -> list[int]:
    """How many outputs each server holds, asked now."""
    return [pong(server.address)["held"] for server in servers]


def test_jobs_at_the_same_time_share_the_servers(gateway, servers):
    expected = serpytor.run(EXAMPLES / "average.spg", inline=True, journal=False).outputs
    results = run_concurrently(lambda: serpytor.run(
        EXAMPLES / "average.spg", gateway=gateway.address, journal=False).outputs, 3)
    assert results == {0: expected, 1: expected, 2: expected}
    # each run returned once its job had ended on the servers: a gateway killed now
    # (as this test's teardown does) leaves nothing behind
    assert held_outputs(servers) == [0] * len(servers)


def test_collected_is_answered_once_the_servers_dropped_the_job(gateway, servers):
    """The protocol under ``run``: ``collected`` is answered with ``ended`` only after
    every server confirmed the end, so a client that returns leaves nothing behind."""
    plan = encode_plan(serpytor.compile_file(EXAMPLES / "average.spg"))
    with ControlClient(gateway.address) as client:
        client.send_json({"type": "submit", "options": {"journal": False}}, plan)
        job = client.recv()["job"]

        def finished() -> dict | None:
            client.send_json({"type": "poll", "job": job})
            state = client.recv()
            return state if state["state"] != "running" else None

        assert wait_for(finished, 60, "the job to finish", 0.05)["state"] == "done"
        assert sum(held_outputs(servers)) > 0  # the outputs wait for their client
        client.send_json({"type": "collected", "job": job})
        assert client.recv() == {"type": "ended", "job": job}
    assert held_outputs(servers) == [0] * len(servers)


def test_a_failing_job_raises_the_vertex_error_here(gateway, servers):
    with pytest.raises(RemoteTaskError) as caught:
        serpytor.run(fixture_pipeline("fail_raises"), gateway=gateway.address, journal=False)
    assert isinstance(caught.value, ValueError)
    assert caught.value.vertex == "raises" and caught.value.line == 7
    assert held_outputs(servers) == [0] * len(servers)  # reported once the job ended


def test_the_command_line_run_and_status(gateway, servers):
    done = run_cli("run", EXAMPLES / "average.spg", "--gateway", gateway.address, "--output",
                   "json", timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["executed"] == 21
    status = run_cli("status", "--gateway", gateway.address, "--output", "json", timeout=30)
    report = json.loads(status.stdout)
    assert {s["address"] for s in report["servers"]} == {s.address for s in servers}
    assert all(s["state"] == "ready" and s["cpu"] is not None for s in report["servers"])
    assert [j["state"] for j in report["jobs"]] == ["done"]
    table = run_cli("status", "--servers", ",".join(s.address for s in servers), timeout=30)
    assert table.returncode == 0
    assert all(s.name in table.stdout for s in servers) and "CPU%" in table.stdout


def test_a_gateway_where_nothing_listens_fails_naming_it():
    address = f"tcp://127.0.0.1:{free_port()}"
    done = run_cli("run", EXAMPLES / "average.spg", "--gateway", address, timeout=30)
    assert done.returncode == 1 and address in done.stderr
    assert "Traceback" not in done.stderr


def test_garbage_is_rejected_and_the_gateway_keeps_serving(gateway):
    rng = random.Random(7)
    valid = json.dumps({"type": "poll", "job": "x"}).encode()
    with ControlClient(gateway.address) as client:
        for _ in range(40):
            frame = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            client.send(bytes(frame[:rng.randrange(1, len(frame) + 1)]))
            assert client.recv()["type"] == "error"
        client.send_json({"type": "submit", "options": {"nope": 1}}, b"SPGCgarbage")
        assert client.recv()["type"] == "error"
    result = serpytor.run(EXAMPLES / "average.spg", gateway=gateway.address, journal=False)
    assert "mean" in result.outputs


def test_a_restarted_gateway_resumes_its_job(servers, tmp_path):
    """SIGKILL the gateway mid-job; restart it on the same address and state: the
    waiting client gets the result, and no vertex recorded before the kill runs again."""
    log = tmp_path / "executions.log"
    service = GatewayProcess(servers, tmp_path / "state", free_port()).start()
    client = spawn_cli("run", SLOW, "--gateway", service.address, "--output", "json",
                       env=child_env(SPT_LOG=str(log)))
    try:
        wait_for(lambda: len(log_lines(log)) >= 10, 60, "10 executions")
        service.kill()
        recorded = set(journaled_vertices(tmp_path / "state" / "journal"))
        service.start()
        out, err = client.communicate(timeout=90)
        assert client.returncode == 0, err
        expected = serpytor.run(SLOW, inline=True, journal=False).outputs
        assert json.loads(out)["outputs"] == expected
        executions = log_lines(log)
        assert set(executions) == set(serpytor.compile_file(SLOW).names)
        again = sorted(v for v in recorded if executions.count(v) > 1)
        assert not again, f"recorded vertices ran again after the restart: {again}"
    finally:
        if client.poll() is None:
            kill_group(client)
            client.communicate()
        service.kill()
