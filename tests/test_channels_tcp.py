"""tcp channels: ZeroMQ between live processes -- pipelined, chunked, acknowledged,
and clear about peers that die, never answer, or send garbage."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from serpytor.compiler.kinds import ChannelKind
from serpytor.runtime.channels import (
    ChannelBrokenError, ChannelCorruptError, ChannelDescriptor, ChannelNotFoundError,
    ChannelTimeoutError, EndOfChannel, channel_key, open_reader, open_writer)
from serpytor.runtime.channels.framing import (END_RECORD, FrameError, decode_frame_head,
                                               layout_frame)
from serpytor.runtime.channels.tcp import (CHUNK, PROTOCOL, SINGLE_FRAME_LIMIT, TcpReader,
                                           quick_frame_head, small_frame_message)

from test_channels_helpers import (assert_same, consume, kill, produce, recv, sample_values,
                                   spawn_child)


def test_producer_and_consumer_in_separate_processes():
    with spawn_child(produce, "tcp", {"vertex": "src", "timeout": 20}, None) as (_, conn):
        descriptor = recv(conn)
        assert descriptor.count("tcp://127.0.0.1:") == 1
        with open_reader(descriptor, timeout=10) as reader:
            items = reader.read_all()
        tag, final, stats = recv(conn)
    assert tag == "closed" and stats["items"] == len(items) == len(sample_values())
    for got, want in zip(items, sample_values()):
        assert_same(got, want)
    assert reader.statistics().bytes == stats["bytes"]


def test_consumer_in_another_process_receives_chunked_buffers():
    writer = open_writer("tcp", vertex="big", timeout=20)
    with spawn_child(consume, writer.descriptor.to_json(), 20.0) as (_, conn):
        huge = np.arange(SINGLE_FRAME_LIMIT // 8 + 3 * CHUNK // 8 + 17, dtype=np.float64)
        single = np.arange(SINGLE_FRAME_LIMIT // 8, dtype=np.int64)  # one frame, no chunks
        writer.write(huge)
        writer.write({"pair": (single, huge[::-1].copy())})  # second buffer chunked too
        writer.close()
        tag, items, _, stats = recv(conn)
    assert tag == "read", items
    assert_same(items[0], huge)
    assert_same(items[1], {"pair": (single, huge[::-1].copy())})
    assert stats["items"] == 2


def test_small_items_are_pipelined():
    count = 20_000
    writer = open_writer("tcp", vertex="many", timeout=20)
    with spawn_child(consume, writer.descriptor.to_json(), 20.0) as (_, conn):
        started = time.perf_counter()
        for i in range(count):
            writer.write(i.to_bytes(4, "little") * 25)
        writer.close()
        elapsed = time.perf_counter() - started
        tag, items, _, _ = recv(conn)
    assert [int.from_bytes(x[:4], "little") for x in items] == list(range(count))
    # no round trip per item: far below a loopback RTT (~50 us) each, even on a busy box
    assert elapsed / count < 100e-6, f"{elapsed / count * 1e6:.1f} us per item"


def test_write_waits_for_the_reader_to_connect():
    writer = open_writer("tcp", vertex="early", timeout=10)
    written = threading.Event()
    thread = threading.Thread(
        target=lambda: ([writer.write(i) for i in range(100)], written.set(), writer.close()))
    thread.start()
    try:
        assert not written.wait(0.3), "write returned with no reader connected"
        with open_reader(writer.descriptor, timeout=10) as reader:
            assert reader.read_all() == list(range(100))
    finally:
        thread.join(10)
    assert writer.closed and written.is_set()


def test_two_readers_each_get_the_whole_stream():
    writer = open_writer("tcp", vertex="fan", readers=2, timeout=10)
    first = open_reader(writer.descriptor, timeout=10)
    second = open_reader(writer.descriptor, timeout=10)
    closer = threading.Thread(target=lambda: ([writer.write(i) for i in range(50)], writer.close()))
    closer.start()
    got = {}
    threads = [threading.Thread(target=lambda r=r: got.__setitem__(id(r), r.read_all()))
               for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads + [closer]:
        thread.join(10)
    assert list(got.values()) == [list(range(50))] * 2
    first.close()
    second.close()


def test_two_readers_each_get_every_array():
    values = [np.arange(100_000, dtype=np.float64) * i for i in range(5)] + [np.arange(10)]
    writer = open_writer("tcp", vertex="fan-arrays", readers=2, timeout=10)
    readers = [open_reader(writer.descriptor, timeout=10) for _ in range(2)]
    closer = threading.Thread(target=lambda: ([writer.write(v) for v in values], writer.close()))
    closer.start()
    got = {}
    threads = [threading.Thread(target=lambda r=r: got.__setitem__(id(r), r.read_all()))
               for r in readers]
    for thread in threads:
        thread.start()
    for thread in threads + [closer]:
        thread.join(10)
    assert len(got) == 2
    for items in got.values():
        assert len(items) == len(values)
        for item, want in zip(items, values):
            assert_same(item, want)
    for reader in readers:
        reader.close()


def test_a_third_reader_is_refused():
    writer = open_writer("tcp", vertex="one", readers=1, timeout=5)
    first = open_reader(writer.descriptor, timeout=5)
    extra = open_reader(writer.descriptor, timeout=5)
    feeder = threading.Thread(target=lambda: (writer.write(1), writer.close()))
    feeder.start()
    assert first.read() == 1
    with pytest.raises(ChannelNotFoundError, match="already has its 1 reader"):
        extra.read()
    with pytest.raises(EndOfChannel):
        first.read()
    feeder.join(10)
    first.close()
    extra.close()


def test_sigkill_of_the_producer_breaks_the_reader():
    values = [np.arange(1000), "never"]
    with spawn_child(produce, "tcp", {"vertex": "v", "timeout": 20}, values, 1) as (proc, conn):
        descriptor = recv(conn)
        reader = open_reader(descriptor, timeout=10)
        assert np.array_equal(reader.read(), values[0])
        assert recv(conn) == "hanging"
        kill(proc)
        started = time.monotonic()
        with pytest.raises(ChannelBrokenError, match="disconnected") as err:
            reader.read()
        assert time.monotonic() - started < 5
        assert "tcp channel v:0 v0 at tcp://127.0.0.1:" in str(err.value)
        reader.close()


def test_sigkill_of_the_consumer_breaks_the_writer():
    writer = open_writer("tcp", vertex="v", timeout=10)
    with spawn_child(consume, writer.descriptor.to_json(), 10.0, 1) as (proc, conn):
        writer.write("first")
        assert recv(conn)[0] == "hanging"
        kill(proc)
        started = time.monotonic()
        with pytest.raises(ChannelBrokenError, match="disconnected"):
            writer.write("second")  # raises here or, if the hang-up is not seen yet, in close
            writer.close()
        assert time.monotonic() - started < 5
        assert writer.closed or writer.abort() is None


def test_abandoned_writer_breaks_the_reader():
    writer = open_writer("tcp", vertex="v", timeout=5)
    reader = open_reader(writer.descriptor, timeout=5)
    thread = threading.Thread(target=lambda: (writer.write(1), writer.flush(5), writer.abort("boom")))
    thread.start()
    assert reader.read() == 1
    with pytest.raises(ChannelBrokenError):
        reader.read()
    thread.join(10)
    reader.close()


def test_nothing_listening_is_not_found_fast():
    probe = zmq.Context.instance().socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    descriptor = ChannelDescriptor(ChannelKind.TCP, f"tcp://127.0.0.1:{port}", vertex="gone")
    started = time.monotonic()
    with pytest.raises(ChannelNotFoundError, match="nothing listens") as err:
        open_reader(descriptor, timeout=10)
    assert time.monotonic() - started < 5
    assert f"gone:0 v0 at tcp://127.0.0.1:{port}" in str(err.value)


def test_writer_without_readers_times_out_naming_the_channel():
    writer = open_writer("tcp", vertex="lonely", timeout=0.3)
    with pytest.raises(ChannelTimeoutError, match=r"lonely:0 v0 .*\(0 of 1 connected\)"):
        writer.write(1)
    with pytest.raises(ChannelTimeoutError, match=r"0 of 1 connected"):
        writer.close()


def test_silent_live_producer_times_out_on_read():
    writer = open_writer("tcp", vertex="slow", timeout=5)
    reader = open_reader(writer.descriptor, timeout=0.3)
    with pytest.raises(ChannelTimeoutError, match="did not welcome this reader within 0.3 s"):
        reader.read()
    reader.close()
    writer.abort()


# a fake producer speaking the protocol, to feed the reader damaged messages -------------
class FakeProducer:
    def __init__(self, key_of: ChannelDescriptor | None = None, protocol: int = PROTOCOL):
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.descriptor = ChannelDescriptor(ChannelKind.TCP, f"tcp://127.0.0.1:{port}",
                                            vertex="fake", job="j")
        self.key = channel_key(key_of or self.descriptor)
        self.protocol = protocol

    def serve(self, *messages: list[bytes]) -> None:
        if not self.sock.poll(5000):
            raise AssertionError("reader never said hello")
        peer, hello = self.sock.recv_multipart()
        assert hello[:1] == b"H"
        welcome = b"W" + json.dumps({"protocol": self.protocol, "key": self.key.hex()}).encode()
        self.sock.send_multipart([peer, welcome])
        for parts in messages:
            self.sock.send_multipart([peer, *parts])

    def close(self) -> None:
        self.sock.close(linger=0)


def _head(header: bytes = b"\x80\x05K\x07.", sizes: tuple[int, ...] = ()) -> bytes:
    return b"F" + layout_frame(header, sizes).head


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1:]


@pytest.mark.parametrize("messages, message", [
    ([[b"F" + b"JUNK" * 10]], "not a serpytor frame"),
    ([[_flip(_head(), 35)]], "checksum mismatch"),
    ([[_head(sizes=(100_000,))]], "fewer parts than its table"),
    ([[_head(sizes=(10,)), b"0123456789", b"extra"]], "more parts than its table"),
    ([[_head(), b"extra"]], "more parts than its table"),
    ([[_head(sizes=(10,)), b"short"]], "buffer of 5 bytes, table says 10"),
    ([[_head(b"\x80\x05garbage")]], "does not deserialize"),
    ([[b"E" + END_RECORD.pack(3, 999)]], "stream ended after 0 items"),
    ([[b"Q" + b"?"]], "unexpected message tag"),
    # one array: T, the array, its head
    ([[b"T"]], "array message without its array"),
    ([[b"T", b"0123456789"]], "array message without its frame head"),
    ([[b"T", b"0123456789", _head(sizes=(10,)), b"extra"]], "more parts than its table"),
    ([[b"T", b"01234", _head(sizes=(10,))]], "buffer of 5 bytes, table says 10"),
    ([[b"T", b"0123456789", _flip(_head(sizes=(10,)), 50)]], "checksum mismatch"),
    ([[b"T", b"0123456789", _head()]], r"not one array's \(flags 0, buffers \[\]\)"),
    ([[b"T", b"0123456789", _head(sizes=(4, 6))]], r"not one array's \(flags 0, buffers \[4, 6"),
    ([[b"T", b"0123456789", b"Q" + _head(sizes=(10,))[1:]]], "head tagged b'Q'"),
])
def test_damaged_messages_are_corrupt_errors(messages, message):
    fake = FakeProducer()
    reader = open_reader(fake.descriptor, timeout=5)
    try:
        fake.serve(*messages)
        with pytest.raises(ChannelCorruptError, match=message) as err:
            reader.read()
        assert "tcp channel fake:0 v0" in str(err.value)
    finally:
        reader.close()
        fake.close()


def test_a_valid_frame_from_the_fake_producer_is_read():
    fake = FakeProducer()
    reader = open_reader(fake.descriptor, timeout=5)
    try:
        frame_len = layout_frame(b"\x80\x05K\x07.", ()).frame_len
        fake.serve([_head()], [b"E" + END_RECORD.pack(1, frame_len)])
        assert reader.read() == 7
        with pytest.raises(EndOfChannel):
            reader.read()
    finally:
        reader.close()
        fake.close()


def test_an_endpoint_serving_another_channel_is_not_found():
    other = ChannelDescriptor(ChannelKind.TCP, "x", vertex="someone-else")
    fake = FakeProducer(key_of=other)
    reader = TcpReader(fake.descriptor, timeout=5)
    try:
        fake.serve()
        with pytest.raises(ChannelNotFoundError, match="serves another channel"):
            reader.read()
    finally:
        reader.close()
        fake.close()


def test_an_array_message_and_a_head_first_frame_of_one_array_both_read():
    fake = FakeProducer()
    reader = open_reader(fake.descriptor, timeout=5)
    try:
        head = _head(b"NC10;|u1", sizes=(10,))
        frame_len = layout_frame(b"NC10;|u1", (10,)).frame_len
        fake.serve([b"T", b"0123456789", head], [head, b"9876543210"],
                   [b"E" + END_RECORD.pack(2, 2 * frame_len)])
        assert bytes(reader.read()) == b"0123456789"
        assert bytes(reader.read()) == b"9876543210"
        with pytest.raises(EndOfChannel):
            reader.read()
    finally:
        reader.close()
        fake.close()


def test_a_changed_head_after_repeated_ones_is_checked_again():
    fake = FakeProducer()
    reader = open_reader(fake.descriptor, timeout=5)
    try:
        head = _head(b"NC10;|u1", sizes=(10,))
        fake.serve([b"T", b"0123456789", head], [b"T", b"0123456789", head],
                   [b"T", b"0123456789", _flip(head, len(head) - 1)])
        assert bytes(reader.read()) == bytes(reader.read()) == b"0123456789"
        with pytest.raises(ChannelCorruptError, match="checksum mismatch"):
            reader.read()
    finally:
        reader.close()
        fake.close()


def test_a_producer_of_another_protocol_is_named():
    fake = FakeProducer(protocol=PROTOCOL + 1)
    reader = open_reader(fake.descriptor, timeout=5)
    try:
        fake.serve()
        with pytest.raises(ChannelNotFoundError, match=f"protocol {PROTOCOL + 1}, this reader"):
            reader.read()
    finally:
        reader.close()
        fake.close()


# the per-item encoding and checks against framing's general ones ----------------------
_HEADERS = [b"", b"x", b"\x80\x05K\x07.", bytes(range(256)) * 3]


@pytest.mark.parametrize("header", _HEADERS)
def test_small_frame_message_is_framings_layout(header):
    assert small_frame_message(header) == b"F" + layout_frame(header, ()).head


@pytest.mark.parametrize("header", _HEADERS)
@pytest.mark.parametrize("sizes", [(), (0,), (1,), (4096,), (SINGLE_FRAME_LIMIT,)])
def test_quick_frame_head_decodes_like_framing(header, sizes):
    layout = layout_frame(header, sizes)
    got_header, size, frame_len = quick_frame_head(b"F" + layout.head)
    _, want_header, entries = decode_frame_head(layout.head)
    assert bytes(got_header) == bytes(want_header) == header
    assert size == (sizes[0] if sizes else -1) and frame_len == layout.frame_len
    assert [n for _, n in entries] == list(sizes)


def test_quick_frame_head_leaves_other_shapes_to_framing():
    assert quick_frame_head(b"F" + layout_frame(b"h", (10, 20)).head) is None
    assert quick_frame_head(b"F" + layout_frame(b"h", (SINGLE_FRAME_LIMIT + 1,)).head) is None
    assert quick_frame_head(b"F" + layout_frame(b"h", (), flags=1).head) is None
    assert quick_frame_head(b"E" + layout_frame(b"h", ()).head[1:]) is None
    assert quick_frame_head(b"F") is None


def test_quick_frame_head_never_accepts_what_framing_rejects():
    rng = np.random.default_rng(7)
    heads = [b"F" + layout_frame(h, s).head for h in _HEADERS for s in [(), (100,)]]
    for _ in range(3000):
        message = bytearray(heads[rng.integers(len(heads))])
        for _ in range(rng.integers(1, 4)):
            message[rng.integers(len(message))] ^= 1 << int(rng.integers(8))
        if rng.random() < 0.2:
            message = message[:rng.integers(len(message))]
        message = bytes(message)
        quick = quick_frame_head(message)
        if quick is None:
            continue
        try:
            prelude, header, entries = decode_frame_head(memoryview(message)[1:])
        except FrameError as exc:
            raise AssertionError(f"accepted a head framing rejects: {exc}") from None
        assert bytes(quick[0]) == bytes(header) and quick[2] == prelude.frame_len


def test_arrays_of_one_size_but_another_dtype_keep_their_dtype():
    writer = open_writer("tcp", vertex="shapes", timeout=10)
    reader = open_reader(writer.descriptor, timeout=10)
    values = [np.arange(2048, dtype=np.float64), np.arange(2048, dtype=np.float64) + 1,
              np.arange(4096, dtype=np.int32), np.arange(2048, dtype=np.float64).reshape(2, -1)]
    closer = threading.Thread(target=lambda: ([writer.write(v) for v in values], writer.close()))
    closer.start()
    try:
        for want in values:
            assert_same(reader.read(), want)
        with pytest.raises(EndOfChannel):
            reader.read()
    finally:
        closer.join(10)
        reader.close()


def test_credit_bounds_what_an_idle_reader_holds():
    item = np.zeros(256 << 10, dtype=np.uint8)
    writer = open_writer("tcp", vertex="bounded", timeout=10)
    reader = TcpReader(writer.descriptor, timeout=10, window=1 << 20)
    feeder = threading.Thread(target=lambda: ([writer.write(item) for _ in range(40)],
                                              writer.close()))
    feeder.start()
    try:
        time.sleep(0.5)
        # while credit lasts, plus the one message that took it below zero
        assert writer.statistics().items <= (1 << 20) // item.nbytes + 1
        assert len(reader.read_all()) == 40
    finally:
        feeder.join(10)
        reader.close()
    assert writer.closed
