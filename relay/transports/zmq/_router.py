"""``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH``: relay over ZeroMQ (pyzmq).

Design (one port or ipc path per server, one server thread per channel):

* The :class:`ZmqListener` binds one ROUTER socket and nothing else; every
  client connects one DEALER to it.  A client's first message is the hello
  ``[b"relay-zmq/2", LIMIT]`` (LIMIT: its ``max_message_size``, 8 bytes
  little-endian); ``accept`` answers ``[b"relay-zmq/2", LIMIT]`` with the
  server's own and returns the channel of that client (its ROUTER routing
  id).  A first message that is not a hello is ignored.  ``connect`` returns
  once the answer came (ZeroMQ retries a refused connection meanwhile, so a
  server still starting is waited for until the deadline).
  Both sides then know the other's limit: ``send`` refuses a message over
  either with ``MessageTooLarge`` naming it, where ZeroMQ itself would drop
  the connection without a word (``MAXMSGSIZE``).
* A relay message is one ZeroMQ multipart message (frames kept as is; frames
  of :data:`ZERO_COPY_MIN` bytes and more are sent without a copy, received
  frames are writable ``memoryview`` s over ZeroMQ's buffer, no copy either).
  A message of one empty frame is the *close notice*: the server closed the
  channel.  It travels behind every message sent before it, so a refused
  client always reads the server's error frame first (a message whose first
  frame is empty is sent with one more empty frame in front).
* Server side, the ROUTER socket is shared by the listener's ``accept`` and
  all its channels, used under one lock (ZeroMQ sockets are not thread-safe;
  a lock that orders every use makes them safe to share).  Whichever thread
  reads the socket sorts the messages into per-channel queues.  A waiting
  ``recv`` first polls for up to ``?spin=`` microseconds
  (:data:`relay.transports.base.DEFAULT_SPIN_US`), reading the socket itself
  and yielding the core (a sleep plus wake-up costs 50-100 µs);
  then it blocks.  Of the blocked threads, one (the *watcher*, a channel
  rather than ``accept``) waits on the socket's file descriptor and wakes
  those whose messages it reads; the others wait on their own condition.  A
  lone client's round trip costs a few µs more than on a socket of its own
  (a routing-id frame, a lock, the sorting); with several clients waiting at
  once, a message for a non-watcher costs one more wake-up, and spinning
  threads read each other's messages.  Measured (relay bench, median µs
  S/M/L, interleaved rounds against the design with one extra socket and
  port per client that this replaced): zmq+ipc 169/165/196 vs 165/162/188,
  zmq+tcp 195/189/257 vs 187/191/230; four clients stepping CartPole at
  once over one zmq+tcp server: 508 vs 669 µs per step.  ``?spin=0`` turns
  spinning off (an idle agent or env then costs no CPU at all).
* Client side, the channel is its DEALER: ``send`` is one ``zmq_msg_send``
  per frame (non-blocking); ``recv`` one blocking ``zmq_msg_recv`` per frame
  with ``RCVTIMEO`` of at most :data:`CHECK_INTERVAL`, after the same spin.
* Peer death.  Each socket has a monitor socket on a unique inproc address,
  read only when a wait expires or (server) when its descriptor wakes the
  watcher.
  A client's ``EVENT_DISCONNECTED`` (or a failed handshake) turns into
  ``ConnectionLost`` once no data is left.  The server learns which client
  left from the file descriptor in the event: each client's descriptor is
  taken from its hello (``ZMQ_SRCFD``), after reading the monitor, so a
  reused descriptor number is never mistaken for an earlier client's (a
  hello arriving on a descriptor ends the client that had it).  ZMTP
  heartbeats (:data:`HEARTBEAT_IVL_MS`, :data:`HEARTBEAT_TIMEOUT_MS`) drop a
  peer that stopped answering (a frozen process, a lost machine), so a dead
  peer is noticed within :data:`CHECK_INTERVAL` seconds of its connection
  closing.  A client's DEALER keeps ZeroMQ's reconnection on although its
  channel is lost at the first disconnect: with reconnection off, libzmq
  drops the messages that arrived but were not read yet as soon as it
  processes the disconnect (any ``poll`` or ``send`` does), and an idle
  client would lose the server's last words (``ServerClosing``).  The
  socket is closed once those are read.

Safety settings: ``LINGER 0`` on every client socket (closing never blocks)
and :data:`CLOSE_LINGER_MS` on the listener (so close notices and final error
frames still leave), ``MAXMSGSIZE`` = ``settings.max_message_size`` (a
larger frame from a foreign peer drops that peer's connection; a message is
also checked against the channel's receive limit,
:data:`~relay.transports.base.HANDSHAKE_LIMIT` until the handshake),
``ROUTER_MANDATORY`` (a send to a client that left fails instead of
vanishing), one context per process (re-created after ``fork``), and every
``zmq.ZMQError`` translated to the :class:`~relay.core.errors.RelayError`
tree with the original as ``__cause__``.

Zero-copy note: a frame sent without a copy is read by ZeroMQ's I/O thread
after ``send`` returns; do not mutate it until the peer has answered (the
request/reply pattern of relay guarantees this).

Source of the socket semantics: the libzmq API docs (zmq_socket, zmq_setsockopt,
zmq_getsockopt ``ZMQ_FD``/``ZMQ_EVENTS``, zmq_msg_get ``ZMQ_SRCFD``,
zmq_socket_monitor), libzmq 4.3.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from typing import cast

import zmq

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, spin_ns, spin_until

__all__ = ["HEARTBEAT_IVL_MS", "HEARTBEAT_TIMEOUT_MS", "ZmqChannel", "ZmqListener",
           "ZmqServerChannel", "ZmqTransport"]

MAGIC = b"relay-zmq/2"
"""First frame of the hello and of its answer."""

HEARTBEAT_IVL_MS = 2000
"""ZMTP heartbeat interval, milliseconds."""

HEARTBEAT_TIMEOUT_MS = 10_000
"""A peer that answers no heartbeat for this long is dropped, milliseconds."""

HANDSHAKE_MS = 5000
"""A connection that completes no ZMTP handshake within this is dropped, milliseconds."""

CLOSE_LINGER_MS = 1000
"""How long a closed listener's socket still delivers queued messages, milliseconds."""

