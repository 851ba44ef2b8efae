"""``ws://HOST:PORT[/PATH]`` and ``wss://``: relay over WebSocket (RFC 6455).

A small sync driver around the ``websockets`` library's sans-I/O protocol
(``websockets.client.ClientProtocol`` / ``websockets.server.ServerProtocol``,
which parse and build every HTTP and WebSocket byte): the thread that calls
``recv`` reads the socket itself, so a message reaches its reader without a
hand-off between threads (the library's own sync API reads in a background
thread; measured here, the direct read saves ~25 µs per round trip for small
messages and ~100 µs for 150 KB ones).  Keepalive: a light thread per
connection wakes every ``min(0.25, ping_interval / 2)`` seconds; when nobody is
inside ``recv`` (e.g. during a long ``env.step``) it reads what has arrived,
which answers the peer's pings, and it sends our pings and closes the
connection (code 1011) when one is not answered within ``ping_timeout``.  So a
long step never trips the keepalive (with the library's asyncio API, a peer
whose event loop is blocked for ``ping_timeout`` by a long step is closed).
Per-message deflate is never negotiated (it makes an 84x84x4 observation ~15x
slower).

Framing (also in ``docs/protocol.md``): one relay message is one *binary*
WebSocket message (a sender may split it into WebSocket fragments; receivers
see it whole)::

    u32 n                          number of relay frames, little-endian
    u64 length[0] .. length[n-1]   byte length of each frame, little-endian
    frame 0 bytes | frame 1 bytes | ... | frame n-1 bytes   (no padding)

The header is ``4 + 8 n`` bytes; the channel's receive limit applies to the
frame bytes (the WebSocket ``max_size`` is that plus header room,
:data:`HEADER_ROOM`): :data:`~relay.transports.base.HANDSHAKE_LIMIT` until
``set_receive_limit`` raises it (relay's session does, to
``max_message_size``, after its handshake).  A text message, a malformed
header or a message over the limit closes the connection with code 1003 /
1007 / 1009 and a reason; the server keeps serving the others.  The
``websockets`` parser reads a frame's payload as it arrives, so a declared
WebSocket length allocates nothing by itself.

URL options (query string; settings such as ``codec`` or ``timeout`` are read
elsewhere):

``cert``, ``key``          (server, ``wss://``) PEM certificate chain and key
                           (``key`` may be omitted when ``cert`` holds both)
``client_ca``              (server, ``wss://``) require client certificates signed
                           by these CAs
``ca``                     (client, ``wss://``) PEM of the CA(s) to trust, e.g. a
                           self-signed server certificate; default: the system's
``keepalive``              seconds between keepalive pings, 0 disables (default 20)
``keepalive_timeout``      seconds to wait for the pong before closing (default 20)

These are the names every transport uses (:mod:`relay.transports.options`,
also for the ``RELAY_TLS_<NAME>`` environment variables); the former
``certfile``, ``keyfile``, ``cafile``, ``ping_interval`` and ``ping_timeout``
still work and warn.

Authentication: when ``settings.token`` is set, the client sends
``Authorization: Bearer <token>`` in the HTTP upgrade request (never in the
URL) and the server answers HTTP 401 to a missing or wrong token, before any
relay message (relay's ``Hello`` token is checked as well).  Browsers cannot
set headers: they may offer the subprotocol ``relay.token.<base64url token>``
instead (:func:`token_subprotocol`), which the server accepts and selects.

A listen URL with a path (``ws://127.0.0.1:0/relay``) accepts WebSocket
connections to that path only (HTTP 404 otherwise); without a path, any path.
"""

from __future__ import annotations

import base64
import collections
import hmac
import http
import logging
import os
import queue
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TLSError,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, readable, spin_ns, spin_until
from relay.transports.framing import (
    COUNT,
    check_lengths,
    header_size,
    pack_header,
    read_count,
    read_lengths,
    unpack,
)
from relay.transports.framing import unpack as unpack_message
from relay.transports.options import Keepalive, TLSOptions
from relay.transports.tls import diagnose

try:
    import websockets
    from websockets.client import ClientProtocol
    from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request, Response
    from websockets.protocol import State
    from websockets.server import ServerProtocol
    from websockets.uri import parse_uri
