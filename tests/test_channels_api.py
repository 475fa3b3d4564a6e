"""Channel interface pieces that need no second process: descriptors, selection,
serializers, frames, errors, statistics, one-shot helpers and lifecycle rules."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serpytor.compiler.kinds import ChannelKind
from serpytor.errors import SerpytorError
from serpytor.runtime.channels import (
    ChannelBrokenError, ChannelClosedError, ChannelDescriptor, ChannelDescriptorError,
    ChannelError, ChannelNotFoundError, ChannelSerializationError, EndOfChannel,
    NdarraySerializer, close_pools, get_serializer, open_reader, open_writer, read_value,
    register_serializer, same_host, select_channel, serializer_names, sweep_segments,
    write_value)
from serpytor.runtime.channels.framing import (FrameError, decode_head, decode_prelude,
                                                layout_frame)
from serpytor.runtime.channels.segments import job_token, segment_prefix

from test_channels_helpers import assert_same, unique_job

AUTO, SHM, TCP, FILE = ChannelKind.AUTO, ChannelKind.SHM, ChannelKind.TCP, ChannelKind.FILE


@pytest.fixture(autouse=True)
def _release_pools():
    yield
    close_pools()


# descriptors --------------------------------------------------------------------------
descriptors = st.builds(
    ChannelDescriptor,
    kind=st.sampled_from([SHM, TCP, FILE]), location=st.text(max_size=40),
    vertex=st.text(min_size=1, max_size=20), port=st.integers(0, 2**31),
    version=st.integers(0, 2**40), job=st.text(max_size=20),
    size=st.integers(-1, 2**50), items=st.integers(-1, 2**40),
    serializer=st.sampled_from(["pickle", "ndarray", "json"]),
    readers=st.integers(1, 64), requested=st.sampled_from(list(ChannelKind)),
    host=st.text(max_size=20))


@settings(max_examples=60, deadline=None)
@given(descriptors)
def test_descriptor_round_trips_through_json(descriptor):
    text = descriptor.to_json()
    assert json.loads(text)["kind"] == str(descriptor.kind)
    assert ChannelDescriptor.from_json(text) == descriptor


@pytest.mark.parametrize("data, fragment", [
    ({"kind": "shm", "location": "x"}, "missing ['vertex']"),
    ({"kind": "udp", "location": "x", "vertex": "v"}, "unknown channel kind 'udp'"),
    ({"kind": "shm", "location": "x", "vertex": "v", "port": "0"}, "'port' must be int"),
    ({"kind": "shm", "location": "x", "vertex": "v", "port": True}, "'port' must be int"),
    ({"kind": "shm", "location": "x", "vertex": "v", "pickle": 1}, "unknown ['pickle']"),
    ({"kind": "auto", "location": "x", "vertex": "v"}, "not auto"),
    ({"kind": "file", "location": "x", "vertex": "v", "readers": 0}, "readers >= 1"),
])
def test_malformed_descriptors_are_rejected_with_the_reason(data, fragment):
    with pytest.raises(ChannelDescriptorError) as err:
        ChannelDescriptor.from_json(json.dumps(data))
    assert fragment in str(err.value)
    assert isinstance(err.value, SerpytorError) and isinstance(err.value, ValueError)


def test_descriptor_that_is_not_json_is_rejected():
    with pytest.raises(ChannelDescriptorError, match="not JSON"):
        open_reader("{kind: shm")


# selection ----------------------------------------------------------------------------
@pytest.mark.parametrize("hint, producer, consumer, concurrent, expected", [
    (AUTO, "a", "a", False, SHM),
    (AUTO, "a", "a", True, SHM),
    (AUTO, "localhost", "127.0.0.1", False, SHM),
    (AUTO, "a", "b", True, TCP),
    (AUTO, "a", "b", False, FILE),
    (TCP, "a", "a", False, TCP),      # a hint from the .spg wins
    (FILE, "a", "a", True, FILE),
    (SHM, "A", "a", False, SHM),
])
def test_select_channel(hint, producer, consumer, concurrent, expected):
    assert select_channel(hint, producer, consumer, concurrent) == expected


def test_shm_hint_across_hosts_is_an_error_not_a_downgrade():
    with pytest.raises(ChannelError, match="both ends on one host"):
        select_channel(SHM, "node1", "node2", True)
    assert not same_host("node1", "node2")


def test_statistics_record_the_kind_chosen_and_the_hint(tmp_path):
    writer = open_writer("auto", vertex="v", job=unique_job("st"), producer_host="h1",
                         consumer_host="h2", concurrent=False, directory=tmp_path)
    writer.write(np.arange(10_000))
    descriptor = writer.close()
    stats = writer.statistics()
    assert (stats.kind, stats.requested, stats.items) == (FILE, AUTO, 1)
    assert stats.bytes == descriptor.size > 80_000 and stats.seconds > 0
    with open_reader(descriptor.to_json()) as reader:
        reader.read_all()
    assert reader.statistics().to_dict() | {"seconds": 0} == {
        "kind": "file", "requested": "auto", "role": "reader", "bytes": descriptor.size,
        "items": 1, "seconds": 0}


# serializers --------------------------------------------------------------------------
class Utf8Lines:
    """A user serializer: a list of str as one buffer of newline-separated UTF-8."""

    name = "utf8-lines"

    def dumps(self, value):
        return b"", [("\n".join(value)).encode()]

    def loads(self, header, buffers):
        return bytes(buffers[0]).decode().split("\n")


def test_a_registered_serializer_is_named_in_the_descriptor(tmp_path):
    register_serializer(Utf8Lines(), replace=True)
    assert "utf8-lines" in serializer_names()
    descriptor = write_value(["a", "é", "c"], "file", vertex="lines", directory=tmp_path,
                             serializer="utf8-lines")
    assert ChannelDescriptor.from_json(descriptor.to_json()).serializer == "utf8-lines"
    assert read_value(descriptor) == ["a", "é", "c"]


def test_unknown_serializer_is_a_descriptor_error(tmp_path):
    with pytest.raises(ChannelDescriptorError, match="unknown serializer 'nope'"):
        open_writer("file", vertex="v", directory=tmp_path, serializer="nope")


@pytest.mark.parametrize("array", [
    np.arange(24.0).reshape(2, 3, 4), np.asfortranarray(np.ones((3, 5), np.int8)),
    np.arange(10)[::2], np.array(7, np.uint16), np.zeros((0, 3)),
    np.zeros(3, dtype=[("a", "<i2"), ("b", "<f4", (2,))]),
])
def test_ndarray_serializer_round_trips_without_pickle(array):
    serializer = NdarraySerializer()
    header, buffers = serializer.dumps(array)
    assert b"\x80" not in header[:1]  # JSON, never a pickle stream
    got = serializer.loads(memoryview(header), [memoryview(b).cast("B") for b in buffers])
    assert_same(got, array)


def test_ndarray_serializer_refuses_other_values(tmp_path):
    writer = open_writer("file", vertex="v", directory=tmp_path, serializer="ndarray")
    with pytest.raises(ChannelSerializationError, match="carries numpy arrays"):
        writer.write([1, 2])
    writer.abort()


def test_unpicklable_value_raises_a_serialization_error_naming_the_channel(tmp_path):
    writer = open_writer("file", vertex="producer", port=2, version=5, directory=tmp_path)
    with pytest.raises(ChannelSerializationError) as err:
        writer.write(threading.Lock())
    assert "file channel producer:2 v5" in str(err.value)
    assert isinstance(err.value, TypeError)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_pickle_serializer_keeps_large_buffers_out_of_band():
    header, buffers = get_serializer("pickle").dumps(
        {"big": np.arange(10_000.0), "small": np.arange(10.0)})
    assert [memoryview(b).nbytes for b in buffers] == [80_000]
    assert len(header) < 1000


# frames -------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 5000), max_size=6))
def test_frame_layout_decodes_to_what_was_laid_out(header, sizes):
    layout = layout_frame(header, sizes)
    prelude = decode_prelude(layout.head)
    got_header, entries = decode_head(layout.head, prelude)
    assert bytes(got_header) == header
    assert entries == list(zip(layout.offsets, sizes))
    assert all(offset % 64 == 0 for offset in layout.offsets)
    assert prelude.frame_len == layout.frame_len and layout.frame_len % 64 == 0


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.lists(st.integers(0, 9000), max_size=3),
       st.data())
def test_any_flipped_byte_in_a_frame_head_is_detected(header, sizes, data):
    head = bytearray(layout_frame(header, sizes).head)
    index = data.draw(st.integers(0, len(head) - 1))
    head[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FrameError):
        decode_head(head, decode_prelude(head))


# lifecycle ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["shm", "file"])
def test_closed_ends_raise_closed_errors(kind, tmp_path):
    writer = open_writer(kind, vertex="v", job=unique_job("cl"), directory=tmp_path)
    descriptor = writer.close()
    assert writer.close() == descriptor  # idempotent
    with pytest.raises(ChannelClosedError, match="write on a closed writer"):
        writer.write(1)
    reader = open_reader(descriptor)
    with pytest.raises(EndOfChannel):
        reader.read()
    reader.close()
    with pytest.raises(ChannelClosedError, match="read on a closed reader"):
        reader.read()


@pytest.mark.parametrize("kind", ["shm", "file"])
def test_an_exception_in_the_with_block_abandons_the_channel(kind, tmp_path):
    job = unique_job("ab")
    with pytest.raises(RuntimeError):
        with open_writer(kind, vertex="v", job=job, directory=tmp_path) as writer:
            writer.write(np.arange(100_000))
            descriptor = writer.descriptor
            raise RuntimeError("vertex failed")
    with pytest.raises((ChannelBrokenError, ChannelNotFoundError)):
        open_reader(descriptor, timeout=0.2)
    assert sweep_segments(job) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["shm", "file", "tcp"])
def test_write_value_read_value(kind, tmp_path):
    value = {"a": np.arange(50_000, dtype=np.int32), "b": [1, "two"]}
    job = unique_job("wv")
    if kind == "tcp":  # both ends must run at once: the writer in a thread
        writer = open_writer(kind, vertex="v", job=job, timeout=10)
        thread = threading.Thread(target=lambda: (writer.write(value), writer.close()))
        thread.start()
        got = read_value(writer.descriptor, timeout=10)
        thread.join(10)
        assert writer.closed
    else:
        got = read_value(write_value(value, kind, vertex="v", job=job, directory=tmp_path))
    assert_same(got, value)


def test_read_value_insists_on_exactly_one_item(tmp_path):
    writer = open_writer("file", vertex="v", directory=tmp_path)
    writer.write(1)
    writer.write(2)
    with pytest.raises(ChannelError, match="more than one item"):
        read_value(writer.close())
    empty = open_writer("file", vertex="w", directory=tmp_path).close()
    with pytest.raises(ChannelError, match="empty"):
        read_value(empty)


def test_job_tokens_keep_sweeps_apart():
    assert job_token("wordcount_7") == "wordcount_7"
    assert "-" not in job_token("a-b") and job_token("a-b") != job_token("a_b")
    assert not segment_prefix("a-b").startswith(segment_prefix("a"))
    assert len(job_token("x" * 300)) < 30


def test_errors_name_the_channel_and_share_a_root():
    descriptor = ChannelDescriptor(SHM, "spt-j-1-2", vertex="merge", port=1, version=3)
    error = ChannelBrokenError("producer died", descriptor)
    assert str(error) == "shm channel merge:1 v3 at spt-j-1-2: producer died"
    assert error.descriptor is descriptor and isinstance(error, SerpytorError)
