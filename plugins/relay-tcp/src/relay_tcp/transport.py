"""``tcp://HOST:PORT``: relay messages over a plain TCP stream, standard library only.

Wire format: relay's frame header (:mod:`relay.plugin`: ``pack_header``,
``read_count``, ``read_lengths``; all integers little-endian)::

    message := header frame_0 frame_1 ... frame_{n-1}
    header  := n:u32  len_0:u64  len_1:u64 ... len_{n-1}:u64
    frame_i := len_i raw bytes

A message is its header followed by the bytes of its frames, back to back,
with no padding and no trailer.  The receiver checks ``n`` against
:data:`MAX_FRAMES`, and ``sum(len_i)`` and ``8 n`` against the channel's
receive limit (bytes: :data:`~relay.plugin.HANDSHAKE_LIMIT` until
``set_receive_limit`` raises it, which relay's session does after the
handshake) as soon as the header is in; a declaration over it drops the
connection (:class:`~relay.ConnectionLost` on the receiver, the listener keeps
accepting others).  Declared lengths never size an allocation: the header
buffer and each frame grow as their bytes arrive (the buffer doubles, a frame
is replaced by one 4x as large, from at most 256 KiB), so a peer announcing
huge frames it never sends costs next to nothing.

Sending gathers the header and the frames with one ``socket.sendmsg`` call (no
concatenation copy).  Receiving reads into a per-channel buffer and copies
each frame into a fresh writable ``bytearray``; the rest of a large frame is
read straight into it with ``recv_into``.  A partly received message is kept
across :class:`~relay.Timeout`, so a timeout never breaks the stream.  Sockets
use ``TCP_NODELAY``; a listener binds ``127.0.0.1`` when the host is empty,
and port 0 picks a free port (``listener.address`` has the real one).

Every ``OSError`` is translated: ``ConnectError`` on connect, ``ConnectionLost``
on a reset, EOF or a peer that reads nothing for ``settings.timeout`` seconds
while we send (the channel is then unusable, and every later call raises
``ConnectionLost``).
"""

from __future__ import annotations

import math
import os
import select  # poll() only: select.select fails for file descriptors >= 1024
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from relay.plugin import (
    HANDSHAKE_LIMIT,
    MAX_FRAMES,
    URL,
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Settings,
    Timeout,
    TransportError,
    check_count,
    header_size,
    map_errors,
    over_limit,
    pack_header,
    read_count,
    read_lengths,
    spin_ns,
    spin_until,
)

__all__ = ["MAX_FRAMES", "TcpChannel", "TcpListener", "TcpTransport"]

_BUFFER_SIZE = 1 << 16  # receive buffer, bytes
_DIRECT = _BUFFER_SIZE // 4  # frame rests at least this big are read straight into the frame
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_FIRST_ROOM = 1 << 18  # a frame's first allocation at most, bytes (then 4x per step)
_EMPTY = bytearray()  # the frame before its first byte: never written to, only replaced


def _poll_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


