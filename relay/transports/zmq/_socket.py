"""What every ``zmq+`` socket shares: the process's context, the socket options, the
monitor, the hello's constants and the framing of a message (see the package docstring).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import cast

import zmq

from relay.codecs.base import Buffer
from relay.core.errors import (
    ConnectionLost,
    MessageTooLarge,
    TransportError,
)
from relay.core.url import URL

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
