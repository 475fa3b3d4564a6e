"""POSIX shared-memory segments: naming, header, reference counts, pool, sweep.

Segment layout (one file in ``/dev/shm``)::

    page 0       header (mapped read-write by writer and readers)
      0  magic 8s "SPTSEG\\0\\1"     40 readers u64 (expected)     80 key 16s
      8  state u32                  48 opened u64 (attachments)    96 next name (u8 len + 63)
     12  flags u32                  56 active u64 (not released)
     16  capacity u64 (data bytes)  64 owner pid u64
     24  committed u64              72 generation u64 (reuses)
     32  items u64
    page 1..     data: frames back to back (see framing.py); readers map it read-only

States: WRITING -> (LINKED | CLOSED) -> FREE -> WRITING ... (reused by the owner's pool),
or -> RETIRED (unlinked) or ABANDONED (unlinked by the writer). LINKED means "full,
continue in the segment named in ``next``" -- a stream is a chain of segments.

Lifetime rules (every change under ``flock`` on the segment, so two processes never
race; the kernel drops the lock of a killed process):

* a reader attaches (``opened``+1, ``active``+1) and releases (``active``-1);
* when the stream is sealed, every expected reader has attached and none is still
  active, the segment is *settled*: back to the owner's pool (FREE) if the owner is
  alive and no reader left a view on it (the PINNED flag), else unlinked (RETIRED);
* a reader that releases while numpy views on the segment are still alive sets
  PINNED: the memory stays mapped for those views and is never reused;
* an abandoned stream is unlinked at once; a killed process's segments are removed by
  :func:`sweep_segments` (by job), which the gateway runs when a job ends.

Names are ``spt-<job token>-<owner pid hex>-<random hex>``: the job token is the job id
when it is short and plain, else a prefix of it and a hash, and never contains ``-``,
so sweeping job ``a`` never touches job ``a-b``.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import mmap
import os
import re
import secrets
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

try:  # the module behind multiprocessing.shared_memory, without its resource tracker
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX builds
    _posixshmem = None

SHM_DIR = Path("/dev/shm")
SEGMENT_PREFIX = "spt"
HEADER_SIZE = max(mmap.ALLOCATIONGRANULARITY, 4096)  # data mapping offset must be page aligned
SEGMENT_MAGIC = b"SPTSEG\x00\x01"
MIN_CAPACITY = 64 * 1024
DEFAULT_POOL_BYTES = 2 << 30  # free segments a process keeps mapped for reuse

WRITING, LINKED, CLOSED, ABANDONED, FREE, RETIRED = 1, 2, 3, 4, 5, 6
STATE_NAMES = {WRITING: "writing", LINKED: "linked", CLOSED: "closed",
               ABANDONED: "abandoned", FREE: "free", RETIRED: "retired"}
POOLED, PINNED = 1, 2

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_OFF = {"state": 8, "flags": 12, "capacity": 16, "committed": 24, "items": 32,
        "readers": 40, "opened": 48, "active": 56, "owner": 64, "generation": 72}
_KEY_AT, _NEXT_AT, _NEXT_MAX = 80, 96, 63


class SegmentError(Exception):
    """A segment is missing, foreign or damaged; channels re-raise it with context."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "missing", "foreign", "corrupt", "space"
        super().__init__(message)


def job_token(job: str) -> str:
    """The job's part of segment names: plain, short and free of ``-``."""
    if re.fullmatch(r"[A-Za-z0-9_]{1,24}", job):
        return job
    plain = re.sub(r"[^A-Za-z0-9_]", "_", job)[:12]
    return f"{plain}_{hashlib.blake2b(job.encode(), digest_size=4).hexdigest()}"


def segment_prefix(job: str) -> str:
    return f"{SEGMENT_PREFIX}-{job_token(job)}-"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1][1:2] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _shm_open(name: str, flags: int) -> int:
    if _posixshmem is not None:
        return _posixshmem.shm_open("/" + name, flags, 0o600)
    return os.open(SHM_DIR / name, flags, 0o600)


def _shm_unlink(name: str) -> None:
    try:
        if _posixshmem is not None:
            _posixshmem.shm_unlink("/" + name)
        else:
            os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass


class Segment:
    """One mapped segment: the header page read-write, the data area read-write for
    the owner and read-only for readers (so a consumer cannot scribble on what other
    readers see)."""

    def __init__(self, name: str, fd: int, writable: bool) -> None:
        self.name = name
        self.fd = fd
        self.header = mmap.mmap(fd, HEADER_SIZE)
        self.data: mmap.mmap | None = None
        self.view: memoryview | None = None
        self.writable = writable
        self.address = 0

    @classmethod
    def create(cls, job: str, capacity: int) -> "Segment":
        """A fresh segment with ``capacity`` data bytes reserved (ENOSPC is reported
        here, never as a SIGBUS on a later write)."""
        for _ in range(8):
            name = f"{segment_prefix(job)}{os.getpid():x}-{secrets.token_hex(4)}"
            try:
                fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 8 random collisions
            raise SegmentError("space", "could not find a free segment name")
        try:
            os.posix_fallocate(fd, 0, HEADER_SIZE + capacity)
        except OSError as exc:
            os.close(fd)
            _shm_unlink(name)
            raise SegmentError("space", f"cannot reserve {capacity} bytes in {SHM_DIR}: "
                                        f"{exc.strerror}") from None
        segment = cls(name, fd, writable=True)
        segment.header[:8] = SEGMENT_MAGIC
        segment.set("capacity", capacity)
        segment.map_data(capacity, populate=True)
        return segment

    @classmethod
    def attach(cls, name: str) -> "Segment":
        """Open an existing segment by name and check its header."""
        if not re.fullmatch(rf"{SEGMENT_PREFIX}-[A-Za-z0-9_]+-[0-9a-f]+-[0-9a-f]+", name):
            raise SegmentError("missing", f"{name!r} is not a serpytor segment name")
        try:
            fd = _shm_open(name, os.O_RDWR)
        except FileNotFoundError:
            raise SegmentError("missing", "no such segment in /dev/shm") from None
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            os.close(fd)
            raise SegmentError("corrupt", f"segment of {size} bytes has no header")
        segment = cls(name, fd, writable=False)
        if segment.header[:8] != SEGMENT_MAGIC:
            segment.close()
            raise SegmentError("corrupt", "not a serpytor segment (bad magic)")
        if segment.get("capacity") + HEADER_SIZE > size:
            segment.close()
            raise SegmentError("corrupt", f"header claims {segment.get('capacity')} data "
                                          f"bytes but the segment holds {size - HEADER_SIZE}")
        return segment

    def map_data(self, capacity: int, populate: bool = False) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        self.data = mmap.mmap(self.fd, capacity, flags=flags, prot=prot, offset=HEADER_SIZE)
        self.view = memoryview(self.data)
        # the mapping's address, so tests and benchmarks can prove consumers get views
        self.address = np.frombuffer(self.view, np.uint8).__array_interface__["data"][0]

    # header fields -------------------------------------------------------------
    def get(self, field: str) -> int:
        at = _OFF[field]
        return (_U32 if at in (8, 12) else _U64).unpack_from(self.header, at)[0]

    def set(self, field: str, value: int) -> None:
        at = _OFF[field]
        (_U32 if at in (8, 12) else _U64).pack_into(self.header, at, value)

    @property
    def state(self) -> int:
        return self.get("state")

    @property
    def key(self) -> bytes:
        return bytes(self.header[_KEY_AT:_KEY_AT + 16])

    @property
    def next_name(self) -> str:
        length = self.header[_NEXT_AT]
        return bytes(self.header[_NEXT_AT + 1:_NEXT_AT + 1 + length]).decode("ascii", "replace")

    def set_next(self, name: str) -> None:
        raw = name.encode("ascii")
        if len(raw) > _NEXT_MAX:
            raise ValueError(f"segment name {name!r} too long")
        self.header[_NEXT_AT + 1:_NEXT_AT + 1 + len(raw)] = raw
        self.header[_NEXT_AT] = len(raw)

    @contextmanager
    def locked(self) -> Iterator["Segment"]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield self
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    # lifetime ------------------------------------------------------------------
    def begin(self, key: bytes, readers: int) -> None:
        """Start a new stream in this (fresh or reused) segment."""
        with self.locked():
            self.set("committed", 0)
            self.set("items", 0)
            self.set("readers", readers)
            self.set("opened", 0)
            self.set("active", 0)
            self.set("owner", os.getpid())
            self.set("generation", self.get("generation") + 1)
            self.set("flags", POOLED)
            self.header[_KEY_AT:_KEY_AT + 16] = key
            self.header[_NEXT_AT] = 0
            self.set("state", WRITING)

    def settle(self) -> None:
        """Under the lock: free or retire a sealed segment nobody will read again."""
        if self.state not in (LINKED, CLOSED):
            return
        if self.get("opened") < self.get("readers") or self.get("active") > 0:
            return
        owner = self.get("owner")
        reusable = (self.get("flags") & (POOLED | PINNED)) == POOLED and \
            (owner == os.getpid() or pid_alive(owner))
        if reusable:
            self.set("state", FREE)
        else:
            _shm_unlink(self.name)
            self.set("state", RETIRED)

    def unlink(self) -> None:
        _shm_unlink(self.name)

    def close_data(self) -> bool:
        """Unmap the data area; False when views on it are still alive (then the
        mapping lives on until they are collected)."""
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.data is None:
            return True
        data, self.data = self.data, None
        try:
            data.close()
            return True
        except BufferError:
            return False

    def close(self) -> bool:
        """Close mappings and descriptor; returns close_data()'s verdict."""
        clean = self.close_data()
        self.header.close()
        os.close(self.fd)
        return clean


