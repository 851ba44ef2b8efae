""":class:`ShmChannel`: one end of an ``shm://`` connection, sending into its ring and
receiving from the peer's (see the package docstring for the layout and the wake-up).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence

import posix_ipc

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectionLost,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.transports.base import HANDSHAKE_LIMIT, over_limit
from relay.transports.shm._names import _create_segment, _forget, _open_segment
from relay.transports.shm._ring import (
    _R_CLOSED,
    _R_SEQ,
    _R_WAIT,
    _SLOT0,
    _STRONG_ORDER,
    _TABLE,
    _W_ACK,
    _W_CLOSED,
    _W_SEQ,
    _W_TIME,
    _W_ZERO,
    ALIGN,
    HEADER,
    KIND_GROW,
    KIND_MESSAGE,
    POOL_MIN,
    SLOTS,
    _align,
    _BufferPool,
    _frame_view,
    _max_segment,
    _Segment,
)

# The spin budget is relay's common one (``?spin=``, default 250 µs,
# relay.transports.base.DEFAULT_SPIN_US): it must cover the peer's whole turn
# (decode, ``env.step``, encode: 50-200 µs for relay on a 2-core virtual
# machine), not only the transport.  With 50 µs the spin switches itself off
# and every message pays a 50-100 µs futex wake-up.  Measured, a CartPole step over shm, median
# of 5000: 233/239 µs at 50, 166/173 at 150, 163/150 at 300.
SLICE = 0.05
"""Longest single semaphore wait, seconds: the bound on noticing a dead peer."""
PURE_SPIN_NS = 2_000
"""Nanoseconds of plain polling before the spin starts calling ``sched_yield``."""

_SEM_TIMEOUT = bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED)
_LEARN_CAP = 10_000_000
_monotonic_ns = time.monotonic_ns
_sched_yield = os.sched_yield


class ShmChannel:
    """One end of an ``shm://`` connection (see the module docstring for the layout).

    Use from one thread at a time (``close`` may come from any thread).
    """

    def __init__(self, sock: socket.socket, out_map: mmap.mmap, in_map: mmap.mmap,
                 out_sem: posix_ipc.Semaphore, in_sem: posix_ipc.Semaphore,
                 settings: Settings, *, spin: int, own_names: Sequence[str] = ()) -> None:
        self._sock = sock
        self._out = out = _Segment(out_map)
        self._in = inn = _Segment(in_map)
        # the hot path's views of the current segments (see _use_out, _use_in)
        self._octl, self._oview, self._oend = out.ctl, out.view, HEADER + out.capacity
        self._ictl, self._iview, self._iend = inn.ctl, inn.view, HEADER + inn.capacity
        self._out_sem = out_sem
        self._in_sem = in_sem
        self._limit = settings.max_message_size
        self._receive_limit = HANDSHAKE_LIMIT
        self._send_timeout = settings.timeout
        self._zero_copy = settings.zero_copy
        self._spin = spin
        self._own_names = list(own_names)
        self._wseq = 0
        self._inflight: deque[tuple[int, int, int]] = deque()  # (seq, start, end)
        self._rseq = 0
        self._sent = 0  # records published, all segments (grow records too)
        self._fast: tuple[int, int] | None = None  # (seq, end): see send
        self._acks_base = 0  # records released from earlier input segments (for ``wack``)
        self._unreleased = False
        self._closed = False
        self._released = False
        self._active = 0  # send/recv calls in progress (close may come from another thread)
        self._lost: str | None = None
        self._drain = False  # lost, but the peer's published records may be received
        fence = threading.Lock()  # this channel's memory fence, see _wake
        self._fence_acquire = fence.acquire
        self._fence_release = fence.release
        self._typical = spin // 2  # running typical wait for a message, ns
        self._pool = _BufferPool()

    def _use_out(self, seg: _Segment) -> None:
        """Make ``seg`` the output segment (its views cached for the hot path)."""
        self._out = seg
        self._octl, self._oview, self._oend = seg.ctl, seg.view, HEADER + seg.capacity

    def _use_in(self, seg: _Segment) -> None:
        """Make ``seg`` the input segment (its views cached for the hot path)."""
        self._in = seg
        self._ictl, self._iview, self._iend = seg.ctl, seg.view, HEADER + seg.capacity

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

    # -- receiving --------------------------------------------------------

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Wait up to ``timeout`` seconds (None: forever) for the next message.

        Returns fresh ``bytearray`` frames, or ``memoryview`` s into the ring
        valid until the next ``recv`` when the channel has ``zero_copy``.

        Raises:
            Timeout: nothing arrived in time (the channel stays usable).
            ConnectionLost: the peer closed or died, or sent a malformed or
                oversized record (the connection is dropped then).  What the
                peer published before it closed is still received, also after
                a ``send`` found it closed.
        """
        if self._closed or self._lost is not None and not (
                self._drain and self._ictl[_W_SEQ] > self._rseq):
            self._check_usable()
        # As in send, only the calls that may release the GIL (_block, _locate)
        # are counted in ``_active``.
        try:
            ctl = self._ictl
            rseq = self._rseq
            if self._unreleased:
                self._unreleased = False
                ctl[_R_SEQ] = rseq
            if not _STRONG_ORDER or ctl[_W_SEQ] <= rseq:
                # Not there yet: spin (inlined, the hot path), then block (_block).
                began = now = _monotonic_ns()
                if self._typical <= self._spin:  # (a spin of 0 ends at once)
                    end = began + self._spin
                    polite = began + PURE_SPIN_NS
                    while now < end:
                        if ctl[_W_SEQ] > rseq:
                            # learn (as _learn) from our own clock: the spin sees the
                            # publication within one check
                            self._typical += (now - began - self._typical) // 8
                            break
                        if now >= polite:
                            _sched_yield()  # let the peer (or anyone) have this core
                        now = _monotonic_ns()
                    else:
                        self._block(self._in, timeout, began)
                else:
                    self._block(self._in, timeout, began)
            if ctl[_W_ZERO] == rseq + 1:  # a message at offset 0, no slot
                w = _TABLE
                end = self._iend
            else:  # from its slot, after any grow records
                w, end = self._locate(timeout)
                ctl = self._ictl
                rseq = self._rseq
            # Read the record (see the module docstring for its layout); the
            # bounds are checked once, after the loop (slices never overrun).
            count = ctl[w]
            pos = (w << 3) + ((8 * (1 + count) + 15) & -16)
            if pos > end:
                raise self._lose("malformed shm record: frame table larger than the record")
            view = self._iview
            frames: list[Buffer] = []
            if self._zero_copy:
                for n in ctl[w + 1:w + 1 + count]:
                    stop = pos + n
                    frames.append(view[pos:stop])
                    pos = (stop + ALIGN - 1) & -ALIGN
                self._unreleased = True  # released by the next recv
            else:
                # checked before copying: the peer's lengths may claim its whole
                # (possibly sparse, so free to make) segment
                bound = min(end, (w << 3) + self._receive_limit)
                for n in ctl[w + 1:w + 1 + count]:
                    stop = pos + n
                    if stop > bound:
                        self._check_record(ctl, w, count, end)
                        bound = end  # in the limit: the record's padding went past it
                    frames.append(bytearray(view[pos:stop]) if n < POOL_MIN
                                  else self._pool.fill(view[pos:stop]))
                    pos = (stop + ALIGN - 1) & -ALIGN
                ctl[_R_SEQ] = rseq + 1
            self._rseq = rseq + 1
            if pos > end or pos - (w << 3) > self._receive_limit:
                self._check_record(ctl, w, count, end)
            return frames
        except ValueError:  # a view released by a concurrent close()
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise

    def _check_record(self, ctl: memoryview, w: int, count: int, end: int) -> None:
        """Raise ConnectionLost for a record past ``end`` or over the size limit."""
        sizes = list(ctl[w + 1:w + 1 + count])
        total = sum(sizes)
        if total > self._receive_limit:
            raise self._lose(f"the peer sent {over_limit(total, self._receive_limit, self._limit)}"
                             "; connection dropped")
        pos = (w << 3) + ((8 * (1 + count) + 15) & -16)
        for n in sizes:
            if pos + n > end:
                raise self._lose("malformed shm record: frames larger than the record")
            pos = (pos + n + ALIGN - 1) & -ALIGN

    def _locate(self, timeout: float | None) -> tuple[int, int]:
        """Find the published record ``self._rseq`` from its slot, following grow records.

        Returns:
            (w, end): the record's first u64 word and its end (byte offset) in
            the (possibly new) input segment.
        """
        self._active += 1
        try:
            seg = self._in
            while True:
                ctl = seg.ctl
                rseq = self._rseq
                if ctl[_W_ZERO] == rseq + 1:
                    return _TABLE, HEADER + seg.capacity
                slot = _SLOT0 + 4 * (rseq % SLOTS)
                kind = ctl[slot + 2]
                if kind == KIND_MESSAGE:
                    start = ctl[slot]
                    length = ctl[slot + 1]
                    if start + length > seg.capacity or length < 8:
                        raise self._lose("malformed shm record: outside the segment")
                    return (HEADER + start) >> 3, HEADER + start + length
                if kind != KIND_GROW:
                    raise self._lose(f"malformed shm record kind {kind}")
                seg = self._switch(seg, ctl[slot], ctl[slot + 1])
                if not (_STRONG_ORDER and seg.ctl[_W_SEQ] > 0):
                    self._block(seg, timeout, _monotonic_ns())  # its message follows at once
        finally:
            self._active -= 1
            if self._closed and not self._active:
                self._release()

    def _block(self, seg: _Segment, timeout: float | None, began: int) -> None:
        """Return once message ``self._rseq`` is published.

        Raises the ``rwait`` flag and blocks on the semaphore in slices of
        :data:`SLICE` seconds, checking for a dead peer in between.  ``began``
        (monotonic ns) is when ``recv`` started waiting, for :meth:`_learn`.

        Raises:
            Timeout: not within ``timeout`` seconds.  ConnectionLost: closed.
        """
        ctl = seg.ctl
        want = self._rseq
        deadline = None if timeout is None else time.monotonic() + timeout
        sem = self._in_sem
        looked = False
        self._active += 1
        try:
            while True:
                if self._closed:  # close() from another thread posted our semaphore
                    raise ConnectionLost("the shm channel was closed")
                if _STRONG_ORDER:
                    if ctl[_W_SEQ] > want:
                        self._learn(ctl, began)
                        return
                    # Raise the flag, fence, look again, and only then sleep: the
                    # writer fences between publishing and reading the flag (_wake).
                    if not ctl[_R_WAIT]:
                        ctl[_R_WAIT] = 1
                        self._fence_acquire()
                        self._fence_release()
                        continue
                if ctl[_W_CLOSED]:
                    if ctl[_W_SEQ] > want:
                        return
                    raise self._lose("the peer closed the shm channel")
                if deadline is None:
                    wait = SLICE
                else:
                    wait = min(deadline - time.monotonic(), SLICE)
                    if wait <= 0:
                        if looked:
                            self._check_peer_alive()
                            self._learn(ctl, began)
                            raise Timeout(f"no shm message within {timeout} s")
                        looked = True  # one non-blocking try (recv(0) takes a posted message)
                        wait = 0.0
                try:
                    if _SEM_TIMEOUT:
                        sem.acquire(wait)
                    else:  # acquire(timeout) would wait forever: poll
                        sem.acquire(0)
                except posix_ipc.BusyError:
                    if not _SEM_TIMEOUT:
                        time.sleep(min(wait, 0.0002))
                    self._check_peer_alive()
                    continue
                except posix_ipc.SignalError:
                    continue  # the Python-level handler runs at the next bytecode
                except (posix_ipc.Error, OSError) as exc:
                    raise self._lose(f"waiting on the semaphore failed: {exc}") from exc
                if not _STRONG_ORDER and ctl[_W_SEQ] > want:
                    self._learn(ctl, began)
                    return
        finally:
            if _STRONG_ORDER:
                with contextlib.suppress(ValueError):  # released by a concurrent close()
                    ctl[_R_WAIT] = 0
            self._active -= 1
            if self._closed and not self._active:
                self._release()

    def _learn(self, ctl: memoryview, began: int) -> None:
        """Fold how long the peer took into the running typical wait (EWMA, weight
        1/8, each sample capped at 10 ms).

        Measured from the time the writer stamps when it posts (``wtime``), so
        the cost of our own wake-up is not counted; from our own clock when
        the stamp is older than ``began`` (no post was needed, or a slice
        ended first).
        """
        now = _monotonic_ns()
        stamp = ctl[_W_TIME]
        waited = (stamp if began <= stamp <= now else now) - began
        self._typical += (min(waited, _LEARN_CAP) - self._typical) // 8

    def _switch(self, seg: _Segment, start: int, length: int) -> _Segment:
        if start + length > seg.capacity or length < 16:
            raise self._lose("malformed shm grow record")
        size, n = struct.unpack_from("<2Q", seg.map, HEADER + start)
        if n > length - 16:
            raise self._lose("malformed shm grow record")
        name = bytes(seg.view[HEADER + start + 16:HEADER + start + 16 + n]).decode(
            "ascii", "replace")
        if size > _max_segment(self._receive_limit):
            raise self._lose(f"the peer's new segment of {size} bytes is over the limit")
        try:
            new = _Segment(_open_segment(name, _max_segment(self._receive_limit)))
        except ConnectionLost as exc:
            raise self._lose(str(exc)) from exc
        self._rseq += 1
        seg.ctl[_R_SEQ] = self._rseq
        self._acks_base += self._rseq
        # The writer has left the old segment.  Zero-copy frames of the previous
        # message may still view it (they expired with this recv): then the
        # mapping lives on until they are freed, as _Segment.close allows.
        seg.close()
        self._use_in(new)
        self._rseq = 0
        return new

    # -- state ------------------------------------------------------------

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then)."""
        self._receive_limit = nbytes

    def _check_usable(self) -> None:
        if self._closed:
            raise ConnectionLost("the shm channel is closed")
        if self._lost is not None:
            raise ConnectionLost(self._lost)

    def _check_peer_alive(self) -> None:
        """Raise ConnectionLost if the rendezvous socket shows EOF or an error."""
        try:
            data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError) as exc:
            raise self._lose(f"the shm peer went away: {exc}") from exc
        if not data:
            raise self._lose("the shm peer went away (its socket closed)")

    def _lose(self, reason: str) -> ConnectionLost:
        self._lost = reason
        return ConnectionLost(reason)

    def _peer_closed(self) -> ConnectionLost:
        """``_lose`` for a send that found the peer closed: the records it
        published before (its last answer, an ``Error``) can still be received."""
        self._drain = True
        return self._lose("the peer closed the shm channel")

    def close(self) -> None:
        """Tell the peer, release the mappings, semaphores and socket; idempotent.

        From another thread while a ``send``/``recv`` runs, that call raises
        ``ConnectionLost`` promptly and the resources are released when it
        returns (never under its feet).
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, IndexError, TypeError):
            self._out.ctl[_W_CLOSED] = 1
            self._in.ctl[_R_CLOSED] = 1
        for sem in (self._out_sem, self._in_sem):  # wake the peer, and our own waiter
            with contextlib.suppress(posix_ipc.Error, OSError):
                sem.release()
        for name in self._own_names:
            _forget(name, unlink=True)
        if not self._active:
            self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for sem in (self._out_sem, self._in_sem):
            with contextlib.suppress(posix_ipc.Error, OSError):
                sem.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        for seg in (self._out, self._in):
            seg.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "lost" if self._lost else "open"
        return f"<ShmChannel {state} out={self._out.capacity} in={self._in.capacity}>"


# ---------------------------------------------------------------------------
# Handshake helpers.
