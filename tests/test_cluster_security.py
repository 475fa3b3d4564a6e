"""CURVE across a cluster (DESIGN.md section 4, Security): with keys, every connection
-- gateway to server, server to server, large tcp streams, heartbeats -- is
authenticated and encrypted; a gateway with wrong, unlisted or missing keys gets
nothing through and is told which server refused it; binding a public address
without keys needs --insecure.

Two servers share one key directory; ``round_robin`` puts a producer and its consumer
on different servers, so the data plane is exercised::

    big (server 0) --[hint]--> look (server 1)
"""

from __future__ import annotations

import json
import shutil

import pytest
import zmq
from runtime_helpers import ROOT, run_cli, start_servers, stop_all, write_pipeline

import serpytor
from serpytor.runtime.heartbeat import HeartbeatClient, poll_heartbeat
from serpytor.runtime.security import keygen, load_security, secure_client
from serpytor.runtime.transfer import STREAM_MIN_BYTES


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    keygen(directory)
    return directory


@pytest.fixture(scope="module")
def keyed(keys):
    servers = start_servers(2, "--keys", str(keys), prefix="keyed")
    try:
        yield servers
    finally:
        stop_all(servers)


pytestmark = pytest.mark.usefixtures("in_checkout")


def pipeline(tmp_path, hint: str, size: int) -> str:
    return write_pipeline(tmp_path, "keyed", f"""pipeline keyed
use tests.runtime_fixtures.planemod as p
node big  = p.array(size = {size})
node look = p.describe
big -> look [channel = {hint}]
""")


@pytest.mark.parametrize("hint, size", [("auto", 1000), ("tcp", 200_000),
                                         ("tcp", STREAM_MIN_BYTES // 8 + 10)],
                         ids=["inline", "tcp", "stream"])
def test_a_keyed_run_moves_data_between_servers(tmp_path, keyed, keys, hint, size):
    result = serpytor.run(pipeline(tmp_path, hint, size), servers=[s.address for s in keyed],
                          keys=keys, journal=False, placement="round_robin")
    assert result.outputs["look"]["sum"] == float(size * (size - 1) / 2)
    assert result.vertices["big"].server != result.vertices["look"].server
    assert result.channels["tcp"][0] == 1


def test_a_gateway_without_keys_is_refused_by_keyed_servers(keyed):
    done = run_cli("run", ROOT / "examples" / "average.spg", "--no-journal", "--servers",
                   ",".join(s.address for s in keyed), timeout=30)
    assert done.returncode == 1
    assert "refused the connection" in done.stderr
    assert all(s.address in done.stderr for s in keyed)
    assert "Traceback" not in done.stderr


def test_a_gateway_with_other_keys_is_refused(keyed, tmp_path):
    keygen(tmp_path / "other")
    done = run_cli("run", ROOT / "examples" / "average.spg", "--no-journal", "--servers",
                   ",".join(s.address for s in keyed), "--keys", tmp_path / "other",
                   timeout=30)
    assert done.returncode == 1 and "CURVE handshake failed" in done.stderr


def test_an_unlisted_client_key_is_refused(keyed, keys, tmp_path):
    """The right server key, but a client identity the servers never authorized."""
    other = tmp_path / "other"
    keygen(other)
    for name in ("server.key", "server.key_secret"):
        shutil.copy(keys / name, other / name)
    done = run_cli("run", ROOT / "examples" / "average.spg", "--no-journal", "--servers",
                   keyed[0].address, "--keys", other, timeout=30)
    assert done.returncode == 1 and "refused the connection" in done.stderr


def test_the_heartbeat_answers_only_with_keys(keyed, keys):
    security = load_security(keys)
    ctx = zmq.Context.instance()
    address = keyed_ping(keyed[0].address, security)["heartbeat"]
    with HeartbeatClient(ctx, address, security) as client:
        beat = client.poll(5.0)
    assert beat is not None and beat["server"]["alive"] is True
    assert poll_heartbeat(ctx, address, 1.0) is None  # no keys: nothing comes back


def keyed_ping(address: str, security) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, security)
    sock.connect(address)
    try:
        sock.send(json.dumps({"type": "ping"}).encode())
        assert sock.poll(5000), "the keyed server did not answer a keyed ping"
        return json.loads(sock.recv_multipart()[0])
    finally:
        sock.close(0)


def test_binding_a_public_address_without_keys_needs_insecure():
    done = run_cli("server", "--bind", "tcp://0.0.0.0:0", timeout=20)
    assert done.returncode == 1
    assert "--insecure" in done.stderr and "--keys" in done.stderr
    assert "Traceback" not in done.stderr
