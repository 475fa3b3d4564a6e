"""``tcp`` channels: ZeroMQ straight from the producer's process to the consumer's.

The producer binds a ROUTER (``tcp://127.0.0.1:*`` by default; the real endpoint goes
in the descriptor) and each reader connects a DEALER. Both ends must run at the same
time (Dryad's TCP pipe): ``write`` returns once its item is in ZeroMQ's hands, so it
waits (up to ``timeout``) for every reader to connect and for credit. Nothing is left
in a Python-side queue, so a producer busy computing never holds back what it wrote.

Messages (first byte of the first part is the tag)::

    reader -> writer   H{json: protocol, key, window}   C<u64 credit>   A (end acknowledged)
    writer -> reader   W{json: protocol, key}  R<reason>  F<frame head> [inline buffers]
                       T <buffer> F<frame head>   B <buffer or chunk>   E<items, bytes>
                       X<reason>   P (probe)   Z

An item of one array goes as ``T``: the array first, its frame head last. A part of
more than 33 bytes just before a large part is kept by the receiving libzmq as a
reference into its receive batch buffer, so it allocates a new batch buffer for every
such message; between the large allocations that costs a 16 MiB stream two thirds
more freshly faulted pages and up to 20% of its speed. A 1-byte tag part does not.

Zero-copy rules (pyzmq's): a buffer below 64 KiB is copied into its frame, anything
larger is sent with ``copy=False`` -- the frame references the caller's memory, so do
not modify a written buffer until ``flush()`` or ``close()`` returns. A buffer up to
16 MiB travels as one frame and the reader's array is a view on the received frame;
larger buffers go as 8 MiB chunks (ZeroMQ messages of 32 MiB and more are several
times slower here: they miss the allocator's reuse and fault in fresh pages), which the
reader ``recv_into``-s one preallocated aligned buffer: a single copy, overlapped with
the transfer of the next chunk.

Flow control is credit based: a reader grants ``window`` bytes in its hello and
returns credit as it consumes, so items are pipelined (no round trip per item) and
memory stays bounded without high-water marks (both HWMs are 0, ROUTER_MANDATORY is
on: nothing is ever dropped silently). A writer sends while it has credit left, so at
most ``window`` bytes plus one message wait at a reader (48 + 16 MiB by default). The
end of a stream is acknowledged: ``close()`` returns only after every reader confirmed
it received everything (libzmq may drop the tail of a stream when a sender closes),
then closes with linger 0. Every wait has a timeout; a vanished peer is detected by
ROUTER_MANDATORY / probes on the writer side and by a socket monitor on the reader side.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import zmq

from .base import DEFAULT_TIMEOUT, ChannelReader, ChannelWriter, Deadline
from .descriptor import ChannelDescriptor, channel_key
from .errors import (ChannelBrokenError, ChannelCorruptError, ChannelDescriptorError,
                     ChannelError, ChannelNotFoundError, ChannelTimeoutError, EndOfChannel)
from ..security import HANDSHAKE_FAILED_EVENTS, SecurityConfig, secure_client, secure_server
from .framing import (END_RECORD, ENTRY, FRAME_MAGIC, FRAME_VERSION, PRELUDE,
                      FrameError, aligned_buffer, align, decode_frame_head, layout_frame)

PROTOCOL = 2
COPY_THRESHOLD = 64 * 1024        # below: copy into the frame; above: share (pyzmq's rule)
SINGLE_FRAME_LIMIT = 16 << 20     # a buffer up to this size is one frame, viewed in place
CHUNK = 8 << 20                   # larger buffers travel in chunks of this size
# bytes a reader lets the writer have in flight: three full single frames. Credit for
# a large item reaches the writer a few ms after the item is read (the writer's I/O
# thread sees it between two long writes), so with only two in flight the wire idles
DEFAULT_WINDOW = 3 * SINGLE_FRAME_LIMIT
MIN_CHARGE = 256                  # every message costs at least this much credit
PROBE_INTERVAL = 0.1              # seconds between liveness probes while blocked
RECV_SLICE = 0.05                 # a reader checks for hang-ups and deadlines this often
HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS = 1000, 5000

_HELLO, _CREDIT, _ACK = b"H", b"C", b"A"
_WELCOME, _REJECT, _FRAME, _ARRAY, _BUFFER, _END, _ABORT, _PROBE, _BYE = (
    b"W", b"R", b"F", b"T", b"B", b"E", b"X", b"P", b"Z")
_U64 = struct.Struct("<Q")

INLINE, SINGLE, CHUNKED = 0, 1, 2
# plain ints: pyzmq's enum members cost ~1 us per use on the per-item path
_EVENTS, _RCVMORE, _POLLIN = int(zmq.EVENTS), int(zmq.RCVMORE), int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
# the backend's send: the sugar layer only adds draft-socket options (routing_id,
# group) we never use, and costs ~0.5 us per call on the per-item path
_zsend = zmq.backend.Socket.send

# A frame message starts with the tag, then framing's prelude: one struct for both.
# framing's general layout and decoding cost ~3 us per item; the two shapes nearly
# every item has (no buffer, or one array) are encoded and checked here directly.
_TAGGED_PRELUDE = struct.Struct("<c" + PRELUDE.format.lstrip("<"))
_TAGGED_SIZE = _TAGGED_PRELUDE.size          # 1 + PRELUDE_SIZE
_ONE_ENTRY_END = _TAGGED_SIZE + ENTRY.size   # the head of a one-buffer frame ends here
# the fixed start of an item frame (tag, magic, version, no flags, no reserved bits) is
# compared in one go; the rest of the prelude follows it
_ITEM_START = struct.Struct("<c4sBBH").pack(_FRAME, FRAME_MAGIC, FRAME_VERSION, 0, 0)
_PRELUDE_REST = struct.Struct("<IIQQ")       # n_buffers, crc, header_len, area_len
_prelude_crcs: dict[int, int] = {}           # crc32 of a bare zeroed prelude, by header size
_CRC_CACHE_LIMIT = 4096


def plan_buffers(sizes: list[int]) -> list[int]:
    """How each buffer travels: INLINE in the frame message while the message stays
    under SINGLE_FRAME_LIMIT, else its own message (SINGLE) or CHUNKED. Both ends
    compute it from the frame's table, so it never travels."""
    plan, inline = [], 0
    for size in sizes:
        if inline + size <= SINGLE_FRAME_LIMIT:
            plan.append(INLINE)
            inline += size
        else:
            plan.append(SINGLE if size <= SINGLE_FRAME_LIMIT else CHUNKED)
    return plan


