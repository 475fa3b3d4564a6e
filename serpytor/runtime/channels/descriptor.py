"""The channel descriptor: the small, JSON-only name of one channel.

The control plane (gateway, servers) carries descriptors, never payloads and never
pickle. A descriptor says where the bytes are (``kind`` and ``location``), whose output
they are (``job``, ``vertex``, ``port``, execution ``version``), how they are encoded
(``serializer``), how many readers will open it (``readers``), and, once the writer has
closed, how much was written (``size`` bytes of frames, ``items``; ``-1`` until then).

``location`` per kind:

* ``shm``:  the name of the first shared-memory segment (``spt-<job>-<pid>-<rand>``);
* ``tcp``:  the endpoint the producer bound, e.g. ``tcp://127.0.0.1:45123``;
* ``file``: the path of the output file.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import asdict, dataclass, replace
from typing import Any

from ...compiler.kinds import ChannelKind
from .errors import ChannelDescriptorError

_FIELDS = {
    "kind": str, "location": str, "job": str, "vertex": str, "port": int, "version": int,
    "size": int, "items": int, "serializer": str, "readers": int, "requested": str,
    "host": str,
}
_REQUIRED = ("kind", "location", "vertex")


@dataclass(frozen=True)
class ChannelDescriptor:
    """Where one channel's data is and whose output it is. Round-trips through JSON."""

    kind: ChannelKind
    location: str
    vertex: str
    port: int = 0
    version: int = 0
    job: str = ""
    size: int = -1
    items: int = -1
    serializer: str = "pickle"
    readers: int = 1
    requested: ChannelKind = ChannelKind.AUTO
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only; kinds as lowercase names (``"shm"``)."""
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["requested"] = str(self.requested)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChannelDescriptor":
        """Validate every field; a malformed descriptor raises ChannelDescriptorError."""
        if not isinstance(data, dict):
            raise ChannelDescriptorError(f"descriptor must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(_FIELDS)
        missing = [name for name in _REQUIRED if name not in data]
        if unknown or missing:
            raise ChannelDescriptorError(
                f"bad descriptor fields: unknown {sorted(unknown)}, missing {missing}")
        for name, value in data.items():
            if type(value) is not _FIELDS[name]:  # bool is not an int here
                raise ChannelDescriptorError(
                    f"descriptor field {name!r} must be {_FIELDS[name].__name__}, got {value!r}")
        fields = dict(data)
        fields["kind"] = parse_kind(data["kind"])
        fields["requested"] = parse_kind(data.get("requested", "auto"))
        descriptor = cls(**fields)
        descriptor.validate()
        return descriptor

    @classmethod
    def from_json(cls, text: str | bytes) -> "ChannelDescriptor":
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChannelDescriptorError(f"descriptor is not JSON: {exc}") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise ChannelDescriptorError unless the fields make a usable channel."""
        if self.kind == ChannelKind.AUTO:
            raise ChannelDescriptorError("a descriptor names a concrete kind, not auto; "
                                         "resolve it with select_channel()", self)
        if self.port < 0 or self.version < 0 or self.readers < 1:
            raise ChannelDescriptorError(
                f"port and version must be >= 0 and readers >= 1 "
                f"(port={self.port}, version={self.version}, readers={self.readers})", self)

    def finished(self, size: int, items: int) -> "ChannelDescriptor":
        """The same channel with its final size and item count (after close)."""
        return replace(self, size=size, items=items)


def parse_kind(value: str | int | ChannelKind) -> ChannelKind:
    """``"shm"``, ``1`` or ``ChannelKind.SHM`` -> ``ChannelKind.SHM``."""
    try:
        if isinstance(value, str):
            return ChannelKind.parse(value)
        return ChannelKind(value)
    except (KeyError, ValueError):
        raise ChannelDescriptorError(
            f"unknown channel kind {value!r}; expected one of auto, shm, tcp, file") from None


def as_descriptor(value: "ChannelDescriptor | dict[str, Any] | str | bytes") -> ChannelDescriptor:
    """Accept a descriptor, its dict form or its JSON text."""
    if isinstance(value, ChannelDescriptor):
        value.validate()
        return value
    if isinstance(value, dict):
        return ChannelDescriptor.from_dict(value)
    if isinstance(value, (str, bytes)):
        return ChannelDescriptor.from_json(value)
    raise ChannelDescriptorError(f"not a channel descriptor: {type(value).__name__}")


def this_host() -> str:
    """The name this host reports to the gateway (``socket.gethostname()``)."""
    return socket.gethostname()


def channel_key(descriptor: ChannelDescriptor) -> bytes:
    """16 bytes naming (job, vertex, port, version): stamped into segments, files and
    the TCP handshake, so a reader never takes another channel's bytes for its own."""
    d = descriptor
    text = f"{d.job}\0{d.vertex}\0{d.port}\0{d.version}".encode()
    return hashlib.blake2b(text, digest_size=16).digest()
