"""CURVE authentication and encryption for SerPyTor's ZeroMQ sockets.

Key layout (made by :func:`keygen`, the future ``serpytor keygen DIR``)::

    DIR/server.key_secret   the cluster's server identity (secret, mode 0600):
                            every server host has a copy, every server socket uses it
    DIR/server.key          its public half: every host that connects needs it
    DIR/client.key_secret   a client identity (secret, mode 0600): gateways, and servers
                            when they fetch from peers or read a peer's tcp channel
    DIR/client.key          its public half
    DIR/authorized/*.key    the public keys a server accepts; keygen puts client.key
                            there, and more may be added (one file per identity)

One server identity for the whole cluster means a client needs one server key whatever
server it connects to (the gateway learns data addresses at run time, and a key per
address would have to travel with them). A server host holds the whole directory; a
gateway host needs only ``client.key_secret`` and ``server.key``.

Using the keys (``config`` is a :class:`SecurityConfig` or ``None`` for no keys, in
which case every helper does nothing)::

    check_bind(address, config, insecure)   # refuse a public bind without keys
    secure_server(sock, config); sock.bind(address)     # ROUTERs that bind
    secure_client(sock, config); sock.connect(address)  # DEALERs that connect

Both helpers must run before ``bind``/``connect``: libzmq copies the options when the
endpoint is made, and an option set later does not apply to it (the helpers refuse a
socket that already has an endpoint). ``secure_server`` also starts the ZAP handler of
the socket's context (:func:`ensure_authenticator`), which is what checks client keys:
**without a ZAP handler a CURVE server accepts any client key** (libzmq's legacy
"stonehouse" behaviour), so never stop it while a secured socket is open. Stop it with
:func:`stop_authenticator` after closing the context's secured sockets and before
``ctx.destroy()`` (``destroy`` would close the handler's socket under its thread); a
plain ``ctx.term()`` also ends it.

Refused connections never deliver a message. Whether a message came from an
authenticated peer can also be checked per message, before unpickling anything it
carries: receive with ``copy=False`` and ask :func:`trusted` (a server socket checks
the ZAP ``User-Id`` of the frame; a client socket is trusted because the CURVE
handshake proved the server holds ``server.key_secret``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.auth.certs import create_certificates, load_certificate
from zmq.utils import z85

from ..errors import SerpytorError

log = logging.getLogger("serpytor.security")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: one handler per context
ZAP_VERSION = b"1.0"
ZAP_DOMAIN = "serpytor"
# monitor events that mean "this connection will not carry messages: check the keys"
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_Z85_CHARS = frozenset(z85.Z85CHARS)
_REFUSALS_LOGGED = 256  # distinct refused keys logged at warning level, then debug


class SecurityError(SerpytorError):
    """Root of the security errors."""


class SecurityConfigError(SecurityError):
    """A key directory is missing a file, holds a damaged one, or cannot do what was
    asked (serve without ``server.key_secret``). The message names the file; make the
    keys again with ``serpytor keygen DIR`` or copy the named file from where they were
    made."""


class KeysExistError(SecurityConfigError, FileExistsError):
    """``keygen`` found keys already in the directory. Pass ``force=True``
    (``--force``) to replace them, then copy the new files to every host."""


class InsecureBindError(SecurityError):
    """A socket was to be bound on a non-loopback address without keys. Configure keys
    (``--keys DIR``), bind a loopback address, or accept the risk with ``--insecure``."""


# keys on disk --------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPaths:
    """Where the files of a key directory are."""

    directory: Path
    server_secret: Path
    server_public: Path
    client_secret: Path
    client_public: Path
    authorized: Path          # the directory of accepted public keys
    authorized_client: Path   # keygen's copy of client.key in it

    @classmethod
    def at(cls, directory: str | os.PathLike[str]) -> KeyPaths:
        root = Path(directory)
        return cls(root, root / "server.key_secret", root / "server.key",
                   root / "client.key_secret", root / "client.key",
                   root / "authorized", root / "authorized" / "client.key")

    def files(self) -> tuple[Path, ...]:
        return (self.server_secret, self.server_public, self.client_secret,
                self.client_public, self.authorized_client)


def keygen(directory: str | os.PathLike[str], *, force: bool = False) -> KeyPaths:
    """Make the keys of a cluster in ``directory`` (created if missing, mode 0700).

    Secret files get mode 0600, public ones 0644. Existing keys are never replaced
    unless ``force`` is true (:class:`KeysExistError`); other keys already in
    ``authorized/`` are kept.
    """
    paths = KeyPaths.at(directory)
    existing = [str(p) for p in paths.files() if p.exists()]
    if existing and not force:
        raise KeysExistError(f"refusing to overwrite existing keys: {', '.join(existing)}; "
                             f"pass force=True (serpytor keygen --force) to replace them "
                             f"and copy the new files to every host")
    try:
        paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.authorized.mkdir(mode=0o755, exist_ok=True)
    except OSError as error:
        raise SecurityConfigError(f"cannot make the key directory {directory}: {error}") from None
    # keys are written in a private (0700) scratch directory and moved into place, so
    # no secret is ever readable by others, not even before its mode is set
    scratch = Path(tempfile.mkdtemp(prefix=".keygen-", dir=paths.directory))
    try:
        for name in ("server", "client"):
            public, secret = create_certificates(scratch, name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
        shutil.copyfile(scratch / "client.key", scratch / "authorized.key")
        os.chmod(scratch / "authorized.key", 0o644)
        moves = [("server.key_secret", paths.server_secret), ("server.key", paths.server_public),
                 ("client.key_secret", paths.client_secret), ("client.key", paths.client_public),
                 ("authorized.key", paths.authorized_client)]
        for source, target in moves:
            os.replace(scratch / source, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths


@dataclass(frozen=True)
class SecurityConfig:
    """The keys of one host, loaded by :func:`load_security`. Keys are Z85 text
    (40 bytes); secrets are left out of ``repr`` so they never reach a log.

    ``server_secret`` is ``None`` on a host that only connects (a gateway host, given
    ``client.key_secret`` and ``server.key``); ``authorized`` is then empty too.
    """

    directory: Path
    server_public: bytes
    client_public: bytes
    client_secret: bytes = field(repr=False)
    server_secret: bytes | None = field(default=None, repr=False)
    authorized: frozenset[bytes] = frozenset()

    @property
    def can_serve(self) -> bool:
        return self.server_secret is not None


def load_security(directory: str | os.PathLike[str] | None) -> SecurityConfig | None:
    """The keys in ``directory`` (``None``: no keys, returns ``None``).

    Needs ``server.key`` and ``client.key_secret``; with ``server.key_secret`` present
    (a server host) also ``authorized/`` with at least one ``*.key``. Raises
    :class:`SecurityConfigError` naming the missing or damaged file.
    """
    if directory is None:
        return None
    paths = KeyPaths.at(directory)
    if not paths.directory.is_dir():
        raise SecurityConfigError(f"key directory {directory} does not exist; "
                                  f"make one with `serpytor keygen {directory}`")
    server_public = _public_key(paths.server_public)
    client_public, client_secret = _keypair(paths.client_secret)
    if not paths.server_secret.exists():
        return SecurityConfig(paths.directory, server_public, client_public, client_secret)
    own_public, server_secret = _keypair(paths.server_secret)
    if own_public != server_public:
        raise SecurityConfigError(f"{paths.server_secret} and {paths.server_public} are not "
                                  f"one key pair; copy both from the same keygen")
    return SecurityConfig(paths.directory, server_public, client_public, client_secret,
                          server_secret, _authorized_keys(paths.authorized))


def _read(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityConfigError(f"{path}: missing; copy it from the directory "
                                  f"`serpytor keygen` made")
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as error:
        raise SecurityConfigError(f"{path}: not a CURVE certificate ({error})") from None
    _check_key(public, path, "public key")
    return public, secret


def _public_key(path: Path) -> bytes:
    return _read(path)[0]


def _keypair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _read(path)
    if secret is None:
        raise SecurityConfigError(f"{path}: holds no secret-key (is it a public .key file?)")
    _check_key(secret, path, "secret key")
    if zmq.curve_public(secret) != public:
        raise SecurityConfigError(f"{path}: its public-key does not belong to its secret-key")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s holds a secret key and other users may read it; chmod 600 it", path)
    return public, secret


def _check_key(key: bytes, path: Path, what: str) -> None:
    if len(key) != 40 or not _Z85_CHARS.issuperset(key):
        raise SecurityConfigError(f"{path}: the {what} is not a 40-character Z85 CURVE key")


def _authorized_keys(directory: Path) -> frozenset[bytes]:
    if not directory.is_dir():
        raise SecurityConfigError(f"{directory}: missing; a server needs the public keys "
                                  f"of the clients it accepts there (*.key files)")
    keys = frozenset(_public_key(p) for p in sorted(directory.glob("*.key")))
    if not keys:
        raise SecurityConfigError(f"{directory}: holds no *.key file, so no client could "
                                  f"connect; copy client.key there")
    return keys


# sockets -------------------------------------------------------------------------
def secure_server(sock: zmq.Socket, config: SecurityConfig | None) -> zmq.Socket:
    """Make ``sock`` (before ``bind``) a CURVE server with the cluster's server key,
    checking clients against ``config.authorized`` through the ZAP handler of its
    context, which this starts if needed. ``config=None``: leave the socket alone."""
    if config is None:
        return sock
    _check_fresh(sock, "secure_server", "bind")
    if config.server_secret is None:
        raise SecurityConfigError(f"{config.directory / 'server.key_secret'}: missing, so "
                                  f"this host can connect but not serve; copy it from the "
                                  f"directory `serpytor keygen` made")
    ensure_authenticator(sock.context, config)
    sock.curve_secretkey = config.server_secret
    sock.curve_publickey = config.server_public
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.curve_server = True
    return sock


def secure_client(sock: zmq.Socket, config: SecurityConfig | None) -> zmq.Socket:
    """Make ``sock`` (before ``connect``) a CURVE client: it talks only to a server
    holding ``server.key_secret`` and presents the client key. ``config=None``: leave
    the socket alone."""
    if config is None:
        return sock
    _check_fresh(sock, "secure_client", "connect")
    sock.curve_serverkey = config.server_public
    sock.curve_publickey = config.client_public
    sock.curve_secretkey = config.client_secret
    return sock


def _check_fresh(sock: zmq.Socket, helper: str, verb: str) -> None:
    if sock.last_endpoint:
        raise SecurityError(f"{helper} must be called before {verb}: the socket already "
                            f"uses {sock.last_endpoint.decode()} and would stay unsecured")


def check_bind(address: str, config: SecurityConfig | None, insecure: bool = False) -> None:
    """Refuse to bind ``address`` without keys unless it is local to this host.

    Local means ``ipc://``, ``inproc://``, ``localhost`` or a loopback IP (127.0.0.0/8,
    ``::1``). Anything else without keys raises :class:`InsecureBindError`, or, with
    ``insecure=True`` (``--insecure``), logs a warning and is allowed.
    """
    if config is not None or is_local(address):
        return
    if insecure:
        log.warning("binding %s without CURVE keys (--insecure): anyone who can reach it "
                    "can run code on this host and read its data", address)
        return
    raise InsecureBindError(f"refusing to bind {address} without keys: anyone who can "
                            f"reach it could run code on this host; pass --keys DIR (made "
                            f"by `serpytor keygen DIR`), bind a loopback address, or pass "
                            f"--insecure")


def is_local(address: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this host only."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # "*", an interface name or a host name: not known to be local
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# who sent a message --------------------------------------------------------------
def peer_user_id(frame: zmq.Frame) -> str | None:
    """The ``User-Id`` the ZAP handler gave the connection ``frame`` arrived on (the
    client's Z85 public key), or ``None`` for a connection no ZAP handler approved.
    Needs a frame received with ``copy=False``; any part of the message will do."""
    if not isinstance(frame, zmq.Frame):
        raise TypeError("receive with copy=False: only a zmq.Frame carries the "
                        "metadata of its connection")
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no such property on this connection
        return None


def peer_authenticated(frame: zmq.Frame, config: SecurityConfig | None = None) -> bool:
    """Whether ``frame`` came over a connection the ZAP handler approved (and, given
    ``config``, one whose key is in ``config.authorized``). For server sockets."""
    user = peer_user_id(frame)
    return user is not None and (config is None or user.encode() in config.authorized)


def trusted(sock: zmq.Socket, frame: zmq.Frame, config: SecurityConfig | None) -> bool:
    """Whether data in ``frame`` (received on ``sock``) may be unpickled.

    * no keys (``config is None``): yes -- the operator chose loopback or --insecure;
    * a secured server socket: only from an approved, authorized client key;
    * a secured client socket: yes -- the CURVE handshake proved the peer holds
      ``server.key_secret``;
    * an unsecured socket while keys are configured: no.
    """
    if config is None:
        return True
    if sock.curve_server:
        return peer_authenticated(frame, config)
    return sock.mechanism == zmq.CURVE


# the ZAP handler -----------------------------------------------------------------
class ZapAuthenticator:
    """The ZAP handler (RFC 27) of one ZeroMQ context: a thread that answers libzmq's
    authentication requests, approving CURVE clients of the ``serpytor`` domain whose
    public key is authorized and refusing everything else.

    ``approved`` and ``refused`` count the answers. The thread owns its two sockets
    and closes them when told to stop or when the context is terminated.
    """

    def __init__(self, context: zmq.Context, authorized: frozenset[bytes]) -> None:
        self.context = context
        self.authorized = frozenset(authorized)
        self.approved = 0
        self.refused = 0
        self._refused_keys: set[bytes] = set()
        self._stop_endpoint = f"inproc://serpytor-zap-stop-{id(self):x}"
        zap = context.socket(zmq.REP)
        zap.linger = 0
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as error:
            zap.close()
            raise SecurityError(f"cannot start the authenticator: {ZAP_ENDPOINT} is taken "
                                f"in this context ({error}); is another ZAP handler, such "
                                f"as zmq.auth's, running?") from None
        stop = context.socket(zmq.PULL)
        stop.linger = 0
        stop.bind(self._stop_endpoint)
        # the sockets move to the thread; starting it is the memory barrier ZeroMQ asks for
        self._thread = threading.Thread(target=self._run, args=(zap, stop),
                                        name="serpytor-zap", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self, zap: zmq.Socket, stop: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                if zap in ready:
                    zap.send_multipart(self.answer(zap.recv_multipart()))
        except zmq.ContextTerminated:
            pass  # ctx.term(): closing our sockets below lets it finish
        finally:
            zap.close()
            stop.close()

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: ``[version, request id, domain, address,
        routing id, mechanism, credentials...]``."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return self._refuse(request[1] if len(request) > 1 else b"", b"500",
                                "malformed ZAP request")
        request_id, domain, address, mechanism = request[1], request[2], request[3], request[5]
        credentials = request[6:]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return self._refuse(request_id, b"400", f"{mechanism.decode(errors='replace')} "
                                f"connection from {address.decode(errors='replace')}")
        if domain != ZAP_DOMAIN.encode():
            return self._refuse(request_id, b"400", f"unknown ZAP domain {domain!r}")
        key = z85.encode(credentials[0])
        if key not in self.authorized:
            return self._refuse(request_id, b"400", f"unlisted key {key.decode()} from "
                                f"{address.decode(errors='replace')}", key)
        self.approved += 1
        return [ZAP_VERSION, request_id, b"200", b"OK", key, b""]

    def _refuse(self, request_id: bytes, status: bytes, why: str,
                key: bytes = b"") -> list[bytes]:
        self.refused += 1
        # a refused client may retry; say so loudly once per key, then quietly
        if key not in self._refused_keys and len(self._refused_keys) < _REFUSALS_LOGGED:
            self._refused_keys.add(key)
            log.warning("refused a connection: %s", why)
        else:
            log.debug("refused a connection: %s", why)
        return [ZAP_VERSION, request_id, status, b"refused", b"", b""]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (its sockets close with it)."""
        if self._thread.is_alive():
            try:
                sock = self.context.socket(zmq.PUSH)
            except zmq.ZMQError:  # the context is terminated: the thread has seen ETERM
                sock = None
            if sock is not None:
                try:
                    sock.linger = 1000
                    sock.connect(self._stop_endpoint)
                    sock.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the thread is gone already
                finally:
                    sock.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SecurityError(f"the authenticator did not stop within {timeout:g} s")


_LOCK = threading.Lock()
_AUTHENTICATORS: dict[int, ZapAuthenticator] = {}  # id(context) -> its handler


def ensure_authenticator(context: zmq.Context, config: SecurityConfig) -> ZapAuthenticator:
    """Start the ZAP handler of ``context`` unless it runs; either way it then accepts
    exactly ``config.authorized`` (the last config given wins). Thread-safe."""
    with _LOCK:
        auth = _AUTHENTICATORS.get(id(context))
        if auth is not None and auth.alive:
            auth.authorized = config.authorized
            return auth
        auth = ZapAuthenticator(context, config.authorized)
        _AUTHENTICATORS[id(context)] = auth
        return auth


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the ZAP handler of ``context``, if any. Close the context's secured sockets
    first: a CURVE server whose context has no handler accepts any client key."""
    with _LOCK:
        auth = _AUTHENTICATORS.pop(id(context), None)
    if auth is not None:
        auth.stop()


__all__ = [
    "HANDSHAKE_FAILED_EVENTS", "InsecureBindError", "KeyPaths", "KeysExistError",
    "SecurityConfig", "SecurityConfigError", "SecurityError", "ZAP_DOMAIN",
    "ZapAuthenticator", "check_bind", "ensure_authenticator", "is_local", "keygen",
    "load_security", "peer_authenticated", "peer_user_id", "secure_client",
    "secure_server", "stop_authenticator", "trusted",
]
