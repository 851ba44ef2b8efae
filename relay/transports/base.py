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
  :class:`~relay.core.errors.MessageTooLarge` on send; one received is
  dropped together with its connection (``ConnectionLost`` on the receiver);
* ``connect`` raises :class:`~relay.core.errors.ConnectError` within
  ``timeout`` seconds when nobody listens;
* frames returned by ``recv`` are owned by the caller and stay valid, unless
  the channel was opened with ``zero_copy`` (then until the next ``recv``);
* ``close`` is idempotent and releases sockets, threads and files;
* no native exception (``zmq.ZMQError``, ``OSError``) escapes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import ConfigError
from relay.core.url import URL

__all__ = ["DEFAULT_SPIN_US", "Channel", "Listener", "Transport", "message_size", "spin_ns",
           "spin_until"]


@runtime_checkable
class Channel(Protocol):
    """One connection: send and receive whole multi-frame messages."""

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message.  Raises ConnectionLost, MessageTooLarge."""

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one message, waiting at most ``timeout`` seconds (None: forever).

        Raises Timeout, ConnectionLost.
        """

    def close(self) -> None:
        """Release the connection; idempotent."""


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


DEFAULT_SPIN_US = 250.0
"""Default ``?spin=`` budget, microseconds: how long a waiting ``recv`` polls
before it lets its thread sleep.  A sleep and wake-up costs 50-100 µs on these
VMs, more than a whole relay step; spinning through the peer's turn avoids it
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
