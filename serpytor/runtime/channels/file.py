"""``file`` channels: the durable default, and the store durable execution reuses.

One output is one file named by vertex, port and execution version
(``<vertex>.p<port>.v<version>.chan``), so a re-execution writes a new file and never
overwrites one another consumer may still be reading. The file is written under a
hidden temporary name (``.<name>.tmp-<pid>-<hex>``) and linked into place only when
complete (a link, not a rename, so an existing output is never replaced); with
``durable=True`` the data, the metadata and the directory are fsync-ed.

Layout: a file header (magic ``SPTCHAN1``, the channel's identity as crc-checked JSON,
padded to 64 bytes), the item frames (see framing.py; buffers 64-byte aligned in the
file too), and an end frame with the item and byte counts, so truncation anywhere is
detected. Beside it, ``<name>.json`` records sizes and the content digest
(blake2b-256 over everything after the file header, so identical outputs of two
executions have the same digest).

Zero-copy rules: the writer hands buffers of 64 KiB and more straight to ``write(2)``
(smaller pieces are staged and written together); the reader ``readinto``-s each
item's buffer area into one freshly allocated 64-byte-aligned buffer, and arrays come
back as views on it -- one copy from the page cache, like ``np.load``, no second one.

The digest costs ~0.5 s per GiB here, so it is computed while writing only when
asked (``digest=True``, the default for durable writes) and otherwise on the first
:func:`output_digest` call, which caches it in the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...compiler.kinds import ChannelKind
from .base import DEFAULT_TIMEOUT, ChannelReader, ChannelWriter, Deadline, poll_interval
from .descriptor import ChannelDescriptor
from .errors import (ChannelBrokenError, ChannelCorruptError, ChannelError,
                     ChannelExistsError, ChannelNotFoundError, EndOfChannel)
from .framing import (FLAG_END, PRELUDE_SIZE, FrameError, align, aligned_buffer,
                      decode_end, decode_head, decode_prelude, end_frame, layout_frame)
from .segments import pid_alive

FILE_MAGIC = b"SPTCHAN1"
_FILE_HEAD = struct.Struct("<8sII")  # magic, identity JSON length, crc32 of the JSON
SUFFIX, META_SUFFIX = ".chan", ".json"
DIGEST_NAME = "blake2b-256"
DIRECT_WRITE = 64 * 1024   # pieces this large go straight to write(2); smaller are staged
_STAGE_LIMIT = 1 << 20
_HASH_BLOCK = 8 << 20
_EXISTS = "this output already exists; a re-execution must use a new execution version"
_TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def _component(text: str) -> str:
    """A vertex name as a file-name component; exotic names get a hash suffix."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}", text):
        return text
    plain = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:60].lstrip(".")
    return f"{plain}~{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def output_path(directory: str | os.PathLike[str], vertex: str, port: int, version: int) -> Path:
    """Where the output (vertex, port, version) lives in ``directory``."""
    return Path(directory) / f"{_component(vertex)}.p{port}.v{version}{SUFFIX}"


def metadata_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def locate_output(directory: str | os.PathLike[str], vertex: str, port: int,
                  version: int) -> Path | None:
    """The path of a complete output, or None when it was never (fully) written."""
    path = output_path(directory, vertex, port, version)
    return path if path.is_file() else None


def output_descriptor(path: str | os.PathLike[str], job: str | None = None) -> ChannelDescriptor:
    """Rebuild the descriptor of an existing output file from its own header."""
    path = Path(path)
    probe = ChannelDescriptor(ChannelKind.FILE, str(path), vertex="?")
    try:
        with open(path, "rb") as f:
            identity = _read_identity(f, probe)
    except FileNotFoundError:
        raise ChannelNotFoundError("no such output file", probe) from None
    meta = _read_meta(path) or {}
    return ChannelDescriptor(
        ChannelKind.FILE, str(path), vertex=identity["vertex"], port=identity["port"],
        version=identity["version"], job=identity["job"] if job is None else job,
        serializer=identity["serializer"], size=int(meta.get("bytes", -1)),
        items=int(meta.get("items", -1)), requested=ChannelKind.FILE)


