"""file channels: atomic, versioned outputs that outlive their producer, read back
with one copy, checked for truncation and damage, and reusable by durable execution."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from serpytor.compiler.kinds import ChannelKind
from serpytor.runtime.channels import (
    ChannelBrokenError, ChannelCorruptError, ChannelDescriptor, ChannelError,
    ChannelNotFoundError, locate_output, metadata_path, open_output, open_reader, open_writer,
    output_descriptor, output_digest, output_path, read_value, sweep_partial_files,
    write_value)

from test_channels_helpers import (assert_same, consume, from_portable, kill, produce, recv,
                                   sample_values, spawn_child)


def test_consumer_starts_after_the_producer_has_gone(tmp_path):
    options = {"vertex": "src", "port": 1, "version": 4, "directory": str(tmp_path)}
    with spawn_child(produce, "file", options, None) as (proc, conn):
        recv(conn)
        tag, final, stats = recv(conn)
    assert tag == "closed" and not proc.is_alive()
    with spawn_child(consume, final, 10.0) as (_, conn):
        tag, items, _, reader_stats = recv(conn)
    assert tag == "read", items
    for got, want in zip(items, sample_values()):
        assert_same(from_portable(got), want)
    assert len(items) == len(sample_values()) and reader_stats["bytes"] == stats["bytes"]


def test_arrays_come_back_aligned_and_backed_by_one_read_buffer(tmp_path):
    value = {"a": np.arange(100_000.0), "b": np.arange(50_000, dtype=np.int32)}
    with open_reader(write_value(value, "file", vertex="v", directory=tmp_path)) as reader:
        got = reader.read()
    for array in got.values():
        assert array.__array_interface__["data"][0] % 64 == 0 and not array.flags.owndata
    assert _owner(got["a"]) is _owner(got["b"])  # both views on one read buffer
    assert_same(got, value)


def _owner(array):
    """The object that owns the memory under a chain of views."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_outputs_are_named_by_vertex_port_and_version(tmp_path):
    first = write_value("v1", "file", vertex="count[3]", port=2, version=1, directory=tmp_path)
    second = write_value("v2", "file", vertex="count[3]", port=2, version=2, directory=tmp_path)
    assert first.location != second.location
    assert output_path(tmp_path, "count[3]", 2, 1) == locate_output(tmp_path, "count[3]", 2, 1)
    assert locate_output(tmp_path, "count[3]", 2, 3) is None
    assert (read_value(first), read_value(second)) == ("v1", "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [os.path.basename(first.location), os.path.basename(first.location) + ".json",
         os.path.basename(second.location), os.path.basename(second.location) + ".json"])


def test_an_existing_output_is_never_overwritten(tmp_path):
    write_value("first", "file", vertex="v", version=1, directory=tmp_path)
    with pytest.raises(ChannelError, match="already exists; a re-execution must use a new"):
        write_value("second", "file", vertex="v", version=1, directory=tmp_path)
    assert read_value(output_descriptor(output_path(tmp_path, "v", 0, 1))) == "first"


def test_nothing_is_visible_until_close(tmp_path):
    writer = open_writer("file", vertex="v", directory=tmp_path)
    writer.write(np.arange(1000))
    assert locate_output(tmp_path, "v", 0, 0) is None
    assert [p.name.startswith(".") for p in tmp_path.iterdir()] == [True]
    with pytest.raises(ChannelNotFoundError, match="no output file after 0.1 s"):
        open_reader(writer.descriptor, timeout=0.1)
    writer.close()
    assert locate_output(tmp_path, "v", 0, 0) is not None


def test_durable_output_records_its_digest_which_matches_a_recomputation(tmp_path):
    descriptor = write_value(np.arange(200_000), "file", vertex="v", directory=tmp_path,
                             durable=True)
    recorded = output_digest(descriptor.location)
    assert recorded.startswith("blake2b-256:") and len(recorded) == len("blake2b-256:") + 64
    metadata_path(descriptor.location).unlink()
    assert output_digest(descriptor.location) == recorded  # recomputed from the bytes
    again = write_value(np.arange(200_000), "file", vertex="v", version=1, directory=tmp_path)
    assert output_digest(again.location) == recorded  # same content, same digest
    other = write_value(np.arange(1, 200_001), "file", vertex="v", version=2, directory=tmp_path)
    assert output_digest(other.location) != recorded