def charge(parts: list[Any]) -> int:
    return MIN_CHARGE + sum(len(p) if isinstance(p, bytes) else memoryview(p).nbytes
                            for p in parts)


def _prelude_crc(header_len: int, n_buffers: int = 0, area_len: int = 0) -> int:
    """crc32 of a prelude with its crc field zeroed: where a frame's crc starts. Cached
    for bare preludes, as small items repeat a handful of header sizes."""
    if n_buffers == 0 and area_len == 0:
        crc = _prelude_crcs.get(header_len)
        if crc is not None:
            return crc
    crc = zlib.crc32(PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, 0, 0, n_buffers, 0,
                                  header_len, area_len))
    if n_buffers == 0 and area_len == 0 and len(_prelude_crcs) < _CRC_CACHE_LIMIT:
        _prelude_crcs[header_len] = crc
    return crc


def small_frame_message(header: bytes) -> bytes:
    """Tag and frame of an item without buffers: the bytes of ``_FRAME +
    layout_frame(header, ()).head`` in one pack and one concatenation."""
    size = len(header)
    crc = zlib.crc32(header, _prelude_crc(size))
    return _TAGGED_PRELUDE.pack(_FRAME, FRAME_MAGIC, FRAME_VERSION, 0, 0, 0, crc, size, 0) \
        + header


def quick_frame_head(message: bytes) -> tuple[memoryview, int, int] | None:
    """``(serializer header, buffer size or -1 for none, frame bytes)`` of a frame
    message shaped the way TcpWriter sends most items -- no buffer, or one at offset 0
    of an area of exactly its aligned size -- after the checks framing's decoder makes
    (magic, version, flags, sizes, crc32). None for anything else: the full decoder
    then accepts the general case or names what is wrong."""
    if not message.startswith(_ITEM_START) or len(message) < _TAGGED_SIZE:
        return None
    n_buffers, crc, header_len, area_len = _PRELUDE_REST.unpack_from(message, len(_ITEM_START))
    if n_buffers == 0 and area_len == 0 and len(message) == _TAGGED_SIZE + header_len:
        header = memoryview(message)[_TAGGED_SIZE:]  # the crc covers exactly the header
        if zlib.crc32(header, _prelude_crc(header_len)) != crc:
            return None
        return header, -1, align(_TAGGED_SIZE - 1 + header_len)  # as framing counts
    if n_buffers == 1 and len(message) == _ONE_ENTRY_END + header_len:
        return _quick_array_head(message, crc, header_len, area_len)
    return None


