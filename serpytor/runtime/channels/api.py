"""Opening channels: one entry point per end, plus one-shot helpers.

The producer calls :func:`open_writer` (or :func:`write_value` for its single output)
and hands ``writer.descriptor`` -- JSON-safe -- to the control plane; the consumer,
in any process, calls :func:`open_reader` (or :func:`read_value`) on it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ...compiler.kinds import ChannelKind
from .base import DEFAULT_TIMEOUT, ChannelReader, ChannelWriter
from .descriptor import ChannelDescriptor, as_descriptor, parse_kind, this_host
from .errors import ChannelError, EndOfChannel
from .file import FileReader, FileWriter
from .segments import job_token
from .select import select_channel
from .shm import ShmReader, ShmWriter
from .tcp import TcpReader, TcpWriter


# not "serpytor": a directory of that name in the temp directory would shadow the
# package for a script run from there
CHANNEL_DIR_NAME = "serpytor-channels"


def default_directory(job: str) -> Path:
    """Where file channels go when no directory is given: ``$SERPYTOR_CHANNEL_DIR`` or
    ``<tmp>/serpytor-channels/<job>``."""
    root = os.environ.get("SERPYTOR_CHANNEL_DIR") or Path(tempfile.gettempdir()) / CHANNEL_DIR_NAME
    return Path(root) / (job_token(job) if job else "default")


def open_writer(kind: ChannelKind | str, *, vertex: str, port: int = 0, version: int = 0,
                job: str = "", readers: int = 1, serializer: str = "pickle",
                producer_host: str | None = None, consumer_host: str | None = None,
                concurrent: bool = False, directory: str | os.PathLike[str] | None = None,
                durable: bool = False, bind: str = "tcp://127.0.0.1:*",
                advertise: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                size_hint: int = 0, security: Any = None) -> ChannelWriter:
    """A writer for output ``port`` of ``vertex`` (execution ``version``) of ``job``.

    ``kind`` ``auto`` is resolved by :func:`select_channel` from the hosts and
    ``concurrent``. Kind-specific options: ``directory``/``durable`` (file),
    ``bind``/``advertise``/``timeout``/``security`` (tcp: a SecurityConfig for CURVE),
    ``size_hint`` (shm first segment).
    """
    requested = parse_kind(kind)
    here = this_host()
    chosen = select_channel(requested, producer_host or here, consumer_host or here, concurrent)
    descriptor = ChannelDescriptor(chosen, "", vertex=vertex, port=port, version=version,
                                   job=job, serializer=serializer, readers=readers,
                                   requested=requested, host=producer_host or here)
    descriptor.validate()
    if chosen == ChannelKind.SHM:
        return ShmWriter(descriptor, size_hint=size_hint)
    if chosen == ChannelKind.TCP:
        return TcpWriter(descriptor, bind=bind, advertise=advertise, timeout=timeout,
                         security=security)
    folder = Path(directory) if directory is not None else default_directory(job)
    folder.mkdir(parents=True, exist_ok=True)
    return FileWriter(descriptor, directory=folder, durable=durable)


def open_reader(descriptor: ChannelDescriptor | dict[str, Any] | str | bytes, *,
                timeout: float = DEFAULT_TIMEOUT, verify: bool = False,
                security: Any = None) -> ChannelReader:
    """A reader for the channel ``descriptor`` names (object, dict or JSON text).
    ``timeout`` bounds every wait; ``verify`` re-checks a file's digest first;
    ``security`` (tcp) a SecurityConfig for CURVE."""
    d = as_descriptor(descriptor)
    if d.kind == ChannelKind.SHM:
        return ShmReader(d, timeout)
    if d.kind == ChannelKind.TCP:
        return TcpReader(d, timeout, security=security)
    return FileReader(d, timeout, verify=verify)


def write_value(value: Any, kind: ChannelKind | str, **options: Any) -> ChannelDescriptor:
    """Write one value as a whole channel; returns the final descriptor. For tcp this
    returns once the reader(s) received it, so run the consumer concurrently."""
    with open_writer(kind, **options) as writer:
        writer.write(value)
    return writer.descriptor


def read_value(descriptor: ChannelDescriptor | dict[str, Any] | str | bytes, *,
               timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Read the one value of a single-item channel and release the channel."""
    with open_reader(descriptor, timeout=timeout) as reader:
        try:
            value = reader.read()
        except EndOfChannel:
            raise ChannelError("the channel is empty; expected exactly one item",
                               reader.descriptor) from None
        try:
            reader.read()
        except EndOfChannel:
            return value
        raise ChannelError("the channel holds more than one item; iterate a reader",
                           reader.descriptor)