CHECK_INTERVAL = 0.1
"""Seconds a waiting ``recv`` blocks before it looks at the monitor (peer death)."""
CHECK_INTERVAL_MS = int(CHECK_INTERVAL * 1000)

ZERO_COPY_MIN = 1 << 20
"""Frames from this size (bytes) on are sent without a copy.  Below it a copy is
cheaper: pyzmq's zero-copy send costs ~25 µs (a Frame, a release callback through
its garbage-collector thread) while copying 150 KB costs ~5 µs (measured here)."""

_FATAL_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

# plain ints: pyzmq's enum flags cost microseconds per call on the hot path
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_LIMIT_BYTES = 8
_monitor_ids = itertools.count(1)

_context_lock = threading.Lock()
_context: zmq.Context | None = None
_context_pid = 0


def _forget_context_after_fork() -> None:
    # the parent's context (and a lock another thread may hold) are unusable here
    global _context, _context_lock
    _context = None
    _context_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_context_after_fork)


def context() -> zmq.Context:
    """The process's ZeroMQ context (a new one in a forked child)."""
    global _context, _context_pid
    pid = os.getpid()
    if _context is None or _context_pid != pid:
        with _context_lock:
            if _context is None or _context_pid != pid:
                _context = zmq.Context()
                _context_pid = pid
    return _context


@contextlib.contextmanager
def _native(what: str, error: type[TransportError] = ConnectionLost) -> Iterator[None]:
    """Translate ``zmq.ZMQError`` (and ``OSError``) raised inside into ``error``."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise error(f"{what}: {exc}") from exc
    except OSError as exc:
        raise error(f"{what}: {exc}") from exc


def _socket(kind: int, max_message_size: int,
            error: type[TransportError] = TransportError) -> zmq.Socket:
    """A socket with linger 0, heartbeats and a message-size limit.  Raises ``error``."""
    with _native("cannot create a ZeroMQ socket", error):
        sock = context().socket(kind)
        sock.copy_threshold = ZERO_COPY_MIN
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    return sock


def _monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """The monitor socket of ``sock`` on an inproc address no other socket ever had
    (pyzmq's default names it after a file descriptor number, which is reused)."""
    return sock.get_monitor_socket(events, f"inproc://relay-zmq-monitor.{next(_monitor_ids)}")


def _close_monitored(sock: zmq.Socket, monitor: zmq.Socket, linger: int = 0) -> None:
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(0)
    sock.close(linger)


def _readable(sock: zmq.Socket) -> bool:
    """Whether a message waits (``ZMQ_EVENTS``; it also lets ``ZMQ_FD`` signal again)."""
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)


