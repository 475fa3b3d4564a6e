"""The durable journal: every finished vertex, in SQLite (WAL), under its key.

Schema (one table)::

    vertices(key TEXT PRIMARY KEY,   -- serpytor.runtime.identity.vertex_key
             pipeline TEXT, vertex TEXT,
             parts TEXT,              -- JSON: the key's parts, for `serpytor explain`
             output TEXT,             -- path of the stored output, relative to the journal
             output_digest TEXT,      -- BLAKE2b of the stored output's bytes
             published TEXT,          -- JSON: context facts the vertex published
             seconds REAL, finished REAL)

A vertex is recorded only after its output is stored (written to a temporary name,
then renamed; fsync'd when the run asks for durability), so a record always points to
a whole output. A record whose output file has gone is ignored. Records are committed
in small batches: a crash loses at most the last batch's records (those vertices run
again), never an output a record points to.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import SerpytorError

SCHEMA = """
CREATE TABLE IF NOT EXISTS vertices (
    key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, vertex TEXT NOT NULL,
    parts TEXT NOT NULL, output TEXT NOT NULL, output_digest TEXT NOT NULL,
    published TEXT NOT NULL, seconds REAL NOT NULL, finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS vertices_by_name ON vertices (pipeline, vertex, finished);
"""


class JournalError(SerpytorError):
    """The journal database cannot be opened or written (a damaged file or a full
    disk). Move the journal directory away, or run with --no-journal."""


@dataclass(frozen=True)
class JournalRecord:
    key: str
    pipeline: str
    vertex: str
    parts: dict[str, str]
    output: str
    output_digest: str
    published: dict[str, Any]
    seconds: float
    finished: float


class Journal:
    """Opens (or creates) ``directory/journal.sqlite3``.

    Records are written by a thread of their own, on a connection of its own: SQLite
    releases the GIL while it writes, and a commit can wait for the disk (a WAL
    checkpoint syncs), so the thread that records never waits for either. Until a
    record is committed, :meth:`lookup` finds it among the pending ones."""

    BATCH_SECONDS = 0.05

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "journal.sqlite3"
        self.db = _connect(self.path, "open")
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise JournalError(f"cannot open the journal in {self.directory}: {error}") from None
        self.pending: dict[str, tuple] = {}  # key -> row, not yet committed
        # runs before each commit: the stored outputs the records point to come first
        self.before_commit: list[Any] = []
        self.known: dict[str, set[str]] = {}  # pipeline -> keys recorded when first asked
        self._lock = threading.Lock()  # pending, known and the writer's queue
        self._writer: _Writer | None = None

    def lookup(self, key: str, pipeline: str | None = None) -> JournalRecord | None:
        """The record of ``key``. With ``pipeline``, the journal's keys of that pipeline
        are read once, so a key never recorded costs no query."""
        row = self.pending.get(key)
        if row is not None:
            return _record(row)
        if pipeline is not None and key not in self._known_keys(pipeline):
            return None
        row = self.db.execute("SELECT * FROM vertices WHERE key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def _known_keys(self, pipeline: str) -> set[str]:
        with self._lock:  # the writer adds what it commits once the set exists
            if pipeline not in self.known:
                rows = self.db.execute("SELECT key FROM vertices WHERE pipeline = ?",
                                       (pipeline,))
                self.known[pipeline] = {key for (key,) in rows}
            return self.known[pipeline]

    def record(self, key: str, pipeline: str, vertex: str, parts: dict[str, str],
               output: str, output_digest: str, published: dict[str, Any],
               seconds: float) -> None:
        # orjson: this runs once per recorded vertex; published facts are JSON data
        # (serpytor.runtime.protocol.json_data_problem), so orjson encodes them all
        row = (key, pipeline, vertex, orjson.dumps(parts).decode(), output, output_digest,
               orjson.dumps(published).decode() if published else "{}", seconds,
               time.time())
        if self._writer is None:
            self._writer = _Writer(self)
        with self._lock:
            self.pending[key] = row
            self._writer.queue.append(row)
        self._writer.check()

    def flush(self) -> None:
        """Commit every record made so far (JournalError if that fails)."""
        if self._writer is not None:
            self._writer.wait_written()

    def _write(self, db: sqlite3.Connection, rows: list[tuple]) -> None:
        """The writer's commit of ``rows``, after the outputs they point to."""
        try:
            for hook in self.before_commit:
                hook()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO vertices VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException as error:
            self._settle(rows, committed=False)  # not recorded: lookups must not see them
            if isinstance(error, sqlite3.DatabaseError):
                raise JournalError(f"cannot write the journal in {self.directory}: "
                                   f"{error}") from None
            raise
        self._settle(rows, committed=True)

    def _settle(self, rows: list[tuple], committed: bool) -> None:
        """Rows the writer is done with leave the pending ones (unless recorded again
        meanwhile); committed ones join the known keys."""
        with self._lock:
            for row in rows:
                if committed and row[1] in self.known:
                    self.known[row[1]].add(row[0])
                if self.pending.get(row[0]) is row:
                    del self.pending[row[0]]

    def latest(self, pipeline: str, vertex: str) -> JournalRecord | None:
        """The most recent record of a vertex (any key), for explanations."""
        row = self.db.execute(
            "SELECT * FROM vertices WHERE pipeline = ? AND vertex = ? "
            "ORDER BY finished DESC LIMIT 1", (pipeline, vertex)).fetchone()
        return _record(row) if row else None

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.stop()
        finally:
            self.db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Writer:
    """The journal's writer thread: commits what was recorded every BATCH_SECONDS."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.queue: list[tuple] = []  # recorded, not yet taken (journal._lock)
        self.wake = threading.Condition(journal._lock)
        self.taken = 0      # rows taken from the queue so far
        self.written = 0    # rows of those committed (or failed: see error)
        self.error: BaseException | None = None
        self.stopping = False
        self.urgent = False  # someone waits for what was recorded
        self.db = _connect(journal.path, "write")
        self.thread = threading.Thread(target=self._run, name="serpytor-journal",
                                       daemon=True)
        self.thread.start()

    def check(self) -> None:
        """Raise the error that stopped the writer, once."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def wait_written(self) -> None:
        with self.wake:
            target = self.taken + len(self.queue)
            self.urgent = True
            self.wake.notify_all()
            while self.written < target and self.thread.is_alive():
                self.wake.wait(1.0)
        self.check()

    def stop(self) -> None:
        try:
            self.wait_written()
        finally:
            with self.wake:
                self.stopping = True
                self.wake.notify_all()
            self.thread.join()
            self.db.close()

    def _run(self) -> None:
        while True:
            with self.wake:
                due = time.monotonic() + self.journal.BATCH_SECONDS
                while not (self.stopping or self.urgent) and time.monotonic() < due:
                    self.wake.wait(due - time.monotonic())
                if self.stopping and not self.queue:
                    return
                self.urgent = False
                rows, self.queue = self.queue, []
                self.taken += len(rows)
            try:
                if rows:
                    self.journal._write(self.db, rows)
            except BaseException as error:  # noqa: BLE001 - raised in the recording thread
                self.error = error
            with self.wake:
                self.written += len(rows)
                self.wake.notify_all()


def _connect(path: Path, doing: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db
    except sqlite3.DatabaseError as error:
        raise JournalError(f"cannot {doing} the journal in {path.parent}: {error}") from None


def _record(row: tuple) -> JournalRecord:
    key, pipeline, vertex, parts, output, output_digest, published, seconds, finished = row
    return JournalRecord(key, pipeline, vertex, json.loads(parts), output, output_digest,
                         json.loads(published), seconds, finished)
