""":class:`ShmChannel`: one end of an ``shm://`` connection; its receiving half is
here, its sending half in ``_send`` (see the package docstring for the layout and
the wake-up).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

import posix_ipc

from relay.codecs.base import Buffer
from relay.core.errors import (
    ConnectionLost,
    Timeout,
)
from relay.transports.base import over_limit
from relay.transports.shm._names import _open_segment
from relay.transports.shm._ring import (
    _R_SEQ,
    _R_WAIT,
    _SLOT0,
    _STRONG_ORDER,
    _TABLE,
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
    _max_segment,
    _Segment,
)
from relay.transports.shm._send import _Sender

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


class ShmChannel(_Sender):
    """One end of an ``shm://`` connection (see the module docstring for the layout).

    Use from one thread at a time (``close`` may come from any thread).
    """

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