except ImportError as exc:  # pragma: no cover
    from relay.core.errors import MissingDependency

    raise MissingDependency("the ws:// transport", "websockets") from exc

__all__ = [
    "CLOSE_BAD_DATA",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "WsChannel",
    "WsListener",
    "WsTransport",
    "pack_header",
    "token_subprotocol",
    "unpack_message",
]

log = logging.getLogger("relay.transports.ws")
_CLIENT_LOG = logging.getLogger("websockets.client")  # websockets' own defaults
_SERVER_LOG = logging.getLogger("websockets.server")

CLOSE_UNSUPPORTED = 1003
"""Close code for a text message on a relay channel (RFC 6455 "unsupported data")."""
CLOSE_BAD_DATA = 1007
"""Close code for a binary message whose relay header is malformed."""
CLOSE_TOO_BIG = 1009
"""Close code for a message over ``max_message_size``."""
CLOSE_KEEPALIVE = 1011
"""Close code when a ping got no pong within ``ping_timeout``."""

HEADER_ROOM = 64 * 1024
"""Bytes allowed on top of the receive limit for the header (up to 8191 frames),
and at most the limit itself (so before the handshake it is 16 KiB)."""
SMALL_MESSAGE = 64 * 1024
"""Messages up to this many bytes are joined into one WebSocket frame; larger
ones are sent as one fragment per relay frame (no copy into a new buffer, and
the receiver takes the fragments as the frames without joining them)."""
KEEPALIVE_TICK = 0.25
"""Seconds between the keepalive thread's looks at an idle connection (it answers
the peer's pings and close frames when nobody is inside ``recv``)."""
CLOSE_TIMEOUT = 1.0
"""Seconds a closing side waits for the peer's close frame before hanging up."""
READ_SIZE = 1 << 18
"""Bytes asked from the socket per read."""
SERVER_ONLY_OPTIONS = ("cert", "key", "client_ca", "certfile", "keyfile")
USER_AGENT = f"relay websockets/{websockets.__version__}"

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


def _ws_max_size(limit: int) -> int:
    """The WebSocket message size limit for relay messages of up to ``limit`` frame bytes."""
    return limit + min(HEADER_ROOM, limit)


def _unpack_fragments(fragments: list[bytes], limit: int) -> list[Buffer]:
    """The relay frames of a message received as ``fragments``.

    When the sender put the header in the first fragment and each frame in a
    fragment of its own (relay does for large messages), the fragments *are*
    the frames: no join, no copy.  Otherwise they are joined and split.
    """
    if len(fragments) > 1:
        first = memoryview(fragments[0])
        if first.nbytes < COUNT.size:
            raise ValueError(f"message of {first.nbytes} bytes has no relay header")
        count = read_count(first)
        start = header_size(count)
        if start > first.nbytes:
            return unpack(b"".join(fragments), limit)
        lengths = read_lengths(first, count)
        check_lengths(lengths, limit)
        if start == first.nbytes and len(lengths) == len(fragments) - 1 and all(
                len(f) == n for f, n in zip(fragments[1:], lengths, strict=True)):
            return list(fragments[1:])
        return unpack(b"".join(fragments), limit)
    return unpack(fragments[0], limit)


def _describe_close(protocol: Any) -> str:
    frame = protocol.close_rcvd or protocol.close_sent
    if frame is None:
        return "no close frame (connection dropped)"
    return f"code {frame.code}" + (f", reason {frame.reason!r}" if frame.reason else "")


