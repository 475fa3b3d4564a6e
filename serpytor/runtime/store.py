"""Where journaled outputs live: one file per recorded vertex output.

Files are named by the vertex's journal key (``outputs/ab/abcdef....out``), written to a
temporary name and renamed, and fsync'd (file and directory) when the run asks for
durability. The digest recorded in the journal is BLAKE2b of the file's bytes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

from ..errors import SerpytorError


class OutputError(SerpytorError):
    """A vertex output cannot be stored or read back (unpicklable value, damaged or
    missing file)."""


class OutputStore:
    def __init__(self, directory: str | Path, durable: bool = False) -> None:
        self.root = Path(directory) / "outputs"
        self.durable = durable

    def path_for(self, key: str) -> str:
        return f"outputs/{key[:2]}/{key}.out"

    def put(self, key: str, vertex: str, value: Any) -> tuple[str, str, bytes]:
        """Store value; returns (relative path, digest, bytes)."""
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception as error:  # pickling runs arbitrary user code
            raise OutputError(f"vertex {vertex} returned a value that cannot be stored: "
                              f"{type(error).__name__}: {error}") from None
        relative = self.path_for(key)
        path = self.root.parent / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            if self.durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if self.durable:
            _fsync_directory(path.parent)
        return relative, hashlib.blake2b(data, digest_size=20).hexdigest(), data

    def exists(self, relative: str) -> bool:
        return (self.root.parent / relative).is_file()

    def get(self, relative: str, digest: str) -> Any:
        path = self.root.parent / relative
        try:
            data = path.read_bytes()
        except OSError as error:
            raise OutputError(f"stored output {path} cannot be read: {error.strerror}") from None
        if hashlib.blake2b(data, digest_size=20).hexdigest() != digest:
            raise OutputError(f"stored output {path} is damaged (digest mismatch)")
        return pickle.loads(data)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