def round_capacity(nbytes: int) -> int:
    """Fresh segments come in 64 KiB steps below 1 MiB and 1 MiB steps above, so a
    pooled segment fits the next item of about the same size."""
    step = 1 << 20 if nbytes >= 1 << 20 else 64 * 1024
    return max(MIN_CAPACITY, -(-nbytes // step) * step)


class SegmentPool:
    """The segments one process created for one job: free ones stay mapped for reuse
    (fresh tmpfs pages cost ~10x more than reused ones), lent ones wait for their
    readers to release them, busy ones are being written."""

    def __init__(self, job: str, max_free_bytes: int = DEFAULT_POOL_BYTES) -> None:
        self.job = job
        self.max_free_bytes = max_free_bytes
        self._free: list[Segment] = []
        self._lent: list[Segment] = []
        self._busy: list[Segment] = []
        self._lock = threading.Lock()

    def acquire(self, capacity: int, key: bytes, readers: int) -> Segment:
        """A segment of at least ``capacity`` data bytes, reused when one fits."""
        with self._lock:
            self._collect()
            segment = self._best_fit(capacity)
            if segment is None:
                segment = Segment.create(self.job, round_capacity(capacity))
            segment.begin(key, readers)
            self._busy.append(segment)
            return segment

    def lend(self, segment: Segment) -> None:
        """The writer sealed ``segment``; it returns to the pool once settled FREE."""
        with self._lock:
            self._busy.remove(segment)
            self._lent.append(segment)

    def discard(self, segment: Segment) -> None:
        """An abandoned segment: unlink and unmap it."""
        with self._lock:
            if segment in self._busy:
                self._busy.remove(segment)
        segment.unlink()
        segment.close()

    def free_bytes(self) -> int:
        with self._lock:
            self._collect()
            return sum(s.get("capacity") for s in self._free)

    def segment_names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._free + self._lent + self._busy]

    def close(self) -> None:
        """Unlink free segments, abandon busy ones, and hand lent ones to their
        readers (the last reader unlinks them, since this process is going away)."""
        with self._lock:
            for segment in self._busy:
                with segment.locked():
                    segment.set("state", ABANDONED)
                segment.unlink()
            for segment in self._lent:
                with segment.locked():
                    segment.set("flags", segment.get("flags") & ~POOLED)
                    if segment.state == FREE:
                        segment.unlink()
                        segment.set("state", RETIRED)
            for segment in self._free:
                segment.unlink()
            for segment in self._busy + self._lent + self._free:
                segment.close()
            self._busy, self._lent, self._free = [], [], []

    def forget(self) -> None:
        """Drop every segment without touching /dev/shm (after fork, after a sweep)."""
        with self._lock:
            for segment in self._busy + self._lent + self._free:
                try:
                    segment.close()
                except (OSError, ValueError):
                    pass
            self._busy, self._lent, self._free = [], [], []

    def _collect(self) -> None:
        still_lent = []
        for segment in self._lent:
            state = segment.state  # FREE and RETIRED are final for readers: no lock needed
            if state == FREE:
                self._free.append(segment)
            elif state in (RETIRED, ABANDONED):
                segment.close()
            else:
                still_lent.append(segment)
        self._lent = still_lent
        self._trim()

    def _trim(self) -> None:
        total = sum(s.get("capacity") for s in self._free)
        while self._free and total > self.max_free_bytes:
            oldest = self._free.pop(0)
            total -= oldest.get("capacity")
            oldest.unlink()
            oldest.close()

    def _best_fit(self, capacity: int) -> Segment | None:
        # a segment more than 4x (and 4 MiB) too big would pin memory for a small item
        limit = max(4 * capacity, capacity + (4 << 20))
        fits = [s for s in self._free if capacity <= s.get("capacity") <= limit]
        if not fits:
            return None
        best = min(fits, key=lambda s: s.get("capacity"))
        self._free.remove(best)
        return best


_pools: dict[str, SegmentPool] = {}
_pools_lock = threading.Lock()


def pool_for(job: str) -> SegmentPool:
    """This process's pool for ``job``."""
    with _pools_lock:
        pool = _pools.get(job)
        if pool is None:
            pool = _pools[job] = SegmentPool(job)
        return pool


def close_pools() -> None:
    """Close every pool of this process (also run at exit). Call it before
    ``os._exit`` in a process that wrote shm channels."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def sweep_segments(job: str) -> list[str]:
    """Unlink every segment of ``job`` in /dev/shm, whoever made it; returns their
    names. For the end of a job, and after SIGKILLed producers or consumers."""
    prefix = segment_prefix(job)
    with _pools_lock:
        pool = _pools.pop(job, None)
    if pool is not None:
        pool.forget()
    removed = []
    if SHM_DIR.is_dir():
        for entry in sorted(os.listdir(SHM_DIR)):
            if entry.startswith(prefix):
                _shm_unlink(entry)
                removed.append(entry)
    return removed


def list_segments(job: str) -> list[str]:
    """Names of ``job``'s segments now in /dev/shm."""
    prefix = segment_prefix(job)
    return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(prefix)) if SHM_DIR.is_dir() else []


def _forget_pools_in_child() -> None:
    # a forked child must not unlink or reuse its parent's segments
    for pool in _pools.values():
        pool._busy, pool._lent, pool._free = [], [], []
    _pools.clear()


atexit.register(close_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)
