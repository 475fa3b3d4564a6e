"""Where journaled outputs live: a ``file`` channel per recorded vertex output, or, for
small outputs, a frame appended to this process's pack (:mod:`serpytor.runtime.packs`).

An output is a file channel (see :mod:`serpytor.runtime.channels.file`): written under a
temporary name and linked into place when complete, fsync'd (file and directory) when
the run asks for durability, with a crc-checked frame header and an end frame so a
truncated or foreign file is refused. Files are named by journal key and execution
version, ``outputs/ab/abcdef....p0.v<version>.chan``: a re-execution of the same key
(a crash before the journal recorded it, a duplicate of a slow vertex) writes the next
version and never overwrites a file another reader may hold open.

The digest recorded in the journal is the channel's content digest (BLAKE2b-256 over
the item frames, excluding the file header that names the version), so two executions
that produce the same value have the same digest; it is checked again before a stored
output is reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..compiler.kinds import ChannelKind
from ..errors import SerpytorError
from .channels import (ChannelDescriptor, ChannelError, ChannelExistsError, EndOfChannel,
                       FileReader, FileWriter, content_digest, get_serializer)
from .channels.framing import FrameError
from .channels.serialize import encoded_size
from .packs import (PACK_LIMIT, SEPARATOR, OutputPack, PackError, PackReader, digest_of,
                    record_bytes, split_name, unframe)

SERIALIZER = get_serializer("pickle")
STORE_JOB = "journal"  # the job name stamped in stored files; the key says the rest
MAX_VERSIONS = 1000


class OutputError(SerpytorError):
    """A vertex output cannot be stored or read back (unpicklable value, damaged or
    missing file)."""


class StoredFile(NamedTuple):
    """Where a stored output is, relative to the journal directory (a tuple: one is
    made per stored output)."""

    path: str
    digest: str
    size: int


class OutputStore:
    """The outputs of one journal directory: small ones in this process's pack (see
    :mod:`serpytor.runtime.packs`), the rest as file channels. ``pack_limit=0`` stores
    every output as a file."""

    def __init__(self, directory: str | Path, durable: bool = False,
                 pack_limit: int = PACK_LIMIT) -> None:
        self.root = Path(directory) / "outputs"
        self.durable = durable
        self.pack_limit = pack_limit
        self.pack = OutputPack(self.root / "packs", durable) if pack_limit else None
        # a packed output's path, but for its place (see split_name)
        self.pack_prefix = f"outputs/packs/{self.pack.name}{SEPARATOR}" if self.pack else ""
        self.packs = PackReader()

    def put(self, key: str, vertex: str, value: Any) -> StoredFile:
        """Store ``value`` (serialized here) as the output recorded under ``key``."""
        header, buffers = serialize(value, vertex)
        return self.put_serialized(key, vertex, header, buffers)

    def put_serialized(self, key: str, vertex: str, header: bytes,
                       buffers: list[Any]) -> StoredFile:
        """:meth:`put` of a value already serialized (a server keeps the serialization
        for transfers)."""
        pack = self.pack
        size = encoded_size((header, buffers))
        if pack is not None and size < self.pack_limit:
            data = record_bytes(header, buffers)
            offset = self._pack_append(pack, data, vertex)
            return StoredFile(f"{self.pack_prefix}{offset}+{len(data)}", digest_of(data),
                              len(data))
        return self._put_file(key, vertex, header, buffers)

    @staticmethod
    def _pack_append(pack: OutputPack, data: bytes | bytearray, vertex: str) -> int:
        try:
            return pack.append(data)
        except OSError as error:  # a full disk, a read-only store
            raise OutputError(f"vertex {vertex}: cannot store its output in {pack.path}: "
                              f"{error.strerror}") from None

    def commit(self) -> None:
        """Make what was put so far visible to other processes (call it before the
        outputs are reported or journaled)."""
        if self.pack is not None:
            try:
                self.pack.commit()
            except OSError as error:  # a full disk, a read-only store
                raise OutputError(f"cannot store outputs in {self.pack.path}: "
                                  f"{error.strerror}") from None

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self.pack is not None:
                self.pack.close()
            self.packs.close()

    def __enter__(self) -> "OutputStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put_file(self, key: str, vertex: str, header: bytes,
                  buffers: list[Any]) -> StoredFile:
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        for version in range(MAX_VERSIONS):
            try:
                writer = FileWriter(_descriptor(key, version), directory=folder,
                                    durable=self.durable, digest=True, metadata=False)
                with writer:
                    writer.write_serialized(header, buffers)
            except ChannelExistsError:
                continue  # an earlier (or concurrent) execution took this version
            except ChannelError as error:
                raise OutputError(f"vertex {vertex}: cannot store its output: "
                                  f"{error.reason}") from None
            except OSError as error:  # a full disk, a read-only store
                raise OutputError(f"vertex {vertex}: cannot store its output in {folder}: "
                                  f"{error.strerror}") from None
            path = Path(writer.descriptor.location)
            return StoredFile(str(path.relative_to(self.root.parent)), str(writer.digest),
                              writer.statistics().bytes)
        raise OutputError(f"vertex {vertex}: {MAX_VERSIONS} versions of output {key} "
                          f"exist in {folder}")

    def exists(self, relative: str) -> bool:
        packed = split_name(relative)
        if packed is not None:
            return self.packs.exists(self.root.parent / packed[0], *packed[1:])
        return (self.root.parent / relative).is_file()

    def get(self, relative: str, digest: str) -> Any:
        """The stored value, after checking its content against ``digest``."""
        packed = split_name(relative)
        if packed is not None:
            return self._get_packed(self.root.parent / packed[0], packed[1], packed[2], digest)
        path = self.root.parent / relative
        try:
            if content_digest(path) != digest:
                raise OutputError(f"stored output {path} is damaged (digest mismatch)")
            return read_stored(path)
        except FileNotFoundError:
            raise OutputError(f"stored output {path} is missing") from None
        except ChannelError as error:
            raise OutputError(f"stored output {path} cannot be read: {error.reason}") from None
        except OSError as error:
            raise OutputError(f"stored output {path} cannot be read: {error.strerror}") from None


    def _get_packed(self, path: Path, offset: int, length: int, digest: str) -> Any:
        where = f"{path}#{offset}+{length}"
        try:
            data = self.packs.get(path, offset, length)
            if digest_of(data) != digest:
                raise OutputError(f"stored output {where} is damaged (digest mismatch)")
            return SERIALIZER.loads(*unframe(data))
        except (PackError, FrameError) as error:
            raise OutputError(f"stored output {where} cannot be read: {error}") from None


def serialize(value: Any, vertex: str) -> tuple[bytes, list[Any]]:
    """``(header, buffers)`` of a vertex output; OutputError naming the vertex when the
    value cannot be pickled (pickling runs arbitrary user code)."""
    try:
        return SERIALIZER.dumps(value)
    except Exception as error:
        raise OutputError(f"vertex {vertex} returned a value that cannot be stored: "
                          f"{type(error).__name__}: {error}") from None


def read_stored(path: Path) -> Any:
    """The one item of a stored output file."""
    key, version = _identity_of(path)
    with FileReader(_descriptor(key, version, str(path)), timeout=0) as reader:
        try:
            return reader.read()
        except EndOfChannel:
            raise OutputError(f"stored output {path} holds no value") from None


def _descriptor(key: str, version: int, location: str = "") -> ChannelDescriptor:
    return ChannelDescriptor(ChannelKind.FILE, location, vertex=key, port=0,
                             version=version, job=STORE_JOB, requested=ChannelKind.FILE)


def _identity_of(path: Path) -> tuple[str, int]:
    """Key and version from a stored file's name (``KEY.p0.vN.chan``)."""
    stem = path.name.removesuffix(".chan")
    key, _, rest = stem.partition(".p0.v")
    if not rest.isdigit():
        raise OutputError(f"{path} is not a stored output (unexpected name)")
    return key, int(rest)


__all__ = ["OutputError", "OutputStore", "StoredFile", "read_stored", "serialize"]