def _events(monitor: zmq.Socket) -> Iterator[tuple[int, int]]:
    """``(event, value)`` of each waiting monitor event, without blocking."""
    while _readable(monitor):
        header = monitor.recv_multipart(zmq.NOBLOCK)[0]
        yield int.from_bytes(header[:2], "little"), int.from_bytes(header[2:6], "little")


def _ms(timeout: float | None) -> int:
    """A zmq poll timeout in ms (-1: forever) from seconds."""
    if timeout is None:
        return -1
    return max(int(timeout * 1000 + 0.999), 0)


def _endpoint(url: URL) -> str:
    """The ZeroMQ endpoint of a relay URL (port 0: any free port)."""
    if url.scheme == "zmq+ipc":
        return f"ipc://{url.address}"
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"tcp://{host}:{url.port or '*'}"


def _empty_first(frames: Sequence[Buffer], limit: int) -> bool:
    """Check an outgoing message against ``limit`` (bytes); True if its first
    frame is empty (it then travels behind one more empty frame).

    Raises:
        ValueError: no frames.  MessageTooLarge: over ``limit``.
    """
    if not frames:
        raise ValueError("a message has at least one frame")
    size = 0
    for frame in frames:
        size += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    if size > limit:
        raise MessageTooLarge(size, limit)
    first = frames[0]
    return (len(first) if type(first) is bytes else memoryview(first).nbytes) == 0


