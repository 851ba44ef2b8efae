"""``ws://HOST:PORT[/PATH]`` and ``wss://``: relay over WebSocket (RFC 6455).

Built on the ``websockets`` library's threaded sync API: every connection has
a background thread that reads the socket and answers pings, so a long
``env.step`` on either side never trips the keepalive (the asyncio pitfall of
FACTS.md does not apply).  Per-message deflate is always off (it makes an
84x84x4 observation ~15x slower).

Framing (also in ``docs/protocol.md``): one relay message is one *binary*
WebSocket message (a sender may split it into WebSocket fragments; receivers
see it whole)::

    u32 n                          number of relay frames, little-endian
    u64 length[0] .. length[n-1]   byte length of each frame, little-endian
    frame 0 bytes | frame 1 bytes | ... | frame n-1 bytes   (no padding)

The header is ``4 + 8 n`` bytes; ``max_message_size`` applies to the frame
bytes (the WebSocket ``max_size`` is that plus header room).  A text message,
a malformed header or a message over the limit closes the connection with
code 1003 / 1007 / 1009 and a reason; the server keeps serving the others.

URL options (query string; settings such as ``codec`` or ``timeout`` are read
elsewhere):

``certfile``, ``keyfile``  (server, ``wss://``) PEM certificate chain and key
                           (``keyfile`` may be omitted when ``certfile`` holds both)
``cafile``                 (client, ``wss://``) PEM of the CA(s) to trust, e.g. a
                           self-signed server certificate; default: the system's
``ping_interval``          seconds between keepalive pings, 0 disables (default 20)
``ping_timeout``           seconds to wait for the pong before closing (default 20)

Authentication: when ``settings.token`` is set, the client sends
``Authorization: Bearer <token>`` in the HTTP upgrade request (never in the
URL) and the server answers HTTP 401 to a missing or wrong token, before any
relay message (relay's ``Hello`` token is checked as well).

Hooks for other wire formats on the same server (e.g. Gymie on ``/gym``):

* :meth:`WsListener.route` gives every connection to one path to a handler
  ``handler(channel)`` called in that connection's thread, instead of
  :meth:`WsListener.accept`; the connection ends when the handler returns;
* :class:`WsChannel` also offers :meth:`~WsChannel.send_raw` /
  :meth:`~WsChannel.recv_raw` (one whole WebSocket message, ``str`` for text,
  ``bytes`` for binary, no relay framing) and :meth:`~WsChannel.close`
  with a close code and reason; ``channel.path`` and ``channel.headers`` hold
  the upgrade request's path (with query) and headers on the server side.

A listen URL with a path (``ws://127.0.0.1:0/relay``) accepts WebSocket
connections to that path only (HTTP 404 otherwise); without a path, any path.
"""

from __future__ import annotations

import hmac
import http
import inspect
import logging
import queue
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import URL

try:
    import websockets
    import websockets.sync.client as ws_client
    import websockets.sync.server as ws_server
    from websockets.exceptions import (
        ConnectionClosed,
        InvalidHandshake,
        InvalidStatus,
        InvalidURI,
        WebSocketException,
    )
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
    "unpack_message",
]

log = logging.getLogger("relay.transports.ws")

CLOSE_UNSUPPORTED = 1003
"""Close code for a text message on a relay channel (RFC 6455 "unsupported data")."""
CLOSE_BAD_DATA = 1007
"""Close code for a binary message whose relay header is malformed."""
CLOSE_TOO_BIG = 1009
"""Close code for a message over ``max_message_size``."""

HEADER_ROOM = 64 * 1024
"""Bytes allowed on top of ``max_message_size`` for the header (up to 8191 frames)."""
SMALL_MESSAGE = 64 * 1024
"""Messages up to this many bytes are joined into one WebSocket frame; larger
ones are sent as fragments so array frames are not copied into a new buffer."""
CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the peer's close frame before dropping the TCP connection."""
SERVER_ONLY_OPTIONS = ("certfile", "keyfile")

_U32 = struct.Struct("<I")
# websockets >= 16 wants connect() as a context manager unless legacy=True is passed
_LEGACY = {"legacy": True} if "legacy" in inspect.signature(ws_client.connect).parameters else {}


def pack_header(lengths: Sequence[int]) -> bytes:
    """The header of a relay message with frames of these byte lengths."""
    return struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)


def unpack_message(data: bytes, limit: int) -> list[Buffer]:
    """Split one received WebSocket message into relay frames (views of ``data``).

    Raises:
        ValueError: the header is malformed or the lengths do not add up.
        MessageTooLarge: the frames hold more than ``limit`` bytes.
    """
    if len(data) < 4:
        raise ValueError(f"message of {len(data)} bytes has no relay header")
    (count,) = _U32.unpack_from(data)
    start = 4 + 8 * count
    if start > len(data):
        raise ValueError(f"header announces {count} frames, message has {len(data)} bytes")
    lengths = struct.unpack_from(f"<{count}Q", data, 4)
    total = sum(lengths)
    if total > limit:
        raise MessageTooLarge(total, limit)
    if start + total != len(data):
        raise ValueError(f"frames add up to {start + total} bytes, message has {len(data)}")
    view = memoryview(data)
    frames: list[Buffer] = []
    for length in lengths:
        frames.append(view[start:start + length])
        start += length
    return frames