def test_open_output_reuses_a_recorded_result(tmp_path):
    write_value({"answer": 42}, "file", vertex="merge", port=1, version=7, directory=tmp_path,
                job="wc")
    descriptor = output_descriptor(output_path(tmp_path, "merge", 1, 7))
    assert (descriptor.job, descriptor.vertex, descriptor.port, descriptor.version,
            descriptor.items) == ("wc", "merge", 1, 7, 1)
    with open_output(tmp_path, "merge", 1, 7) as reader:
        assert reader.read() == {"answer": 42}
    with pytest.raises(ChannelNotFoundError, match="no such output file"):
        open_output(tmp_path, "merge", 1, 8)


def test_sigkill_of_the_producer_is_a_broken_channel_and_the_partial_file_is_swept(tmp_path):
    values = [np.ones(1_000_000), "never"]
    options = {"vertex": "v", "directory": str(tmp_path)}
    with spawn_child(produce, "file", options, values, 1) as (proc, conn):
        descriptor = recv(conn)
        assert recv(conn) == "hanging"
        kill(proc)
    started = time.monotonic()
    with pytest.raises(ChannelBrokenError, match=r"producer \(pid \d+\) died while writing"):
        open_reader(descriptor, timeout=10)
    assert time.monotonic() - started < 2
    removed = sweep_partial_files(tmp_path)
    assert len(removed) == 1 and list(tmp_path.iterdir()) == []


def test_missing_file_is_not_found_after_the_timeout(tmp_path):
    descriptor = ChannelDescriptor(ChannelKind.FILE, str(tmp_path / "nope.p0.v0.chan"),
                                   vertex="nope")
    started = time.monotonic()
    with pytest.raises(ChannelNotFoundError, match="no output file after 0.3 s") as err:
        open_reader(descriptor, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert "file channel nope:0 v0 at" in str(err.value)


def _written(tmp_path):
    writer = open_writer("file", vertex="v", directory=tmp_path)
    writer.write({"x": np.arange(20_000)})
    writer.write("second")
    return writer.close()


@pytest.mark.parametrize("cut", [0, 10, 100, 200, 50_000, -200, -64, -1])
def test_truncated_file_is_a_corrupt_error(tmp_path, cut):
    descriptor = _written(tmp_path)
    path = Path(descriptor.location)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ChannelCorruptError) as err:
        with open_reader(descriptor) as reader:
            reader.read_all()
    assert "file channel v:0 v0" in str(err.value)


@pytest.mark.parametrize("where, offset", [
    ("file", 0), ("file", 20),                      # file magic, identity JSON
    ("frame", 0), ("frame", 12), ("frame", 40),     # frame magic, crc, pickle header
    ("end", 24),                                    # the end frame's lengths
])
def test_a_damaged_header_or_frame_head_is_a_corrupt_error(tmp_path, where, offset):
    descriptor = _written(tmp_path)
    path = Path(descriptor.location)
    data = bytearray(path.read_bytes())
    base = {"file": 0, "frame": data.index(b"SPTF"), "end": len(data) - 64}[where]
    data[base + offset] ^= 0x5A
    path.write_bytes(data)
    with pytest.raises(ChannelCorruptError):
        with open_reader(descriptor) as reader:
            reader.read_all()


def test_verify_catches_damage_inside_a_buffer(tmp_path):
    descriptor = write_value(np.arange(100_000), "file", vertex="v", directory=tmp_path,
                             durable=True)
    path = Path(descriptor.location)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # inside the array: frames do not checksum payloads
    path.write_bytes(data)
    with open_reader(descriptor) as reader:  # without verify the damage goes unseen
        assert not np.array_equal(reader.read(), np.arange(100_000))
    with pytest.raises(ChannelCorruptError, match="digest differs"):
        open_reader(descriptor, verify=True)


def test_foreign_and_misplaced_files_are_corrupt_not_crashes(tmp_path):
    garbage = tmp_path / "g.p0.v0.chan"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(ChannelCorruptError, match="bad magic"):
        open_reader(ChannelDescriptor(ChannelKind.FILE, str(garbage), vertex="g"))
    other = write_value(1, "file", vertex="other", directory=tmp_path)
    impostor = ChannelDescriptor(ChannelKind.FILE, other.location, vertex="mine")
    with pytest.raises(ChannelCorruptError, match="holds another channel"):
        open_reader(impostor)