def _send_frames(sock: zmq.Socket, frames: Sequence[Buffer]) -> None:
    """The frames of one message (after a routing id or escape frame, if any).

    Raises zmq.Again when the first frame cannot be queued (no peer yet, or its
    queue is full); later frames of a message never do (ZeroMQ queues a
    multipart message atomically).
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _MORE if i < last else _NOBLOCK, copy=False)


class ZmqChannel:
    """A client's DEALER socket, connected to one server; see the module docstring.

    ``recv`` returns writable ``memoryview`` frames owned by the caller.
    """

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket, settings: Settings, *,
                 name: str = "", spin: int = 0) -> None:
        self._sock = sock
        self._monitor = monitor
        self._spin_ns = spin
        self._limit = settings.max_message_size
        self._receive_limit = HANDSHAKE_LIMIT
        self._send_limit = self._limit  # lowered to the server's when it answers the hello
        self._send_timeout = settings.timeout
        self._name = name
        self._rcvtimeo = -1
        self._closed = False
        self._lost: str | None = None
        self._io_lock = threading.Lock()  # held by send/recv; close() from another thread

    # -- hot path ---------------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message (one ZeroMQ multipart message).

        Waits up to ``settings.timeout`` seconds while the server's queue is full.

        Raises:
            MessageTooLarge: over this side's or the server's ``max_message_size``.
            ConnectionLost, Timeout.
        """
        with self._io_lock:
            self._send_locked(frames)

    def _send_locked(self, frames: Sequence[Buffer]) -> None:
        escape = _empty_first(frames, self._send_limit)
        if self._lost is not None or self._closed:
            raise ConnectionLost(self._lost or f"{self._name}: channel is closed")
        try:
            self._send(frames, escape)
        except zmq.Again:
            self._send_slow(frames, escape)
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: send failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    def _send(self, frames: Sequence[Buffer], escape: bool) -> None:
        if escape:
            self._sock.send(b"", _MORE)
        _send_frames(self._sock, frames)

    def _send_slow(self, frames: Sequence[Buffer], escape: bool) -> None:
        deadline = time.monotonic() + self._send_timeout
        while True:
            if self._closed:  # close() from another thread
                self._teardown()
                raise ConnectionLost(f"{self._name}: channel is closed")
            self._check_monitor()
            if self._lost is not None:
                raise ConnectionLost(self._lost)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{self._name}: peer took no message within "
                              f"{self._send_timeout} s")
            try:
                if self._sock.poll(min(_ms(remaining), CHECK_INTERVAL_MS), zmq.POLLOUT):
                    self._send(frames, escape)
                    return
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                self._lost = f"{self._name}: send failed: {exc}"
                raise ConnectionLost(self._lost) from exc

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one message within ``timeout`` seconds (None: forever).

        The hot path is one blocking ``zmq_msg_recv`` per frame (``RCVTIMEO``
        of at most :data:`CHECK_INTERVAL`); the monitor is read only when that
        times out, so a dead peer is noticed within ``CHECK_INTERVAL`` seconds.

        Raises:
            Timeout, ConnectionLost (peer gone, channel closed by either side,
            or a message over the limit).
        """
        with self._io_lock:
            return self._recv_locked(timeout)

    def _spin_recv(self, sock: zmq.Socket) -> zmq.Frame | None:
        """A frame that arrives within the spin budget, taken without sleeping."""
        if self._spin_ns and spin_until(lambda: bool(sock.poll(0)), self._spin_ns):
            return sock.recv(_NOBLOCK, copy=False)
        return None

    def _recv_locked(self, timeout: float | None) -> list[Buffer]:
        if self._closed:
            raise ConnectionLost(f"{self._name}: channel is closed")
        sock = self._sock
        if self._lost is not None:
            if sock.closed:
                raise ConnectionLost(self._lost)
            timeout = 0.0  # deliver what already arrived, then ConnectionLost
        if timeout is None or timeout > CHECK_INTERVAL:
            wait_ms = CHECK_INTERVAL_MS
        else:
            wait_ms = _ms(timeout)
        deadline = 0.0 if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if wait_ms != self._rcvtimeo:
                    sock.setsockopt(zmq.RCVTIMEO, wait_ms)
                    self._rcvtimeo = wait_ms
                try:
                    frame = self._spin_recv(sock)  # (an empty frame is falsy)
                    if frame is None:
                        frame = sock.recv(0, copy=False)
                except zmq.Again:
                    if self._closed:  # close() from another thread
                        self._teardown()
                        raise ConnectionLost(f"{self._name}: channel is closed") from None
                    if self._lost is None:
                        self._check_monitor()
                    if self._lost is not None:
                        self._teardown()  # nothing left to read: stop reconnecting too
                        raise ConnectionLost(self._lost) from None
                    if timeout is None:
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise Timeout(f"{self._name}: no message within {timeout} s") from None
                    wait_ms = min(CHECK_INTERVAL_MS, _ms(remaining))
                    continue
                frames: list[Buffer] = [frame.buffer]
                size = len(frame)
                while frame.more:
                    frame = sock.recv(0, copy=False)
                    frames.append(frame.buffer)
                    size += len(frame)
                if size > self._receive_limit:
                    self._lose(f"received {over_limit(size, self._receive_limit, self._limit)}")
                if not frames[0].nbytes:  # type: ignore[union-attr]
                    if len(frames) == 1:
                        self._lose("the server closed the connection")
                    del frames[0]
                return frames
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: receive failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then; ``MAXMSGSIZE`` bounds each ZeroMQ frame by ``max_message_size``)."""
        self._receive_limit = nbytes

    def _lose(self, reason: str) -> None:
        """Close the socket for good and raise ConnectionLost (now and on later calls)."""
        self._lost = f"{self._name}: {reason}"
        self._teardown()
        raise ConnectionLost(self._lost)

    def _hello(self, target: str, timeout: float) -> None:
        """Send the hello and wait for the server's answer (its limit lowers ours for sends).

        Raises:
            ConnectError: no answer within ``timeout`` seconds, or not a relay-zmq one.
        """
        sock = self._sock
        sock.send_multipart([MAGIC, self._limit.to_bytes(_LIMIT_BYTES, "little")], zmq.NOBLOCK)
        if not sock.poll(_ms(timeout)):
            raise ConnectError(f"no relay server answered at {target} within {timeout} s")
        answer = sock.recv_multipart(zmq.NOBLOCK)
        if len(answer) != 2 or answer[0] != MAGIC or len(answer[1]) != _LIMIT_BYTES:
            raise ConnectError(f"{target} is not a relay-zmq/2 server "
                               f"(it answered {answer[0][:40]!r})")
        self._send_limit = min(self._limit, int.from_bytes(answer[1], "little"))
        for _ in _events(self._monitor):  # refused attempts and retries before the answer
            pass

    def _check_monitor(self) -> None:
        """Drain monitor events; note in ``_lost`` that the peer is gone."""
        try:
            if any(event & _FATAL_EVENTS for event, _ in _events(self._monitor)):
                self._lost = f"{self._name}: the peer disconnected"
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: monitor failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    # -- lifetime ----------------------------------------------------------------

    def _teardown(self) -> None:
        if not self._sock.closed:
            _close_monitored(self._sock, self._monitor)

    def close(self) -> None:
        """Close the socket (linger 0) and its monitor; idempotent.

        Safe from another thread: a ``recv`` blocked there raises
        ``ConnectionLost`` within :data:`CHECK_INTERVAL` seconds, then the
        sockets are closed (by whichever side gets there first).
        """
        if self._closed:
            return
        self._closed = True
        if self._io_lock.acquire(timeout=2 * CHECK_INTERVAL + 1.0):
            try:
                self._teardown()
            finally:
                self._io_lock.release()

    def __repr__(self) -> str:
        return f"<ZmqChannel {self._name}{' closed' if self._closed else ''}>"


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