def _quick_array_head(message: bytes, crc: int, header_len: int,
                      area_len: int) -> tuple[memoryview, int, int] | None:
    offset, size = ENTRY.unpack_from(message, _TAGGED_SIZE)
    if offset or size > SINGLE_FRAME_LIMIT or area_len != align(size):
        return None
    view = memoryview(message)
    if zlib.crc32(view[_TAGGED_SIZE:], _prelude_crc(header_len, 1, area_len)) != crc:
        return None
    return view[_ONE_ENTRY_END:], size, align(_ONE_ENTRY_END - 1 + header_len) + area_len


def _context() -> zmq.Context:
    return zmq.Context.instance()


def _configure(sock: zmq.Socket) -> None:
    sock.linger = 0
    sock.sndhwm = 0   # credit, not HWM, bounds what is in flight
    sock.rcvhwm = 0
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


def _advertised(endpoint: str, advertise: str | None) -> str:
    """Replace a wildcard bind address by one the consumer can connect to."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "*", "[::]", "::") or advertise:
        host = advertise or socket.gethostname()
    return f"{scheme}://{host}:{port}"


@dataclass
class _Peer:
    routing_id: bytes
    credit: int
    acked: bool = False


@dataclass
class _RouterState:
    """The writer's socket, closed on close/abort or when the writer is collected."""

    sock: zmq.Socket
    peers: dict[bytes, _Peer] = field(default_factory=dict)

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=0)


