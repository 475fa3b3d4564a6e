"""The durable journal: every finished vertex, in SQLite (WAL), under its key.

Schema (one table, rows in the order they were recorded, indexed by pipeline only)::

    vertices(key TEXT,               -- serpytor.runtime.identity.vertex_key
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
again), never an output a record points to. A key recorded again replaces its earlier
row; the earlier rows of keys a ``--fresh`` run recorded again are found when the
pipeline's rows are next read, and removed by the next commit.
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
    key TEXT NOT NULL, pipeline TEXT NOT NULL, vertex TEXT NOT NULL,
    parts TEXT NOT NULL, output TEXT NOT NULL, output_digest TEXT NOT NULL,
    published TEXT NOT NULL, seconds REAL NOT NULL, finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS vertices_by_pipeline ON vertices (pipeline);
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
    record is committed, :meth:`lookup` finds it among the pending ones. Records move
    to the writer a whole dictionary at a time, so the writer's own Python work (which
    holds the GIL the recording thread needs) stays a few steps per batch."""

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
        self.pending: dict[str, tuple] = {}  # key -> row, recorded since the writer took
        self.writing: dict[str, tuple] = {}  # key -> row, taken, not yet committed
        # runs before each commit: the stored outputs the records point to come first
        self.before_commit: list[Any] = []
        self.rowids: dict[str, int] = {}  # key -> its latest row, for keys read or written
        self.loaded: set[str] = set()     # pipelines whose rows were read into rowids
        self.superseded: list[int] = []   # rows of keys recorded again: deleted next commit
        self._lock = threading.Lock()  # the dictionaries above, and the writer's counts
        self._writer: _Writer | None = None

    def lookup(self, key: str, pipeline: str) -> JournalRecord | None:
        """The record of ``key``. The journal's rows of ``pipeline`` are read once, so a
        key never recorded costs no query."""
        with self._lock:  # a batch moves from pending to writing to rowids under it
            row = self.pending.get(key) or self.writing.get(key)
        if row is not None:
            return _record(row)
        self._load(pipeline)
        rowid = self.rowids.get(key)
        if rowid is None:
            return None
        row = self.db.execute("SELECT * FROM vertices WHERE rowid = ?", (rowid,)).fetchone()
        return _record(row) if row and row[0] == key else None

    def _load(self, pipeline: str) -> None:
        """Read which row holds each key of ``pipeline``: the latest, when a key was
        recorded more than once (the others are deleted with the next commit)."""
        with self._lock:
            if pipeline in self.loaded:
                return
            rows = self.db.execute("SELECT key, rowid FROM vertices WHERE pipeline = ? "
                                   "ORDER BY rowid", (pipeline,))
            for key, rowid in rows:
                # a key this journal wrote before reading may meet its older rows here
                earlier = self.rowids.get(key)
                if earlier is not None and earlier != rowid:
                    self.superseded.append(min(earlier, rowid))
                self.rowids[key] = max(rowid, earlier or rowid)
            self.loaded.add(pipeline)

    def record(self, key: str, pipeline: str, vertex: str, parts: str, output: str,
               output_digest: str, published: dict[str, Any], seconds: float) -> None:
        """Journal a vertex whose output is stored. ``parts``: the key's parts, as JSON
        text."""
        self.record_many(pipeline, [(key, vertex, parts, output, output_digest, published,
                                     seconds)])

    def record_many(self, pipeline: str, records: list[tuple[str, str, str, str, str,
                                                             dict[str, Any], float]]) -> None:
        """:meth:`record` of each ``(key, vertex, parts, output, output_digest,
        published, seconds)``, finished now (the gateway records a reported batch)."""
        # orjson: this runs once per recorded vertex; published facts are JSON data
        # (serpytor.runtime.protocol.json_data_problem), so orjson encodes them all
        finished = time.time()
        rows = [(key, pipeline, vertex, parts, output, output_digest,
                 orjson.dumps(published).decode() if published else "{}", seconds, finished)
                for key, vertex, parts, output, output_digest, published, seconds in records]
        if self._writer is None:
            self._writer = _Writer(self)
        with self._lock:  # the writer takes pending whole, under the lock
            pending = self.pending
            for row in rows:
                pending[row[0]] = row
        self._writer.check()

    def flush(self) -> None:
        """Commit every record made so far (JournalError if that fails)."""
        if self._writer is not None:
            self._writer.wait_written()

    def _take(self) -> dict[str, tuple]:
        """The writer's next batch: everything pending (under the lock)."""
        rows, self.pending = self.pending, {}
        self.writing = rows
        return rows

    def _write(self, db: sqlite3.Connection, rows: dict[str, tuple]) -> None:
        """The writer's commit of ``rows``, after the outputs they point to. The table
        has no unique key (inserting into an index of random keys would cost more than
        the row), so a key recorded again has its earlier row deleted here."""
        with self._lock:
            superseded, self.superseded = self.superseded, []
            rowids = self.rowids
            earlier = [(rowids[key],) for key in rows if key in rowids]
        try:
            for hook in self.before_commit:
                hook()
            with db:
                db.execute("BEGIN")
                db.executemany("DELETE FROM vertices WHERE rowid = ?",
                               [(rowid,) for rowid in superseded] + earlier)
                # OR REPLACE: a journal made before has a unique key (and a key never read
                # here, as in a --fresh run, may be in it)
                db.executemany("INSERT OR REPLACE INTO vertices VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows.values())
                # a row goes after the last one: these rows are the last len(rows)
                last = db.execute("SELECT max(rowid) FROM vertices").fetchone()[0]
        except BaseException as error:
            with self._lock:
                self.superseded[:0] = superseded
                self.writing = {}  # not recorded: lookups must not see them
            if isinstance(error, sqlite3.DatabaseError):
                raise JournalError(f"cannot write the journal in {self.directory}: "
                                   f"{error}") from None
            raise
        with self._lock:
            rowids.update(zip(rows, range(last - len(rows) + 1, last + 1)))
            self.writing = {}

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
        self.wake = threading.Condition(journal._lock)
        self.taken = 0      # batches taken so far
        self.written = 0    # batches of those committed (or failed: see error)
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
            # the batch being written, and the next one if anything is pending
            target = self.taken + (1 if self.journal.pending else 0)
            self.urgent = True
            self.wake.notify_all()
            while self.written < target and self.thread.is_alive():
                self.wake.wait(1.0)
        self.check()

    def stop(self) -> None:
        """Commit what is left, then let the thread close its connection on its own:
        the last connection's close checkpoints the WAL into the database (a copy and
        two syncs), which no caller needs to wait for."""
        try:
            self.wait_written()
        finally:
            with self.wake:
                self.stopping = True
                self.wake.notify_all()

    def _run(self) -> None:
        journal = self.journal
        while True:
            with self.wake:
                due = time.monotonic() + journal.BATCH_SECONDS
                while not (self.stopping or self.urgent) and time.monotonic() < due:
                    self.wake.wait(due - time.monotonic())
                if self.stopping and not journal.pending:
                    break
                self.urgent = False
                rows = journal._take()
                self.taken += 1
            try:
                if rows:
                    journal._write(self.db, rows)
            except BaseException as error:  # noqa: BLE001 - raised in the recording thread
                self.error = error
            with self.wake:
                self.written += 1
                self.wake.notify_all()
        try:
            self.db.close()
        except sqlite3.Error:
            pass  # everything was committed; the next open recovers the WAL


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
