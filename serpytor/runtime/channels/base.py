"""The one interface every channel kind implements, and its statistics.

A :class:`ChannelWriter` is filled by the producer (``write`` one item at a time,
then ``close``, which returns the final descriptor) and a :class:`ChannelReader` is
opened by the consumer from that descriptor (``read`` until :class:`EndOfChannel`, or
iterate). Both are context managers: leaving a writer's ``with`` block by an exception
abandons the channel, so a consumer sees ``ChannelBrokenError`` instead of a silently
short stream. Neither is thread-safe: use one from one thread at a time.

Subclasses implement four hooks: ``_write_frame`` / ``_commit`` / ``_abandon`` for
writers, ``_read_frame`` / ``_release`` for readers. The base class serializes, times,
counts and turns serializer failures into channel errors that name the channel.
"""

from __future__ import annotations

import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from ...compiler.kinds import ChannelKind
from .descriptor import ChannelDescriptor
from .errors import (ChannelClosedError, ChannelCorruptError, ChannelError,
                     ChannelSerializationError, EndOfChannel)
from .serialize import Serializer, byte_view, get_serializer

DEFAULT_TIMEOUT = 30.0  # seconds any blocking channel call waits before giving up


@dataclass
class ChannelStatistics:
    """What one end of a channel did: bytes of frames, items, seconds spent inside
    channel calls, and the kind chosen (``requested`` is the hint it was chosen from)."""

    kind: ChannelKind
    requested: ChannelKind
    role: str            # "writer" or "reader"
    bytes: int = 0
    items: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"], data["requested"] = str(self.kind), str(self.requested)
        return data


