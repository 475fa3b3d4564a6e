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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Opens (or creates) ``directory/journal.sqlite3``."""

    BATCH_SECONDS = 0.05

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.directory / "journal.sqlite3", timeout=30,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise JournalError(f"cannot open the journal in {self.directory}: {error}") from None
        self.pending: dict[str, tuple] = {}  # key -> row, not yet committed
        self.last_commit = time.monotonic()
        # runs before each commit: the stored outputs the records point to come first
        self.before_commit: list[Any] = []
        self.known: dict[str, set[str]] = {}  # pipeline -> keys recorded when first asked

    def lookup(self, key: str, pipeline: str | None = None) -> JournalRecord | None:
        """The record of ``key``. With ``pipeline``, the journal's keys of that pipeline
        are read once, so a key never recorded costs no query."""
        if key in self.pending:
            return _record(self.pending[key])
        if pipeline is not None and key not in self._known_keys(pipeline):
            return None
        row = self.db.execute("SELECT * FROM vertices WHERE key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def _known_keys(self, pipeline: str) -> set[str]:
        if pipeline not in self.known:
            rows = self.db.execute("SELECT key FROM vertices WHERE pipeline = ?", (pipeline,))
            self.known[pipeline] = {key for (key,) in rows}
        return self.known[pipeline]

    def record(self, key: str, pipeline: str, vertex: str, parts: dict[str, str],
               output: str, output_digest: str, published: dict[str, Any],
               seconds: float) -> None:
        self.pending[key] = (key, pipeline, vertex, _parts_json(parts), output, output_digest,
                             json.dumps(published) if published else "{}", seconds,
                             time.time())
        if time.monotonic() - self.last_commit >= self.BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        for hook in self.before_commit:
            hook()
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO vertices VALUES "
                                    "(?, ?, ?, ?, ?, ?, ?, ?, ?)", self.pending.values())
        except sqlite3.DatabaseError as error:
            raise JournalError(f"cannot write the journal in {self.directory}: {error}") from None
        for key, row in self.pending.items():
            if row[1] in self.known:
                self.known[row[1]].add(key)
        self.pending.clear()
        self.last_commit = time.monotonic()

    def latest(self, pipeline: str, vertex: str) -> JournalRecord | None:
        """The most recent record of a vertex (any key), for explanations."""
        row = self.db.execute(
            "SELECT * FROM vertices WHERE pipeline = ? AND vertex = ? "
            "ORDER BY finished DESC LIMIT 1", (pipeline, vertex)).fetchone()
        return _record(row) if row else None

    def close(self) -> None:
        self.flush()
        self.db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parts_json(parts: dict[str, str]) -> str:
    """``json.dumps(parts)``, the fast way when no value needs escaping (the parts are
    digests and names, so almost always): this runs once per recorded vertex."""
    text = "|".join(parts.values())
    if '"' in text or "\\" in text or not text.isprintable():
        return json.dumps(parts)
    return "{" + ", ".join([f'"{k}": "{v}"' for k, v in parts.items()]) + "}"


def _record(row: tuple) -> JournalRecord:
    key, pipeline, vertex, parts, output, output_digest, published, seconds, finished = row
    return JournalRecord(key, pipeline, vertex, json.loads(parts), output, output_digest,
                         json.loads(published), seconds, finished)
