"""relay's frame header: how a multi-frame message becomes one byte string.

grpc, ws and the tcp plugin carry a message with the same layout (all
integers little-endian)::

    message := header frame_0 frame_1 ... frame_{n-1}
    header  := n:u32  len_0:u64  len_1:u64 ... len_{n-1}:u64
    frame_i := len_i raw bytes

The frames follow the header back to back, with no padding and no trailer.
A receiver checks ``n`` and ``sum(len_i)`` against its receive limit before
it reads the frames (:func:`check_count`, :func:`check_lengths`), so a
declared length only bounds what it reads and never sizes an allocation.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from relay.codecs.base import Buffer
from relay.core.errors import MessageTooLarge

__all__ = ["COUNT", "MAX_FRAMES", "check_count", "check_lengths", "header_size", "pack",
           "pack_header", "read_count", "read_lengths", "unpack"]

COUNT = struct.Struct("<I")
"""The header's first field: the number of frames (u32, little-endian)."""
MAX_FRAMES = 1 << 16
"""Most frames in one message; a header declaring more is refused."""


def pack_header(lengths: Sequence[int]) -> bytes:
    """The header of a message whose frames have these byte lengths."""
    return struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)


def pack(frames: Sequence[Buffer]) -> bytes:
    """One message as one byte string: the header, then the frames (one copy)."""
    return b"".join([pack_header([memoryview(f).nbytes for f in frames]), *frames])


def header_size(count: int) -> int:
    """Bytes of the header of a message of ``count`` frames."""
    return COUNT.size + 8 * count


def read_count(data: Buffer, offset: int = 0) -> int:
    """The frame count at ``data[offset:]`` (at least 4 bytes must be there)."""
    return int(COUNT.unpack_from(data, offset)[0])


def read_lengths(data: Buffer, count: int, offset: int = 0) -> tuple[int, ...]:
    """The ``count`` frame lengths of the header at ``data[offset:]`` (whole header there)."""
    return struct.unpack_from(f"<{count}Q", data, offset + COUNT.size)


def check_count(count: int, limit: int) -> str | None:
    """Why a header declaring ``count`` frames is refused by a receiver whose
    limit is ``limit`` bytes (over :data:`MAX_FRAMES`, or a header alone
    over the limit), or None."""
    if count > MAX_FRAMES or 8 * count > limit:
        return (f"declared {count} frames (limit {min(MAX_FRAMES, limit // 8)} with a "
                f"receive limit of {limit} bytes)")
    return None


def check_lengths(lengths: Sequence[int], limit: int) -> None:
    """Raises MessageTooLarge when the frames total over ``limit`` bytes."""
    total = sum(lengths)
    if total > limit:
        raise MessageTooLarge(total, limit)


def unpack(data: Buffer, limit: int | None = None) -> list[Buffer]:
    """The frames of one whole message (views into ``data``, no copy).

    Raises:
        ValueError: the header is malformed or the lengths do not add up to
            the size of ``data``.
        MessageTooLarge: the frames total over ``limit`` bytes (None: no limit).
    """
    view = memoryview(data).cast("B")
    if view.nbytes < COUNT.size:
        raise ValueError(f"a message of {view.nbytes} bytes has no relay header")
    count = read_count(view)
    start = header_size(count)
    if start > view.nbytes:
        raise ValueError(f"the header announces {count} frames, the message has "
                         f"{view.nbytes} bytes")
    lengths = read_lengths(view, count)
    if limit is not None:
        check_lengths(lengths, limit)
    if start + sum(lengths) != view.nbytes:
        raise ValueError(f"the frames add up to {start + sum(lengths)} bytes, the message "
                         f"has {view.nbytes}")
    frames: list[Buffer] = []
    for length in lengths:
        frames.append(view[start:start + length])
        start += length
    return frames