class ZmqServerChannel:
    """The server side of one client, over the listener's shared ROUTER socket.

    ``recv`` returns writable ``memoryview`` frames owned by the caller.
    """

    def __init__(self, router: _Router, client: _Client, settings: Settings, *,
                 name: str = "", spin: int = 0) -> None:
        self._router = router
        self._client = client
        self._limit = settings.max_message_size
        self._send_limit = min(self._limit, client.limit)
        self._send_timeout = settings.timeout
        self._name = name
        self._spin_ns = spin
        self._closed = False

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message.

        Waits up to ``settings.timeout`` seconds while the client's queue is full.

        Raises:
            MessageTooLarge: over this side's or the client's ``max_message_size``.
            ConnectionLost, Timeout.
        """
        escape = _empty_first(frames, self._send_limit)
        router, client = self._router, self._client
        deadline = 0.0
        while True:
            with router.lock:
                self._check_open()
                try:
                    router.send(client.ident, frames, escape)
                    return
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    router.lose(client, f"send failed: {exc}")
                    raise ConnectionLost(f"{self._name}: {client.lost}") from exc
            now = time.monotonic()
            deadline = deadline or now + self._send_timeout
            if now > deadline:
                raise Timeout(f"{self._name}: the client took no message within "
                              f"{self._send_timeout} s")
            time.sleep(0.001)  # its queue is full: it does not read

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then; ``MAXMSGSIZE`` bounds each ZeroMQ frame by ``max_message_size``)."""
        with self._router.lock:
            self._client.receive_limit = nbytes

    def _check_open(self) -> None:
        """Raises ConnectionLost if the channel cannot carry messages any more."""
        if self._closed:
            raise ConnectionLost(f"{self._name}: channel is closed")
        lost = self._client.lost
        if lost is not None:
            raise ConnectionLost(f"{self._name}: {lost}")

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one message within ``timeout`` seconds (None: forever).

        Raises:
            Timeout, ConnectionLost (client gone, channel or listener closed,
            or a message over the limit).
        """
        client = self._client
        items = client.items
        if items:
            return items.popleft()  # type: ignore[no-any-return]
        if self._closed:
            raise ConnectionLost(f"{self._name}: channel is closed")
        router = self._router
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with router.lock:
            router.enter_recv()
        try:
            if not (self._spin_ns and timeout != 0 and router.spin(client, self._spin_ns)):
                with router.lock:
                    router.wait(client, deadline)
        except zmq.ZMQError as exc:
            with router.lock:
                router.lose(client, f"receive failed: {exc}")
        finally:
            with router.lock:
                router.receiving -= 1
        if items:
            return items.popleft()  # type: ignore[no-any-return]
        self._check_open()
        raise Timeout(f"{self._name}: no message within {timeout} s")

    def close(self) -> None:
        """Send the close notice (after every message sent before) and forget the
        client; idempotent.  Safe from another thread: a ``recv`` blocked there
        raises ``ConnectionLost`` at once."""
        router, client = self._router, self._client
        with router.lock:
            if self._closed:
                return
            self._closed = True
            router.clients.pop(client.ident, None)
            if not router.closed and router.by_fd.get(client.fd) == client.ident:
                router.ignored.add(client.ident)  # until its connection closes
                if client.lost is None:
                    with contextlib.suppress(zmq.ZMQError):
                        router.send(client.ident, [b""])
            router.lose(client, "channel is closed")
            client.items.clear()

    def __repr__(self) -> str:
        return f"<ZmqServerChannel {self._name}{' closed' if self._closed else ''}>"


class ZmqListener:
    """A server's one ROUTER socket; ``accept`` gives one channel per client hello."""

    def __init__(self, url: URL, settings: Settings) -> None:
        self._settings = settings
        self._ipc_path: str | None = None
        self._spin_ns = spin_ns(url)
        if url.scheme == "zmq+ipc":
            _check_ipc_path_free(url)
        sock = _socket(zmq.ROUTER, settings.max_message_size)
        monitor: zmq.Socket | None = None
        try:
            with _native(f"cannot listen on {url.render()}", TransportError):
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
                if url.scheme == "zmq+tcp" and ":" in url.host:
                    sock.setsockopt(zmq.IPV6, 1)
                sock.bind(_endpoint(url))
                bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
                monitor = _monitor(sock, zmq.EVENT_DISCONNECTED)
                self._router = _Router(sock, monitor, settings.max_message_size)
        except BaseException:
            if monitor is not None:
                _close_monitored(sock, monitor)
            sock.close(0)
            raise
        if url.scheme == "zmq+ipc":
            self._ipc_path = url.address
            self._address = url.without_options()
        else:
            port = int(bound.rsplit(":", 1)[1])
            host = f"[{url.host}]" if ":" in url.host else url.host
            self._address = url.without_options().set(address=f"{host}:{port}")

    @property
    def address(self) -> URL:
        return self._address

    def accept(self, timeout: float | None = None) -> ZmqServerChannel:
        """Wait up to ``timeout`` seconds for a client's hello; answer it and
        return its channel.

        Raises:
            Timeout: no client in time.  ConnectionLost: the listener is closed.
        """
        router = self._router
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        limit = self._settings.max_message_size.to_bytes(_LIMIT_BYTES, "little")
        with router.lock:
            while True:
                try:
                    router.wait(router.hellos, deadline)
                except zmq.ZMQError as exc:
                    raise ConnectionLost(f"listener failed: {exc}") from exc
                if router.closed:
                    raise ConnectionLost("listener closed")
                while router.hellos.items:
                    client = router.hellos.items.popleft()
                    if client.lost is None:
                        try:
                            router.send(client.ident, [MAGIC, limit])
                        except zmq.ZMQError:  # it left meanwhile
                            router.lose(client, "the client disconnected")
                    if client.lost is not None:
                        router.clients.pop(client.ident, None)
                        continue
                    return ZmqServerChannel(router, client, self._settings,
                                            name=f"{self._address.render()} (server)",
                                            spin=self._spin_ns)
                if time.monotonic() >= deadline:
                    raise Timeout(f"no client within {timeout} s")

    def close(self) -> None:
        """Stop listening (the ipc file is removed); idempotent.  Every channel
        of this listener then raises ``ConnectionLost``."""
        with self._router.lock:
            self._router.close()
        if self._ipc_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._ipc_path)
            self._ipc_path = None


