"""The durable journal: every finished vertex, in SQLite (WAL), under its key.

Records are stored a committed batch at a time, one row per batch (a row per record
costs SQLite more than the rest of journaling a vertex)::

    batches(id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT,
            keys TEXT,     -- the records' keys (serpytor.runtime.identity.vertex_key),
                           -- one per line, in record order
            records TEXT)  -- JSON: per record [key, vertex, parts, output,
                           -- output_digest, published, seconds, finished]

where ``parts`` is the key's parts (for ``serpytor explain``), ``output`` the stored
output's path relative to the journal, ``output_digest`` its content digest and
``published`` the context facts the vertex published. The view ``vertices`` shows one
row per record (key, pipeline, vertex, parts, output, output_digest, published,
seconds, finished) for queries by hand; journals of the earlier one-row-per-record
table are converted when opened.

A vertex is recorded only after its output is stored (written to a temporary name,
then renamed; fsync'd when the run asks for durability), so a record always points to
a whole output. A record whose output file has gone is ignored. Records are committed
in small batches: a crash loses at most the last batch's records (those vertices run
again), never an output a record points to. A key recorded again supersedes its
earlier record; a batch holding superseded records is rewritten without them (or
deleted) by the next commit after they are found: at once for keys this journal reads
or writes, and for the keys a ``--fresh`` run recorded again, when the pipeline's
records are next read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson

from ..errors import SerpytorError

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL,
    keys TEXT NOT NULL, records TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_pipeline ON batches (pipeline);
CREATE VIEW IF NOT EXISTS vertices AS
SELECT json_extract(r.value, '$[0]') AS key, b.pipeline AS pipeline,
       json_extract(r.value, '$[1]') AS vertex, json_extract(r.value, '$[2]') AS parts,
       json_extract(r.value, '$[3]') AS output, json_extract(r.value, '$[4]') AS output_digest,
       json_extract(r.value, '$[5]') AS published, json_extract(r.value, '$[6]') AS seconds,
       json_extract(r.value, '$[7]') AS finished
FROM batches AS b, json_each(b.records) AS r;
"""
# a record as it waits for the writer: (key, pipeline, vertex, parts JSON text, output,
# output_digest, published, seconds, finished)
Row = tuple[str, str, str, str, str, str, Any, float, float]
BATCH_RECORDS = 4096  # records per row at most; a record's place is id * BATCH_RECORDS + i
CACHED_BATCHES = 4    # parsed batches kept for lookups (a re-run reads them in order)


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
            _convert_record_table(self.db)
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise JournalError(f"cannot open the journal in {self.directory}: {error}") from None
        # key -> its Row, recorded since the writer took
        self.pending: dict[str, Row] = {}
        self.writing: dict[str, Row] = {}  # taken, not yet committed
        # runs before each commit: the stored outputs the records point to come first
        self.before_commit: list[Any] = []
        # key -> the place of its latest record (id * BATCH_RECORDS + index), for keys
        # read or written
        self.places: dict[str, int] = {}
        self.loaded: set[str] = set()  # pipelines whose keys were read into places
        self.stale: set[int] = set()   # batches holding superseded records: next commit
        self.parsed: dict[int, list[list[Any]]] = {}  # a few batches' records, by id
        self._lock = threading.Lock()  # the dictionaries above, and the writer's counts
        self._writer: _Writer | None = None

    def lookup(self, key: str, pipeline: str) -> JournalRecord | None:
        """The record of ``key``. The journal's keys of ``pipeline`` are read once, so a
        key never recorded costs no query."""
        with self._lock:  # a batch moves from pending to writing to places under it
            row = self.pending.get(key) or self.writing.get(key)
        if row is not None:
            key, pipeline, vertex, parts, output, output_digest, published, seconds, \
                finished = row
            return JournalRecord(key, pipeline, vertex, orjson.loads(parts), output,
                                 output_digest, dict(published), seconds, finished)
        self._load(pipeline)
        place = self.places.get(key)
        if place is None:
            return None
        batch, index = divmod(place, BATCH_RECORDS)
        records = self._records(batch)
        if records is None or index >= len(records) or records[index][0] != key:
            return None  # rewritten meanwhile: the vertex runs again
        return _record_of(pipeline, records[index])

    def _records(self, batch: int) -> list[list[Any]] | None:
        with self._lock:
            records = self.parsed.get(batch)
        if records is not None:
            return records
        row = self.db.execute("SELECT records FROM batches WHERE id = ?", (batch,)).fetchone()
        if row is None:
            return None
        records = orjson.loads(row[0])
        with self._lock:
            while len(self.parsed) >= CACHED_BATCHES:
                del self.parsed[next(iter(self.parsed))]
            self.parsed[batch] = records
        return records

    def _load(self, pipeline: str) -> None:
        """Read where the latest record of each key of ``pipeline`` is (a key recorded
        more than once leaves its batches stale: rewritten with the next commit)."""
        with self._lock:
            if pipeline in self.loaded:
                return
            places, stale = self.places, self.stale
            rows = self.db.execute("SELECT id, keys FROM batches WHERE pipeline = ? "
                                   "ORDER BY id", (pipeline,))
            for batch, keys in rows:
                place = batch * BATCH_RECORDS
                for key in keys.split("\n"):
                    # a key this journal wrote before reading may meet its older records
                    earlier = places.get(key)
                    if earlier is not None and earlier != place:
                        stale.add(min(earlier, place) // BATCH_RECORDS)
                        place_now = max(earlier, place)
                    else:
                        place_now = place
                    places[key] = place_now
                    place += 1
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
        published, seconds)``, finished now (the gateway records a reported batch).
        Keys are digests: no line breaks in them."""
        finished = time.time()
        self.record_rows([(key, pipeline, vertex, parts, output, output_digest, published,
                           seconds, finished)
                          for key, vertex, parts, output, output_digest, published, seconds
                          in records])

    def record_rows(self, rows: list[Row]) -> None:
        """:meth:`record_many` of records already made rows (see ``Row``)."""
        # kept as they are: the writer encodes a whole batch at once
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

    def _take(self) -> dict[str, Row]:
        """The writer's next batch: everything pending (under the lock)."""
        rows, self.pending = self.pending, {}
        self.writing = rows
        return rows

    def _write(self, db: sqlite3.Connection, rows: dict[str, Row]) -> None:
        """The writer's commit of ``rows``, after the outputs they point to, with the
        stale batches rewritten: those of keys written again now, and those found."""
        with self._lock:
            stale, self.stale = self.stale, set()
            places = self.places
            stale.update(places[key] // BATCH_RECORDS for key in rows if key in places)
        try:
            for hook in self.before_commit:
                hook()
            with db:
                db.execute("BEGIN")
                written = _insert(db, rows.values())
                moved = self._rewrite(db, stale, rows)
        except BaseException as error:
            with self._lock:
                self.stale |= stale
                self.writing = {}  # not recorded: lookups must not see them
            if isinstance(error, sqlite3.DatabaseError):
                raise JournalError(f"cannot write the journal in {self.directory}: "
                                   f"{error}") from None
            raise
        with self._lock:
            places.update(written)
            places.update(moved)
            for batch in stale:
                self.parsed.pop(batch, None)
            self.writing = {}

    def _rewrite(self, db: sqlite3.Connection, stale: set[int],
                 rows: dict[str, Row]) -> dict[str, int]:
        """Rewrite each stale batch with only its current records (delete it when none
        is); the new places of the records that moved."""
        moved: dict[str, int] = {}
        for batch in sorted(stale):
            row = db.execute("SELECT keys, records FROM batches WHERE id = ?",
                             (batch,)).fetchone()
            if row is None:
                continue
            keys, first = row[0].split("\n"), batch * BATCH_RECORDS
            with self._lock:
                kept = [i for i, key in enumerate(keys)
                        if key not in rows and self.places.get(key) == first + i]
            if not kept:
                db.execute("DELETE FROM batches WHERE id = ?", (batch,))
            elif len(kept) < len(keys):
                records = orjson.loads(row[1])
                db.execute("UPDATE batches SET keys = ?, records = ? WHERE id = ?",
                           ("\n".join(keys[i] for i in kept),
                            orjson.dumps([records[i] for i in kept]).decode(), batch))
                moved.update((keys[i], first + n) for n, i in enumerate(kept))
        return moved

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


def _insert(db: sqlite3.Connection, rows: Iterable[Row]) -> dict[str, int]:
    """Insert rows as batches (per pipeline, in order, BATCH_RECORDS at most); the
    places of their keys."""
    by_pipeline: dict[str, list[Row]] = {}
    for row in rows:
        by_pipeline.setdefault(row[1], []).append(row)
    places: dict[str, int] = {}
    for pipeline, records in by_pipeline.items():
        for start in range(0, len(records), BATCH_RECORDS):
            chunk = records[start:start + BATCH_RECORDS]
            keys = [row[0] for row in chunk]
            batch = db.execute(
                "INSERT INTO batches (pipeline, keys, records) VALUES (?, ?, ?)",
                (pipeline, "\n".join(keys), _records_json(chunk))
            ).lastrowid
            places.update(zip(keys, range(batch * BATCH_RECORDS,
                                          batch * BATCH_RECORDS + len(keys))))
    return places


def _records_json(rows: list[Row]) -> str:
    """The ``records`` of a batch: one orjson call for all of them (published facts
    are JSON data, serpytor.runtime.protocol.json_data_problem; parts are JSON text)."""
    fragment = orjson.Fragment
    return orjson.dumps([[key, vertex, fragment(parts), output, output_digest, published,
                          seconds, finished]
                         for key, _, vertex, parts, output, output_digest, published, seconds,
                         finished in rows]).decode()


def _convert_record_table(db: sqlite3.Connection) -> None:
    """A journal of the earlier schema (a row per record, in table ``vertices``) has its
    records moved into batches, in their order, once."""
    if not _is_table(db, "vertices"):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if _is_table(db, "vertices"):  # not converted by another process meanwhile
            db.execute(SCHEMA.split(";")[0])  # the batches table (the script commits)
            rows = db.execute("SELECT key, pipeline, vertex, parts, output, output_digest, "
                              "published, seconds, finished FROM vertices ORDER BY rowid")
            _insert(db, [(key, pipeline, vertex, parts, output, digest,
                          orjson.Fragment(published), seconds, finished)
                         for key, pipeline, vertex, parts, output, digest, published, seconds,
                         finished in rows])
            db.execute("DROP TABLE vertices")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _is_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == "table"


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


def _record_of(pipeline: str, record: list[Any]) -> JournalRecord:
    """A record as the batches hold it (parsed)."""
    key, vertex, parts, output, output_digest, published, seconds, finished = record
    return JournalRecord(key, pipeline, vertex, parts, output, output_digest, published,
                         seconds, finished)


def _record(row: tuple) -> JournalRecord:
    """A row of the ``vertices`` view."""
    key, pipeline, vertex, parts, output, output_digest, published, seconds, finished = row
    return JournalRecord(key, pipeline, vertex, json.loads(parts), output, output_digest,
                         json.loads(published), seconds, finished)
