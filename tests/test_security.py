"""CURVE keys, secured sockets, the ZAP handler and the bind rule (serpytor.runtime.security).

Every socket is on 127.0.0.1 with a random port and linger 0, every receive waits with
a timeout, and each test's context is terminated with its ZAP handler stopped.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from zmq.auth.certs import load_certificate
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from serpytor.errors import SerpytorError
from serpytor.runtime.security import (
    HANDSHAKE_FAILED_EVENTS, ZAP_DOMAIN, ZAP_ENDPOINT, InsecureBindError, KeyPaths,
    KeysExistError, SecurityConfig, SecurityConfigError, SecurityError, ZapAuthenticator,
    check_bind, ensure_authenticator, is_local, keygen, load_security, peer_authenticated,
    peer_user_id, secure_client, secure_server, stop_authenticator, trusted,
)

WAIT_MS = 5000       # the longest a test waits for something that should happen
QUIET_MS = 300       # how long a server must stay silent to count as "got nothing"


class Harness:
    """One ZeroMQ context and every socket a test opens in it."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        self.sockets.append(sock)
        return sock

    def monitor(self, sock: zmq.Socket) -> zmq.Socket:
        mon = sock.get_monitor_socket()
        mon.linger = 0
        self.sockets.append(mon)
        return mon

    def close(self) -> None:
        for sock in reversed(self.sockets):
            sock.close(linger=0)
        stop_authenticator(self.ctx)
        self.ctx.term()


def _zap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "serpytor-zap" and t.is_alive()]


@pytest.fixture
def net():
    harness = Harness()
    yield harness
    harness.close()
    assert not _zap_threads(), "a ZAP handler thread outlived its context"


@pytest.fixture
def keys(tmp_path: Path) -> SecurityConfig:
    config = load_security(keygen(tmp_path / "keys").directory)
    assert config is not None
    return config


@pytest.fixture
def other_keys(tmp_path: Path) -> SecurityConfig:
    """A second cluster's keys: right format, wrong cluster."""
    config = load_security(keygen(tmp_path / "other").directory)
    assert config is not None
    return config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# keygen ---------------------------------------------------------------------------
