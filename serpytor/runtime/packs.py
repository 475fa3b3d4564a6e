"""Packs: small stored outputs kept together in one SQLite file per writing process.

Creating a file costs about as much as running a trivial vertex (a few hundred
microseconds on many file systems), so a journal that stored every output as a file of
its own would make durable execution several times slower than running without it.
Outputs below ``PACK_LIMIT`` bytes therefore go into a *pack*: an SQLite database
(WAL) that only the process that created it writes, so writers never wait for each
other, while any process may read it. Larger outputs stay ``file`` channels.

Schema::

    outputs(id INTEGER PRIMARY KEY, key TEXT, data BLOB)   -- data: the item's frame

``data`` is the item as a channel frame (:mod:`serpytor.runtime.channels.framing`:
crc-checked head, 64-byte aligned buffers), so a damaged row is refused like a damaged
file. A stored output in a pack is named ``outputs/packs/NAME.sqlite3#ID``.

Rows are written inside a transaction that :meth:`OutputPack.commit` ends; a server
commits before it reports the vertices done, and an inline run before its journal
records them, so a journal record never points to a row that is not there. With
``durable`` the pack is synchronous (fsync on commit).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .channels.framing import FrameError, decode_frame_head, decode_prelude, layout_frame
from .channels.serialize import byte_view

PACK_LIMIT = 64 * 1024
PACK_SCHEMA = "CREATE TABLE IF NOT EXISTS outputs (id INTEGER PRIMARY KEY, key TEXT NOT NULL, " \
              "data BLOB NOT NULL)"
SEPARATOR = "#"


class PackError(Exception):
    """A packed output is missing or damaged; the store reports it as an OutputError."""


def frame_bytes(header: bytes, buffers: list[Any]) -> bytes:
    """One serialized item as a single frame (head, padding, aligned buffers)."""
    views = [byte_view(b) for b in buffers]
    layout = layout_frame(bytes(header), [v.nbytes for v in views])
    data = bytearray(layout.frame_len)
    data[:len(layout.head)] = layout.head
    for offset, view in zip(layout.offsets, views):
        data[offset:offset + view.nbytes] = view
    return bytes(data)


def unframe(data: bytes) -> tuple[memoryview, list[memoryview]]:
    """Inverse of :func:`frame_bytes`; FrameError when damaged."""
    view = memoryview(data)
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
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}.sqlite3"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def put(self, key: str, data: bytes) -> str:
        """Add one row (inside the open transaction); returns its name, ``NAME#ID``."""
        with self._lock:
            db = self._open()
            if not db.in_transaction:
                db.execute("BEGIN")
            row = db.execute("INSERT INTO outputs (key, data) VALUES (?, ?)", (key, data))
            return f"{self.name}{SEPARATOR}{row.lastrowid}"

    def commit(self) -> None:
        with self._lock:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("COMMIT")

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            self._db.execute(PACK_SCHEMA)
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
                self._db.close()
                self._db = None


class PackReader:
    """Reads rows of any pack in a directory (read-only connections, kept open)."""

    def __init__(self) -> None:
        self._open: dict[Path, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, row: int) -> bytes:
        with self._lock:
            db = self._connection(path)
            found = db.execute("SELECT data FROM outputs WHERE id = ?", (row,)).fetchone()
        if found is None:
            raise PackError(f"{path} holds no row {row}")
        return found[0]

    def exists(self, path: Path, row: int) -> bool:
        try:
            self.get(path, row)
        except (PackError, sqlite3.Error):
            return False
        return True

    def _connection(self, path: Path) -> sqlite3.Connection:
        db = self._open.get(path)
        if db is None:
            if not path.is_file():
                raise PackError(f"pack {path} is missing")
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                     timeout=30)
            except sqlite3.Error as error:
                raise PackError(f"pack {path} cannot be opened: {error}") from None
            self._open[path] = db
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._open.values():
                db.close()
            self._open.clear()


def split_name(relative: str) -> tuple[str, int] | None:
    """``("outputs/packs/NAME.sqlite3", ID)`` for a packed output's name, else None."""
    path, sep, row = relative.rpartition(SEPARATOR)
    if not sep or not row.isdigit():
        return None
    return path, int(row)
