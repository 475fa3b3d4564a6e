"""Packs: small stored outputs appended to one file per writing process.

Creating a file costs about as much as running a trivial vertex (a few hundred
microseconds on many file systems), and so does committing a database transaction, so
a journal that stored every output as a file (or a row) of its own would make durable
execution several times slower than running without it. Outputs below ``PACK_LIMIT``
bytes therefore go into a *pack*: a file that only the process that created it
appends to (one ``write`` per reported batch), so writers never wait for each other,
while any process may read it. Larger outputs stay ``file`` channels.

Each output is a record at an offset of the pack: the item's pickle when it has no
out-of-band buffers (most small outputs), else the item as a channel frame
(:mod:`serpytor.runtime.channels.framing`: crc-checked head, 64-byte aligned buffers),
named ``outputs/packs/NAME.pack#OFFSET+LENGTH``; the journal records that name and the
record's digest, which is checked before the output is reused. Records are written
when the store commits, before the outputs are reported; a record is in the page cache
once ``write`` returns, so it survives the process; a job that asks for durability
(``--durable``) fsyncs the pack before the outputs are reported. A record is written
to the journal only after its output, so a torn tail (a process killed while
appending) is never pointed to.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from .channels.framing import FrameError, decode_frame_head, decode_prelude, layout_frame
from .channels.serialize import byte_view

PACK_LIMIT = 64 * 1024
WRITE_AT = 1 << 20  # put outputs are written at the next commit, or once this many bytes wait
SUFFIX = ".pack"
SEPARATOR = "#"
PICKLE_START = b"\x80"


class PackError(Exception):
    """A packed output is missing or damaged; the store reports it as an OutputError."""


def record_bytes(header: bytes, buffers: list[Any]) -> bytes | bytearray:
    """One serialized item as a pack record: a pickle without out-of-band buffers (the
    usual small output) is its own record; anything else is a frame (head, padding,
    aligned buffers). The two cannot be confused: a pickle starts with PROTO (0x80), a
    frame with its magic."""
    if not buffers and header[:1] == PICKLE_START:
        return header
    views = [byte_view(b) for b in buffers]
    layout = layout_frame(bytes(header), [v.nbytes for v in views])
    data = bytearray(layout.frame_len)
    data[:len(layout.head)] = layout.head
    for offset, view in zip(layout.offsets, views):
        data[offset:offset + view.nbytes] = view
    return data  # a bytearray: written and digested as it is, no copy


def unframe(data: bytes) -> tuple[memoryview, list[memoryview]]:
    """Inverse of :func:`record_bytes`: ``(header, buffers)``; FrameError when damaged
    (the record's digest, checked before, catches the rest)."""
    view = memoryview(data)
    if view[:1] == PICKLE_START:
        return view, []
    prelude = decode_prelude(view)
    if prelude.frame_len != len(view):
        raise FrameError(f"frame of {prelude.frame_len} bytes in a row of {len(view)}")
    _, header, entries = decode_frame_head(view[:prelude.head_len])
    return header, [view[o:o + n] for o, n in entries]


def digest_of(data: bytes) -> str:
    return "blake2b-256:" + hashlib.blake2b(data, digest_size=32).hexdigest()


class OutputPack:
    """This process's pack in ``directory`` (created on the first write)."""

    def __init__(self, directory: Path, durable: bool) -> None:
        self.directory = directory
        self.durable = durable
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._fd: int | None = None
        self._size = 0          # bytes written to the file
        self._pending = bytearray()  # put, not yet written: one write per commit
        self._dirty = False
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def append(self, data: bytes | bytearray) -> int:
        """Append one output; returns its offset (its name is ``NAME#OFFSET+LENGTH``).
        It is readable once :meth:`commit` has run (outputs are reported or journaled
        after that)."""
        with self._lock:
            offset = self._size + len(self._pending)
            self._pending += data
            self._dirty = True
            if len(self._pending) >= WRITE_AT:
                self._write_pending()
            return offset

    def commit(self) -> None:
        """Write what was put; make it durable when the job asked for it (otherwise
        written data already outlives this process)."""
        with self._lock:
            try:
                self._write_pending()
            except OSError:
                # those outputs fail (nothing reported them); what follows goes after
                # what the file holds
                self._pending.clear()
                raise
            if self.durable and self._dirty and self._fd is not None:
                os.fsync(self._fd)
            self._dirty = False

    def _write_pending(self) -> None:
        if not self._pending:
            return
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        view = memoryview(self._pending)
        try:
            while view.nbytes:
                view = view[os.write(self._fd, view):]
        finally:
            written = len(self._pending) - view.nbytes
            view.release()
            del self._pending[:written]
            self._size += written

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._close_file()

    def _close_file(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class PackReader:
    """Reads outputs from any pack (descriptors kept open)."""

    def __init__(self) -> None:
        self._open: dict[Path, int] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, offset: int, length: int) -> bytes:
        with self._lock:
            fd = self._descriptor(path)
            data = os.pread(fd, length, offset)
        if len(data) != length:
            raise PackError(f"{path} ends before {offset}+{length} (truncated)")
        return data

    def exists(self, path: Path, offset: int, length: int) -> bool:
        try:
            return os.stat(path).st_size >= offset + length
        except OSError:
            return False

    def _descriptor(self, path: Path) -> int:
        fd = self._open.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise PackError(f"pack {path} cannot be opened: {error.strerror}") from None
            self._open[path] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


def split_name(relative: str) -> tuple[str, int, int] | None:
    """``("outputs/packs/NAME.pack", OFFSET, LENGTH)`` for a packed output, else None."""
    path, sep, place = relative.rpartition(SEPARATOR)
    offset, plus, length = place.partition("+")
    if not sep or not plus or not offset.isdigit() or not length.isdigit():
        return None
    return path, int(offset), int(length)
