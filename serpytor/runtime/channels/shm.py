"""``shm`` channels: POSIX shared memory between processes on one host.

The producer writes frames into a chain of segments taken from its process's
:class:`~.segments.SegmentPool`; the consumer maps them read-only and gets numpy
arrays (and memoryviews) that are views on the segment: no copy on the way out, one
``memcpy`` on the way in (the producer's buffers are copied into the segment before
``write`` returns, so the producer may reuse its memory at once).

A reader may stream while the producer still writes (Dryad's shared-memory FIFO): it
polls the segment's committed length with a short back-off, follows the chain, and
fails with ``ChannelBrokenError`` as soon as the producer's process is gone, or with
``ChannelTimeoutError`` after its timeout. Views handed out stay valid after
``close()``: a segment whose views survive its reader is never reused, only unlinked
(see segments.py for the lifetime rules).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .base import DEFAULT_TIMEOUT, ChannelReader, ChannelWriter, Deadline, poll_interval
from .descriptor import ChannelDescriptor, channel_key
from .errors import (ChannelBrokenError, ChannelCorruptError, ChannelError,
                     ChannelNotFoundError, ChannelTimeoutError, EndOfChannel)
from .framing import PRELUDE_SIZE, FrameError, decode_head, decode_prelude, layout_frame
from .segments import (ABANDONED, CLOSED, LINKED, PINNED, STATE_NAMES, WRITING, Segment,
                       SegmentError, SegmentPool, pid_alive, pool_for)

DEFAULT_FIRST_CAPACITY = 1 << 20  # head segment when the descriptor is asked before a write


class _Chain:
    """The segments one writer filled; abandons them if the writer is collected open."""

    def __init__(self, pool: SegmentPool) -> None:
        self.pool = pool
        self.segments: list[Segment] = []
        self.sealed = False

    def abandon(self) -> None:
        if self.sealed:
            return
        self.sealed = True
        for segment in self.segments:
            try:
                with segment.locked():
                    segment.set("state", ABANDONED)
                segment.unlink()
            except (OSError, ValueError):  # already closed by the pool at exit
                pass
        if self.segments:
            last = self.segments[-1]
            try:
                self.pool.discard(last)
            except (OSError, ValueError):
                pass


class ShmWriter(ChannelWriter):
    """Writes frames into pooled shared-memory segments (a chain when they fill up)."""

    def __init__(self, descriptor: ChannelDescriptor, *, size_hint: int = 0,
                 pool: SegmentPool | None = None) -> None:
        super().__init__(descriptor)
        self._pool = pool or pool_for(descriptor.job)
        self._key = channel_key(descriptor)
        self._size_hint = size_hint
        self._chain = _Chain(self._pool)
        self._offset = 0
        self._items_here = 0
        self._on_collect(self._chain.abandon)

    @property
    def descriptor(self) -> ChannelDescriptor:
        if not self._chain.segments and not self._closed:
            self._extend(self._size_hint or DEFAULT_FIRST_CAPACITY)
        return super().descriptor

    def segment_names(self) -> list[str]:
        """The chain's segments, head first."""
        return [s.name for s in self._chain.segments]

    def _write_frame(self, header: bytes, buffers: list[memoryview]) -> int:
        layout = layout_frame(header, [b.nbytes for b in buffers])
        segment = self._room_for(layout.frame_len)
        base, view = self._offset, segment.view
        view[base:base + len(layout.head)] = layout.head
        for offset, buffer in zip(layout.offsets, buffers):
            view[base + offset:base + offset + buffer.nbytes] = buffer
        self._offset = base + layout.frame_len
        self._items_here += 1
        segment.set("items", self._items_here)
        segment.set("committed", self._offset)  # last: readers trust bytes below it
        return layout.frame_len

    def _room_for(self, nbytes: int) -> Segment:
        chain = self._chain.segments
        if chain and chain[-1].get("capacity") - self._offset >= nbytes:
            return chain[-1]
        grown = 2 * chain[-1].get("capacity") if chain else self._size_hint
        return self._extend(max(nbytes, grown))

    def _extend(self, capacity: int) -> Segment:
        try:
            segment = self._pool.acquire(capacity, self._key, self._descriptor.readers)
        except SegmentError as exc:
            raise self._error(ChannelError, str(exc)) from None
        chain = self._chain.segments
        if chain:
            self._seal(chain[-1], LINKED, segment.name)
        else:
            self._descriptor = replace(self._descriptor, location=segment.name)
        chain.append(segment)
        self._offset = self._items_here = 0
        return segment

    def _seal(self, segment: Segment, state: int, next_name: str = "") -> None:
        with segment.locked():
            if next_name:
                segment.set_next(next_name)
            segment.set("state", state)
            segment.settle()
        self._pool.lend(segment)

    def _commit(self) -> None:
        if not self._chain.segments:
            self._extend(self._size_hint)
        self._seal(self._chain.segments[-1], CLOSED)
        self._chain.sealed = True

    def _abandon(self, reason: str) -> None:
        self._chain.abandon()