class TcpChannel:
    """One TCP connection carrying whole multi-frame messages (see the module docstring).

    ``send`` and ``recv`` may run in two threads at once; two concurrent
    ``recv`` (or two ``send``) calls may not.
    """

    def __init__(self, sock: socket.socket, settings: Settings, peer: str,
                 spin: int = 0) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._spin = spin  # ns a read polls before it sleeps (relay's ?spin= option)
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._peer = peer
        self._limit = settings.max_message_size
        self._receive_limit = HANDSHAKE_LIMIT
        self._send_timeout = settings.timeout
        self._readable = select.poll()
        self._readable.register(self._fd, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self._fd, select.POLLOUT)
        self._lost: str | None = None
        self._closed = False
        # receive state: unread bytes are _buffer[_start:_end]
        self._buffer = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        # the message being received: its declared frame lengths (None between
        # messages), its finished frames, the one being filled and bytes in it
        # (its len() is its capacity so far: at most the declared length)
        self._lengths: tuple[int, ...] | None = None
        self._frames: list[bytearray] = []
        self._frame = _EMPTY
        self._filled = 0

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (see the module docstring)."""
        self._receive_limit = nbytes

    # -- sending -------------------------------------------------------------

    def send(self, frames: Sequence[Any]) -> None:
        """Send one message of ``frames`` (bytes-like, C-contiguous).

        Raises:
            MessageTooLarge: the frames total over ``settings.max_message_size``
                bytes (nothing sent; the channel stays usable).
            TransportError: more than :data:`MAX_FRAMES` frames (nothing sent).
            ConnectionLost: the peer is gone or read nothing for ``settings.timeout`` s.
        """
        self._check()
        views = [memoryview(frame).cast("B") for frame in frames]
        size = sum(view.nbytes for view in views)
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        if len(views) > MAX_FRAMES:
            raise TransportError(f"{len(views)} frames is over the tcp limit of {MAX_FRAMES}")
        header = pack_header([view.nbytes for view in views])
        pending = [memoryview(header), *(view for view in views if view.nbytes)]
        deadline = time.monotonic() + self._send_timeout
        first = 0
        while first < len(pending):
            try:
                sent = self._sock.sendmsg(pending[first:first + _IOV_MAX], (), _SEND_FLAGS)
            except BlockingIOError:
                if not self._writable.poll(_poll_ms(deadline)):
                    raise self._lose(
                        f"{self._peer} read nothing for {self._send_timeout} s"
                    ) from None
                continue
            except OSError as exc:
                raise self._lose(f"sending to {self._peer} failed: {exc}") from exc
            while sent:
                head = pending[first]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    first += 1
                else:
                    pending[first] = head[sent:]
                    sent = 0

    # -- receiving -----------------------------------------------------------

    def recv(self, timeout: float | None = None) -> list[Any]:
        """The next message as fresh writable ``bytearray`` frames.

        Waits at most ``timeout`` seconds (None: forever).

        Raises:
            Timeout: no whole message in time (what arrived is kept for the next call).
            ConnectionLost: the peer closed or reset the connection, or declared
                a message over the receive limit or :data:`MAX_FRAMES` frames.
        """
        self._check()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._parse()
            if message is not None:
                return message
            self._fill(deadline, timeout)

    def _parse(self) -> list[Any] | None:
        """Consume buffered bytes; return the message once complete."""
        lengths = self._lengths
        if lengths is None:
            available = self._end - self._start
            if available < header_size(0):
                return None
            count = read_count(self._buffer, self._start)
            limit = self._receive_limit
            refused = check_count(count, limit)
            if refused is not None:
                raise self._lose(f"{self._peer} {refused}")
            if available < header_size(count):
                return None  # _fill grows the buffer as the header arrives
            lengths = read_lengths(self._buffer, count, self._start)
            size = sum(lengths)
            if size > limit:
                raise self._lose(f"{self._peer} declared {over_limit(size, limit, self._limit)}")
            self._start += header_size(count)
            self._lengths = lengths
        frames = self._frames
        while len(frames) < len(lengths):
            length = lengths[len(frames)]
            while self._filled < length:
                available = self._end - self._start
                if not available:
                    return None
                frame = self._room(length)
                take = min(len(frame) - self._filled, available)
                frame[self._filled:self._filled + take] = (
                    self._view[self._start:self._start + take])
                self._start += take
                self._filled += take
            frames.append(self._frame if length else bytearray())
            self._frame = _EMPTY
            self._filled = 0
        self._lengths = None
        self._frames = []
        return frames

    def _room(self, length: int) -> bytearray:
        """The frame being filled (declared ``length``), with room for more bytes:
        when full, it is replaced by one 4x as large (at least
        :data:`_FIRST_ROOM`, at most ``length``) holding what arrived."""
        frame = self._frame
        if self._filled == len(frame):
            grown = bytearray(min(length, max(4 * len(frame), _FIRST_ROOM)))
            grown[:self._filled] = frame
            self._frame = frame = grown
        return frame

    def _fill(self, deadline: float | None, timeout: float | None) -> None:
        """Receive more bytes: straight into a big frame, else into the buffer."""
        if self._start == self._end:
            self._start = self._end = 0
            lengths = self._lengths
            if lengths is not None:
                length = lengths[len(self._frames)]
                if length - self._filled >= _DIRECT:
                    target = memoryview(self._room(length))[self._filled:]
                    self._filled += self._recv_into(target, deadline, timeout)
                    return
        if self._end == len(self._buffer):
            if self._start:
                self._compact()
            else:  # a header larger than the buffer, arriving: grow with it
                grown = bytearray(2 * len(self._buffer))
                grown[:self._end] = self._view[:self._end]
                self._buffer, self._view = grown, memoryview(grown)
        self._end += self._recv_into(self._view[self._end:], deadline, timeout)

    def _compact(self) -> None:
        unread = self._end - self._start
        # bytes(): the ranges may overlap, and bytearray slice assignment is a memcpy
        self._buffer[:unread] = bytes(self._view[self._start:self._end])
        self._start, self._end = 0, unread

    def _recv_into(self, target: memoryview, deadline: float | None,
                   timeout: float | None) -> int:
        while True:
            try:
                received = self._sock.recv_into(target)
            except BlockingIOError:
                if self._spin and spin_until(lambda: bool(self._readable.poll(0)), self._spin):
                    continue
                if not self._readable.poll(_poll_ms(deadline)):
                    raise Timeout(f"no message from {self._peer} within {timeout} s") from None
                continue
            except OSError as exc:
                raise self._lose(f"connection to {self._peer} failed: {exc}") from exc
            if received == 0:
                raise self._lose(f"{self._peer} closed the connection")
            return received

    # -- state ---------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ConnectionLost("the tcp channel is closed")
        if self._lost is not None:
            raise ConnectionLost(self._lost)

    def _lose(self, reason: str) -> ConnectionLost:
        """Mark the channel dead, hang up, and return the error to raise."""
        self._lost = reason
        self._hang_up()
        return ConnectionLost(reason)

    def _hang_up(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
        except OSError:
            pass
        self._sock.close()

    def close(self) -> None:
        """Close the connection (the peer sees ConnectionLost); idempotent."""
        if not self._closed:
            self._closed = True
            self._hang_up()


class TcpListener:
    """A listening TCP socket; ``accept`` gives one :class:`TcpChannel` per client."""

    def __init__(self, sock: socket.socket, settings: Settings, spin: int = 0) -> None:
        self._spin = spin
        sock.setblocking(False)
        self._sock = sock
        self._settings = settings
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._closed = False
        self._lock = threading.Lock()
        host, port = sock.getsockname()[:2]
        self._address = URL("tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    @property
    def address(self) -> URL:
        """``tcp://HOST:PORT`` with the real port."""
        return self._address

    def accept(self, timeout: float | None = None) -> TcpChannel:
        """Wait up to ``timeout`` seconds (None: forever) for the next client.

        Raises:
            Timeout: nobody connected in time.
            ConnectionLost: the listener is closed.
            TransportError: the system refused to accept (e.g. out of file descriptors).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ConnectionLost("the tcp listener is closed")
            try:
                sock, peer = self._sock.accept()
            except (BlockingIOError, ConnectionAbortedError):
                if not self._poll.poll(_poll_ms(deadline)):
                    raise Timeout(f"no client within {timeout} s") from None
                continue
            except OSError as exc:
                if self._closed:
                    raise ConnectionLost("the tcp listener is closed") from exc
                raise TransportError(f"accept on {self._address} failed: {exc}") from exc
            try:
                return TcpChannel(sock, self._settings, f"tcp client {peer[0]}:{peer[1]}",
                                  spin=self._spin)
            except OSError:  # reset before we could set it up
                sock.close()

    def close(self) -> None:
        """Stop listening and free the port; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _host_port(url: URL) -> tuple[str, int]:
    port = url.port
    if port is None:
        raise InvalidURL(str(url), "tcp:// needs HOST:PORT, e.g. tcp://127.0.0.1:5555")
    return url.host or "127.0.0.1", port


