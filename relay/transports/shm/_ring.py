"""The layout of an ``shm://`` segment (header words, slots, record alignment) and the
buffers that map it (see the package docstring).
"""

from __future__ import annotations

import mmap
import platform
import sys
from collections import deque

from relay.codecs.base import Buffer

DEFAULT_SEGMENT_SIZE = 1 << 20
"""Initial data area of each direction, bytes (grows on demand)."""
HEADER = 4096
SLOTS = 64
ALIGN = 64
KIND_MESSAGE = 0
KIND_GROW = 1

_W_SEQ, _W_CLOSED, _W_TIME, _W_ZERO, _W_ACK = 0, 1, 2, 3, 4
_R_SEQ, _R_CLOSED, _R_WAIT, _SLOT0 = 8, 16, 17, 24
_STRONG_ORDER = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


_TABLE = HEADER >> 3  # u64 word of a record at offset 0: its frame count


def _max_segment(limit: int) -> int:
    """Largest segment a peer may announce for messages of ``limit`` bytes (a sanity bound)."""
    return HEADER + 4 * limit + (64 << 20)

def _frame_view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError:
            view = memoryview(view.tobytes())  # not C-contiguous: one extra copy
    elif view.format != "B":
        view = view.cast("B")
    return view


# ---------------------------------------------------------------------------
# Received buffers.

POOL_MIN = 32 << 10
"""Frames of at least this many bytes are received into recycled buffers."""
POOL_SIZE = 4


class _BufferPool:
    """Recycles large receive buffers that nobody references any more.

    A fresh 150 KB ``bytearray`` per message costs ~37 page faults (~100 µs
    measured here: glibc maps buffers over 128 KiB afresh).  The pool keeps
    the last :data:`POOL_SIZE` buffers it handed out and reuses one of the
    right size only when its reference count shows that the pool holds the
    only reference (the caller and every numpy array over it are gone), so a
    buffer still in use is never overwritten: each ``recv`` still returns
    memory that no one else can see.
    """

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: deque[bytearray] = deque(maxlen=POOL_SIZE)

    def fill(self, source: memoryview) -> bytearray:
        """A buffer holding a copy of ``source`` (recycled if one is free)."""
        n = source.nbytes
        getrefcount = sys.getrefcount
        for buffer in self._buffers:
            # references: the deque, the loop variable, getrefcount's argument
            if len(buffer) == n and getrefcount(buffer) == 3:
                # through a memoryview: bytearray's own slice assignment is 2x slower
                memoryview(buffer)[:] = source
                return buffer
        buffer = bytearray(source)
        self._buffers.append(buffer)
        return buffer


# ---------------------------------------------------------------------------
# One direction of a channel.


class _Segment:
    """A mapped segment: the mmap, a byte view and a u64 view of the header."""

    __slots__ = ("map", "view", "ctl", "capacity")

    def __init__(self, mapping: mmap.mmap) -> None:
        self.map = mapping
        self.view = memoryview(mapping)
        self.ctl = self.view[:len(mapping) & ~7].cast("Q")  # header and frame tables
        self.capacity = len(mapping) - HEADER

    def close(self) -> None:
        self.ctl.release()
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # zero-copy frames still view it: unmapped when they are freed
