"""``memory://NAME``: an in-process transport for tests of the layers above.

Listeners live in a process-wide table keyed by ``NAME``; a channel is a pair
of queues.  Frames are passed by reference (no copy, no serialization), so it
measures relay's own overhead and nothing else.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import ConnectError, ConnectionLost, InvalidURL, MessageTooLarge, Timeout
from relay.core.url import URL
from relay.transports.base import HANDSHAKE_LIMIT, message_size, over_limit

__all__ = ["MemoryChannel", "MemoryListener", "MemoryTransport"]

_CLOSED = object()
_listeners: dict[str, MemoryListener] = {}
_listeners_lock = threading.Lock()
_anonymous = itertools.count(1)


class MemoryChannel:
    def __init__(self, inbox: queue.SimpleQueue, outbox: queue.SimpleQueue, limit: int) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._limit = limit
        self._receive_limit = HANDSHAKE_LIMIT
        self._closed = False
        self._lost = False

    def send(self, frames: Sequence[Buffer]) -> None:
        if self._closed or self._lost:
            raise ConnectionLost("memory channel is closed")
        size = message_size(frames)
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        self._outbox.put([bytes(f) if isinstance(f, memoryview) else f for f in frames])

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        if self._closed or self._lost:
            raise ConnectionLost("memory channel is closed")
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no message within {timeout} s") from None
        if item is _CLOSED:
            self._lost = True
            raise ConnectionLost("peer closed the memory channel")
        size = message_size(item)
        if size > self._receive_limit:
            self.close()
            self._lost = True
            raise ConnectionLost(f"received {over_limit(size, self._receive_limit, self._limit)}"
                                 "; connection dropped")
        return item

    def set_receive_limit(self, nbytes: int) -> None:
        self._receive_limit = nbytes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put(_CLOSED)


class MemoryListener:
    def __init__(self, name: str, settings: Settings) -> None:
        self._name = name
        self._settings = settings
        self._pending: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def address(self) -> URL:
        return URL("memory", self._name)

    def accept(self, timeout: float | None = None) -> MemoryChannel:
        try:
            channel = self._pending.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no client within {timeout} s") from None
        if channel is _CLOSED:
            raise ConnectionLost("listener closed")
        return channel

    def _connect(self, limit: int) -> MemoryChannel:
        a: queue.SimpleQueue = queue.SimpleQueue()
        b: queue.SimpleQueue = queue.SimpleQueue()
        self._pending.put(MemoryChannel(a, b, self._settings.max_message_size))
        return MemoryChannel(b, a, limit)

    def close(self) -> None:
        with _listeners_lock:
            if _listeners.get(self._name) is self:
                del _listeners[self._name]
                self._pending.put(_CLOSED)


class MemoryTransport:
    """``memory://NAME`` (``memory://0`` picks a fresh unique name)."""

    schemes = ("memory",)

    def listen(self, url: URL, settings: Settings) -> MemoryListener:
        name = url.address
        if name == "0":
            name = f"anonymous-{next(_anonymous)}"
        with _listeners_lock:
            if name in _listeners:
                raise InvalidURL(str(url), f"memory://{name} is already listened on")
            listener = _listeners[name] = MemoryListener(name, settings)
        return listener

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> MemoryChannel:
        with _listeners_lock:
            listener = _listeners.get(url.address)
        if listener is None:
            raise ConnectError(f"nobody listens on memory://{url.address}")
        return listener._connect(settings.max_message_size)
