""":class:`ZmqChannel`: the client's end of a ``zmq+`` connection, its DEALER socket
(see the package docstring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import zmq

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    Timeout,
)
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, spin_until
from relay.transports.zmq._socket import (
    _FATAL_EVENTS,
    _LIMIT_BYTES,
    _MORE,
    _NOBLOCK,
    CHECK_INTERVAL,
    CHECK_INTERVAL_MS,
    MAGIC,
    _close_monitored,
    _empty_first,
    _events,
    _ms,
    _send_frames,
)


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
