"""The server's one ROUTER socket, shared by the listener and all its channels under one
lock: whichever thread reads it sorts the messages into per-client queues and wakes
their waiters (see the package docstring).
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import threading
import time
from collections.abc import Sequence
from typing import cast

import zmq

from relay.codecs.base import Buffer
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, spin_until
from relay.transports.zmq._socket import (
    _LIMIT_BYTES,
    _MORE,
    _NOBLOCK,
    CHECK_INTERVAL,
    CLOSE_LINGER_MS,
    MAGIC,
    _close_monitored,
    _events,
    _readable,
    _send_frames,
)


class _Waiter:
    """Messages (or new clients) queued for one thread, and how to wake it."""

    __slots__ = ("blocked", "cond", "items", "lost")

    def __init__(self, lock: threading.Lock) -> None:
        self.items: collections.deque = collections.deque()
        self.lost: str | None = None
        self.cond = threading.Condition(lock)
        self.blocked = False  # waiting on ``cond``


class _Client(_Waiter):
    """The server side of one client: its routing id, limit and descriptor."""

    __slots__ = ("fd", "ident", "limit", "receive_limit")

    def __init__(self, lock: threading.Lock, ident: bytes, limit: int, fd: int) -> None:
        super().__init__(lock)
        self.ident = ident
        self.limit = limit  # its max_message_size
        self.receive_limit = HANDSHAKE_LIMIT
        self.fd = fd


class _Router:
    """A listener's ROUTER socket shared by ``accept`` and the server channels.

    Every attribute is guarded by ``lock``.  The socket's file descriptor
    (``ZMQ_FD``) signals changes, not readiness: a thread reads every waiting
    message before it starts watching, and while one watches, whoever else
    touches the socket reads every waiting message too, so that the next one
    signals the descriptor again.
    """

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket, limit: int) -> None:
        self.sock = sock
        self.monitor = monitor
        self.limit = limit
        self.lock = threading.Lock()
        self.closed = False
        self.clients: dict[bytes, _Client] = {}
        self.by_fd: dict[int, bytes] = {}
        self.ignored: set[bytes] = set()  # closed channels whose client is still connected
        self.hellos = _Waiter(self.lock)  # new clients for accept
        self.watcher: _Waiter | None = None
        self.receiving = 0  # channel threads inside recv
        self.blocked: dict[_Waiter, None] = {}  # channels waiting on their condition
        self._resigning = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()
        self._monitor_fd = cast(int, monitor.getsockopt(zmq.FD))
        for fd in (cast(int, sock.getsockopt(zmq.FD)), self._monitor_fd, self._wake_r):
            self._poller.register(fd, select.POLLIN)

    # -- reading and sorting (lock held) -----------------------------------------

    def pump(self, until: _Waiter | None = None) -> None:
        """Sort every waiting message into its queue; with nobody watching, stop
        once ``until`` has an item (whoever watches next reads the rest first)."""
        sock = self.sock
        while _readable(sock):
            frame = sock.recv(_NOBLOCK, copy=False)
            frames = [frame]
            while frame.more:
                frame = sock.recv(_NOBLOCK, copy=False)
                frames.append(frame)
            self._dispatch(frames)
            if until is not None and until.items and self.watcher is None:
                return

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        client = self.clients.get(ident)
        if client is None:
            if ident not in self.ignored and len(frames) == 3 and frames[1].bytes == MAGIC \
                    and len(frames[2]) == _LIMIT_BYTES:
                self._hello(ident, frames)
            return  # a closed channel's client, or not a hello: ignored
        if client.lost is not None:
            return
        if not len(frames[1]):
            if len(frames) == 2:
                self.lose(client, "the client closed the connection")
                return
            del frames[1]
        size = 0
        for frame in frames:
            size += len(frame)
        size -= len(frames[0])
        if size > client.receive_limit:
            self.lose(client, f"received {over_limit(size, client.receive_limit, self.limit)}")
            return
        client.items.append([frame.buffer for frame in frames[1:]])
        self.wake(client)

    def _hello(self, ident: bytes, frames: list[zmq.Frame]) -> None:
        fd = frames[1].get(zmq.SRCFD)
        # the closing of connections before this one, so that a descriptor number
        # reused by this connection is not taken for an earlier client's
        self._read_monitor()
        earlier = self.by_fd.get(fd)
        if earlier is not None:  # its connection closed: the number was free again
            self._gone(earlier)
        client = _Client(self.lock, ident, int.from_bytes(frames[2].bytes, "little"), fd)
        self.clients[ident] = client
        if fd >= 0:  # -1: libzmq did not say (then only a failed send tells)
            self.by_fd[fd] = ident
        self.hellos.items.append(client)
        self.wake(self.hellos)

    def _read_monitor(self) -> None:
        for event, fd in _events(self.monitor):
            if event == zmq.EVENT_DISCONNECTED:
                ident = self.by_fd.pop(fd, None)
                if ident is not None:
                    self._gone(ident)

    def _gone(self, ident: bytes) -> None:
        """The connection of client ``ident`` closed."""
        client = self.clients.get(ident)
        if client is not None:
            self.lose(client, "the client disconnected")
        self.ignored.discard(ident)

    def enter_recv(self) -> None:
        """A channel thread starts waiting: ``accept`` stops watching for it."""
        self.receiving += 1
        if self.watcher is self.hellos and not self._resigning:
            self._resigning = True
            self._poke()

    def lose(self, client: _Client, reason: str) -> None:
        if client.lost is None:
            client.lost = reason
            self.wake(client)

    def wake(self, waiter: _Waiter) -> None:
        """Wake ``waiter``'s thread if it sleeps (it has a message or lost its client)."""
        if waiter is self.watcher:
            self._poke()
        elif waiter.blocked:
            waiter.cond.notify()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    # -- sending (lock held) ---------------------------------------------------

    def send(self, ident: bytes, frames: Sequence[Buffer], escape: bool = False) -> None:
        """One message to a client.  Raises zmq.Again (its queue is full) or
        zmq.ZMQError (EHOSTUNREACH: it left)."""
        sock = self.sock
        sock.send(ident, _MORE)
        if escape:
            sock.send(b"", _MORE)
        _send_frames(sock, frames)
        if self.watcher is not None and _readable(sock):
            self.pump()  # the send may have taken the signal of the descriptor it watches

    # -- waiting (lock held) ---------------------------------------------------

    def wait(self, waiter: _Waiter, deadline: float) -> None:
        """Return once ``waiter`` has an item or lost its client, the router is
        closed, or ``deadline`` (``time.monotonic()``) passed.  Releases the
        lock while it sleeps: as the watcher, polling the socket's descriptor,
        or on ``waiter.cond``.  ``accept`` watches only while no channel is in
        ``recv``; a channel that finds it watching asks it to step aside."""
        channel = waiter is not self.hellos
        try:
            while not self.closed:
                self.pump(waiter)
                if waiter.items or waiter.lost is not None:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                step = min(remaining, CHECK_INTERVAL)
                if self.watcher is None and (channel or not self.receiving):
                    if self._watch(waiter, step):
                        self._read_monitor()
                    continue
                if not channel:
                    self._hand_over()
                waiter.blocked = True
                if channel:
                    self.blocked[waiter] = None
                try:
                    waiter.cond.wait(step)
                finally:
                    waiter.blocked = False
                    self.blocked.pop(waiter, None)
                if not self.closed:
                    self._read_monitor()  # the watcher may be busy elsewhere
        finally:
            self._hand_over()

    def _watch(self, waiter: _Waiter, seconds: float) -> bool:
        """Wait (lock released) until the socket, its monitor or a poke signal;
        True if the monitor did."""
        self.watcher = waiter
        self.lock.release()
        try:
            ready = self._poller.poll(seconds * 1000)
        finally:
            self.lock.acquire()
            self.watcher = None
            if waiter is self.hellos:
                self._resigning = False
        if self.closed:
            self._close_pipe()
            return False
        fds = {fd for fd, _ in ready}
        if self._wake_r in fds:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        return self._monitor_fd in fds

    def _hand_over(self) -> None:
        """With nobody watching, wake a blocked channel to watch."""
        if self.watcher is None and self.blocked:
            next(iter(self.blocked)).cond.notify()

    def spin(self, client: _Client, budget_ns: int) -> bool:
        """Read the socket (when nobody else does) until ``client`` has an item or
        lost, for up to ``budget_ns``; no lock held.  True if it has."""

        def ready() -> bool:
            if client.items or client.lost is not None:
                return True
            if self.lock.acquire(blocking=False):
                try:
                    if not self.closed:
                        self.pump(client)
                finally:
                    self.lock.release()
            return bool(client.items) or client.lost is not None or self.closed

        return spin_until(ready, budget_ns)

    # -- lifetime (lock held) --------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for client in self.clients.values():
            self.lose(client, "the server closed the listener")
        for waiter in (self.hellos, *self.blocked):
            waiter.cond.notify_all()
        self._poke()
        _close_monitored(self.sock, self.monitor, CLOSE_LINGER_MS)
        if self.watcher is None:
            self._close_pipe()

    def _close_pipe(self) -> None:
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
