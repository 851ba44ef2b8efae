"""The sending half of :class:`~relay.transports.shm.ShmChannel`: placing a record in
the ring, publishing it and waking the reader (see the package docstring).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence

import posix_ipc

from relay.codecs.base import Buffer
from relay.core.errors import (
    ConnectionLost,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.transports.shm._end import _ChannelEnd
from relay.transports.shm._names import _create_segment, _forget
from relay.transports.shm._ring import (
    _R_CLOSED,
    _R_SEQ,
    _R_WAIT,
    _SLOT0,
    _STRONG_ORDER,
    _TABLE,
    _W_ACK,
    _W_SEQ,
    _W_TIME,
    _W_ZERO,
    ALIGN,
    HEADER,
    KIND_GROW,
    KIND_MESSAGE,
    SLOTS,
    _align,
    _frame_view,
    _Segment,
)

_monotonic_ns = time.monotonic_ns


class _Sender(_ChannelEnd):
    """Sends into this end's ring (the output segment)."""

    # -- sending ----------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Copy ``frames`` into the ring and wake the peer.

        Raises:
            MessageTooLarge: over ``settings.max_message_size`` (nothing sent).
            ConnectionLost: the channel or the peer is closed.
            Timeout: the peer has not released ring space within ``settings.timeout``.
        """
        if self._closed or self._lost is not None:
            self._check_usable()
        # The fast path is not counted in ``_active``: it makes no call that
        # releases the GIL, so a concurrent close() can only come between two
        # steps, and then the next one fails (a released memoryview raises
        # ValueError, a closed semaphore ExistentialError).
        try:
            ctl = self._octl
            wseq = self._wseq
            if ((self._ictl[_W_ACK] >= self._sent or ctl[_R_SEQ] >= wseq)
                    and not ctl[_R_CLOSED]):
                # The reader has released the whole ring (request/answer traffic
                # always; its answer said so in ``wack``, a cache line we have just
                # read): the record goes at offset 0, written in one pass.  A frame
                # past the ring's end falls back to _send_any.
                pos = HEADER + ((8 * (1 + len(frames)) + 15) & -16)
                end = self._oend
                view = self._oview
                w = _TABLE
                for frame in frames:
                    if isinstance(frame, (bytes, bytearray)):
                        n = len(frame)
                    elif (isinstance(frame, memoryview) and frame.format == "B"
                          and frame.c_contiguous):
                        n = frame.nbytes
                    else:
                        frame = _frame_view(frame)
                        n = frame.nbytes
                    stop = pos + n
                    if stop > end:
                        break
                    w += 1
                    ctl[w] = n
                    view[pos:stop] = frame
                    pos = (stop + ALIGN - 1) & -ALIGN
                else:
                    if pos - HEADER > self._limit:  # the record is; the frames may not be
                        total = sum(ctl[_TABLE + 1:w + 1])
                        if total > self._limit:  # never published (nor the ring grown)
                            raise MessageTooLarge(total, self._limit)
                    ctl[_TABLE] = w - _TABLE
                    # Publish (as _publish, inlined: this is the hot path), with no
                    # slot: ``wzero`` says the record is at offset 0, in the cache
                    # line of ``wseq``, which the reader reads anyway.
                    ctl[_W_ZERO] = wseq + 1
                    ctl[_W_SEQ] = wseq + 1  # the store that makes the record visible
                    # Bookkeeping after it, off the peer's critical path (a late
                    # ``wack`` only sends the peer to ``rseq``).  It is the only
                    # record in flight: _fast stands for _inflight until _send_any.
                    ctl[_W_ACK] = self._acks_base + self._rseq - self._unreleased
                    self._wseq = wseq + 1
                    self._sent += 1
                    self._fast = (wseq, pos - HEADER)
                    if _STRONG_ORDER:  # post only to a reader that sleeps (see _wake)
                        self._fence_acquire()
                        self._fence_release()
                        if not ctl[_R_WAIT]:
                            return
                    ctl[_W_TIME] = _monotonic_ns()
                    self._out_sem.release()
                    return
            self._active += 1
            try:
                self._send_any(frames)
            finally:
                self._active -= 1
                if self._closed and not self._active:
                    self._release()
        except ValueError:  # a view released by a concurrent close()
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise
        except TransportError:  # ours (ConnectionLost is an OSError too): as it is
            raise
        except (posix_ipc.Error, OSError) as exc:
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise self._lose(f"cannot wake the shm peer: {exc}") from exc

    def _send_any(self, frames: Sequence[Buffer]) -> None:
        """``send`` when the ring is not empty, the message needs growth or is too large."""
        inflight = self._inflight
        if self._fast is not None:  # the record the fast path left in flight
            inflight.clear()
            inflight.append((self._fast[0], 0, self._fast[1]))
            self._fast = None
        views: list[Buffer] = []
        sizes: list[int] = []
        size = 0
        count = len(frames)
        record = (8 * (1 + count) + 15) & -16  # the frame table, then frame 0
        for frame in frames:
            if isinstance(frame, (bytes, bytearray)):
                n = len(frame)
            elif (isinstance(frame, memoryview) and frame.format == "B"
                  and frame.c_contiguous):
                n = frame.nbytes
            else:
                frame = _frame_view(frame)
                n = frame.nbytes
            views.append(frame)
            sizes.append(n)
            size += n
            record = (record + n + ALIGN - 1) & -ALIGN
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        if self._out.ctl[_R_CLOSED]:
            raise self._peer_closed()
        if record > self._out.capacity:
            self._grow(record)
        out = self._out
        ctl = out.ctl
        if inflight and ctl[_R_SEQ] >= self._wseq:
            inflight.clear()  # the reader has released everything: start at 0
        start = self._place(record) if inflight else 0
        w = (HEADER + start) >> 3
        ctl[w] = count
        pos = HEADER + start + ((8 * (1 + count) + 15) & -16)
        view = out.view
        for i in range(count):
            n = sizes[i]
            ctl[w + 1 + i] = n
            view[pos:pos + n] = views[i]
            pos = (pos + n + ALIGN - 1) & -ALIGN
        self._publish(start, record, KIND_MESSAGE)

    def _publish(self, start: int, record: int, kind: int) -> None:
        ctl = self._out.ctl
        slot = _SLOT0 + 4 * (self._wseq % SLOTS)
        ctl[slot] = start
        ctl[slot + 1] = record
        ctl[slot + 2] = kind
        self._inflight.append((self._wseq, start, start + record))
        self._sent += 1
        ctl[_W_ACK] = self._acks_base + self._rseq - self._unreleased
        self._wseq += 1
        ctl[_W_SEQ] = self._wseq  # the store that makes the record visible
        self._wake(ctl)

    def _wake(self, ctl: memoryview) -> None:
        """Post the reader's semaphore after a publication, if it may be asleep.

        On x86 only a reader that has raised its ``rwait`` word sleeps; the
        flag is read after a full fence (the locked instructions of a
        ``threading.Lock``), as the reader reads ``wseq`` again after a fence
        once it has raised the flag: one of the two sees the other's store
        (Dekker), so a sleeping reader is always posted.  Elsewhere every
        publication is posted (the reader always waits on the semaphore).
        """
        if _STRONG_ORDER:
            self._fence_acquire()
            self._fence_release()
            if not ctl[_R_WAIT]:
                return
        ctl[_W_TIME] = _monotonic_ns()  # for the reader's _learn
        self._out_sem.release()

    def _place(self, record: int) -> int:
        """Offset in the data area where ``record`` bytes fit now (waits for space)."""
        delay = 0.0
        deadline: float | None = None
        while True:
            released = self._out.ctl[_R_SEQ]
            inflight = self._inflight
            while inflight and inflight[0][0] < released:
                inflight.popleft()
            cap = self._out.capacity
            if not inflight:
                return 0
            if self._wseq - released < SLOTS:
                first, last = inflight[0][1], inflight[-1][2]
                if last > first:  # one run [first, last): room after it, or before it
                    if cap - last >= record:
                        return last
                    if first >= record:
                        return 0
                elif first - last >= record:  # wrapped: the gap [last, first)
                    return last
            if deadline is None:
                deadline = time.monotonic() + self._send_timeout
            delay = self._wait_for_reader(deadline, delay)

    def _wait_for_reader(self, deadline: float, delay: float) -> float:
        """Back off while the reader frees ring space; check for peer death."""
        if self._out.ctl[_R_CLOSED]:
            raise self._peer_closed()
        now = time.monotonic()
        if now >= deadline:
            raise Timeout(f"the shm peer released no ring space within {self._send_timeout} s")
        if delay == 0.0:
            os.sched_yield()
            return 1e-5
        self._check_peer_alive()
        time.sleep(min(delay, max(deadline - now, 0.0)))
        return min(delay * 2, 0.005)

    def _grow(self, record: int) -> None:
        """Move the writer to a new segment big enough for ``record`` bytes."""
        capacity = max(2 * self._out.capacity, _align(record))
        name, mapping = _create_segment(HEADER + capacity)
        self._own_names.append(name)
        payload = name.encode()
        words = struct.pack("<2Q", HEADER + capacity, len(payload)) + payload
        grow_record = _align(len(words))
        try:
            start = self._place(grow_record)
        except BaseException:
            mapping.close()
            _forget(name, unlink=True)
            raise
        self._out.view[HEADER + start:HEADER + start + len(words)] = words
        self._publish(start, grow_record, KIND_GROW)
        self._out.close()
        self._use_out(_Segment(mapping))
        self._wseq = 0
        self._inflight.clear()
