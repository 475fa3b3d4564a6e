"""The status block: what a server is doing, in a tiny file its heartbeat reads.

A server writes the block at every vertex start and end and on every turn of its I/O
loop; its heartbeat (another process, :mod:`serpytor.runtime.heartbeat`) reads it to
answer "is the server alive, and what was it running?" — also after the server died,
since the file outlives it. Neither side ever waits for the other: the writer stores
into a shared ``mmap`` (a few microseconds, no system call), the reader copies with
``pread`` and retries when it caught a write half done.

Layout (little-endian, fixed; :data:`SIZE` bytes)::

    offset  field
    0       magic b"SPTS", u16 version, u16 reserved
    8       u64 sequence   odd while a write is in progress (a seqlock)
    16      body           pid, incarnation (16 bytes), job (32 bytes UTF-8),
                           vertex, attempt, started_at, done, queued, held,
                           updated_at, created_at, exit status, flags
    16+B    u32 CRC-32 of the body

The reader copies the block with one ``pread``; the copy is whole when its sequence is
even (no write was in progress when the copy began) and the CRC matches the body (no
write overwrote part of it while it was copied). Otherwise it copies again. A writer
killed halfway leaves an odd sequence: every read then fails, and the heartbeat keeps
the last whole copy it had. Times are wall-clock (``time.time()``): the two processes
compare them.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import tempfile
import threading
import time
import zlib
from typing import Any

MAGIC = b"SPTS"
VERSION = 1
JOB_BYTES = 32
INCARNATION_BYTES = 16
READ_ATTEMPTS = 50  # a write takes microseconds; 50 misses in a row means a dead writer

_HEADER = struct.Struct("<4sHH")
_SEQUENCE = struct.Struct("<Q")
# pid, incarnation, job, vertex, attempt, started_at, done, queued, held,
# updated_at, created_at, exit status, flags
_BODY = struct.Struct("<q16s32sqqdQQQddiB3x")
_CRC = struct.Struct("<I")
SEQUENCE_AT = _HEADER.size
BODY_AT = SEQUENCE_AT + _SEQUENCE.size
CRC_AT = BODY_AT + _BODY.size
SIZE = CRC_AT + _CRC.size

_RUNNING, _EXITED = 1, 2  # flag bits


def status_path(pid: int | None = None) -> str:
    """Where the server with ``pid`` (default: this process) keeps its block: the temp
    directory, not /dev/shm, whose ``spt*`` entries the test suite counts as leaks."""
    return os.path.join(tempfile.gettempdir(), f"serpytor-status-{pid or os.getpid()}.bin")


class StatusBlock:
    """The writer's side. Thread-safe: a server writes from its executor thread
    (``running``/``idle``) and its I/O thread (``counts``/``touch``)."""

    def __init__(self, path: str, fd: int, view: mmap.mmap, pid: int, incarnation: str) -> None:
        self.path = path
        self._fd = fd
        self._view = view
        self._lock = threading.Lock()
        self._sequence = 0
        self._pid = pid
        self._incarnation = _fixed(incarnation, INCARNATION_BYTES)
        self._job, self._job_text = b"", ""
        self._vertex = self._attempt = 0
        self._started_at = 0.0
        self._done = self._queued = self._held = 0
        self._created_at = time.time()
        self._exit = 0
        self._flags = 0

    @classmethod
    def create(cls, path: str | None = None, *, incarnation: str | None = None,
               pid: int | None = None) -> StatusBlock:
        """Create (or replace) the block at ``path`` (default :func:`status_path`).
        The file is written whole under a temporary name and renamed into place, so a
        reader never sees a short one."""
        pid = pid or os.getpid()
        path = path or status_path(pid)
        fd, temporary = tempfile.mkstemp(prefix=".serpytor-status-",
                                         dir=os.path.dirname(path) or ".")
        try:
            os.write(fd, bytes(SIZE))
            view = mmap.mmap(fd, SIZE)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        block = cls(path, fd, view, pid, incarnation or secrets.token_hex(8))
        _HEADER.pack_into(view, 0, MAGIC, VERSION, 0)
        block._write()
        os.replace(temporary, path)
        return block

    # ---- what the server reports -----------------------------------------------------
    def running(self, job: str, vertex: int, attempt: int) -> None:
        """A vertex starts (job ids longer than 32 UTF-8 bytes are cut)."""
        with self._lock:
            if job != self._job_text:  # one job runs many vertices: encode its id once
                self._job_text, self._job = job, _fixed(job, JOB_BYTES)
            self._vertex, self._attempt = vertex, attempt
            self._started_at = time.time()
            self._flags |= _RUNNING
            self._write()

    def idle(self) -> None:
        """The vertex ended; nothing runs."""
        with self._lock:
            self._flags &= ~_RUNNING
            self._write()

    def counts(self, *, done: int | None = None, queued: int | None = None,
               held: int | None = None) -> None:
        """Update the counters given (tasks done, tasks queued, outputs held)."""
        with self._lock:
            self._done = self._done if done is None else done
            self._queued = self._queued if queued is None else queued
            self._held = self._held if held is None else held
            self._write()

    def touch(self) -> None:
        """Nothing changed, but the server is alive: refresh ``updated_at`` (a block
        that stops being touched is how a hung server shows)."""
        with self._lock:
            self._write()

    def exited(self, status: int) -> None:
        """The server is about to exit with ``status``; its heartbeat reports it."""
        with self._lock:
            self._exit = status
            self._flags |= _EXITED
            self._write()

    def close(self) -> None:
        """Unmap and remove the file (unless a newer block already replaced it)."""
        if self._view.closed:
            return
        self._view.close()
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)

    def __enter__(self) -> StatusBlock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> None:
        body = _BODY.pack(self._pid, self._incarnation, self._job, self._vertex,
                          self._attempt, self._started_at, self._done, self._queued,
                          self._held, time.time(), self._created_at, self._exit, self._flags)
        self._sequence += 1  # odd: a reader who sees it retries
        _SEQUENCE.pack_into(self._view, SEQUENCE_AT, self._sequence)
        self._view[BODY_AT:SIZE] = body + _CRC.pack(zlib.crc32(body))
        self._sequence += 1
        _SEQUENCE.pack_into(self._view, SEQUENCE_AT, self._sequence)

    # ---- the reader's side ----------------------------------------------------------
    @staticmethod
    def read(path: str) -> dict[str, Any] | None:
        """The block at ``path`` as a dict, or None when it is missing, not a status
        block, or torn on every attempt. Opened afresh each time: a server that
        restarted in place replaced the file."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return _read_whole(fd)
        finally:
            os.close(fd)


