"""The data plane: channels that move vertex outputs between processes.

Layers, bottom up (each module imports only those above it in this list):

* ``errors``, ``descriptor`` -- what the control plane sees: JSON descriptors, errors
  that name the channel;
* ``framing``, ``serialize`` -- the frame format (magic, lengths, header crc32) and the
  pluggable serializers (pickle protocol 5 with out-of-band buffers by default);
* ``base`` -- the one writer/reader interface and its statistics;
* ``segments``, ``shm`` / ``tcp`` / ``file`` -- the three kinds of Dryad channel;
* ``select``, ``api`` -- choosing a kind and opening either end.

Everything public is re-exported here; the modules themselves are implementation.
"""

from .api import default_directory, open_reader, open_writer, read_value, write_value
from .base import DEFAULT_TIMEOUT, ChannelReader, ChannelStatistics, ChannelWriter
from .descriptor import ChannelDescriptor, channel_key
from .errors import (ChannelBrokenError, ChannelClosedError, ChannelCorruptError,
                     ChannelDescriptorError, ChannelError, ChannelExistsError,
                     ChannelNotFoundError, ChannelSerializationError, ChannelTimeoutError,
                     EndOfChannel)
from .file import (FileReader, FileWriter, content_digest, locate_output, metadata_path,
                   open_output, output_descriptor, output_digest, output_path,
                   sweep_partial_files)
from .segments import SegmentPool, close_pools, list_segments, sweep_segments
from .select import same_host, select_channel
from .serialize import (INBAND_LIMIT, JsonSerializer, NdarraySerializer, PickleSerializer,
                        Serializer, get_serializer, register_serializer, serializer_names)
from .shm import ShmReader, ShmWriter
from .tcp import TcpReader, TcpWriter

__all__ = [
    "DEFAULT_TIMEOUT", "INBAND_LIMIT",
    "ChannelBrokenError", "ChannelClosedError", "ChannelCorruptError", "ChannelDescriptor",
    "ChannelDescriptorError", "ChannelError", "ChannelExistsError", "ChannelNotFoundError",
    "ChannelReader", "ChannelSerializationError", "ChannelStatistics", "ChannelTimeoutError",
    "ChannelWriter", "EndOfChannel", "FileReader", "FileWriter", "JsonSerializer",
    "NdarraySerializer", "PickleSerializer", "SegmentPool", "Serializer", "ShmReader",
    "ShmWriter", "TcpReader", "TcpWriter", "channel_key", "close_pools", "content_digest",
    "default_directory", "get_serializer", "list_segments", "locate_output",
    "metadata_path", "open_output", "open_reader", "open_writer", "output_descriptor",
    "output_digest", "output_path", "read_value", "register_serializer", "same_host",
    "select_channel", "serializer_names", "sweep_partial_files", "sweep_segments",
    "write_value",
]