@contextmanager
def _lost() -> Iterator[None]:
    """Translate websockets' and the socket's errors into ConnectionLost."""
    try:
        yield
    except ConnectionClosed as exc:
        raise ConnectionLost(f"WebSocket closed: {_describe_close(exc)}") from exc
    except TimeoutError:  # recv(timeout) expired: the caller decides
        raise
    except (OSError, WebSocketException) as exc:
        raise ConnectionLost(f"WebSocket failed: {exc}") from exc


def _describe_close(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "no close frame (connection dropped)"
    return f"code {frame.code}" + (f", reason {frame.reason!r}" if frame.reason else "")


class WsChannel:
    """One WebSocket connection carrying relay messages (see the module framing).

    Attributes:
        path: the request path with query (server side; the client's URL path
            on the client side).
        headers: the upgrade request's headers (server side), or None.
    """

    def __init__(self, connection: Any, limit: int, *, path: str = "",
                 headers: Any = None) -> None:
        self._connection = connection
        self._limit = limit
        self.path = path
        self.headers = headers
        self._closed = threading.Event()
        self._lost: str | None = None

    # -- relay frames -------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one relay message.  Raises ConnectionLost, MessageTooLarge."""
        self._check_open()
        lengths = [memoryview(f).nbytes for f in frames]
        total = sum(lengths)
        if total > self._limit:
            raise MessageTooLarge(total, self._limit)
        header = pack_header(lengths)
        with _lost():
            if total <= SMALL_MESSAGE:
                self._connection.send(b"".join([header, *frames]))
            else:
                self._connection.send(
                    [header, *(_bytes_view(f) for f in frames)])

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Receive one relay message within ``timeout`` seconds.

        A text message or a malformed one closes the connection (code 1003 /
        1007 / 1009 with a reason) and raises ConnectionLost.

        Raises:
            Timeout, ConnectionLost.
        """
        data = self.recv_raw(timeout)
        if isinstance(data, str):
            self._reject(CLOSE_UNSUPPORTED, "relay/1 over WebSocket uses binary messages")
        try:
            return unpack_message(data, self._limit)
        except MessageTooLarge as exc:
            self._reject(CLOSE_TOO_BIG, str(exc))
        except ValueError as exc:
            self._reject(CLOSE_BAD_DATA, f"malformed relay message: {exc}")

    def _reject(self, code: int, reason: str) -> Any:
        self.close(code, reason[:120])
        self._lost = f"closed the connection: {reason}"
        raise ConnectionLost(f"peer sent an invalid message; {self._lost}")

    # -- raw WebSocket messages (for other wire formats) --------------------

    def send_raw(self, data: str | bytes) -> None:
        """Send one WebSocket message as is: text for ``str``, binary for bytes.

        Raises: ConnectionLost.
        """
        self._check_open()
        with _lost():
            self._connection.send(data)

    def recv_raw(self, timeout: float | None = None) -> str | bytes:
        """The next whole WebSocket message (``str`` if text, ``bytes`` if binary).

        Raises:
            Timeout: nothing within ``timeout`` seconds (the channel stays usable).
            ConnectionLost: the peer closed or the connection broke (size limit too).
        """
        self._check_open()
        try:
            with _lost():
                return self._connection.recv(timeout=timeout)  # type: ignore[no-any-return]
        except TimeoutError:
            raise Timeout(f"no message within {timeout} s") from None
        except ConnectionLost as exc:
            self._lost = str(exc)
            raise

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ConnectionLost("the WebSocket channel is closed")
        if self._lost is not None:
            raise ConnectionLost(self._lost)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a close ``code`` and ``reason``; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._connection.close(code, reason)
        except Exception:  # already broken: nothing more to release
            log.debug("closing a WebSocket failed", exc_info=True)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _wait_closed(self, poll: float = 0.2) -> None:
        """Block (in the server's connection thread) until closed here or by the peer."""
        from websockets.protocol import State

        while not self._closed.wait(poll):
            if self._connection.state is State.CLOSED:
                return


def _bytes_view(frame: Buffer) -> Buffer:
    view = memoryview(frame)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


def _options(url: URL) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for key in ("ping_interval", "ping_timeout"):
        text = url.query.get(key)
        if text is None:
            values[key] = 20.0
            continue
        try:
            value = float(text)
        except ValueError:
            raise InvalidURL(str(url), f"{key} must be a number of seconds, got {text!r}") from None
        values[key] = value if value > 0 else None
    return values


def _hostport(url: URL) -> tuple[str, int]:
    if url.port is None:
        raise InvalidURL(url.render(), f"{url.scheme}:// needs HOST:PORT")
    return url.host, url.port


class WsListener:
    """A WebSocket server (websockets' sync server in a background thread)."""

    def __init__(self, url: URL, settings: Settings) -> None:
        host, port = _hostport(url)
        self._url = url
        self._settings = settings
        self._path = url.path
        self._pending: queue.SimpleQueue[WsChannel | None] = queue.SimpleQueue()
        self._routes: dict[str, Callable[[WsChannel], None]] = {}
        self._channels: set[WsChannel] = set()
        self._lock = threading.Lock()
        self._closed = False
        context = _server_ssl(url) if url.scheme == "wss" else None
        options = _options(url)
        try:
            self._server = ws_server.serve(
                self._handle, host, port,
                ssl=context,
                compression=None,
                process_request=self._process_request,
                server_header=f"relay websockets/{websockets.__version__}",
                open_timeout=settings.connect_timeout,
                ping_interval=options["ping_interval"],
                ping_timeout=options["ping_timeout"],
                close_timeout=CLOSE_TIMEOUT,
                max_size=settings.max_message_size + HEADER_ROOM,
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
        self._port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="relay-ws-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> URL:
        host = self._url.host
        netloc = f"[{host}]" if ":" in host else host
        query = {k: v for k, v in self._url.query.items() if k not in SERVER_ONLY_OPTIONS}
        return self._url.set(address=f"{netloc}:{self._port}{self._path}", query=query)

    def route(self, path: str, handler: Callable[[WsChannel], None]) -> None:
        """Give connections to ``path`` (exact, without query) to ``handler(channel)``.

        The handler runs in the connection's own thread; the connection is
        closed when it returns.  Routed paths are accepted even when the
        listen URL names another path.
        """
        self._routes[path] = handler

    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if self._path and path != self._path and path not in self._routes:
            return connection.respond(http.HTTPStatus.NOT_FOUND,
                                      f"no relay endpoint at {path}; try {self._path}\n")
        token = self._settings.token
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong token in the Authorization header\n")
        return None

    def _handle(self, connection: Any) -> None:
        request = connection.request
        channel = WsChannel(connection, self._settings.max_message_size,
                            path=request.path, headers=request.headers)
        route = self._routes.get(request.path.split("?", 1)[0])
        if route is not None:
            try:
                route(channel)
            except Exception:
                log.exception("WebSocket route handler for %s failed", request.path)
            finally:
                channel.close()
            return
        with self._lock:
            if self._closed:
                return
            self._channels.add(channel)
        self._pending.put(channel)
        try:
            channel._wait_closed()
        finally:
            with self._lock:
                self._channels.discard(channel)

    def accept(self, timeout: float | None = None) -> WsChannel:
        """The next WebSocket connection to the listen path.  Raises Timeout, ConnectionLost."""
        if self._closed:
            raise ConnectionLost("listener closed")
        try:
            channel = self._pending.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no client within {timeout} s") from None
        if channel is None:
            raise ConnectionLost("listener closed")
        return channel

    def close(self) -> None:
        """Stop listening, close every connection, join the server threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
        self._pending.put(None)
        for channel in channels:
            channel.close(1001, "server closing")
        self._server.shutdown()
        self._thread.join(5.0)


def _server_ssl(url: URL) -> ssl.SSLContext:
    certfile = url.query.get("certfile")
    if not certfile:
        raise ConfigError(f"{url.render()}: a wss:// server needs ?certfile=PEM[&keyfile=PEM]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, url.query.get("keyfile") or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {certfile!r}: {exc}") from exc
    return context


def _client_ssl(url: URL) -> ssl.SSLContext:
    cafile = url.query.get("cafile") or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {cafile!r}: {exc}") from exc


class WsTransport:
    """``ws://HOST:PORT[/PATH]`` and ``wss://HOST:PORT[/PATH]`` (see the module docstring)."""

    schemes = ("ws", "wss")

    def listen(self, url: URL, settings: Settings) -> WsListener:
        return WsListener(url, settings)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> WsChannel:
        """Open a WebSocket to ``url`` within ``timeout`` seconds.

        Raises:
            ConnectError: refused, unreachable, TLS failure, or an HTTP answer
                other than 101 (401 for a wrong token, 404 for a wrong path).
        """
        _hostport(url)
        uri = f"{url.scheme}://{url.address}"
        options = _options(url)
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token}"
        try:
            connection = ws_client.connect(
                uri,
                ssl=_client_ssl(url) if url.scheme == "wss" else None,
                compression=None,
                additional_headers=headers,
                user_agent_header=f"relay websockets/{websockets.__version__}",
                proxy=None,
                open_timeout=timeout,
                ping_interval=options["ping_interval"],
                ping_timeout=options["ping_timeout"],
                close_timeout=CLOSE_TIMEOUT,
                max_size=settings.max_message_size + HEADER_ROOM,
                **_LEGACY,
            )
        except InvalidStatus as exc:
            response = exc.response
            body = response.body.decode(errors="replace").strip() if response.body else ""
            raise ConnectError(
                f"{url.render()} refused the WebSocket: HTTP {response.status_code} "
                f"{response.reason_phrase}" + (f" ({body})" if body else "")
            ) from exc
        except InvalidURI as exc:
            raise InvalidURL(url.render(), str(exc)) from exc
        except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
            raise ConnectError(f"cannot connect to {url.render()}: {exc}") from exc
        return WsChannel(connection, settings.max_message_size, path=url.path)