class _Attachments:
    """The segments one reader attached; released at close or when collected."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def release_all(self) -> None:
        segments, self.segments = self.segments, []
        for segment in segments:
            clean = segment.close_data()
            try:
                with segment.locked():
                    segment.set("active", max(0, segment.get("active") - 1))
                    if not clean:
                        segment.set("flags", segment.get("flags") | PINNED)
                    if segment.state == WRITING and not pid_alive(segment.get("owner")):
                        segment.set("state", ABANDONED)  # its producer died mid-stream
                        segment.unlink()
                    segment.settle()
            except (OSError, ValueError):
                pass
            segment.close()


class ShmReader(ChannelReader):
    """Maps the chain read-only; items come back as views on the segments."""

    def __init__(self, descriptor: ChannelDescriptor, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(descriptor, timeout)
        self._key = channel_key(descriptor)
        self._attached = _Attachments()
        self._on_collect(self._attached.release_all)
        self._segment = self._attach(descriptor.location)
        self._offset = 0
        self._items_here = 0

    def holds(self, array: Any) -> bool:
        """True when ``array``'s memory lies inside a segment this reader mapped:
        the proof that the consumer got a view, not a copy."""
        import numpy as np
        address = np.asarray(array).__array_interface__["data"][0]
        return any(s.address <= address < s.address + s.get("capacity")
                   for s in self._attached.segments if s.data is not None)

    def _attach(self, name: str) -> Segment:
        try:
            segment = Segment.attach(name)
        except SegmentError as exc:
            cls = ChannelCorruptError if exc.kind == "corrupt" else ChannelNotFoundError
            raise self._error(cls, f"segment {name}: {exc}") from None
        try:
            with segment.locked():
                self._check_attachable(segment)
                segment.set("opened", segment.get("opened") + 1)
                segment.set("active", segment.get("active") + 1)
        except BaseException:
            segment.close()
            raise
        segment.map_data(segment.get("capacity"))
        self._attached.segments.append(segment)
        return segment

    def _check_attachable(self, segment: Segment) -> None:
        state = segment.state
        if state == ABANDONED:
            raise self._error(ChannelBrokenError, "the producer abandoned the channel")
        if segment.key != self._key or state not in (WRITING, LINKED, CLOSED):
            raise self._error(ChannelNotFoundError,
                              f"segment {segment.name} no longer holds this channel "
                              f"({STATE_NAMES.get(state, 'uninitialised')}; all its readers "
                              f"released it)")

    def _read_frame(self, deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        attempt = 0
        while True:
            segment = self._segment
            state = segment.state  # read state before committed: see _write_frame
            committed = segment.get("committed")
            if self._offset < committed:
                return self._frame(segment, committed)
            if state == LINKED:
                self._check_count(segment)
                self._follow(segment.next_name)
                continue
            if state == CLOSED:
                self._check_count(segment)
                raise EndOfChannel(self.descriptor)
            self._check_alive(segment, state, attempt)
            if deadline.expired():
                raise self._error(ChannelTimeoutError,
                                  f"no item within {deadline.seconds:g} s; the producer "
                                  f"(pid {segment.get('owner')}) is alive but has not written")
            time.sleep(poll_interval(attempt))
            attempt += 1

    def _check_alive(self, segment: Segment, state: int, attempt: int) -> None:
        if state == ABANDONED:
            raise self._error(ChannelBrokenError, "the producer abandoned the channel")
        if state != WRITING:
            raise self._error(ChannelBrokenError,
                              f"segment {segment.name} became {STATE_NAMES.get(state, state)} "
                              f"while being read")
        owner = segment.get("owner")
        if attempt >= 4 and not pid_alive(owner):
            raise self._error(ChannelBrokenError,
                              f"the producer (pid {owner}) died before closing the channel")

    def _check_count(self, segment: Segment) -> None:
        if segment.get("items") != self._items_here:
            raise self._error(ChannelCorruptError,
                              f"segment {segment.name} records {segment.get('items')} items "
                              f"but holds {self._items_here}")

    def _follow(self, name: str) -> None:
        try:
            self._segment = self._attach(name)
        except ChannelNotFoundError as exc:
            raise self._error(ChannelBrokenError, f"next segment lost: {exc.reason}") from None
        self._offset = self._items_here = 0

    def _frame(self, segment: Segment, committed: int) -> tuple[memoryview, list[memoryview], int]:
        view, start = segment.view, self._offset
        available = committed - start
        try:
            prelude = decode_prelude(view[start:start + min(PRELUDE_SIZE, available)])
            if prelude.flags or prelude.frame_len > available:
                raise FrameError(f"frame of {prelude.frame_len} bytes (flags {prelude.flags}) "
                                 f"in {available} committed bytes")
            header, entries = decode_head(view[start:start + prelude.head_len], prelude)
        except FrameError as exc:
            raise self._error(ChannelCorruptError,
                              f"segment {segment.name} offset {start}: {exc}") from None
        buffers = [view[start + o:start + o + n] for o, n in entries]
        self._offset = start + prelude.frame_len
        self._items_here += 1
        return header, buffers, prelude.frame_len

    def _release(self) -> None:
        self._attached.release_all()
