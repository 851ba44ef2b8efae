"""The three small interfaces every transport implements.

A transport is registered for one or more URL schemes (see
:mod:`relay.core.plugins`).  ``listen`` gives a :class:`Listener` whose
``address`` carries the real bound port; ``accept`` on it and ``connect`` on
the other side each give a :class:`Channel`.  Who listens is independent of
who hosts the environment.

Contract shared by all transports (checked by :mod:`relay.testing`):

* a message is a list of frames (bytes-like buffers) delivered whole, in
  order, with frame boundaries kept;
* ``recv(timeout)`` raises :class:`~relay.core.errors.Timeout` when nothing
  arrives in ``timeout`` seconds and :class:`~relay.core.errors.ConnectionLost`
  once the peer has gone (also for every later call);
* a message over ``settings.max_message_size`` bytes raises
  :class:`~relay.core.errors.MessageTooLarge` on send;
* a channel receives messages of at most :data:`HANDSHAKE_LIMIT` bytes until
  :meth:`Channel.set_receive_limit` raises its limit (the session drivers of
  :mod:`relay.connection` raise it to ``settings.max_message_size`` once the
  ``Hello``/``Welcome`` handshake is done, on both sides); a received message
  over the current limit is dropped together with its connection
  (``ConnectionLost`` on the receiver), so a peer that has not shaken hands
  (no token checked yet) can make a process receive a few KiB at most;
* receive memory grows with the bytes that arrived, never with a length the
  peer declared: a declared length is checked against the limit and then
  only bounds the reading, so a peer announcing large messages it never sends
  costs next to nothing;
* waiting on sockets uses ``poll``/``selectors`` (never ``select.select``,
  which fails for file descriptors >= 1024): a transport keeps working in a
  process holding thousands of files;
* a network listener listens on exactly one port (or path), whatever the
  number of clients: clusters, NAT and Kubernetes Services expose fixed ports;
* ``connect`` raises :class:`~relay.core.errors.ConnectError` within
  ``timeout`` seconds when nobody listens;
* frames returned by ``recv`` are owned by the caller and stay valid, unless
  the channel was opened with ``zero_copy`` (then until the next ``recv``);
* ``close`` is idempotent and releases sockets, threads and files;
* no native exception (``zmq.ZMQError``, ``OSError``) escapes.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import ConfigError
from relay.core.url import URL

__all__ = ["DEFAULT_SPIN_US", "HANDSHAKE_LIMIT", "Channel", "Listener", "Transport",
           "message_size", "over_limit", "readable", "spin_ns", "spin_until"]


@runtime_checkable
class Channel(Protocol):
    """One connection: send and receive whole multi-frame messages."""

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message.  Raises ConnectionLost, MessageTooLarge."""

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one message, waiting at most ``timeout`` seconds (None: forever).

        Raises Timeout, ConnectionLost.
        """

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes (sum of frames) from now on.

        A new channel accepts :data:`HANDSHAKE_LIMIT` bytes; the session
        driver calls this with ``settings.max_message_size`` after the
        handshake.  Sending is limited by ``settings.max_message_size`` alone.
        """

    def close(self) -> None:
        """Release the connection; idempotent."""


HANDSHAKE_LIMIT = 16 * 1024
"""Largest message, bytes, a channel receives before :meth:`Channel.set_receive_limit`
is called: a ``Hello``, ``Welcome`` or handshake ``Error`` takes a few hundred."""


@runtime_checkable
class Listener(Protocol):
    """A bound endpoint that accepts channels."""

    @property
    def address(self) -> URL:
        """The URL clients connect to, with the real port when port 0 was asked."""

    def accept(self, timeout: float | None = None) -> Channel:
        """Wait up to ``timeout`` seconds for the next client.  Raises Timeout."""

    def close(self) -> None:
        """Stop listening and release the endpoint; idempotent."""


@runtime_checkable
class Transport(Protocol):
    """A factory of listeners and channels for its URL schemes."""

    def listen(self, url: URL, settings: Settings) -> Listener: ...

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> Channel:
        """Connect to ``url``.  Raises ConnectError after ``timeout`` seconds."""


def message_size(frames: Sequence[Buffer]) -> int:
    """Total bytes of a message's frames."""
    return sum(memoryview(f).nbytes for f in frames)


def over_limit(size: int, limit: int, max_message_size: int) -> str:
    """Why a received message of ``size`` bytes is refused by a channel whose
    receive limit is ``limit`` (for the ``ConnectionLost`` message)."""
    if limit == max_message_size:
        bound = f"max_message_size={limit} bytes"
    elif limit == HANDSHAKE_LIMIT:
        bound = f"the limit before the handshake ({limit} bytes)"
    else:
        bound = f"the receive limit of {limit} bytes"
    return f"a message of {size} bytes, over {bound}"


DEFAULT_SPIN_US = 250.0
"""Default ``?spin=`` budget, microseconds: how long a waiting ``recv`` polls
before it lets its thread sleep.  A sleep and wake-up costs 50-100 µs on a
2-core virtual machine, more than a whole relay step; spinning through the peer's turn avoids it
(measured: relay over zmq+ipc S/M/L 345/265/356 -> 184/176/216 µs)."""


def spin_ns(url: URL) -> int:
    """The ``?spin=MICROSECONDS`` option of ``url`` in nanoseconds (0 turns spinning off).

    Raises:
        ConfigError: not a number >= 0.
    """
    text = url.query.get("spin", str(DEFAULT_SPIN_US))
    try:
        spin = float(text)
    except ValueError:
        spin = -1.0
    if not spin >= 0:
        raise ConfigError(f"?spin= must be a number of microseconds >= 0, not {text!r}")
    return int(spin * 1000)


def spin_until(ready: Callable[[], bool], budget_ns: int) -> bool:
    """Call ``ready()`` until it is true or ``budget_ns`` nanoseconds have passed,
    yielding the core between calls (on 2 cores a pure busy-wait starves the
    peer).  True if ``ready()`` became true."""
    if ready():
        return True
    end = time.perf_counter_ns() + budget_ns
    while time.perf_counter_ns() < end:
        os.sched_yield()
        if ready():
            return True
    return False


def readable(fd: Any) -> Callable[[float | None], bool]:
    """A function ``wait(timeout)`` that waits up to ``timeout`` seconds (None:
    forever, 0: one look) until ``fd`` (a socket or a file descriptor) is
    readable, closed or in error, and tells whether it is.

    Built on ``poll``, which any file descriptor number works with
    (``select.select`` raises ``ValueError`` for numbers >= 1024).  Make one per
    socket and keep it: a wait is then one system call.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def wait(timeout: float | None) -> bool:
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return bool(poller.poll(ms))

    return wait