def test_keygen_makes_the_layout_with_private_secrets(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    assert paths == KeyPaths.at(tmp_path / "keys")
    assert sorted(p.name for p in paths.directory.iterdir()) == [
        "authorized", "client.key", "client.key_secret", "server.key", "server.key_secret"]
    assert [p.name for p in paths.authorized.iterdir()] == ["client.key"]
    assert _mode(paths.directory) == 0o700
    assert _mode(paths.server_secret) == 0o600
    assert _mode(paths.client_secret) == 0o600
    assert _mode(paths.server_public) == 0o644
    assert _mode(paths.client_public) == 0o644
    assert _mode(paths.authorized_client) == 0o644
    assert paths.authorized_client.read_bytes() == paths.client_public.read_bytes()
    assert "secret-key" not in paths.server_public.read_text()
    assert "secret-key" not in paths.client_public.read_text()
    # two identities, not one key used twice
    assert paths.server_public.read_bytes() != paths.client_public.read_bytes()


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    before = {p: p.read_bytes() for p in paths.files()}
    extra = paths.authorized / "laptop.key"
    extra.write_bytes(paths.server_public.read_bytes())
    with pytest.raises(KeysExistError, match="refusing to overwrite.*server.key_secret.*force"):
        keygen(paths.directory)
    assert {p: p.read_bytes() for p in paths.files()} == before
    keygen(paths.directory, force=True)
    assert paths.server_secret.read_bytes() != before[paths.server_secret]
    assert paths.authorized_client.read_bytes() == paths.client_public.read_bytes()
    assert extra.exists(), "keys added to authorized/ by hand are kept"
    assert not [p for p in paths.directory.iterdir() if p.name.startswith(".keygen")]


def test_keygen_errors_are_serpytor_errors(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    with pytest.raises(SerpytorError):
        keygen(tmp_path / "keys")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SecurityConfigError, match="cannot make the key directory"):
        keygen(tmp_path / "file")


# loading --------------------------------------------------------------------------
def test_load_security_reads_both_identities(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    config = load_security(paths.directory)
    assert config is not None and config.can_serve
    server_public, server_secret = load_certificate(paths.server_secret)
    client_public, client_secret = load_certificate(paths.client_secret)
    assert (config.server_public, config.server_secret) == (server_public, server_secret)
    assert (config.client_public, config.client_secret) == (client_public, client_secret)
    assert config.authorized == frozenset({client_public})
    assert server_secret.decode() not in repr(config)
    assert client_secret.decode() not in repr(config)
    assert load_security(None) is None


def test_a_gateway_host_needs_only_the_client_secret_and_the_server_key(
        tmp_path: Path, net: Harness) -> None:
    full = keygen(tmp_path / "keys")
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    for source in (full.client_secret, full.server_public):
        (gateway / source.name).write_bytes(source.read_bytes())
        os.chmod(gateway / source.name, _mode(source))
    config = load_security(gateway)
    assert config is not None and not config.can_serve
    assert config.authorized == frozenset()
    secure_client(net.socket(zmq.DEALER), config)
    with pytest.raises(SecurityConfigError, match="server.key_secret: missing.*not serve"):
        secure_server(net.socket(zmq.ROUTER), config)
    assert not _zap_threads()


def _remove(path: Path) -> None:
    path.unlink()


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \n")


def _short_key(path: Path) -> None:
    path.write_text('curve\n    public-key = "tooshort"\n')


def _bad_chars(path: Path) -> None:
    path.write_text('curve\n    public-key = "' + "~" * 40 + '"\n')


@pytest.mark.parametrize("name, damage, message", [
    ("server.key", _remove, r"server\.key: missing"),
    ("client.key_secret", _remove, r"client\.key_secret: missing"),
    ("server.key", _garble, r"server\.key: not a CURVE certificate"),
    ("server.key", _short_key, r"server\.key: the public key is not a 40-character"),
    ("server.key", _bad_chars, r"server\.key: the public key is not a 40-character"),
    ("authorized/client.key", _garble, r"authorized/client\.key: not a CURVE certificate"),
    ("authorized/client.key", _remove, r"authorized: holds no \*\.key file"),
])
def test_load_security_names_the_missing_or_damaged_file(
        tmp_path: Path, name: str, damage, message: str) -> None:
    paths = keygen(tmp_path / "keys")
    damage(paths.directory / name)
    with pytest.raises(SecurityConfigError, match=message):
        load_security(paths.directory)


def test_load_security_rejects_a_public_file_in_place_of_a_secret(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    paths.client_secret.write_bytes(paths.client_public.read_bytes())
    with pytest.raises(SecurityConfigError, match=r"client\.key_secret: holds no secret-key"):
        load_security(paths.directory)


def test_load_security_rejects_halves_of_different_pairs(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    other = keygen(tmp_path / "other")
    original = paths.server_public.read_bytes()
    paths.server_public.write_bytes(other.server_public.read_bytes())
    with pytest.raises(SecurityConfigError, match="are not one key pair"):
        load_security(paths.directory)
    paths.server_public.write_bytes(original)
    text = paths.client_secret.read_text()
    foreign = load_certificate(other.client_public)[0].decode()
    mine = load_certificate(paths.client_secret)[0].decode()
    paths.client_secret.write_text(text.replace(mine, foreign))
    with pytest.raises(SecurityConfigError, match="public-key does not belong"):
        load_security(paths.directory)


def test_load_security_needs_authorized_on_a_server_host(tmp_path: Path) -> None:
    paths = keygen(tmp_path / "keys")
    paths.authorized_client.unlink()
    paths.authorized.rmdir()
    with pytest.raises(SecurityConfigError, match=r"authorized: missing"):
        load_security(paths.directory)
    with pytest.raises(SecurityConfigError, match="does not exist.*serpytor keygen"):
        load_security(tmp_path / "nowhere")


def test_a_secret_others_can_read_is_loaded_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = keygen(tmp_path / "keys")
    with caplog.at_level(logging.WARNING, logger="serpytor.security"):
        load_security(paths.directory)
    assert not caplog.records
    os.chmod(paths.server_secret, 0o644)
    with caplog.at_level(logging.WARNING, logger="serpytor.security"):
        load_security(paths.directory)
    assert [r.getMessage() for r in caplog.records] == [
        f"{paths.server_secret} holds a secret key and other users may read it; chmod 600 it"]


# secured sockets ------------------------------------------------------------------
def _server(net: Harness, config: SecurityConfig | None) -> tuple[zmq.Socket, zmq.Socket, str]:
    router = net.socket(zmq.ROUTER)
    secure_server(router, config)
    monitor = net.monitor(router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, monitor, f"tcp://127.0.0.1:{port}"


def _client(net: Harness, config: SecurityConfig | None, address: str) -> zmq.Socket:
    dealer = net.socket(zmq.DEALER)
    secure_client(dealer, config)
    dealer.connect(address)
    dealer.send(b"hello")  # queued until the handshake is done
    return dealer


def _wait_for_event(monitor: zmq.Socket, wanted: int) -> dict:
    """The first monitor event in the ``wanted`` mask, within WAIT_MS."""
    deadline = time.monotonic() + WAIT_MS / 1000
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if not monitor.poll(int(left * 1000) + 1):
            break
        event = recv_monitor_message(monitor)
        if event["event"] & wanted:
            return event
        seen.append(event["event"])
    raise AssertionError(f"no event in {wanted!r} within {WAIT_MS} ms; saw {seen}")


def test_a_secured_pair_exchanges_messages_and_names_the_client(
        net: Harness, keys: SecurityConfig) -> None:
    router, monitor, address = _server(net, keys)
    dealer = _client(net, keys, address)
    assert router.poll(WAIT_MS), "the authorized client's message did not arrive"
    frames = router.recv_multipart(copy=False)
    assert [f.bytes for f in frames[1:]] == [b"hello"]
    assert peer_user_id(frames[1]) == keys.client_public.decode()
    assert peer_user_id(frames[0]) == keys.client_public.decode()  # any part will do
    assert peer_authenticated(frames[1], keys)
    assert trusted(router, frames[1], keys)
    router.send_multipart([frames[0], b"welcome"])
    assert dealer.poll(WAIT_MS)
    reply = dealer.recv(copy=False)
    assert reply.bytes == b"welcome"
    assert peer_user_id(reply) is None  # the client side has no ZAP: the handshake vouches
    assert trusted(dealer, reply, keys)
    assert _wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert ensure_authenticator(net.ctx, keys).approved == 1


def _wrong_server_key(keys: SecurityConfig, other: SecurityConfig) -> SecurityConfig | None:
    return replace(keys, server_public=other.server_public)


def _unlisted_client(keys: SecurityConfig, other: SecurityConfig) -> SecurityConfig | None:
    return replace(keys, client_public=other.client_public, client_secret=other.client_secret)


def _no_keys(keys: SecurityConfig, other: SecurityConfig) -> SecurityConfig | None:
    return None


@pytest.mark.parametrize("client_keys, failure, refused_by_zap", [
    (_wrong_server_key, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, False),
    (_unlisted_client, zmq.EVENT_HANDSHAKE_FAILED_AUTH, True),
    (_no_keys, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, False),
], ids=["wrong-server-key", "unlisted-client-key", "no-keys"])
def test_a_client_without_the_right_keys_gets_nothing_through(
        net: Harness, keys: SecurityConfig, other_keys: SecurityConfig,
        client_keys, failure: int, refused_by_zap: bool) -> None:
    router, monitor, address = _server(net, keys)
    _client(net, client_keys(keys, other_keys), address)
    event = _wait_for_event(monitor, HANDSHAKE_FAILED_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert event["event"] == failure
    assert not router.poll(QUIET_MS), "the server received a message from a refused client"
    auth = ensure_authenticator(net.ctx, keys)
    assert auth.approved == 0
    assert (auth.refused > 0) == refused_by_zap


def test_an_unsecured_connection_is_not_trusted_when_keys_are_configured(
        net: Harness, keys: SecurityConfig) -> None:
    router, _, address = _server(net, None)
    _client(net, None, address)
    assert router.poll(WAIT_MS)
    frames = router.recv_multipart(copy=False)
    assert peer_user_id(frames[1]) is None
    assert not peer_authenticated(frames[1])
    assert not trusted(router, frames[1], keys)
    assert trusted(router, frames[1], None)  # no keys at all: loopback or --insecure
    with pytest.raises(TypeError, match="copy=False"):
        peer_user_id(b"hello")  # type: ignore[arg-type]


def test_without_a_zap_handler_curve_accepts_any_key_but_sets_no_user_id(
        net: Harness, keys: SecurityConfig, other_keys: SecurityConfig) -> None:
    """Why secure_server starts the handler, and why trusted() checks User-Id: a CURVE
    server configured by hand in a context without a ZAP handler lets any key in."""
    router = net.socket(zmq.ROUTER)
    router.curve_secretkey = keys.server_secret
    router.curve_publickey = keys.server_public
    router.zap_domain = ZAP_DOMAIN.encode()
    router.curve_server = True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    _client(net, _unlisted_client(keys, other_keys), f"tcp://127.0.0.1:{port}")
    assert router.poll(WAIT_MS)
    frames = router.recv_multipart(copy=False)
    assert peer_user_id(frames[1]) is None
    assert not trusted(router, frames[1], keys)


def test_the_helpers_refuse_a_socket_that_already_has_an_endpoint(
        net: Harness, keys: SecurityConfig) -> None:
    router = net.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with pytest.raises(SecurityError, match="before bind.*would stay unsecured"):
        secure_server(router, keys)
    dealer = net.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    with pytest.raises(SecurityError, match="before connect"):
        secure_client(dealer, keys)
    plain = net.socket(zmq.DEALER)
    assert secure_client(plain, None) is plain and plain.mechanism == zmq.NULL
    assert secure_server(plain, None) is plain and not plain.curve_server


# the ZAP handler ------------------------------------------------------------------
def test_one_authenticator_per_context(net: Harness, keys: SecurityConfig,
                                       other_keys: SecurityConfig) -> None:
    first = ensure_authenticator(net.ctx, keys)
    assert ensure_authenticator(net.ctx, other_keys) is first
    assert first.authorized == other_keys.authorized  # the last config wins
    second = Harness()
    try:
        assert ensure_authenticator(second.ctx, keys) is not first
        assert len(_zap_threads()) == 2
    finally:
        second.close()
    assert len(_zap_threads()) == 1
    stop_authenticator(net.ctx)
    assert not first.alive
    stop_authenticator(net.ctx)  # idempotent


def test_a_foreign_zap_handler_is_reported(net: Harness, keys: SecurityConfig) -> None:
    foreign = net.socket(zmq.REP)
    foreign.bind(ZAP_ENDPOINT)
    with pytest.raises(SecurityError, match="is taken in this context"):
        ensure_authenticator(net.ctx, keys)
    assert not _zap_threads()


def test_terminating_the_context_ends_the_handler(keys: SecurityConfig) -> None:
    harness = Harness()
    auth = ensure_authenticator(harness.ctx, keys)
    terminator = threading.Thread(target=harness.ctx.term, daemon=True)
    terminator.start()
    terminator.join(WAIT_MS / 1000)
    assert not terminator.is_alive(), "ctx.term() hung on the ZAP handler's sockets"
    auth.stop()  # after term: nothing to signal, must not raise
    assert not auth.alive
    stop_authenticator(harness.ctx)
    assert not _zap_threads()


@pytest.mark.parametrize("request_, status", [
    ([b"1.0"], b"500"),
    ([b"0.9", b"id", ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"CURVE", b"k" * 32], b"500"),
    ([b"1.0", b"id", ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"NULL"], b"400"),
    ([b"1.0", b"id", ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"PLAIN", b"u", b"p"], b"400"),
    ([b"1.0", b"id", b"elsewhere", b"127.0.0.1", b"", b"CURVE", b"k" * 32], b"400"),
    ([b"1.0", b"id", ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"CURVE", b"short"], b"400"),
])
def test_the_handler_refuses_anything_but_an_authorized_curve_key(
        net: Harness, keys: SecurityConfig, request_: list[bytes], status: bytes) -> None:
    auth = ensure_authenticator(net.ctx, keys)
    reply = auth.answer(request_)
    assert len(reply) == 6 and reply[0] == b"1.0" and reply[2] == status
    assert reply[4] == b""  # no User-Id for a refusal
    assert (auth.approved, auth.refused) == (0, 1)
    good = z85.decode(keys.client_public)
    reply = auth.answer([b"1.0", b"7", ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"CURVE", good])
    assert reply == [b"1.0", b"7", b"200", b"OK", keys.client_public, b""]


def test_zap_authenticator_is_the_registered_one(net: Harness, keys: SecurityConfig) -> None:
    assert isinstance(ensure_authenticator(net.ctx, keys), ZapAuthenticator)


# the bind rule --------------------------------------------------------------------
LOCAL = ["tcp://127.0.0.1:*", "tcp://127.9.8.7:5555", "tcp://localhost:5555",
         "tcp://[::1]:5555", "tcp://[::ffff:127.0.0.1]:5555", "ipc:///tmp/serpytor.sock",
         "inproc://serpytor-wake", "tcp://127.0.0.1"]
PUBLIC = ["tcp://0.0.0.0:5555", "tcp://*:*", "tcp://10.1.2.3:5555", "tcp://[::]:5555",
          "tcp://eth0:5555", "tcp://example.org:5555", "ws://127.0.0.1:5555",
          "tcp://[2001:db8::1]:5555"]


@pytest.mark.parametrize("address", LOCAL)
def test_local_addresses_bind_without_keys(address: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    assert is_local(address)
    with caplog.at_level(logging.WARNING, logger="serpytor.security"):
        check_bind(address, None, insecure=False)
    assert not caplog.records


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_need_keys_or_insecure(
        address: str, keys: SecurityConfig, caplog: pytest.LogCaptureFixture) -> None:
    assert not is_local(address)
    with pytest.raises(InsecureBindError, match="--keys DIR.*--insecure"):
        check_bind(address, None, insecure=False)
    with caplog.at_level(logging.WARNING, logger="serpytor.security"):
        check_bind(address, keys, insecure=False)
        assert not caplog.records
        check_bind(address, None, insecure=True)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert address in caplog.records[0].getMessage()
    assert "--insecure" in caplog.records[0].getMessage()
