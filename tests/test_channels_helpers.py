"""Shared helpers for the channel tests: child processes, value samples, comparison.

Child processes use the "spawn" context (no fork with ZeroMQ threads around); every
receive from a child has a timeout, and every child is joined or killed on exit. The
entry points live here so spawned children import this small module only.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from serpytor.runtime.channels import (ChannelError, close_pools, open_reader, open_writer)

# spawn starts multiprocessing's resource tracker on first use; start it now, before any
# test, so the leak checker sees it as pre-existing rather than leaked by a test
multiprocessing.resource_tracker.ensure_running()

SPAWN = multiprocessing.get_context("spawn")
RECV_TIMEOUT = 20.0


def unique_job(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:8]}"


@contextmanager
def spawn_child(target: Any, *args: Any) -> Iterator[tuple[Any, Any]]:
    """Run ``target(conn, *args)`` in a spawned process; yield (process, parent end)."""
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    try:
        yield process, parent
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)
        parent.close()


def recv(conn: Any, timeout: float = RECV_TIMEOUT) -> Any:
    """The next message from a child, or fail the test after ``timeout``."""
    if not conn.poll(timeout):
        raise AssertionError(f"no message from the child within {timeout} s")
    message = conn.recv()
    if isinstance(message, tuple) and message and message[0] == "error":
        raise AssertionError(f"child failed: {message[1]}")
    return message


def kill(process: Any) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join(5)


def sample_values() -> list[Any]:
    """Arrays of several dtypes and layouts, bytes-likes and nested objects."""
    structured = np.zeros(5, dtype=[("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S4")])
    structured["id"] = np.arange(5)
    structured["pos"] = np.arange(15.0).reshape(5, 3)
    structured["tag"] = b"ab"
    big = np.arange(300_000, dtype=np.float64)
    return [
        big,                                              # out of band
        np.arange(12, dtype=np.int16).reshape(3, 4),      # in band (small)
        np.asfortranarray(np.arange(6000.0).reshape(60, 100)),
        np.arange(40_000, dtype=np.uint8)[::3],           # non-contiguous
        np.arange(200_000, dtype=np.complex64).reshape(400, 500)[:, ::2].T,
        np.array(3.25),                                   # 0-d
        np.zeros((0, 7), dtype=np.float32),               # empty
        np.ones(10_000, dtype=bool),
        structured,
        np.array(["x", "yz", None], dtype=object),
        b"raw bytes" * 1000,
        b"tiny",
        bytearray(b"\x00\x01" * 5000),
        memoryview(np.arange(2000.0)),
        {"nested": [1, 2.5, "three", (4, None)], "arr": np.arange(5000, dtype=np.int64),
         "set": frozenset({1, 2})},
        [],
        None,
        "unicode ✓",
    ]


def assert_same(got: Any, want: Any) -> None:
    """Deep equality that understands numpy arrays and memoryviews (type included)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{type(got)} is not an array"
        assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape)
        if want.dtype.hasobject:
            assert got.tolist() == want.tolist()
        else:
            assert np.array_equal(got, want, equal_nan=want.dtype.kind in "fc")
        return
    assert type(got) is type(want), f"{type(got).__name__} != {type(want).__name__}"
    if isinstance(want, memoryview):
        assert got.format == want.format and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b)
    else:
        assert got == want


def portable(value: Any) -> Any:
    """What a child sends back through a multiprocessing pipe (memoryviews as arrays)."""
    if isinstance(value, memoryview):
        return ("memoryview", value.format, value.shape, value.tobytes())
    return value


def from_portable(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "memoryview":
        _, fmt, shape, raw = value
        return memoryview(raw).cast("B").cast(fmt, shape)
    return value


# child entry points ------------------------------------------------------------------
def produce(conn: Any, kind: str, options: dict[str, Any], values: list[Any] | None,
            hang_after: int = -1, unread_channels: int = 0) -> None:
    """Write ``values`` (sample_values() when None); announce the descriptor first.
    With ``hang_after`` >= 0, stop after that many items and wait to be killed.
    ``unread_channels`` closed channels nobody will read are written first."""
    try:
        values = sample_values() if values is None else values
        for version in range(unread_channels):
            side = open_writer(kind, **dict(options, vertex="unread", version=version))
            side.write(np.arange(100_000))
            side.close()
        writer = open_writer(kind, **options)
        conn.send(writer.descriptor.to_json())
        for i, value in enumerate(values):
            if i == hang_after:
                conn.send("hanging")
                time.sleep(120)
            writer.write(value)
        final = writer.close()
        conn.send(("closed", final.to_json(), writer.statistics().to_dict()))
    except ChannelError as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        close_pools()


def consume(conn: Any, descriptor_json: str, timeout: float, hang_after: int = -1) -> None:
    """Read every item and send them back (with shm view checks); or hang."""
    try:
        reader = open_reader(descriptor_json, timeout=timeout)
        items, views = [], []
        for i, item in enumerate(reader):
            items.append(portable(item))
            is_view = isinstance(item, np.ndarray) and hasattr(reader, "holds")
            views.append(bool(reader.holds(item)) if is_view else None)
            if i + 1 == hang_after:
                conn.send(("hanging", len(items)))
                time.sleep(120)
        del item
        reader.close()
        conn.send(("read", items, views, reader.statistics().to_dict()))
    except ChannelError as exc:
        conn.send(("failed", type(exc).__name__, str(exc)))