def open_output(directory: str | os.PathLike[str], vertex: str, port: int, version: int,
                *, timeout: float = 0.0) -> "FileReader":
    """Open a reader on an existing output (durable execution reusing a result)."""
    path = output_path(directory, vertex, port, version)
    if timeout > 0:
        _wait_for(path, Deadline(timeout), ChannelDescriptor(
            ChannelKind.FILE, str(path), vertex=vertex, port=port, version=version))
    return FileReader(output_descriptor(path), timeout=timeout)


def output_digest(path: str | os.PathLike[str]) -> str:
    """``blake2b-256:<hex>`` of an output's items; read from its metadata when it is
    there and current, else computed once and cached there."""
    path = Path(path)
    stat = path.stat()
    meta = _read_meta(path) or {}
    if meta.get("digest") and meta.get("file_size") == stat.st_size \
            and meta.get("mtime_ns") == stat.st_mtime_ns:
        return str(meta["digest"])
    digest = _hash_file(path)
    meta.update(digest=digest, file_size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    _write_meta(path, meta, durable=False)
    return digest


def sweep_partial_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files left by producers that died while writing."""
    removed = []
    for entry in Path(directory).iterdir():
        match = _TEMP.match(entry.name)
        if match and not pid_alive(int(match["pid"])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _identity(descriptor: ChannelDescriptor) -> dict[str, Any]:
    d = descriptor
    return {"job": d.job, "vertex": d.vertex, "port": d.port, "version": d.version,
            "serializer": d.serializer}


def _file_header(descriptor: ChannelDescriptor) -> bytes:
    text = json.dumps(_identity(descriptor), sort_keys=True).encode()
    head = _FILE_HEAD.pack(FILE_MAGIC, len(text), zlib.crc32(text)) + text
    return head + b"\0" * (align(len(head)) - len(head))


def _read_identity(f: Any, descriptor: ChannelDescriptor) -> dict[str, Any]:
    raw = f.read(_FILE_HEAD.size)
    if len(raw) < _FILE_HEAD.size or raw[:8] != FILE_MAGIC:
        raise ChannelCorruptError("not a serpytor channel file (bad magic)", descriptor)
    _, length, crc = _FILE_HEAD.unpack(raw)
    text = f.read(length) if length < 1 << 20 else b""
    if len(text) != length or zlib.crc32(text) != crc:
        raise ChannelCorruptError("damaged file header (identity checksum mismatch)", descriptor)
    f.seek(align(_FILE_HEAD.size + length))
    identity = json.loads(text)
    if not isinstance(identity, dict) or set(identity) != {"job", "vertex", "port",
                                                           "version", "serializer"}:
        raise ChannelCorruptError("file header lacks the channel identity", descriptor)
    return identity


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(metadata_path(path).read_text())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def _write_meta(path: Path, meta: dict[str, Any], durable: bool) -> None:
    target = metadata_path(path)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with open(temp, "w") as f:
        json.dump(meta, f, sort_keys=True)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(temp, target)  # metadata may be refreshed (digest), data never is


def content_digest(path: str | os.PathLike[str]) -> str:
    """``blake2b-256:<hex>`` of an output's items, always read from the bytes (no cache):
    what the journal checks before it reuses a stored output."""
    return _hash_file(Path(path))


def _hash_file(path: Path) -> str:
    hasher = hashlib.blake2b(digest_size=32)
    block = bytearray(_HASH_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        _read_identity(f, ChannelDescriptor(ChannelKind.FILE, str(path), vertex="?"))
        while n := f.readinto(view):
            hasher.update(view[:n])
    return f"{DIGEST_NAME}:{hasher.hexdigest()}"


def _wait_for(path: Path, deadline: Deadline, descriptor: ChannelDescriptor) -> None:
    """Wait for a producer to link ``path`` into place; fail fast if it died."""
    attempt = 0
    while not path.exists():
        dead = _dead_writer(path)
        if dead:
            raise ChannelBrokenError(f"the producer (pid {dead}) died while writing this "
                                     f"output", descriptor)
        if deadline.expired():
            raise ChannelNotFoundError(f"no output file after {deadline.seconds:g} s",
                                       descriptor)
        time.sleep(poll_interval(attempt) * 4)
        attempt += 1


def _dead_writer(path: Path) -> int:
    """The pid of a dead producer whose temporary file for ``path`` remains, or 0."""
    try:
        entries = os.listdir(path.parent)
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _TEMP.match(entry)
        if match and match["final"] == path.name and not pid_alive(int(match["pid"])):
            return int(match["pid"])
    return 0


class _Sink:
    """Writes to a file descriptor: small pieces staged, large ones written directly;
    optionally hashing everything after the file header."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stage = bytearray()
        self.hasher: Any = None

    def put(self, data: bytes | memoryview) -> None:
        if len(data) >= DIRECT_WRITE:
            self.flush()
            self._write(memoryview(data))
        else:
            self.stage += data
            if len(self.stage) >= _STAGE_LIMIT:
                self.flush()

    def flush(self) -> None:
        if self.stage:
            self._write(memoryview(self.stage))
            self.stage = bytearray()

    def _write(self, view: memoryview) -> None:
        if self.hasher is not None:
            self.hasher.update(view)
        while view.nbytes:
            view = view[os.write(self.fd, view):]


class _PartialFile:
    """The temporary file; unlinked if the writer is abandoned or collected open."""

    def __init__(self, temp: Path, fd: int) -> None:
        self.temp, self.fd = temp, fd
        self.done = False

    def discard(self) -> None:
        if not self.done:
            self.done = True
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.temp.unlink(missing_ok=True)


class FileWriter(ChannelWriter):
    """Writes one output file atomically; ``durable=True`` fsyncs it."""

    def __init__(self, descriptor: ChannelDescriptor, *, directory: str | os.PathLike[str],
                 durable: bool = False, digest: bool | None = None,
                 metadata: bool = True) -> None:
        path = output_path(directory, descriptor.vertex, descriptor.port, descriptor.version)
        super().__init__(replace(descriptor, location=str(path)))
        self._path = path
        self._durable = durable
        self._metadata = metadata  # the journal keeps sizes and digests itself
        self.digest: str | None = None  # blake2b-256 of the items, after close when hashed
        if path.exists():
            raise self._error(ChannelExistsError, _EXISTS)
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise self._error(ChannelError, f"cannot create {temp}: {exc.strerror}") from None
        self._partial = _PartialFile(temp, fd)
        self._on_collect(self._partial.discard)
        self._sink = _Sink(fd)
        self._sink.put(_file_header(self._descriptor))
        self._sink.flush()
        if durable if digest is None else digest:
            self._sink.hasher = hashlib.blake2b(digest_size=32)

    def _write_frame(self, header: bytes, buffers: list[memoryview]) -> int:
        layout = layout_frame(header, [b.nbytes for b in buffers])
        sink, position = self._sink, len(layout.head)
        sink.put(layout.head)
        for offset, buffer in zip(layout.offsets, buffers):
            sink.put(b"\0" * (offset - position))
            sink.put(buffer)
            position = offset + buffer.nbytes
        sink.put(b"\0" * (layout.frame_len - position))
        return layout.frame_len

    def _commit(self) -> None:
        sink = self._sink
        sink.put(end_frame(self._stats.items, self._stats.bytes))
        sink.flush()
        if self._durable:
            os.fsync(sink.fd)
        os.close(sink.fd)
        self._link()
        self._partial.done = True
        digest = f"{DIGEST_NAME}:{sink.hasher.hexdigest()}" if sink.hasher else None
        self.digest = digest
        if not self._metadata:
            if self._durable:
                _fsync_directory(self._path.parent)
            return
        stat = self._path.stat()
        meta = dict(_identity(self._descriptor), items=self._stats.items,
                    bytes=self._stats.bytes, file_size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns, digest=digest, durable=self._durable)
        _write_meta(self._path, meta, self._durable)
        if self._durable:
            _fsync_directory(self._path.parent)

    def _link(self) -> None:
        temp = self._partial.temp
        try:
            os.link(temp, self._path)  # fails instead of replacing an existing output
        except FileExistsError:
            raise self._error(ChannelExistsError, _EXISTS) from None
        except OSError:  # file systems without hard links
            if self._path.exists():
                raise self._error(ChannelExistsError, _EXISTS) from None
            os.rename(temp, self._path)
            return
        temp.unlink()

    def _abandon(self, reason: str) -> None:
        self._partial.discard()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileReader(ChannelReader):
    """Reads an output file; waits up to ``timeout`` for it to appear."""

    def __init__(self, descriptor: ChannelDescriptor, timeout: float = DEFAULT_TIMEOUT,
                 *, verify: bool = False) -> None:
        super().__init__(descriptor, timeout)
        path = Path(descriptor.location)
        _wait_for(path, Deadline(timeout), descriptor)
        self._file = open(path, "rb", buffering=0)
        self._on_collect(self._file.close)
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._check_identity(_read_identity(self._file, descriptor))
            if verify:
                self._verify(path)
        except BaseException:
            self._file.close()
            raise
        self._offset = self._file.tell()
        self._frame_bytes = 0

    def _check_identity(self, identity: dict[str, Any]) -> None:
        expected = _identity(self.descriptor)
        if identity != expected:
            raise self._error(ChannelCorruptError,
                              f"the file holds another channel: {identity}, expected {expected}")

    def _verify(self, path: Path) -> None:
        meta = _read_meta(path) or {}
        if meta.get("digest") and _hash_file(path) != meta["digest"]:
            raise self._error(ChannelCorruptError, "content digest differs from the metadata")

    def _read_exact(self, nbytes: int, into: memoryview | None = None) -> memoryview:
        target = into if into is not None else memoryview(bytearray(nbytes))
        filled = 0
        while filled < nbytes:
            got = self._file.readinto(target[filled:])
            if not got:
                raise self._error(ChannelCorruptError,
                                  f"truncated at byte {self._offset + filled}: "
                                  f"{nbytes - filled} of {nbytes} bytes missing")
            filled += got
        self._offset += nbytes
        return target

    def _read_frame(self, deadline: Deadline) -> tuple[memoryview, list[memoryview], int]:
        if self._offset + PRELUDE_SIZE > self._size:
            raise self._error(ChannelCorruptError, f"file ends at byte {self._size} without "
                                                   f"its end-of-stream frame (truncated)")
        start = self._offset
        try:
            raw_prelude = self._read_exact(PRELUDE_SIZE)
            prelude = decode_prelude(raw_prelude)
            if start + prelude.frame_len > self._size:
                raise FrameError(f"frame of {prelude.frame_len} bytes runs past the end of "
                                 f"the {self._size}-byte file (truncated)")
            head = memoryview(bytearray(prelude.head_len))
            head[:PRELUDE_SIZE] = raw_prelude
            self._read_exact(prelude.head_len - PRELUDE_SIZE, head[PRELUDE_SIZE:])
            header, entries = decode_head(head, prelude)
            if prelude.flags & FLAG_END:
                self._end(decode_end(header), start + prelude.frame_len)
        except FrameError as exc:
            raise self._error(ChannelCorruptError, f"at byte {start}: {exc}") from None
        self._read_exact(prelude.area_start - prelude.head_len)  # padding
        area = aligned_buffer(prelude.area_len)
        self._read_exact(prelude.area_len, area)
        base = prelude.area_start
        buffers = [area[o - base:o - base + n] for o, n in entries]
        self._frame_bytes += prelude.frame_len
        return header, buffers, prelude.frame_len

    def _end(self, record: tuple[int, int], end: int) -> None:
        items, nbytes = record
        if (items, nbytes) != (self._stats.items, self._frame_bytes):
            raise self._error(ChannelCorruptError,
                              f"end frame records {items} items ({nbytes} bytes), "
                              f"the file holds {self._stats.items} ({self._frame_bytes})")
        if end != self._size:
            raise self._error(ChannelCorruptError,
                              f"{self._size - end} bytes after the end-of-stream frame")
        raise EndOfChannel(self.descriptor)

    def _release(self) -> None:
        self._file.close()