class Deadline:
    """A point in monotonic time; ``remaining()`` never goes below zero."""

    __slots__ = ("seconds", "end")

    def __init__(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {seconds!r}")
        self.seconds = seconds
        self.end = time.monotonic() + seconds  # inf stays inf: wait forever

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def poll_interval(attempt: int) -> float:
    """Back-off for polling waits: 50 us doubling to 5 ms, so a waiting reader reacts
    fast to a busy producer and costs little CPU on an idle one."""
    return min(5e-3, 50e-6 * (2 ** min(attempt, 7)))


class _Finalizable:
    """Runs ``cleanup`` when the object is collected unclosed (or at interpreter exit),
    so an abandoned writer or reader never leaves segments or sockets behind."""

    _finalizer: weakref.finalize | None = None

    def _on_collect(self, cleanup: Callable[..., Any], *args: Any) -> None:
        self._finalizer = weakref.finalize(self, cleanup, *args)

    def _run_finalizer(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class ChannelWriter(_Finalizable, ABC):
    """The producer's end of a channel: ``write`` items, then ``close``."""

    def __init__(self, descriptor: ChannelDescriptor) -> None:
        self._descriptor = descriptor
        self._serializer: Serializer = get_serializer(descriptor.serializer)
        self._stats = ChannelStatistics(descriptor.kind, descriptor.requested, "writer")
        self._closed = False
        self._final: ChannelDescriptor | None = None

    @property
    def descriptor(self) -> ChannelDescriptor:
        """Hand this to the consumer (it is final, with size and items, after close)."""
        return self._final or self._descriptor

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, value: Any) -> None:
        """Append one item. Buffers above INBAND_LIMIT are written from the caller's
        memory (see the kind's module for when that memory may be reused)."""
        self._check_open()
        started = time.perf_counter()
        header, buffers = self._dump(value)
        self._stats.bytes += self._write_frame(header, buffers)
        self._stats.items += 1
        self._stats.seconds += time.perf_counter() - started

    def write_serialized(self, header: bytes, buffers: list[Any]) -> None:
        """Append one item already encoded by this channel's serializer (``dumps``),
        so a value sent down several channels is serialized once."""
        self._check_open()
        started = time.perf_counter()
        views = [byte_view(b) for b in buffers]
        self._stats.bytes += self._write_frame(bytes(header), views)
        self._stats.items += 1
        self._stats.seconds += time.perf_counter() - started

    def close(self) -> ChannelDescriptor:
        """Seal the stream; returns the final descriptor. Idempotent."""
        if self._closed:
            return self.descriptor
        started = time.perf_counter()
        try:
            self._commit()
            self._final = self._descriptor.finished(self._stats.bytes, self._stats.items)
        except BaseException:
            self._abandon("close failed")
            raise
        finally:
            self._closed = True
            self._stats.seconds += time.perf_counter() - started
            self._run_finalizer()
        return self._final

    def abort(self, reason: str = "aborted by the producer") -> None:
        """Abandon the channel: readers get ChannelBrokenError. Idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._abandon(reason)
            finally:
                self._run_finalizer()

    def statistics(self) -> ChannelStatistics:
        return self._stats

    def __enter__(self) -> "ChannelWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(f"producer raised {exc_type.__name__}")

    def _dump(self, value: Any) -> tuple[bytes, list[memoryview]]:
        try:
            header, buffers = self._serializer.dumps(value)
            return bytes(header), [byte_view(b) for b in buffers]
        except Exception as exc:
            raise ChannelSerializationError(
                f"cannot serialize a {type(value).__name__} with {self._serializer.name!r}: "
                f"{exc}", self.descriptor) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError("write on a closed writer", self.descriptor)

    def _error(self, cls: type[ChannelError], message: str) -> ChannelError:
        return cls(message, self.descriptor)

    @abstractmethod
    def _write_frame(self, header: bytes, buffers: list[memoryview]) -> int:
        """Write one serialized item; return the bytes it took on the medium."""

    @abstractmethod
    def _commit(self) -> None:
        """Make every written item visible as a complete stream."""

    @abstractmethod
    def _abandon(self, reason: str) -> None:
        """Drop the stream so readers fail with ChannelBrokenError; never raises."""


class ChannelReader(_Finalizable, ABC):
    """The consumer's end of a channel: ``read`` or iterate items, then ``close``."""

    def __init__(self, descriptor: ChannelDescriptor, timeout: float = DEFAULT_TIMEOUT) -> None:
        Deadline(timeout)  # validates
        self.descriptor = descriptor
        self.timeout = timeout
        self._serializer: Serializer = get_serializer(descriptor.serializer)
        self._stats = ChannelStatistics(descriptor.kind, descriptor.requested, "reader")
        self._closed = False
        self._ended = False

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, timeout: float | None = None) -> Any:
        """The next item; EndOfChannel after the last one. Waits at most ``timeout``
        seconds (the reader's default when None) for the producer."""
        if self._closed:
            raise ChannelClosedError("read on a closed reader", self.descriptor)
        if self._ended:
            raise EndOfChannel(self.descriptor)
        started = time.perf_counter()
        try:
            header, buffers, nbytes = self._read_frame(Deadline(
                self.timeout if timeout is None else timeout))
        except EndOfChannel:
            self._ended = True
            raise
        value = self._load(header, buffers)
        self._stats.bytes += nbytes
        self._stats.items += 1
        self._stats.seconds += time.perf_counter() - started
        return value

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.read()
            except EndOfChannel:
                return

    def read_all(self) -> list[Any]:
        """Every remaining item, in order."""
        return list(self)

    def close(self) -> None:
        """Release the channel (for shm: lets the segment be reused once no view on
        it survives). Idempotent."""
        if not self._closed:
            self._closed = True
            started = time.perf_counter()
            try:
                self._release()
            finally:
                self._stats.seconds += time.perf_counter() - started
                self._run_finalizer()

    def statistics(self) -> ChannelStatistics:
        return self._stats

    def __enter__(self) -> "ChannelReader":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def _load(self, header: memoryview, buffers: list[memoryview]) -> Any:
        try:
            return self._serializer.loads(header, buffers)
        except Exception as exc:
            raise ChannelCorruptError(
                f"item {self._stats.items} does not deserialize with "
                f"{self._serializer.name!r}: {type(exc).__name__}: {exc}", self.descriptor) from None

    def _error(self, cls: type[ChannelError], message: str) -> ChannelError:
        return cls(message, self.descriptor)

    @abstractmethod
    def _read_frame(self, deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        """``(header, buffers, frame bytes)`` of the next item, or raise EndOfChannel."""

    @abstractmethod
    def _release(self) -> None:
        """Give the channel back; never raises on an already broken channel."""
