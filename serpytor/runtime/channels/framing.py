"""The frame: how one serialized item is laid out in a segment, a file or a message.

::

    offset 0   prelude (32 bytes, little-endian)
                 magic b"SPTF" | version u8 | flags u8 | reserved u16 | n_buffers u32
                 crc32 u32 | header_len u64 | area_len u64
    32         buffer table: n_buffers x (offset u64, nbytes u64), offsets into the area
    ...        serializer header (header_len bytes)
    ...        padding to a multiple of 64
    area_start buffer area (area_len bytes): each buffer starts 64-byte aligned

The crc32 covers the prelude (crc field as zero), the table and the serializer header:
it catches truncated, damaged or foreign frames before anything is deserialized, and
costs nothing on large payloads because buffers are not checksummed (a 256 MiB array
would cost ~70 ms of crc32 on the hot path; the file kind keeps a whole-file digest
in its metadata instead). Aligning buffers to 64 bytes lets numpy views on a segment
or a read buffer be as aligned as freshly allocated arrays.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple, Sequence

FRAME_MAGIC = b"SPTF"
FRAME_VERSION = 1
FLAG_END = 1          # an end-of-stream frame: header = END_RECORD, no buffers
ALIGN = 64

PRELUDE = struct.Struct("<4sBBHIIQQ")
PRELUDE_SIZE = PRELUDE.size
ENTRY = struct.Struct("<QQ")
END_RECORD = struct.Struct("<QQ")  # items, bytes of frames before the end frame

MAX_BUFFERS = 1 << 20
MAX_HEADER = 1 << 40
MAX_AREA = 1 << 48


class FrameError(Exception):
    """A frame failed validation. Channels re-raise it as ChannelCorruptError with
    the channel's name; it never escapes the package."""


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class FrameLayout(NamedTuple):
    """A frame ready to be written: ``head`` bytes, then each buffer at its offset."""

    head: bytes
    offsets: tuple[int, ...]   # of each buffer, from the start of the frame
    sizes: tuple[int, ...]
    frame_len: int


class Prelude:
    """The fixed fields of a frame, validated against the format's limits."""

    __slots__ = ("flags", "n_buffers", "crc", "header_len", "area_len",
                 "head_len", "area_start", "frame_len")

    def __init__(self, flags: int, n_buffers: int, crc: int, header_len: int,
                 area_len: int) -> None:
        self.flags, self.n_buffers, self.crc = flags, n_buffers, crc
        self.header_len, self.area_len = header_len, area_len
        self.head_len = PRELUDE_SIZE + ENTRY.size * n_buffers + header_len
        self.area_start = align(self.head_len)
        self.frame_len = self.area_start + area_len


def layout_frame(header: bytes, sizes: Sequence[int], flags: int = 0) -> FrameLayout:
    """Place the buffers of one item; the head carries the table and its crc32."""
    if not sizes:  # the small-item path
        hlen = len(header)
        crc = zlib.crc32(header, zlib.crc32(
            PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, 0, 0, hlen, 0)))
        head = PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, 0, crc, hlen, 0) + header
        return FrameLayout(head, (), (), (len(head) + ALIGN - 1) & ~(ALIGN - 1))
    if len(sizes) == 1:  # one array: the common large-item path
        size = sizes[0]
        table = ENTRY.pack(0, size)
        area = align(size)
        hlen = len(header)
        crc = zlib.crc32(header, zlib.crc32(table, zlib.crc32(
            PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, 1, 0, hlen, area))))
        head = PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, 1, crc, hlen, area) \
            + table + header
        start = align(len(head))
        return FrameLayout(head, (start,), (size,), start + area)
    offsets, area, table = [], 0, b""
    if sizes:
        for size in sizes:
            offsets.append(area)
            area = align(area + size)
        table = b"".join([ENTRY.pack(o, s) for o, s in zip(offsets, sizes)])
    n, hlen = len(sizes), len(header)
    crc = zlib.crc32(header, zlib.crc32(table, zlib.crc32(
        PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, n, 0, hlen, area))))
    head = PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, flags, 0, n, crc, hlen, area) + table + header
    start = align(len(head))
    return FrameLayout(head, tuple([start + o for o in offsets]), tuple(sizes), start + area)


