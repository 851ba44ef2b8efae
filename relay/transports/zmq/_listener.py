"""The server side of ``zmq+``: :class:`ZmqListener` (binds the ROUTER, accepts
hellos), :class:`ZmqServerChannel` (one client over it) and :class:`ZmqTransport`.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import stat
import time
from collections.abc import Sequence

import zmq

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    InvalidURL,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import spin_ns
from relay.transports.zmq._client import ZmqChannel
from relay.transports.zmq._router import _Client, _Router
from relay.transports.zmq._socket import (
    _FATAL_EVENTS,
    _LIMIT_BYTES,
    HANDSHAKE_MS,
    MAGIC,
    _close_monitored,
    _empty_first,
    _endpoint,
    _monitor,
    _native,
    _socket,
)


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