class TcpWriter(ChannelWriter):
    """Binds a ROUTER and streams frames to ``descriptor.readers`` readers."""

    def __init__(self, descriptor: ChannelDescriptor, *, bind: str = "tcp://127.0.0.1:*",
                 advertise: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 security: SecurityConfig | None = None) -> None:
        super().__init__(descriptor)
        Deadline(timeout)
        self.timeout = timeout
        sock = _context().socket(zmq.ROUTER)
        _configure(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        secure_server(sock, security)  # with keys: only authorized readers connect
        self._state = _RouterState(sock)
        self._on_collect(self._state.close)
        try:
            sock.bind(bind)
        except zmq.ZMQError as exc:
            self._state.close()
            raise self._error(ChannelError, f"cannot bind {bind}: {exc}") from None
        endpoint = _advertised(sock.last_endpoint.decode(), advertise)
        self._descriptor = replace(descriptor, location=endpoint)
        self._key = channel_key(self._descriptor)
        self._peer_list: list[_Peer] = []
        self._joined = False
        self._lone: _Peer | None = None  # the reader, once joined, of a one-reader channel
        self._last_array: tuple[bytes, int] | None = None  # (header, nbytes) of ...
        self._last_array_head: tuple[bytes, int] = (b"", 0)  # ... this head, frame_len
        self.rejected = 0  # malformed or unwanted control messages, counted and ignored

    # ChannelWriter hooks -------------------------------------------------------
    def _write_frame(self, header: bytes, buffers: list[memoryview]) -> int:
        if not buffers:  # the small-item path: one single-part message
            message = small_frame_message(header)
            if not self._send_direct(message):
                self._send([message], MIN_CHARGE + len(message))
            return align(len(message) - 1)
        if len(buffers) == 1 and buffers[0].nbytes <= SINGLE_FRAME_LIMIT:  # one array
            buffer = buffers[0]
            head, frame_len = self._array_head(header, buffer.nbytes)
            if not self._send_direct(head, buffer):
                self._send([_ARRAY, buffer, head], MIN_CHARGE + 1 + len(head) + buffer.nbytes)
            return frame_len
        return self._write_buffers(header, buffers)

    def _write_buffers(self, header: bytes, buffers: list[memoryview]) -> int:
        """An item of several buffers, or of one too large for a single frame."""
        layout = layout_frame(header, [b.nbytes for b in buffers])
        plan = plan_buffers(list(layout.sizes))
        first: list[Any] = [_FRAME + layout.head]
        first += [b for b, how in zip(buffers, plan) if how == INLINE]
        self._send(first, charge(first))
        for buffer, how in zip(buffers, plan):
            if how == SINGLE:
                self._send([_BUFFER, buffer], MIN_CHARGE + 1 + buffer.nbytes)
            elif how == CHUNKED:
                for start in range(0, buffer.nbytes, CHUNK):
                    chunk = buffer[start:start + CHUNK]
                    self._send([_BUFFER, chunk], MIN_CHARGE + 1 + chunk.nbytes)
        return layout.frame_len

    def _array_head(self, header: bytes, nbytes: int) -> tuple[bytes, int]:
        """Tagged head and frame length of a one-array item. A stream of arrays of one
        shape repeats its head, so the last one is kept rather than laid out again."""
        if self._last_array == (header, nbytes):
            return self._last_array_head
        layout = layout_frame(header, [nbytes])
        self._last_array = (header, nbytes)
        self._last_array_head = (_FRAME + layout.head, layout.frame_len)
        return self._last_array_head

    def _commit(self) -> None:
        deadline = Deadline(self.timeout)
        self._wait(deadline, lambda: self._joined, "connect")
        end = _END + END_RECORD.pack(self._stats.items, self._stats.bytes)
        for peer in self._peer_list:
            self._transmit(peer, [end])
        self._wait(deadline, lambda: all(p.acked for p in self._peer_list),
                   "acknowledge the end of the stream")
        self._state.close()

    def _abandon(self, reason: str) -> None:
        for peer in list(self._state.peers.values()):
            try:
                self._state.sock.send_multipart([peer.routing_id, _ABORT + reason.encode()],
                                                flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._state.close()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until ZeroMQ has written every buffer handed to ``write`` so far to the
        network, so the caller may modify those buffers again."""
        self._check_open()
        deadline = Deadline(self.timeout if timeout is None else timeout)
        # a pipe sends in order: once a tracked probe behind them is released, the
        # zero-copy frames before it are too (one tracker per flush, none per item)
        sock, trackers = self._state.sock, []
        threshold, sock.copy_threshold = sock.copy_threshold, 0
        try:
            for peer in self._peer_list:
                sock.send(peer.routing_id, _SNDMORE)
                trackers.append(sock.send(_PROBE, copy=False, track=True))
        finally:
            sock.copy_threshold = threshold
        for tracker in trackers:
            try:
                tracker.wait(deadline.remaining())
            except zmq.NotDone:
                raise self._error(ChannelTimeoutError,
                                  f"buffers still in flight after {deadline.seconds:g} s") from None

    # sending -------------------------------------------------------------------
    def _send(self, parts: list[Any], cost: int) -> None:
        """Hand one message to ZeroMQ for every reader, waiting for them to connect
        and for credit first."""
        if not self._can_send():
            self._service(0)
            if not self._can_send():
                self._wait(Deadline(self.timeout), self._can_send, "connect and take the data")
        self._transmit_all(parts, cost)

    def _send_direct(self, head: bytes, buffer: memoryview | None = None) -> bool:
        """One item -- a frame message, or an array message when ``buffer`` is given --
        to a lone reader with credit, in as few Python steps as possible: the per-item
        path (a few us per 100-byte item)."""
        peer = self._lone
        if peer is None or peer.credit <= 0:
            return False
        sock = self._state.sock
        try:
            _zsend(sock, peer.routing_id, _SNDMORE)
            if buffer is not None:
                _zsend(sock, _ARRAY, _SNDMORE)
                _zsend(sock, buffer, _SNDMORE, buffer.nbytes < COPY_THRESHOLD)
            _zsend(sock, head)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise self._error(ChannelBrokenError, "the reader disconnected before the end "
                                                      "of the stream") from None
            raise
        peer.credit -= MIN_CHARGE + len(head) + (1 + buffer.nbytes if buffer is not None else 0)
        return True

    def _can_send(self) -> bool:
        if not self._joined:
            return False
        for peer in self._peer_list:
            if peer.credit <= 0:
                return False
        return True

    def _transmit_all(self, parts: list[Any], cost: int) -> None:
        for peer in self._peer_list:
            self._transmit(peer, parts)
            peer.credit -= cost

    def _transmit(self, peer: _Peer, parts: list[Any]) -> None:
        sock = self._state.sock
        try:
            _zsend(sock, peer.routing_id, _SNDMORE)
            last = len(parts) - 1
            for i, part in enumerate(parts):
                small = type(part) is bytes or part.nbytes < COPY_THRESHOLD
                _zsend(sock, part, _SNDMORE if i < last else 0, small)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise self._error(ChannelBrokenError, "a reader disconnected before the end "
                                                      "of the stream") from None
            raise

    # control -------------------------------------------------------------------
    def _wait(self, deadline: Deadline, done: Any, what: str) -> None:
        """Serve control messages until ``done()``; probe peers while waiting."""
        while not done():
            if deadline.expired():
                joined = len(self._state.peers)
                raise self._error(ChannelTimeoutError,
                                  f"readers did not {what} within {deadline.seconds:g} s "
                                  f"({joined} of {self._descriptor.readers} connected)")
            if not self._service(min(PROBE_INTERVAL, deadline.remaining())):
                self._probe()

    def _probe(self) -> None:
        for peer in self._state.peers.values():
            if not peer.acked:
                self._transmit(peer, [_PROBE])

    def _service(self, timeout: float) -> bool:
        """Handle every pending control message; True when at least one arrived."""
        sock = self._state.sock
        if not sock.poll(int(timeout * 1000) if timeout > 0 else 0, zmq.POLLIN):
            return False
        while sock.get(_EVENTS) & _POLLIN:
            parts = sock.recv_multipart()
            if len(parts) != 2 or not parts[1]:
                self.rejected += 1
                continue
            self._on_control(parts[0], parts[1])
        return True

    def _on_control(self, routing_id: bytes, body: bytes) -> None:
        tag, payload = body[:1], body[1:]
        peer = self._state.peers.get(routing_id)
        if tag == _HELLO:
            self._on_hello(routing_id, payload)
        elif tag == _CREDIT and peer is not None and len(payload) == 8:
            peer.credit += _U64.unpack(payload)[0]
        elif tag == _ACK and peer is not None:
            peer.acked = True
            self._transmit(peer, [_BYE])
        else:
            self.rejected += 1

    def _on_hello(self, routing_id: bytes, payload: bytes) -> None:
        try:
            hello = json.loads(payload)
            key, window = bytes.fromhex(hello["key"]), int(hello["window"])
        except (ValueError, KeyError, TypeError):
            self.rejected += 1
            return
        peers = self._state.peers
        reason = None
        if key != self._key:
            reason = "this endpoint serves another channel"
        elif routing_id not in peers and len(peers) >= self._descriptor.readers:
            reason = f"the channel already has its {self._descriptor.readers} reader(s)"
        if reason:
            self._state.sock.send_multipart([routing_id, _REJECT + reason.encode()])
            return
        if routing_id not in peers:
            peers[routing_id] = _Peer(routing_id, credit=max(window, 1))
            self._peer_list = list(peers.values())
            self._joined = len(peers) == self._descriptor.readers
            self._lone = self._peer_list[0] if self._joined and len(peers) == 1 else None
        welcome = {"protocol": PROTOCOL, "key": self._key.hex()}
        self._transmit(peers[routing_id], [_WELCOME + json.dumps(welcome).encode()])


@dataclass
class _DealerState:
    sock: zmq.Socket
    monitor: zmq.Socket | None = None

    def close(self) -> None:
        if self.monitor is not None and not self.monitor.closed:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
        if not self.sock.closed:
            self.sock.close(linger=0)


class TcpReader(ChannelReader):
    """Connects a DEALER to the producer's endpoint and receives frames."""

    def __init__(self, descriptor: ChannelDescriptor, timeout: float = DEFAULT_TIMEOUT,
                 window: int = DEFAULT_WINDOW, security: SecurityConfig | None = None) -> None:
        super().__init__(descriptor, timeout)
        if not descriptor.location.startswith(("tcp://", "ipc://", "inproc://")):
            raise ChannelDescriptorError(f"{descriptor.location!r} is not a ZeroMQ endpoint",
                                         descriptor)
        self._key = channel_key(descriptor)
        self._window = window
        self._grant = window // 4  # credit goes back in quarters of the window
        self._unreturned = 0
        self._frame_bytes = 0
        self._more = False  # the last part received has more parts after it
        # the last one-array frame head accepted, and what it decoded to
        self._last_head: bytes | None = None
        self._last_quick: tuple[memoryview, int, int] = (memoryview(b""), -1, 0)
        self._acked = False
        self._welcomed = False
        self._disconnected = False
        self._connected = False
        sock = _context().socket(zmq.DEALER)
        _configure(sock)
        sock.setsockopt(zmq.ROUTING_ID, os.urandom(8))
        self._state = _DealerState(sock)
        self._on_collect(self._state.close)
        self._state.monitor = sock.get_monitor_socket(
            zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | HANDSHAKE_FAILED_EVENTS)
        # with keys, the producer is trusted (it proved it holds the cluster's server key)
        secure_client(sock, security)
        sock.rcvtimeo = int(RECV_SLICE * 1000)
        try:
            self._handshake(Deadline(timeout))
        except BaseException:
            self._state.close()
            raise

    def _handshake(self, deadline: Deadline) -> None:
        """Connect and say hello. Only the ZeroMQ handshake is awaited here (the I/O
        threads do it, whatever the producer is busy with); the producer's welcome is
        checked by the first read."""
        sock = self._state.sock
        sock.connect(self.descriptor.location)
        hello = {"protocol": PROTOCOL, "key": self._key.hex(), "window": self._window}
        sock.send(_HELLO + json.dumps(hello).encode())
        while not self._connected:
            if not self._state.monitor.poll(int(deadline.remaining() * 1000)):
                raise self._error(ChannelNotFoundError, f"no producer answered within "
                                                        f"{deadline.seconds:g} s")
            self._on_monitor_event()

    def _welcome(self, deadline: Deadline) -> None:
        first = self._next_message(deadline, "welcome this reader")
        tag = first[:1]
        if tag == _REJECT:
            raise self._error(ChannelNotFoundError,
                              f"producer refused: {first[1:].decode(errors='replace')}")
        if tag != _WELCOME:
            raise self._error(ChannelCorruptError, f"expected a welcome, got tag {tag!r}")
        try:
            welcome = json.loads(first[1:])
            protocol, ok = welcome["protocol"], welcome["key"] == self._key.hex()
        except (ValueError, KeyError, TypeError):
            protocol, ok = PROTOCOL, False
        if protocol != PROTOCOL:
            raise self._error(ChannelNotFoundError, f"the producer speaks tcp channel protocol "
                                                    f"{protocol!r}, this reader {PROTOCOL}")
        if not ok:
            raise self._error(ChannelNotFoundError, "the endpoint serves another channel")
        self._welcomed = True

    # receiving -----------------------------------------------------------------
    def _next_message(self, deadline: Deadline, what: str = "send an item") -> bytes:
        """First part of the next message that is not a probe; ``_more`` tells
        whether parts follow.

        A blocking ``recv`` in slices of RECV_SLICE (the socket's RCVTIMEO) costs less
        per item than a poller; between slices the monitor is checked, so a producer's
        hang-up is noticed within a slice and the deadline within a slice too. Parts
        are received as frames because a frame carries its more-flag, which saves the
        RCVMORE socket option (~2 us through pyzmq) on every message."""
        sock = self._state.sock
        while True:
            try:
                frame = sock.recv(copy=False)
            except zmq.Again:
                self._check_silence(deadline, what)
                continue
            first = frame.bytes
            if first != _PROBE:
                self._more = frame.more
                return first

    def _check_silence(self, deadline: Deadline, what: str) -> None:
        self._check_monitor()
        if self._disconnected:
            raise self._error(ChannelBrokenError, "the producer disconnected before "
                                                  "the end of the stream") from None
        if deadline.expired():
            raise self._error(ChannelTimeoutError, f"the producer did not {what} "
                                                   f"within {deadline.seconds:g} s") from None

    def _check_monitor(self) -> None:
        monitor = self._state.monitor
        while monitor.poll(0):
            self._on_monitor_event()

    def _on_monitor_event(self) -> None:
        from zmq.utils.monitor import recv_monitor_message
        event = recv_monitor_message(self._state.monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._connected = True
        elif event == zmq.EVENT_CONNECT_RETRIED and not self._connected:
            raise self._error(ChannelNotFoundError, "nothing listens at the endpoint "
                                                    "(connection refused; producer gone?)")
        elif event & HANDSHAKE_FAILED_EVENTS:
            raise self._error(ChannelNotFoundError, "the producer refused the connection "
                                                    "(CURVE handshake failed: wrong keys)")
        elif event == zmq.EVENT_DISCONNECTED:
            self._disconnected = True  # raised once the messages already received are read

    def _read_frame(self, deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        if not self._welcomed:
            self._welcome(deadline)
        first = self._next_message(deadline)
        if first == _ARRAY:
            return self._array()
        quick = quick_frame_head(first)
        if quick is None or quick[1] >= 0:
            return self._other_message(first, deadline)
        header, _, frame_len = quick  # the per-item path of items without buffers
        if self._more:
            self._expect_last_part()
        self._received(MIN_CHARGE + len(first), frame_len)
        return header, [], frame_len

    def _received(self, charge: int, frame_len: int) -> None:
        """Count a frame taken off the socket and give back the credit it took."""
        self._frame_bytes += frame_len
        self._return_credit(charge)

    def _array(self) -> tuple[memoryview, list[memoryview], int]:
        """A ``T`` message: the array's part, then its frame head (of one buffer)."""
        if not self._more:
            raise self._error(ChannelCorruptError, "array message without its array")
        sock = self._state.sock
        frame = sock.recv(copy=False)
        if not frame.more:
            raise self._error(ChannelCorruptError, "array message without its frame head")
        last = sock.recv(copy=False)
        head, self._more = last.bytes, last.more
        if self._more:
            self._expect_last_part()
        header, size, frame_len = self._array_head(head)
        # small arrays are copied out, so a kept item does not pin ZeroMQ's receive batch
        view = memoryview(frame.bytes if size < COPY_THRESHOLD else frame)
        if view.nbytes != size:
            raise self._error(ChannelCorruptError,
                              f"buffer of {view.nbytes} bytes, table says {size}")
        self._received(MIN_CHARGE + 1 + len(head) + size, frame_len)
        return header, [view], frame_len

    def _array_head(self, head: bytes) -> tuple[memoryview, int, int]:
        if head == self._last_head:  # a stream of arrays of one shape repeats its head
            return self._last_quick
        quick = quick_frame_head(head)
        if quick is None or quick[1] < 0:
            self._reject_array_head(head)
        self._last_head, self._last_quick = head, quick
        return quick

    def _reject_array_head(self, head: bytes) -> NoReturn:
        """Raise what is wrong with an array message's head: framing's full decoder
        words a damaged one; a sound one may still not be one array's."""
        if head[:1] != _FRAME:
            raise self._error(ChannelCorruptError, f"array message with a head tagged {head[:1]!r}")
        try:
            prelude, _, entries = decode_frame_head(memoryview(head)[1:])
        except FrameError as exc:
            raise self._error(ChannelCorruptError, f"item {self._stats.items}: {exc}") from None
        raise self._error(ChannelCorruptError, f"array message whose head is not one array's "
                                               f"(flags {prelude.flags}, buffers "
                                               f"{[n for _, n in entries]})")

    def _other_message(self, first: bytes,
                       deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        tag = first[:1]
        if tag == _FRAME:
            return self._frame(memoryview(first)[1:], deadline)
        if tag == _END:
            self._on_end(first[1:])
        if tag == _ABORT:
            raise self._error(ChannelBrokenError,
                              f"the producer abandoned the channel: {first[1:].decode(errors='replace')}")
        raise self._error(ChannelCorruptError, f"unexpected message tag {tag!r} "
                                               f"({len(first)} bytes)")

    def _frame(self, head: memoryview, deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        """Any frame, through framing's full decoder: several buffers, large ones,
        or a damaged head (whose error it words)."""
        try:
            prelude, header, entries = decode_frame_head(head)
            if prelude.flags:
                raise FrameError(f"unexpected flags {prelude.flags} on an item frame")
        except FrameError as exc:
            raise self._error(ChannelCorruptError, f"item {self._stats.items}: {exc}") from None
        received = MIN_CHARGE + len(head) + 1
        if not entries:
            buffers = []
            self._expect_last_part()
        elif len(entries) == 1 and entries[0][1] <= SINGLE_FRAME_LIMIT:  # one array
            size = entries[0][1]
            buffers = [self._part(size)]
            received += size
            self._expect_last_part()
        else:
            buffers = self._buffers([n for _, n in entries], received, deadline)
            received = 0  # returned by _buffers already
        self._return_credit(received)
        self._frame_bytes += prelude.frame_len
        return header, buffers, prelude.frame_len

    def _buffers(self, sizes: list[int], received: int, deadline: Deadline) -> list[memoryview]:
        plan = plan_buffers(sizes)
        buffers: list[memoryview | None] = [None] * len(sizes)
        for i, (size, how) in enumerate(zip(sizes, plan)):
            if how == INLINE:
                buffers[i] = self._part(size)
                received += size
        self._expect_last_part()
        self._return_credit(received)
        for i, (size, how) in enumerate(zip(sizes, plan)):
            if how != INLINE:
                buffers[i] = self._separate_buffer(size, how, deadline)
        return buffers  # type: ignore[return-value]

    def _part(self, size: int) -> memoryview:
        """The next part of the current message, which must have one more."""
        if not self._more:
            raise self._error(ChannelCorruptError, "frame message has fewer parts than its table")
        frame = self._state.sock.recv(copy=False)
        self._more = frame.more
        # small buffers are copied out, so a kept item does not pin ZeroMQ's receive batch
        view = memoryview(frame.bytes if size < COPY_THRESHOLD else frame)
        if view.nbytes != size:
            raise self._error(ChannelCorruptError, f"buffer of {view.nbytes} bytes, table says {size}")
        return view

    def _expect_last_part(self) -> None:
        if self._more:
            sock = self._state.sock
            while self._more:
                self._more = sock.recv(copy=False).more
            raise self._error(ChannelCorruptError, "frame message has more parts than its table")

    def _separate_buffer(self, size: int, how: int, deadline: Deadline) -> memoryview:
        if how == SINGLE:
            self._expect_buffer_message(deadline)
            view = self._part(size)
            self._expect_last_part()
            self._return_credit(MIN_CHARGE + 1 + size)
            return view
        target = aligned_buffer(size)
        sock = self._state.sock
        for start in range(0, size, CHUNK):
            length = min(CHUNK, size - start)
            self._expect_buffer_message(deadline)
            if not self._more:
                raise self._error(ChannelCorruptError, "chunk message without data")
            got = sock.recv_into(target[start:start + length])
            self._more = bool(sock.get(_RCVMORE))  # once per 8 MiB chunk
            self._expect_last_part()
            if got != length:
                raise self._error(ChannelCorruptError, f"chunk of {got} bytes, expected {length}")
            self._return_credit(MIN_CHARGE + 1 + length)
        return target

    def _expect_buffer_message(self, deadline: Deadline) -> None:
        first = self._next_message(deadline)
        if first == _BUFFER:
            return
        if first[:1] == _ABORT:
            raise self._error(ChannelBrokenError, "the producer abandoned the channel mid-item")
        raise self._error(ChannelCorruptError, f"expected a buffer message, got tag {first[:1]!r}")

    def _return_credit(self, nbytes: int) -> None:
        self._unreturned += nbytes
        if self._unreturned >= self._grant:
            self._state.sock.send(_CREDIT + _U64.pack(self._unreturned))
            self._unreturned = 0

    def _on_end(self, payload: bytes) -> None:
        if len(payload) != END_RECORD.size:
            raise self._error(ChannelCorruptError, "malformed end-of-stream message")
        items, nbytes = END_RECORD.unpack(payload)
        if (items, nbytes) != (self._stats.items, self._frame_bytes):
            raise self._error(ChannelCorruptError,
                              f"stream ended after {self._stats.items} items "
                              f"({self._frame_bytes} bytes); the producer sent {items} ({nbytes})")
        self._state.sock.send(_ACK)
        self._acked = True
        raise EndOfChannel(self.descriptor)

    def _release(self) -> None:
        if self._acked:
            self._await_bye(Deadline(min(self.timeout, 2.0)))
        self._state.close()

    def _await_bye(self, deadline: Deadline) -> None:
        """Our ACK may still sit in a local queue: wait for the writer's bye (or its
        hang-up) before closing with linger 0, so the writer never times out on it."""
        while not deadline.expired():
            try:
                if self._state.sock.recv() == _BYE:
                    return
            except zmq.Again:
                self._check_monitor()
                if self._disconnected:
                    return