def _read_whole(fd: int) -> dict[str, Any] | None:
    for attempt in range(READ_ATTEMPTS):
        copy = os.pread(fd, SIZE, 0)  # one copy: a second read could meet a newer write
        if len(copy) < SIZE or _HEADER.unpack_from(copy)[:2] != (MAGIC, VERSION):
            return None
        sequence = _SEQUENCE.unpack_from(copy, SEQUENCE_AT)[0]
        body = copy[BODY_AT:CRC_AT]
        if sequence % 2 == 0 and _CRC.unpack_from(copy, CRC_AT)[0] == zlib.crc32(body):
            return _decode(body, sequence)
        if attempt:
            os.sched_yield()  # let the writer finish
    return None


def _decode(body: bytes, sequence: int) -> dict[str, Any]:
    (pid, incarnation, job, vertex, attempt, started_at, done, queued, held, updated_at,
     created_at, exit_status, flags) = _BODY.unpack(body)
    running = None
    if flags & _RUNNING:
        running = {"job": _text(job), "vertex": vertex, "attempt": attempt,
                   "started_at": started_at}
    return {"pid": pid, "incarnation": _text(incarnation), "running": running,
            "done": done, "queued": queued, "held": held, "updated_at": updated_at,
            "created_at": created_at, "exit": exit_status if flags & _EXITED else None,
            "sequence": sequence}


def _fixed(text: str, size: int) -> bytes:
    """UTF-8, cut to ``size`` bytes without splitting a character."""
    return text.encode()[:size].decode("utf-8", "ignore").encode()


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


__all__ = ["SIZE", "StatusBlock", "status_path"]