class ZmqTransport:
    """``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH`` (see the module docstring)."""

    schemes = ("zmq+tcp", "zmq+ipc")

    def listen(self, url: URL, settings: Settings) -> ZmqListener:
        """Bind the ROUTER socket of ``url`` (port 0: a free port, see ``address``).

        Raises:
            InvalidURL, TransportError (address in use, bad interface...).
        """
        _check(url)
        return ZmqListener(url, settings)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> ZmqChannel:
        """Connect a DEALER to ``url`` and exchange hellos, waiting up to
        ``timeout`` seconds (for a server still starting, too).

        Raises:
            ConnectError: no relay server answered within ``timeout`` seconds.
        """
        _check(url)
        target = url.render()
        sock = _socket(zmq.DEALER, settings.max_message_size, ConnectError)
        channel: ZmqChannel | None = None
        try:
            with _native(f"cannot connect to {target}", ConnectError):
                if url.scheme == "zmq+tcp" and ":" in url.host:
                    sock.setsockopt(zmq.IPV6, 1)
                channel = ZmqChannel(sock, _monitor(sock, _FATAL_EVENTS), settings,
                                     name=f"{target} (client)", spin=spin_ns(url))
                sock.connect(_endpoint(url))
                channel._hello(target, timeout)
        except BaseException:
            if channel is not None:
                channel.close()
            elif not sock.closed:
                sock.close(0)
            raise
        return channel


def _check_ipc_path_free(url: URL) -> None:
    """Refuse an ipc path a live server listens on, or a file that is not a socket.

    libzmq unlinks whatever is at the path before binding, which would silently
    take a running server's address (or delete a user's file).  A stale socket
    file (nobody accepts on it) is fine: libzmq replaces it.

    Raises:
        TransportError: the path is in use or is not a socket.
    """
    path = url.address
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"cannot listen on {url.render()}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return  # stale: nobody accepts there
    finally:
        probe.close()
    raise TransportError(f"cannot listen on {url.render()}: address already in use")


def _check(url: URL) -> None:
    if url.scheme not in ZmqTransport.schemes:
        raise InvalidURL(str(url), f"scheme {url.scheme!r} is not zmq+tcp or zmq+ipc")
    if url.scheme == "zmq+tcp" and url.port is None:
        raise InvalidURL(str(url), "zmq+tcp needs HOST:PORT (port 0 picks a free one)")