class TcpTransport:
    """``tcp://HOST:PORT`` (an empty host means 127.0.0.1; port 0 listens on a free port)."""

    schemes = ("tcp",)

    def listen(self, url: URL, settings: Settings) -> TcpListener:
        """Bind and listen on ``url``.

        Raises:
            InvalidURL: no port in the URL.
            TransportError: the address cannot be bound (in use, not local, ...).
        """
        host, port = _host_port(url)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with map_errors({OSError: TransportError}, f"cannot listen on {url.render()}"):
            sock = socket.create_server((host, port), family=family, backlog=128)
        return TcpListener(sock, settings, spin_ns(url))

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> TcpChannel:
        """Connect to ``url`` within ``timeout`` seconds.

        Raises:
            InvalidURL: no port, or port 0.
            ConnectError: refused, unreachable or no answer within ``timeout``.
        """
        host, port = _host_port(url)
        if port == 0:
            raise InvalidURL(str(url), "cannot connect to port 0")
        with map_errors({OSError: ConnectError}, f"cannot connect to {url.render()}"):
            sock = socket.create_connection((host, port), timeout=timeout)
        try:
            return TcpChannel(sock, settings, f"tcp server {host}:{port}", spin=spin_ns(url))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot set up {url.render()}: {exc}") from exc
