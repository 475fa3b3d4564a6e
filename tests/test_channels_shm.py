"""shm channels: between processes, views not copies, pooled segments, streaming,
and nothing left in /dev/shm -- not even after SIGKILL, once the job is swept."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from serpytor.runtime.channels import (
    ChannelBrokenError, ChannelCorruptError, ChannelDescriptor, ChannelNotFoundError,
    ChannelTimeoutError, close_pools, list_segments, open_reader, open_writer,
    sweep_segments)
from serpytor.runtime.channels.segments import HEADER_SIZE, SHM_DIR, pool_for
from serpytor.compiler.kinds import ChannelKind

from test_channels_helpers import (assert_same, consume, from_portable, kill, produce, recv,
                                   sample_values, spawn_child, unique_job)


@pytest.fixture(autouse=True)
def _release_pools():
    yield
    close_pools()


def test_producer_and_consumer_in_separate_processes():
    job = unique_job("x")
    with spawn_child(produce, "shm", {"vertex": "src", "job": job}, None) as (proc, conn):
        descriptor = recv(conn)
        tag, final, stats = recv(conn)
        assert tag == "closed" and stats["items"] == len(sample_values())
        with spawn_child(consume, final, 10.0) as (_, reader_conn):
            tag, items, views, reader_stats = recv(reader_conn)
    assert tag == "read", items
    for got, want in zip(items, sample_values()):
        assert_same(from_portable(got), want)
    assert len(items) == len(sample_values())
    # every out-of-band array came back as a view on the segment (small ones are copied)
    assert views[:3] == [True, False, True]
    assert reader_stats["bytes"] == stats["bytes"]
    assert ChannelDescriptor.from_json(descriptor).location == ChannelDescriptor.from_json(final).location
    assert list_segments(job) == []  # the last reader released every segment


def test_consumer_gets_read_only_views_that_survive_close():
    job = unique_job("v")
    array = np.random.default_rng(0).random(100_000)
    with open_writer("shm", vertex="v", job=job) as writer:
        writer.write(array)
    reader = open_reader(writer.descriptor)
    view = reader.read()
    assert reader.holds(view) and not view.flags.writeable and not view.flags.owndata
    assert view.__array_interface__["data"][0] % 64 == 0
    reader.close()
    # the view pins its segment: it is retired, never handed to the next writer
    with open_writer("shm", vertex="w", job=job) as writer:
        writer.write(np.zeros_like(array))
    assert np.array_equal(view, array)
    with open_reader(writer.descriptor) as reader:
        reader.read_all()


def test_segments_are_reused_once_readers_release_them():
    job = unique_job("p")
    names = []
    for version in range(3):
        with open_writer("shm", vertex="v", version=version, job=job) as writer:
            writer.write(np.full(500_000, version, dtype=np.float64))
        names.append(writer.descriptor.location)
        with open_reader(writer.descriptor) as reader:
            assert reader.read()[123] == version  # the view dies here: no pin
    assert names[0] == names[1] == names[2]
    assert pool_for(job).free_bytes() >= 4_000_000


def test_a_stream_larger_than_its_first_segment_chains_segments():
    job = unique_job("c")
    writer = open_writer("shm", vertex="v", job=job)
    head = writer.descriptor.location  # asked before writing: a 1 MiB first segment
    chunks = [np.arange(i, i + 200_000, dtype=np.int64) for i in range(12)]
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
    assert len(writer.segment_names()) >= 3 and writer.segment_names()[0] == head
    with open_reader(writer.descriptor) as reader:
        for got, want in zip(reader, chunks):
            assert np.array_equal(got, want) and reader.holds(got)
        assert reader.statistics().items == 12
    assert list_segments(job) == [] or pool_for(job).free_bytes() > 0


def test_two_readers_share_one_channel():
    job = unique_job("r")
    with open_writer("shm", vertex="v", job=job, readers=2) as writer:
        writer.write(np.arange(100_000))
    first, second = open_reader(writer.descriptor), open_reader(writer.descriptor)
    assert np.array_equal(first.read(), second.read())
    first.close()
    assert writer.descriptor.location in list_segments(job)  # second reader still holds it
    second.close()
    assert pool_for(job).free_bytes() > 0


def test_reader_streams_while_the_producer_writes():
    job = unique_job("s")
    values = [np.arange(n * 1000, dtype=np.float32) for n in range(1, 30)]
    with spawn_child(produce, "shm", {"vertex": "v", "job": job}, values) as (_, conn):
        descriptor = recv(conn)
        with open_reader(descriptor, timeout=10) as reader:
            got = list(reader)
        assert recv(conn)[0] == "closed"
    assert len(got) == len(values)
    for a, b in zip(got, values):
        assert np.array_equal(a, b)


def test_sigkill_of_the_producer_breaks_the_reader_and_sweep_cleans_up():
    job = unique_job("kp")
    values = [np.arange(1000), np.ones(2_000_000), "never written"]
    with spawn_child(produce, "shm", {"vertex": "v", "job": job}, values, 2, 2) as (proc, conn):
        descriptor = recv(conn)
        assert recv(conn) == "hanging"
        reader = open_reader(descriptor, timeout=10)
        assert np.array_equal(reader.read(), values[0])
        assert np.array_equal(reader.read(), values[1])
        kill(proc)
        started = time.monotonic()
        with pytest.raises(ChannelBrokenError, match=r"producer \(pid \d+\) died") as err:
            reader.read()
        assert time.monotonic() - started < 5
        assert "shm channel v:0 v0" in str(err.value)
        reader.close()
    left = list_segments(job)
    assert len(left) == 2, "the killed producer's unread channels stay behind"
    assert sorted(sweep_segments(job)) == left
    assert list_segments(job) == []


def test_sigkill_of_the_consumer_then_sweep_removes_what_it_held():
    job = unique_job("kc")
    with open_writer("shm", vertex="v", job=job) as writer:
        writer.write(np.arange(300_000))
        writer.write("second")
    with spawn_child(consume, writer.descriptor.to_json(), 10.0, 1) as (proc, conn):
        assert recv(conn)[0] == "hanging"
        kill(proc)
    close_pools()  # the producer's process ends: the segment is still attached
    assert list_segments(job) == [writer.descriptor.location]
    assert sweep_segments(job) == [writer.descriptor.location]
    assert not (SHM_DIR / writer.descriptor.location).exists()


def test_sweep_of_one_job_leaves_other_jobs_alone():
    job, other = unique_job("a"), unique_job("a") + "-b"
    with open_writer("shm", vertex="v", job=other) as writer:
        writer.write(1)
    sweep_segments(job)
    assert list_segments(other) == [writer.descriptor.location]
    with open_reader(writer.descriptor) as reader:
        assert reader.read() == 1


def test_missing_segment_is_not_found():
    descriptor = ChannelDescriptor(ChannelKind.SHM, "spt-nojob-1-deadbeef", vertex="gone")
    with pytest.raises(ChannelNotFoundError, match="no such segment") as err:
        open_reader(descriptor, timeout=1)
    assert "gone:0 v0 at spt-nojob-1-deadbeef" in str(err.value)
    with pytest.raises(ChannelNotFoundError, match="not a serpytor segment name"):
        open_reader(ChannelDescriptor(ChannelKind.SHM, "../../etc/passwd", vertex="x"))


def test_released_channel_is_not_found_again():
    job = unique_job("rel")
    with open_writer("shm", vertex="v", job=job) as writer:
        writer.write(np.arange(10))
    with open_reader(writer.descriptor) as reader:
        reader.read_all()
    with pytest.raises(ChannelNotFoundError, match="no longer holds this channel"):
        open_reader(writer.descriptor)


def test_silent_live_producer_times_out():
    job = unique_job("t")
    writer = open_writer("shm", vertex="v", job=job)
    reader = open_reader(writer.descriptor, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ChannelTimeoutError, match="no item within 0.3 s"):
        reader.read()
    assert 0.25 < time.monotonic() - started < 3
    writer.write(5)
    assert reader.read(timeout=1) == 5
    writer.abort()
    with pytest.raises(ChannelBrokenError, match="abandoned"):
        reader.read()
    reader.close()


def _corrupt(name: str, offset: int, value: bytes) -> None:
    fd = os.open(SHM_DIR / name, os.O_RDWR)
    try:
        os.pwrite(fd, value, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("offset, value, message", [
    (HEADER_SIZE + 0, b"XXXX", "not a serpytor frame"),            # frame magic
    (HEADER_SIZE + 40, b"\xff", "checksum mismatch"),               # inside the pickle header
    (HEADER_SIZE + 24, b"\xff\xff\xff\x7f", "frame of"),            # area length: runs past
    (24, (64).to_bytes(8, "little"), "frame of"),                   # committed cut mid-frame
])
def test_corrupted_or_truncated_segment_is_a_corrupt_error(offset, value, message):
    job = unique_job("cor")
    with open_writer("shm", vertex="v", job=job) as writer:
        writer.write({"payload": np.arange(10_000)})
    _corrupt(writer.descriptor.location, offset, value)
    with open_reader(writer.descriptor) as reader:
        with pytest.raises(ChannelCorruptError, match=message) as err:
            reader.read()
    assert "shm channel v:0 v0" in str(err.value)
    sweep_segments(job)


def test_foreign_file_in_dev_shm_is_corrupt_not_a_crash():
    job = unique_job("f")
    name = f"spt-{job}-1-0badf00d"
    (SHM_DIR / name).write_bytes(os.urandom(10_000))
    try:
        with pytest.raises(ChannelCorruptError, match="bad magic"):
            open_reader(ChannelDescriptor(ChannelKind.SHM, name, vertex="v", job=job))
    finally:
        sweep_segments(job)
