"""The data plane between servers: how a vertex's input reaches the server running it.

Outputs stay in the memory of the server that computed them (:class:`OutputTable`)
until the gateway releases them; they leave it only when a peer asks, over the
holder's data port, and then by one of the channel kinds of
:mod:`serpytor.runtime.channels` (Dryad's rule, DESIGN.md section 4)::

    consumer --get {vertices, host, hints}--> holder's data port
    holder   --data {items: [{v, via, ...}]} + frames--> consumer

``via`` per item, chosen by the holder (:func:`choose_transfer`), from the edge's hint,
whether both ends share a host, and the size of the serialized output:

* ``inline``: the frames travel in the reply (a ``tcp`` transfer over the persistent
  data connection; channel framing with a crc-checked head) -- small outputs, where
  setting up a channel costs more than the bytes;
* ``shm``: the holder writes a shared-memory channel and replies with its descriptor;
  the consumer maps it and gets numpy arrays as read-only views (no copy) -- large
  outputs on one host, or any output on an ``[channel = shm]`` edge;
* ``stream``: the holder opens a ``tcp`` channel (credit flow control, chunked, end
  acknowledged) in a thread and replies with its descriptor -- large outputs between
  hosts;
* ``error``: the output cannot be serialized (or an ``shm`` edge crosses hosts); the
  message names the vertex.

A consumer reads a *stored* input (journaled, on a ``file`` channel) straight from the
store when it can, and an input its own server holds from memory. What each input
cost is counted by kind (``memory``, ``shm``, ``tcp``, ``file``) in
:class:`TransferCounts`, which servers report to the gateway with their results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..compiler.kinds import ChannelKind
from .channels import (ChannelError, ChannelReader, EndOfChannel, get_serializer,
                       open_reader, open_writer, same_host)
from .channels.framing import FrameError, decode_frame_head, layout_frame
from .channels.serialize import encoded_size
from .protocol import ProtocolError, decode, encode
from .security import SecurityConfig, secure_client

log = logging.getLogger("serpytor.transfer")

SERIALIZER = get_serializer("pickle")
SHM_MIN_BYTES = 64 * 1024        # below this, one more message beats mapping a segment
STREAM_MIN_BYTES = 16 << 20      # above this, a chunked, flow-controlled tcp channel
FETCH_TIMEOUT_S = 120.0
HOLDER_GONE_S = 1.0       # a holder's connection down this long: it is gone
GONE_MEMORY_S = 5.0       # fetches from a holder found gone fail at once for this long
REPLY_SLICE_MS = 50       # how often a waiting fetch looks at the holder's connection
CONNECTION_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
                     | zmq.EVENT_HANDSHAKE_SUCCEEDED)
STREAM_TIMEOUT_S = 120.0

INLINE, SHM, STREAM, ERROR = "inline", "shm", "stream", "error"


class FetchError(Exception):
    """An input could not be brought to this server (its holder is gone, refused, or
    sent something unreadable). The message names the input and the holder; ``lost``
    lists the inputs whose outputs are gone (their producers must run again)."""

    def __init__(self, message: str, lost: list[int] | None = None) -> None:
        super().__init__(message)
        self.lost = list(lost or ())


# ---- holder side ---------------------------------------------------------------------------
@dataclass
class Held:
    value: Any
    encoded: tuple[bytes, list[Any]] | None = None  # serialized once, on first request


class OutputTable:
    """The outputs a server holds, by ``(job, vertex)``, until the gateway releases them.
    Shared by the I/O thread (serving peers) and the executor (storing results)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], Held] = {}
        self._lock = threading.Lock()

    def put(self, job: str, vertex: int, value: Any,
            encoded: tuple[bytes, list[Any]] | None = None) -> None:
        """Hold ``value``; ``encoded``, its serialization when one was made anyway (to
        store the output), serves transfers without serializing again."""
        with self._lock:
            self._held[(job, vertex)] = Held(value, encoded)

    def get(self, job: str, vertex: int) -> Any:
        with self._lock:
            return self._held[(job, vertex)].value

    def has(self, job: str, vertex: int) -> bool:
        with self._lock:
            return (job, vertex) in self._held

    def encoded(self, job: str, vertex: int) -> tuple[bytes, list[Any]]:
        """The output serialized (cached: several consumers cost one pickling)."""
        with self._lock:
            held = self._held[(job, vertex)]
        if held.encoded is None:
            held.encoded = SERIALIZER.dumps(held.value)
        return held.encoded

    def release(self, job: str, vertices: list[int]) -> None:
        with self._lock:
            for vertex in vertices:
                self._held.pop((job, vertex), None)

    def drop_job(self, job: str) -> None:
        with self._lock:
            for key in [k for k in self._held if k[0] == job]:
                del self._held[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


def choose_transfer(hint: ChannelKind, together: bool, nbytes: int) -> str:
    """How one output travels to one consumer (see the module docstring)."""
    if hint == ChannelKind.SHM:
        return SHM if together else ERROR
    if hint != ChannelKind.TCP and together and nbytes >= SHM_MIN_BYTES:
        return SHM
    return INLINE if nbytes < STREAM_MIN_BYTES else STREAM


class Holder:
    """Answers ``get`` requests on a server's data port."""

    def __init__(self, table: OutputTable, name: str, host: str, data_host: str,
                 security: SecurityConfig | None = None,
                 read_stored: Callable[[str, str, str], Any] | None = None) -> None:
        self.table = table
        self.name = name
        self.host = host
        self.data_host = data_host
        self.security = security
        self.read_stored = read_stored  # (job, path, digest) -> value, from the job's store
        self.channels = 0  # a version per channel opened, so no two share a key

    def answer(self, message: dict) -> list[Any]:
        """The reply frames to one ``get`` (validated by the caller's decode)."""
        job = str(message["job"])
        vertices = vertex_list(message["vertices"])
        hints = message.get("hints") or [0] * len(vertices)
        if not isinstance(hints, list) or len(hints) != len(vertices) or \
                not all(isinstance(h, int) and 0 <= h <= 3 for h in hints):
            raise ProtocolError("hints must be a list of channel kinds, one per vertex")
        missing = [v for v in vertices if not self.table.has(job, v)]
        if missing:
            return encode({"type": "error", "job": job, "missing": missing,
                           "message": f"server {self.name} holds no output of vertices "
                                      f"{missing[:10]} in job {job}"})
        together = same_host(str(message.get("host", "")), self.host)
        items, frames = [], []
        for vertex, hint in zip(vertices, hints):
            item, payload = self._item(job, vertex, ChannelKind(hint), together)
            items.append(item)
            frames.extend(payload)
        for vertex, path, digest in stored_list(message.get("stored", [])):
            item, payload = self._stored_item(job, vertex, path, digest)
            items.append(item)
            frames.extend(payload)
        return encode({"type": "data", "job": job, "items": items}, *frames)

    def _stored_item(self, job: str, vertex: int, path: str,
                     digest: str) -> tuple[dict, list[Any]]:
        """A journaled output read from this server's store for a client that cannot
        read the store itself (the result of a run submitted to a gateway)."""
        try:
            if self.read_stored is None:
                raise LookupError(f"server {self.name} has no store")
            encoded = SERIALIZER.dumps(self.read_stored(job, path, digest))
        except Exception as error:  # a missing job, a damaged file
            return {"v": vertex, "via": ERROR, "message": f"stored output {path}: {error}"}, []
        header, buffers = encoded
        layout = layout_frame(bytes(header), [memoryview(b).nbytes for b in buffers])
        return {"v": vertex, "via": INLINE, "frames": 1 + len(buffers)}, [layout.head, *buffers]

    def _item(self, job: str, vertex: int, hint: ChannelKind,
              together: bool) -> tuple[dict, list[Any]]:
        try:
            encoded = self.table.encoded(job, vertex)
        except Exception as error:  # pickling runs user code
            return {"v": vertex, "via": ERROR, "message":
                    f"the output cannot be serialized: {type(error).__name__}: {error}"}, []
        how = choose_transfer(hint, together, encoded_size(encoded))
        if how == ERROR:
            return {"v": vertex, "via": ERROR, "message": "an shm channel needs both ends "
                    f"on one host; server {self.name} runs on {self.host}"}, []
        if how == INLINE:
            header, buffers = encoded
            layout = layout_frame(bytes(header), [memoryview(b).nbytes for b in buffers])
            return {"v": vertex, "via": INLINE, "frames": 1 + len(buffers)}, \
                [layout.head, *buffers]
        try:
            channel = self._open_channel(job, vertex, how, encoded)
        except ChannelError as error:
            return {"v": vertex, "via": ERROR, "message": error.reason}, []
        return {"v": vertex, "via": how, "channel": channel}, []

    def _open_channel(self, job: str, vertex: int, how: str,
                      encoded: tuple[bytes, list[Any]]) -> dict:
        self.channels += 1
        options: dict[str, Any] = dict(vertex=f"v{vertex}", job=job, version=self.channels)
        if how == SHM:
            writer = open_writer("shm", size_hint=encoded_size(encoded) + 4096, **options)
            with writer:
                writer.write_serialized(*encoded)
            return writer.descriptor.to_dict()
        writer = open_writer("tcp", bind=f"tcp://{self.data_host}:*",
                             timeout=STREAM_TIMEOUT_S, security=self.security, **options)
        threading.Thread(target=_stream, args=(writer, encoded), daemon=True,
                         name=f"serpytor-stream-{vertex}").start()
        return writer.descriptor.to_dict()


def _stream(writer: Any, encoded: tuple[bytes, list[Any]]) -> None:
    """Write one item down a tcp channel (both ends run now; the consumer connects)."""
    try:
        with writer:
            writer.write_serialized(*encoded)
    except ChannelError as error:
        log.warning("stream of %s failed: %s", writer.descriptor.vertex, error)


def stored_list(value: Any) -> list[tuple[int, str, str]]:
    if not isinstance(value, list) or not all(
            isinstance(i, list) and len(i) == 3 and type(i[0]) is int and
            isinstance(i[1], str) and isinstance(i[2], str) for i in value):
        raise ProtocolError("stored must be a list of [vertex, path, digest]")
    return [tuple(i) for i in value]


def vertex_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ProtocolError("vertices must be a list of integers")
    return value


# ---- consumer side -------------------------------------------------------------------------
@dataclass
class TransferCounts:
    """Inputs brought in, by kind: ``{kind: [items, bytes]}``."""

    counts: Counter = field(default_factory=Counter)
    nbytes: Counter = field(default_factory=Counter)

    def add(self, kind: str, nbytes: int = 0) -> None:
        self.counts[kind] += 1
        self.nbytes[kind] += nbytes

    def take(self) -> dict[str, list[int]]:
        """The counts so far, as JSON, and start again."""
        report = {k: [self.counts[k], self.nbytes[k]] for k in self.counts}
        self.counts.clear()
        self.nbytes.clear()
        return report


@dataclass
class Fetched:
    """Inputs of one batch: values by vertex, and the channel readers whose memory the
    values may view (closed once the batch has run)."""

    values: dict[int, Any] = field(default_factory=dict)
    readers: list[ChannelReader] = field(default_factory=list)
    failed: dict[int, FetchError] = field(default_factory=dict)  # why a vertex is not here

    def check(self) -> None:
        """Raise the first failure (for callers that need every input)."""
        if self.failed:
            raise next(iter(self.failed.values()))

    def close(self) -> None:
        self.values.clear()  # views die first, so shm segments can go back to their pool
        for reader in self.readers:
            reader.close()
        self.readers.clear()


class InputFetcher:
    """The executor's DEALER sockets to peers' data ports, one per address."""

    def __init__(self, ctx: zmq.Context, host: str, counts: TransferCounts,
                 timeout: float = FETCH_TIMEOUT_S,
                 security: SecurityConfig | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.counts = counts
        self.timeout = timeout
        # with keys, a holder is trusted because the CURVE handshake proved it holds the
        # cluster's server key: only then is what it sends unpickled
        self.security = security
        self.sockets: dict[str, zmq.Socket] = {}
        self.monitors: dict[str, zmq.Socket] = {}  # each socket's connection events
        # holders found gone, and when: the batches queued behind the one that found out
        # fail at once instead of waiting HOLDER_GONE_S each
        self.gone: dict[str, float] = {}
        self.name_of: Callable[[int], str] = str

    def fetch(self, job: str, wanted: dict[str, list[tuple[int, int]]],
              name_of: Callable[[int], str] = str,
              stored: dict[str, list[tuple[int, str, str]]] | None = None) -> Fetched:
        """Bring ``{holder address: [(vertex, hint), ...]}`` here, one request per holder;
        ``stored``: ``{server address: [(vertex, path, digest)]}`` read by that server.
        What one holder cannot give is in the result's ``failed``; the others' inputs
        are fetched all the same."""
        self.name_of = name_of
        stored = stored or {}
        fetched = Fetched()
        asked: dict[str, list[int]] = {}  # address -> the vertices asked of it
        for address in dict.fromkeys([*wanted, *stored]):
            inputs, kept = wanted.get(address, []), stored.get(address, [])
            vertices = [v for v, _ in inputs] + [v for v, _, _ in kept]
            try:
                self._ask(job, address, inputs, kept, vertices)
                asked[address] = vertices
            except FetchError as error:
                fetched.failed.update(dict.fromkeys(vertices, error))
        addresses = list(asked)
        for done, address in enumerate(addresses):
            try:
                self._receive(address, asked[address], fetched)
            except FetchError as error:
                fetched.failed.update({v: error for v in asked[address]
                                       if v not in fetched.values})
            except BaseException:
                for unread in addresses[done:]:  # their replies must not pair with the
                    if unread in self.sockets:    # next get
                        self._forget(unread)
                fetched.close()
                raise
        return fetched

    def _ask(self, job: str, address: str, inputs: list[tuple[int, int]],
             stored: list[tuple[int, str, str]], vertices: list[int]) -> None:
        """Send the get for ``vertices`` (``inputs`` held, ``stored`` read) to address."""
        if time.monotonic() - self.gone.get(address, -GONE_MEMORY_S) < GONE_MEMORY_S:
            raise FetchError(f"the server at {address} holding {self._names(vertices)} "
                             f"is gone", vertices)
        try:
            sock = self._socket(address)
        except zmq.ZMQError as error:
            raise FetchError(f"cannot reach the server at {address} holding "
                             f"{self._names(vertices)}: {error}", vertices) from None
        sock.send_multipart(encode({
            "type": "get", "job": job, "host": self.host,
            "vertices": [v for v, _ in inputs], "hints": [h for _, h in inputs],
            "stored": [list(item) for item in stored]}))

    def _socket(self, address: str) -> zmq.Socket:
        if address not in self.sockets:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            secure_client(sock, self.security)
            monitor = sock.get_monitor_socket(CONNECTION_EVENTS)
            try:
                sock.connect(address)
            except zmq.ZMQError:
                sock.disable_monitor()
                monitor.close(0)
                sock.close(0)
                raise
            self.monitors[address] = monitor
            self.sockets[address] = sock
        return self.sockets[address]

    def _forget(self, address: str) -> None:
        """Close the socket to address (a late reply must not pair with the next get)."""
        sock = self.sockets.pop(address)
        monitor = self.monitors.pop(address)
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(0)
        sock.close(0)

    def _await_reply(self, address: str, vertices: list[int]) -> None:
        """Wait for the holder's reply; give up at once when the holder is gone (its
        connection dropped or is refused for HOLDER_GONE_S), else after the timeout."""
        sock, monitor = self.sockets[address], self.monitors[address]
        deadline = time.monotonic() + self.timeout
        down_since: float | None = None
        while not sock.poll(REPLY_SLICE_MS):
            now = time.monotonic()
            down_since = _connection_state(monitor, down_since, now)
            if down_since is not None and now - down_since > HOLDER_GONE_S:
                self._forget(address)
                self.gone[address] = now
                raise FetchError(f"the server at {address} holding "
                                 f"{self._names(vertices)} is gone", vertices)
            if now > deadline:
                self._forget(address)
                raise FetchError(f"the server at {address} did not send "
                                 f"{self._names(vertices)} within {self.timeout:g} s", vertices)

    def _receive(self, address: str, vertices: list[int], fetched: Fetched) -> None:
        self._await_reply(address, vertices)
        sock = self.sockets[address]
        try:
            message, frames = decode(sock.recv_multipart(copy=False))
        except ProtocolError as error:
            raise FetchError(f"bad data from the server at {address}: {error}") from None
        if message["type"] != "data":
            missing = message.get("missing")
            lost = [v for v in missing if type(v) is int] if isinstance(missing, list) else []
            raise FetchError(f"the server at {address} answered: "
                             f"{message.get('message', message['type'])}", lost)
        self._unpack(address, message["items"], [f.buffer for f in frames], fetched)

    def _names(self, vertices: list[int]) -> str:
        shown = ", ".join(self.name_of(v) for v in vertices[:5])
        return f"the outputs of {shown}" + (", ..." if len(vertices) > 5 else "")

    def _unpack(self, address: str, items: Any, frames: list[memoryview],
                fetched: Fetched) -> None:
        if not isinstance(items, list):
            raise FetchError(f"bad data from the server at {address}: items is not a list")
        position = 0
        for item in items:
            vertex, how = _item_fields(item, address)
            name = self.name_of(vertex)
            if how == INLINE:
                count = item.get("frames")
                if type(count) is not int or not 1 <= count <= len(frames) - position:
                    raise FetchError(f"bad data from the server at {address}: "
                                     f"truncated output of vertex {name}")
                fetched.values[vertex] = self._decode(frames[position:position + count],
                                                      name, address)
                position += count
            elif how in (SHM, STREAM):
                fetched.values[vertex] = self._read_channel(item, name, address, fetched)
            else:
                raise FetchError(f"vertex {name}: {item.get('message', 'unknown transfer')} "
                                 f"(at {address})")

    def _decode(self, frames: list[memoryview], vertex: str, address: str) -> Any:
        try:
            _, header, entries = decode_frame_head(frames[0])
            buffers = frames[1:]
            if [n for _, n in entries] != [b.nbytes for b in buffers]:
                raise FrameError("buffer sizes differ from the frame's table")
            value = SERIALIZER.loads(header, buffers)
        except Exception as error:  # a damaged frame or a foreign payload
            raise FetchError(f"output of vertex {vertex} from {address} is damaged: "
                             f"{error}") from None
        self.counts.add("tcp", sum(f.nbytes for f in frames))
        return value

    def _read_channel(self, item: dict, vertex: str, address: str, fetched: Fetched) -> Any:
        try:
            reader = open_reader(item.get("channel"), timeout=FETCH_TIMEOUT_S,
                                 security=self.security)
        except ChannelError as error:
            raise FetchError(f"output of vertex {vertex} from {address}: {error}") from None
        fetched.readers.append(reader)
        try:
            value = reader.read()
            _expect_end(reader)
        except (ChannelError, EndOfChannel) as error:
            raise FetchError(f"output of vertex {vertex} from {address}: {error}") from None
        self.counts.add(str(reader.descriptor.kind), reader.statistics().bytes)
        return value

    def close(self) -> None:
        for address in list(self.sockets):
            self._forget(address)


def _connection_state(monitor: zmq.Socket, down_since: float | None,
                      now: float) -> float | None:
    """Since when the connection a monitor watches has been down (None: it is up)."""
    while monitor.poll(0):
        try:
            event = recv_monitor_message(monitor)["event"]
        except (zmq.ZMQError, KeyError, ValueError):
            break
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            down_since = None
        elif down_since is None:  # disconnected, or a connect refused
            down_since = now
    return down_since


def _expect_end(reader: ChannelReader) -> None:
    """Read the end of a one-item channel (a tcp producer waits for it to be
    acknowledged; a second item would mean a foreign or damaged channel)."""
    try:
        reader.read()
    except EndOfChannel:
        return
    raise ChannelError("the channel holds more than one item", reader.descriptor)


def _item_fields(item: Any, address: str) -> tuple[int, str]:
    if not isinstance(item, dict) or type(item.get("v")) is not int or \
            not isinstance(item.get("via"), str):
        raise FetchError(f"bad data from the server at {address}: malformed item {item!r:.80}")
    return item["v"], item["via"]