class _Conn:
    """A websockets sans-I/O protocol driven over a blocking socket.

    Whoever holds ``_reader`` reads the socket (``recv`` in the caller's
    thread, or the keepalive thread when nobody else reads); ``_lock`` guards
    the protocol object and every write, so frames never interleave.
    """

    def __init__(self, sock: socket.socket, protocol: Any, *, ping_interval: float | None,
                 ping_timeout: float | None, send_timeout: float, name: str,
                 spin: int = 0) -> None:
        self.sock = sock
        self.spin = spin  # ns to poll before a read sleeps (relay.transports.base.spin_until)
        self.protocol = protocol
        self.send_timeout = send_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._lock = threading.Lock()
        self._reader = threading.Lock()
        self._messages: collections.deque[tuple[bool, list[bytes]]] = collections.deque()
        self._partial: list[bytes] = []
        self._partial_text = False
        self._pings: dict[bytes, float] = {}
        self.lost: str | None = None
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._readable = readable(sock)
        self._eof = False
        self._broken = False
        self._stop = threading.Event()
        self._keepalive = threading.Thread(target=self._keepalive_loop, name=f"relay-ws-{name}",
                                           daemon=True)

    def start(self, events: Sequence[Any] = ()) -> _Conn:
        """Take the events already parsed with the handshake, start the keepalive."""
        for event in events:
            self._on_event(event)
        self._keepalive.start()
        return self

    # -- writing -----------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the protocol has to send (caller holds ``_lock``)."""
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        try:
            _send_chunks(self.sock, chunks, self.send_timeout)
        except OSError as exc:
            self._broken = True
            self._lose(f"WebSocket failed while sending: {exc}")
            raise ConnectionLost(self.lost) from exc

    def send_message(self, parts: Sequence[Buffer]) -> None:
        """Send one binary message made of ``parts`` (one fragment each).

        Raises ConnectionLost."""
        with self._lock:
            if self.lost is not None or self.protocol.state is not State.OPEN:
                raise ConnectionLost(self.lost or "the WebSocket is closing")
            last = len(parts) - 1
            for i, part in enumerate(parts):
                if i == 0:
                    self.protocol.send_binary(part, fin=last == 0)
                else:
                    self.protocol.send_continuation(part, fin=i == last)
            self._flush()

    # -- reading -----------------------------------------------------------------

    def recv_message(self, timeout: float | None) -> tuple[bool, list[bytes]]:
        """``(is_text, fragments)`` of the next message.  Raises TimeoutError, ConnectionLost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._reader.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError
        try:
            while True:
                if self._messages:
                    return self._messages.popleft()
                if self.lost is not None:
                    raise ConnectionLost(self.lost)
                if deadline is None:
                    self._read(None)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._read(remaining)
        finally:
            self._reader.release()

    def _read(self, wait: float | None) -> None:
        """Wait up to ``wait`` seconds for bytes and feed them (caller holds ``_reader``)."""
        sock = self.sock
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                if self.spin and (wait is None or wait > 0):
                    spin_until(lambda: self._readable(0), self.spin)
                ready = self._readable(wait)
            except (OSError, ValueError) as exc:
                self._lose(f"WebSocket failed: {exc}")
                return
            if not ready:
                return
        try:
            # into a buffer reused for every read: no fresh 256 KiB allocation per read
            count = sock.recv_into(self._buffer)
        except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
            return
        except OSError as exc:
            count = 0
            reason = f"connection broken: {exc}"
        else:
            reason = ""
        data = self._view[:count]
        if not data:
            self._eof = True
        with self._lock:
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            events = self.protocol.events_received()
            try:
                self._flush()
            except ConnectionLost:
                pass
        for event in events:
            self._on_event(event)
        if not data or self.protocol.state is State.CLOSED or self.protocol.close_rcvd:
            self._lose(reason or f"WebSocket closed: {_describe_close(self.protocol)}")
        elif self.protocol.close_sent is not None:  # the protocol gave up (size, garbage)
            self._lose(f"WebSocket closed: {_describe_close(self.protocol)}")

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, Frame):
            return
        if event.opcode in _DATA:
            if event.opcode is not Opcode.CONT:
                self._partial = []
                self._partial_text = event.opcode is Opcode.TEXT
            self._partial.append(bytes(event.data) if not isinstance(event.data, bytes)
                                 else event.data)
            if event.fin:
                self._messages.append((self._partial_text, self._partial))
                self._partial = []
        elif event.opcode is Opcode.PONG:
            self._pings.pop(bytes(event.data), None)

    # -- keepalive -----------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        tick = KEEPALIVE_TICK if not self.ping_interval else min(KEEPALIVE_TICK,
                                                                 self.ping_interval / 2)
        last_ping = time.monotonic()
        while not self._stop.wait(tick):
            if self.lost is not None:
                return
            # nobody reads: read for them (answers pings), but queue at most one
            # message, so a sender to a consumer that stopped reading is slowed down
            if not self._messages and self._reader.acquire(blocking=False):
                try:
                    self._read(0)
                finally:
                    self._reader.release()
            if not self.ping_interval:
                continue
            now = time.monotonic()
            if self.ping_timeout and self._pings and \
                    now - min(self._pings.values()) > self.ping_timeout:
                self._lose(f"the peer sent no pong within ping_timeout={self.ping_timeout} s")
                self.close(CLOSE_KEEPALIVE, "keepalive ping timeout")
                return
            if now - last_ping >= self.ping_interval:
                payload = os.urandom(4)
                try:
                    with self._lock:
                        if self.protocol.state is not State.OPEN:
                            return
                        self.protocol.send_ping(payload)
                        self._pings[payload] = now
                        self._flush()
                except ConnectionLost:
                    return
                last_ping = now

    # -- closing -------------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: send a close frame (if still open) and wait up to :data:`CLOSE_TIMEOUT`
        seconds for the peer's (so the frame and its reason reach it), then hang
        up and stop the keepalive; idempotent."""
        self._stop.set()
        with self._lock:
            if self.protocol.state is State.OPEN:
                try:
                    self.protocol.send_close(code, reason)
                    self._flush()
                except (ConnectionLost, WebSocketException):
                    pass
            # we (or the protocol, on bad input) sent a close frame the peer has not
            # answered yet: give it time to read it before the connection goes
            waiting = (self.protocol.close_sent is not None and self.protocol.close_rcvd is None
                       and not self._eof and not self._broken)
        if waiting and self._reader.acquire(timeout=CLOSE_TIMEOUT):
            deadline = time.monotonic() + CLOSE_TIMEOUT
            try:
                while self.protocol.close_rcvd is None and not self._eof:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._read(remaining)
            finally:
                self._reader.release()
        with self._lock:
            self._lose(f"WebSocket closed here (code {code})")
            try:
                # read what the peer sent so that closing does not reset the
                # connection (a reset may destroy our close frame in flight)
                self.sock.setblocking(False)
                while self.sock.recv(READ_SIZE):
                    pass
            except (OSError, ValueError):
                pass
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass
            self.sock.close()
        if self._keepalive.is_alive() and threading.current_thread() is not self._keepalive:
            self._keepalive.join(2.0)


