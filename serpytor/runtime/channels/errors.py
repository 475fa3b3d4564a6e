"""The errors a channel raises.

Every message names the channel it is about, as ``<kind> channel <vertex>:<port>
v<version> at <location>``, so a log line is enough to find the producer, the consumer
and the bytes on disk or in ``/dev/shm``. The descriptor itself is kept on the error
(``error.descriptor``) for code that wants to re-execute the producer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import SerpytorError

if TYPE_CHECKING:
    from .descriptor import ChannelDescriptor


def channel_label(descriptor: ChannelDescriptor | None) -> str:
    """``shm channel merge:0 v2 at spt-job-1f-3a`` -- how messages name a channel."""
    if descriptor is None:
        return "channel"
    d = descriptor
    return f"{d.kind} channel {d.vertex}:{d.port} v{d.version} at {d.location or '?'}"


class ChannelError(SerpytorError):
    """Something went wrong moving data along a channel.

    Catch this to treat every channel failure alike (the usual reaction is to
    re-execute the producer, as Dryad does when a channel's data is lost).
    """

    def __init__(self, message: str, descriptor: ChannelDescriptor | None = None) -> None:
        self.descriptor = descriptor
        self.reason = message
        super().__init__(f"{channel_label(descriptor)}: {message}")


class ChannelClosedError(ChannelError):
    """The writer or reader was used after its own ``close()``; open a new one."""


class ChannelBrokenError(ChannelError):
    """The other end went away: the producer died or abandoned the channel before
    closing it, or the consumer disconnected before the end of the stream. The data
    is incomplete; re-execute the producer."""


class ChannelExistsError(ChannelError):
    """A file channel's output already exists under this (vertex, port, version): a
    re-execution must write a new execution version, never overwrite one a consumer
    may be reading."""


class ChannelNotFoundError(ChannelError):
    """No channel answers at the descriptor's location within the timeout: it was
    never written, was already released by its readers, was swept, or its producer
    is gone. Check the descriptor or re-execute the producer."""


class ChannelCorruptError(ChannelError):
    """The bytes read are not a valid frame of this channel: truncated, damaged
    (bad magic, length or header checksum) or written for another channel. Nothing
    was deserialized from them; re-execute the producer."""


class ChannelTimeoutError(ChannelError, TimeoutError):
    """A blocking channel operation did not complete within its timeout while the
    other end still looked alive. Retry with a longer ``timeout`` or check the peer."""


class ChannelSerializationError(ChannelError, TypeError):
    """The serializer cannot encode this value (for ``pickle``: a lambda, a socket,
    ...; for ``ndarray``: anything that is not a numpy array). Nothing was written."""


class ChannelDescriptorError(ChannelError, ValueError):
    """A channel descriptor is malformed: a missing field, a wrong type, an unknown
    kind or serializer. Descriptors come from ``writer.descriptor``; do not edit them."""


class EndOfChannel(SerpytorError):
    """``read()`` found the end of the stream: the producer closed the channel and
    every item was delivered. Not a failure; iteration stops on it."""

    def __init__(self, descriptor: ChannelDescriptor | None = None) -> None:
        self.descriptor = descriptor
        super().__init__(f"{channel_label(descriptor)}: end of channel")
