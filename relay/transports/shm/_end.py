"""The state of one end of an ``shm://`` connection that its sending and receiving
halves share: construction, the current segments, closing and losing the peer.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import threading
from collections import deque
from collections.abc import Sequence

import posix_ipc

from relay.core.config import Settings
from relay.core.errors import ConnectionLost
from relay.transports.base import HANDSHAKE_LIMIT
from relay.transports.shm._names import _forget
from relay.transports.shm._ring import (
    _R_CLOSED,
    _W_CLOSED,
    HEADER,
    _BufferPool,
    _Segment,
)


class _ChannelEnd:
    """The state of an :class:`~relay.transports.shm.ShmChannel` and its life cycle."""

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