class WsChannel:
    """One WebSocket connection carrying relay messages (see the module framing).

    Attributes:
        path: the request path with query (server side; the client's URL path
            on the client side).
    """

    def __init__(self, conn: _Conn, limit: int, *, path: str = "",
                 on_close: Callable[[WsChannel], None] | None = None) -> None:
        self._conn = conn
        self._limit = limit
        self._receive_limit = HANDSHAKE_LIMIT
        self.path = path
        self._closed = False
        self._on_close = on_close

    # -- relay frames -------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one relay message.  Raises ConnectionLost, MessageTooLarge."""
        self._check_open()
        lengths = [memoryview(f).nbytes for f in frames]
        total = sum(lengths)
        if total > self._limit:
            raise MessageTooLarge(total, self._limit)
        header = pack_header(lengths)
        if total <= SMALL_MESSAGE or not frames:
            self._conn.send_message([b"".join([header, *frames])])
        else:
            self._conn.send_message([header, *(_bytes_view(f) for f in frames)])

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one relay message within ``timeout`` seconds.

        A text message or a malformed one closes the connection (code 1003 /
        1007 / 1009 with a reason) and raises ConnectionLost.

        Raises:
            Timeout, ConnectionLost.
        """
        is_text, fragments = self._recv_fragments(timeout)
        if is_text:
            self._reject(CLOSE_UNSUPPORTED, "relay/1 over WebSocket uses binary messages")
        try:
            return _unpack_fragments(fragments, self._receive_limit)
        except MessageTooLarge as exc:
            self._reject(CLOSE_TOO_BIG, over_limit(exc.size, self._receive_limit, self._limit))
        except ValueError as exc:
            self._reject(CLOSE_BAD_DATA, f"malformed relay message: {exc}")

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` frame bytes from now on."""
        self._receive_limit = nbytes
        self._conn.protocol.max_message_size = _ws_max_size(nbytes)  # read per frame

    def _reject(self, code: int, reason: str) -> NoReturn:
        self.close(code, reason[:120])
        raise ConnectionLost(f"peer sent an invalid message; closed the connection: {reason}")

    def _recv_fragments(self, timeout: float | None) -> tuple[bool, list[bytes]]:
        self._check_open()
        try:
            return self._conn.recv_message(timeout)
        except TimeoutError:
            raise Timeout(f"no message within {timeout} s") from None

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost("the WebSocket channel is closed")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a close ``code`` and ``reason``; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._conn.close(code, reason)
        if self._on_close is not None:
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed


def _bytes_view(frame: Buffer) -> Buffer:
    view = memoryview(frame)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


def _keepalive(url: URL) -> Keepalive:
    return Keepalive.from_url(url, interval=20.0, timeout=20.0, zero_disables=True)


def _hostport(url: URL) -> tuple[str, int]:
    if url.port is None:
        raise InvalidURL(url.render(), f"{url.scheme}:// needs HOST:PORT")
    return url.host, url.port


def _handshake_events(sock: socket.socket, protocol: Any, deadline: float,
                      kind: type) -> tuple[Any, list[Any]]:
    """Read until the protocol yields a ``kind`` (Request/Response); it and later events.

    Raises:
        TimeoutError, EOFError, OSError.
    """
    while True:
        events = protocol.events_received()
        for i, event in enumerate(events):
            if isinstance(event, kind):
                return event, events[i + 1:]
        if protocol.handshake_exc is not None:  # not HTTP, or not a WebSocket answer
            raise protocol.handshake_exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("handshake timed out")
        sock.settimeout(remaining)
        data = sock.recv(READ_SIZE)
        if not data:
            protocol.receive_eof()
            if not protocol.events_received():
                raise EOFError("connection closed during the handshake")
        protocol.receive_data(data)


def _send_chunks(sock: socket.socket, chunks: list[bytes], timeout: float | None = None) -> None:
    """Write ``chunks`` in order with as few system calls as possible (one
    ``sendmsg`` gather for a plain socket); ``b""`` means half-close.

    Raises:
        OSError: also ``TimeoutError`` when the whole write takes over ``timeout``
            seconds (each blocked system call is bounded by ``SO_SNDTIMEO``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if isinstance(sock, ssl.SSLSocket):
        for chunk in chunks:
            if chunk:
                sock.sendall(chunk)
            else:
                sock.shutdown(socket.SHUT_WR)
        return
    views = [memoryview(c) for c in chunks if c]
    while views:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the peer read nothing for {timeout} s")
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
    if chunks and not chunks[-1]:  # the protocol asks to half-close (after closing)
        sock.shutdown(socket.SHUT_WR)


TOKEN_SUBPROTOCOL = "relay.token."
"""Prefix of the subprotocol that carries the token for clients that cannot set
headers (browsers): ``relay.token.`` + the token in unpadded base64url."""


def token_subprotocol(token: str) -> str:
    """The ``Sec-WebSocket-Protocol`` value that carries ``token``."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return TOKEN_SUBPROTOCOL + encoded


class _HandshakeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger given to websockets' protocol objects: at DEBUG they log every
    handshake header, and ``Authorization`` or a ``relay.token.*`` subprotocol
    carries the token; those values are logged as ``***``."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if (len(args) == 2 and isinstance(args[0], str)
                and args[0].lower() in ("authorization", "sec-websocket-protocol")):
            args = (args[0], "***")
        super().log(level, msg, *args, **kwargs)


def token_safe_logger(logger: logging.Logger) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """``logger`` for a websockets protocol object (``logger=``), logging the
    values of the headers that may carry a token as ``***``."""
    return _HandshakeLog(logger)


def _offered_subprotocols(request: Request) -> list[str]:
    return [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",") if p.strip()]


def _select_token_subprotocol(protocol: Any, offered: Sequence[Any]) -> Any:
    # a browser fails the connection unless the server picks one of its offers;
    # the token itself was checked before accepting
    return next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None)


def _blocking_with_send_deadline(sock: socket.socket, seconds: float) -> None:
    """Blocking mode (reads wait in ``select`` first, so they never block), and a
    kernel send timeout (``SO_SNDTIMEO``) so a peer that stops reading makes a
    send fail with ConnectionLost after ``seconds`` instead of hanging."""
    sock.settimeout(None)
    whole = int(seconds)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1e6)))
    except (OSError, struct.error):  # pragma: no cover - platform without it
        log.debug("SO_SNDTIMEO is not available; sends have no deadline")