def end_frame(items: int, nbytes: int) -> bytes:
    """The end-of-stream frame: proves a stream was not truncated between frames."""
    layout = layout_frame(END_RECORD.pack(items, nbytes), (), FLAG_END)
    return layout.head + b"\0" * (layout.frame_len - len(layout.head))


def decode_prelude(data: bytes | memoryview) -> Prelude:
    """Check magic, version and limits of the first 32 bytes of a frame."""
    if len(data) < PRELUDE_SIZE:
        raise FrameError(f"truncated frame: {len(data)} of {PRELUDE_SIZE} prelude bytes")
    magic, version, flags, reserved, n_buffers, crc, header_len, area_len = PRELUDE.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise FrameError(f"not a serpytor frame (magic {bytes(magic)!r}, expected {FRAME_MAGIC!r})")
    if version != FRAME_VERSION:
        raise FrameError(f"frame format version {version} (this build reads {FRAME_VERSION})")
    if reserved or flags & ~FLAG_END or n_buffers > MAX_BUFFERS or header_len > MAX_HEADER \
            or area_len > MAX_AREA:
        raise FrameError(f"implausible frame fields (flags={flags}, reserved={reserved}, "
                         f"buffers={n_buffers}, header={header_len}, area={area_len})")
    return Prelude(flags, n_buffers, crc, header_len, area_len)


def decode_head(head: bytes | memoryview, prelude: Prelude) -> tuple[memoryview, list[tuple[int, int]]]:
    """Verify the crc32 and the table; return the serializer header and the
    ``(offset from frame start, nbytes)`` of every buffer."""
    view = memoryview(head)
    p = prelude
    if len(view) < p.head_len:
        raise FrameError(f"truncated frame head: {len(view)} of {p.head_len} bytes")
    # the writer's crc: the prelude with a zero crc field, then table and header
    zeroed = PRELUDE.pack(FRAME_MAGIC, FRAME_VERSION, p.flags, 0, p.n_buffers, 0,
                          p.header_len, p.area_len)
    crc = zlib.crc32(view[PRELUDE_SIZE:p.head_len], zlib.crc32(zeroed))
    if crc != p.crc:
        raise FrameError(f"frame header checksum mismatch (crc32 {crc:#010x}, "
                         f"recorded {p.crc:#010x})")
    entries = []
    start = p.area_start
    for i in range(p.n_buffers):
        offset, nbytes = ENTRY.unpack_from(view, PRELUDE_SIZE + ENTRY.size * i)
        if offset % ALIGN or offset + nbytes > p.area_len:
            raise FrameError(f"buffer {i} ({nbytes} bytes at {offset}) lies outside the "
                             f"{p.area_len}-byte buffer area")
        entries.append((start + offset, nbytes))
    table_end = PRELUDE_SIZE + ENTRY.size * p.n_buffers
    return view[table_end:p.head_len], entries


def decode_frame_head(head: bytes | memoryview) -> tuple[Prelude, memoryview, list[tuple[int, int]]]:
    """decode_prelude and decode_head of a complete head, in one call (the per-item
    path of readers that receive the head as one piece)."""
    prelude = decode_prelude(head)
    if len(head) != prelude.head_len:
        raise FrameError(f"frame head of {len(head)} bytes, expected {prelude.head_len}")
    header, entries = decode_head(head, prelude)
    return prelude, header, entries


def decode_end(header: memoryview | bytes) -> tuple[int, int]:
    """``(items, bytes)`` recorded by an end frame."""
    if len(header) != END_RECORD.size:
        raise FrameError(f"end frame of {len(header)} bytes, expected {END_RECORD.size}")
    items, nbytes = END_RECORD.unpack(header)
    return items, nbytes


def aligned_buffer(nbytes: int) -> memoryview:
    """A writable ``nbytes`` buffer starting on a 64-byte boundary: what readers fill
    with ``readinto`` / ``recv_into`` so arrays built on it are as aligned as numpy's."""
    import numpy as np
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = -raw.__array_interface__["data"][0] % ALIGN
    return memoryview(raw[skip:skip + nbytes])