def _write(sock: socket.socket, protocol: Any) -> None:
    _send_chunks(sock, protocol.data_to_send())


class WsListener:
    """A WebSocket server: an accept thread, and a short thread per handshake."""

    def __init__(self, url: URL, settings: Settings) -> None:
        host, port = _hostport(url)
        self._url = url
        self._settings = settings
        self._path = url.path
        self._keepalive = _keepalive(url)
        self._spin = spin_ns(url)
        self._ssl = server_ssl_context(url) if url.scheme == "wss" else None
        self._pending: queue.SimpleQueue[WsChannel | None] = queue.SimpleQueue()
        self._channels: set[WsChannel] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        try:
            infos = socket.getaddrinfo(host or "127.0.0.1", port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            self._sock = socket.socket(family, kind, proto)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(128)
        except OSError as exc:
            raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
        self._port = self._sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the accept loop on close
        self._thread = threading.Thread(target=self._accept_loop, name="relay-ws-server",
                                        daemon=True)
        self._thread.start()

    @property
    def address(self) -> URL:
        host = self._url.host
        netloc = f"[{host}]" if ":" in host else host
        query = {k: v for k, v in self._url.query.items() if k not in SERVER_ONLY_OPTIONS}
        return self._url.set(address=f"{netloc}:{self._port}{self._path}", query=query)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                try:
                    ready = [key.fileobj for key, _ in selector.select()]
                    if self._sock not in ready:
                        continue
                    sock, _ = self._sock.accept()
                except (OSError, ValueError) as exc:
                    if self._closed.is_set():
                        return
                    # out of file descriptors, say: wait instead of spinning
                    log.warning("accepting a WebSocket client failed: %s", exc)
                    self._closed.wait(0.1)
                    continue
                threading.Thread(target=self._handshake, args=(sock,),
                                 name="relay-ws-handshake", daemon=True).start()

    def _refusal(self, request: Request) -> tuple[http.HTTPStatus, str] | None:
        path = request.path.split("?", 1)[0]
        if self._path and path != self._path:
            return http.HTTPStatus.NOT_FOUND, f"no relay endpoint at {path}; try {self._path}\n"
        token = self._settings.token
        if token is not None:
            given = request.headers.get("Authorization", "")
            offered = _offered_subprotocols(request)
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()) and not any(
                    hmac.compare_digest(p.encode(), token_subprotocol(token).encode())
                    for p in offered):
                return (http.HTTPStatus.UNAUTHORIZED,
                        "missing or wrong token in the Authorization header\n")
        return None

    def _handshake(self, sock: socket.socket) -> None:
        """The opening handshake of one client (its own thread); then queue it for accept."""
        deadline = time.monotonic() + self._settings.connect_timeout
        protocol = ServerProtocol(max_size=_ws_max_size(HANDSHAKE_LIMIT),
                                  select_subprotocol=_select_token_subprotocol,
                                  logger=token_safe_logger(_SERVER_LOG))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock.settimeout(self._settings.connect_timeout)
                sock = self._ssl.wrap_socket(sock, server_side=True)
            request, rest = _handshake_events(sock, protocol, deadline, Request)
            refusal = self._refusal(request)
            if refusal is not None:
                response = protocol.reject(*refusal)
            else:
                response = protocol.accept(request)
            response.headers["Server"] = USER_AGENT
            protocol.send_response(response)
            _write(sock, protocol)
            if refusal is not None or protocol.state is not State.OPEN:
                sock.close()
                return
        except WebSocketException as exc:  # a malformed request: answer 400, hang up
            log.debug("WebSocket handshake failed: %s", exc)
            try:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                             b"Content-Type: text/plain\r\nContent-Length: 29\r\n\r\n"
                             b"not a WebSocket HTTP request\n")
            except OSError:
                pass
            sock.close()
            return
        except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
            log.debug("WebSocket handshake failed: %s", exc)
            sock.close()
            return
        _blocking_with_send_deadline(sock, self._settings.timeout)
        conn = _Conn(sock, protocol, ping_interval=self._keepalive.interval,
                     ping_timeout=self._keepalive.timeout,
                     send_timeout=self._settings.timeout, name="server", spin=self._spin)
        channel = WsChannel(conn, self._settings.max_message_size, path=request.path,
                            on_close=self._forget)
        conn.start(rest)
        with self._lock:
            if self._closed.is_set():
                channel.close(1001, "server closing")
                return
            self._channels.add(channel)
        self._pending.put(channel)

    def _forget(self, channel: WsChannel) -> None:
        with self._lock:
            self._channels.discard(channel)

    def accept(self, timeout: float | None = None) -> WsChannel:
        """The next WebSocket connection to the listen path.  Raises Timeout, ConnectionLost."""
        if self._closed.is_set():
            raise ConnectionLost("listener closed")
        try:
            channel = self._pending.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no client within {timeout} s") from None
        if channel is None:
            raise ConnectionLost("listener closed")
        return channel

    def close(self) -> None:
        """Stop listening, close every connection, join the accept thread; idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            channels = list(self._channels)
        self._pending.put(None)
        self._wake_w.send(b"x")
        for channel in channels:
            channel.close(1001, "server closing")
        self._thread.join(5.0)
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()


def server_ssl_context(url: URL) -> ssl.SSLContext:
    """TLS context of a ``wss://`` server from ``?cert=PEM[&key=PEM][&client_ca=PEM]``
    (:meth:`relay.transports.options.TLSOptions.server_context`).

    Raises:
        ConfigError: no cert, or a file cannot be loaded.
    """
    return TLSOptions.from_url(url).server_context(url.scheme)


class WsTransport:
    """``ws://HOST:PORT[/PATH]`` and ``wss://HOST:PORT[/PATH]`` (see the module docstring)."""

    schemes = ("ws", "wss")

    def listen(self, url: URL, settings: Settings) -> WsListener:
        return WsListener(url, settings)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> WsChannel:
        """Open a WebSocket to ``url`` within ``timeout`` seconds.

        Raises:
            TLSError: the TLS handshake failed (an untrusted certificate, a
                plain server for ``wss://``, a TLS server for ``ws://``), at once.
            ConnectError: refused, unreachable, or an HTTP answer other than
                101 (401 for a wrong token, 404 for a wrong path).
        """
        host, port = _hostport(url)
        context = TLSOptions.from_url(url).client_context() if url.scheme == "wss" else None
        try:
            wsuri = parse_uri(f"{url.scheme}://{url.address}")
        except InvalidURI as exc:
            raise InvalidURL(url.render(), str(exc)) from exc
        deadline = time.monotonic() + timeout
        protocol = ClientProtocol(wsuri, max_size=_ws_max_size(HANDSHAKE_LIMIT),
                                  logger=token_safe_logger(_CLIENT_LOG))
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url.render()}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
            request = protocol.connect()
            request.headers["User-Agent"] = USER_AGENT
            if settings.token is not None:
                request.headers["Authorization"] = f"Bearer {settings.token}"
            protocol.send_request(request)
            _write(sock, protocol)
            response, rest = _handshake_events(sock, protocol, deadline, Response)
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
        except InvalidStatus as exc:
            sock.close()
            response = exc.response
            body = response.body.decode(errors="replace").strip() if response.body else ""
            refused = ConnectError(
                f"{url.render()} refused the WebSocket: HTTP {response.status_code} "
                f"{response.reason_phrase}" + (f" ({body})" if body else ""))
            refused.permanent = True  # type: ignore[attr-defined]  # retrying cannot help
            raise refused from exc
        except (OSError, EOFError, TimeoutError, WebSocketException) as exc:
            sock.close()
            problem = diagnose(host, port, context, timeout=min(timeout, 2.0),
                               tls_scheme="wss://")
            if problem is not None:
                raise TLSError(f"cannot connect to {url.render()}: {problem}") from exc
            raise ConnectError(f"cannot connect to {url.render()}: {exc}") from exc
        _blocking_with_send_deadline(sock, settings.timeout)
        keepalive = _keepalive(url)
        conn = _Conn(sock, protocol, ping_interval=keepalive.interval,
                     ping_timeout=keepalive.timeout, send_timeout=settings.timeout,
                     name="client", spin=spin_ns(url))
        return WsChannel(conn.start(rest), settings.max_message_size, path=url.path)
