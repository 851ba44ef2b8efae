"""The Gymie server: the WebSocket listener and each connection's loop around a
:class:`~relay.compat.gymie.GymieSession` (see the package docstring).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from relay.compat.gymie._messages import _CLOSE_REASON_BYTES, GYMIE_PATH, IDLE_POLL
from relay.compat.gymie._session import GymieClose, GymieSession
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    TransportError,
)
from relay.core.url import URL
from relay.server import ThreadedServer
from relay.transports.base import readable, spin_ns, spin_until
from relay.transports.options import ALIASES, TLS_OPTIONS
from relay.transports.ws import server_ssl_context, token_safe_logger

log = logging.getLogger("relay.compat.gymie")

# ---------------------------------------------------------------------------
# Server side: the WebSocket listener and the per-connection loop


def _cut(reason: str) -> str:
    data = reason.encode("utf-8")
    if len(data) <= _CLOSE_REASON_BYTES:
        return reason
    return data[:_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class GymieServer(ThreadedServer):
    """A WebSocket server speaking Gymie's protocol on one path (``/gym`` by default).

    One thread per client drives websockets' sans-I/O ``ServerProtocol`` on
    the socket itself: the thread that reads a request answers it, with no
    hand-off to another thread (websockets' threaded server costs ~30% more
    per round trip here).  Each client gets its own
    :class:`~relay.server.EnvHost` and :class:`GymieSession`; its envs are
    closed when it leaves.  Same ``address``/``close``/``serve_forever`` as
    :class:`relay.server.Server`.

    HTTP: the WebSocket upgrade on the path -> 101; another path -> 404; a
    request that is not an upgrade -> websockets' 426/400; a wrong or
    missing ``Authorization: Bearer <token>`` when ``settings.token`` is set
    -> 401.  No compression is negotiated (per-message deflate is what makes
    the real Gymie slow on frames) and no pings are sent (Gymie sends none).
    A message over ``settings.max_message_size`` closes the socket with 1009.
    ``wss://`` needs ``?cert=PEM[&key=PEM]``, as the ws transport.

    Raises:
        ConfigError: not a ``ws``/``wss`` URL, or a bad certificate.
        TransportError: cannot bind.
    """

    def __init__(self, factory: Callable[..., Any], url: URL, settings: Settings) -> None:
        if url.scheme not in ("ws", "wss"):
            raise ConfigError(f"the gymie protocol runs over ws:// or wss://, not {url.scheme}://")
        super().__init__()
        self._factory = factory
        self.settings = settings
        self.shutdown_grace = settings.shutdown_grace
        self._path = url.path or GYMIE_PATH
        self._spin = spin_ns(url)
        self._tls = server_ssl_context(url) if url.scheme == "wss" else None
        host = url.host or "127.0.0.1"
        try:
            self._socket = socket.create_server((host, url.port or 0),
                                                family=socket.AF_INET6 if ":" in host
                                                else socket.AF_INET)
        except OSError as exc:
            raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
        self._socket.settimeout(IDLE_POLL)
        port = self._socket.getsockname()[1]
        netloc = f"[{host}]" if ":" in host else host
        query = {k: v for k, v in url.query.items()
                 if k not in TLS_OPTIONS and k not in ALIASES}
        self.address: URL = url.set(address=f"{netloc}:{port}{self._path}", query=query)
        self.start()

    def _accept(self, timeout: float) -> Callable[[], None] | None:
        try:
            sock, _ = self._socket.accept()  # the socket's own timeout is IDLE_POLL
        except TimeoutError:
            return None
        except OSError:
            if self._stop.is_set():
                return None
            log.exception("accept failed")
            return None
        return lambda: self._serve_socket(sock)

    def _close_endpoint(self) -> None:
        self._socket.close()

    def _serve_socket(self, sock: socket.socket) -> None:
        from websockets.server import ServerProtocol

        from relay.server import EnvHost

        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.settings.connect_timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            protocol = ServerProtocol(max_size=self.settings.max_message_size,
                                      logger=token_safe_logger(log))
            if self._handshake(sock, protocol):
                host = EnvHost(self._factory, tracebacks=self.settings.tracebacks)
                session = GymieSession(host.handle)
                try:
                    self._converse(sock, protocol, session)
                finally:
                    session.close()
                    host.close()
        except (OSError, TimeoutError):  # the client vanished or spoke no TLS/HTTP
            pass
        except Exception:
            log.exception("Gymie connection failed")
        finally:
            sock.close()

    def _handshake(self, sock: socket.socket, protocol: Any) -> bool:
        """Read the upgrade request and answer it; True if the WebSocket is open."""
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            events = protocol.events_received()
            _flush(sock, protocol)
            if events:
                request = events[0]
                break
            if protocol.handshake_exc is not None or time.monotonic() > deadline:
                return False
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(65536)
            if not data:
                return False
            protocol.receive_data(data)
        token = self.settings.token
        if urlsplit(request.path).path != self._path:
            response = protocol.reject(HTTPStatus.NOT_FOUND,
                                       f"Gymie's WebSocket path here is {self._path}\n")
        elif token is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(),
                f"Bearer {token}".encode()):
            response = protocol.reject(HTTPStatus.UNAUTHORIZED,
                                       "missing or wrong token in the Authorization header\n")
        elif self._stop.is_set():
            response = protocol.reject(HTTPStatus.SERVICE_UNAVAILABLE, "server closing\n")
        else:
            response = protocol.accept(request)
        protocol.send_response(response)
        _flush(sock, protocol)
        return response.status_code == HTTPStatus.SWITCHING_PROTOCOLS

    def _converse(self, sock: socket.socket, protocol: Any, session: GymieSession) -> None:
        from websockets.frames import Opcode
        from websockets.protocol import State

        sock.settimeout(IDLE_POLL)
        arrived = readable(sock)
        parts: list[bytes] = []
        text = True
        while True:
            if self._stop.is_set():
                self._close(sock, protocol, 1001, "server closing")
                return
            try:
                # the next request usually comes within the agent's turn: poll for it
                # before sleeping (see relay.transports.base.spin_until)
                spin_until(lambda: arrived(0), self._spin)
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                continue
            if not data:
                protocol.receive_eof()
                _flush(sock, protocol)
                return
            protocol.receive_data(data)
            for frame in protocol.events_received():
                if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
                    text, parts = frame.opcode is Opcode.TEXT, [frame.data]
                elif frame.opcode is Opcode.CONT:
                    parts.append(frame.data)
                else:  # ping, pong, close: the protocol answers them itself
                    continue
                if not frame.fin:
                    continue
                payload = parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                if text:
                    try:
                        message: str | bytes = bytes(payload).decode("utf-8")
                    except UnicodeDecodeError:
                        self._close(sock, protocol, 1007, "invalid UTF-8 in a text message")
                        return
                else:
                    message = bytes(payload)
                answer = session.receive(message)
                if isinstance(answer, GymieClose):
                    self._close(sock, protocol, answer.code, answer.reason)
                    return
                protocol.send_text(answer.encode("utf-8"))
            # a client slow to read gets settings.timeout seconds, not the idle poll
            sock.settimeout(self.settings.timeout)
            _flush(sock, protocol)
            sock.settimeout(IDLE_POLL)
            if protocol.state is not State.OPEN:  # the client closed, or broke the protocol
                self._drain(sock, protocol)
                return

    @staticmethod
    def _close(sock: socket.socket, protocol: Any, code: int, reason: str) -> None:
        """Send a close frame, wait up to 1 s for the client's, then let the socket go."""
        from websockets.protocol import State

        if protocol.state is State.OPEN:
            protocol.send_close(code, _cut(reason))
        _flush(sock, protocol)
        GymieServer._drain(sock, protocol)

    @staticmethod
    def _drain(sock: socket.socket, protocol: Any) -> None:
        """Read (and drop) until the closing handshake ends, for at most 1 s."""
        from websockets.protocol import State

        deadline = time.monotonic() + _CLOSE_WAIT
        while protocol.state is not State.CLOSED and time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = sock.recv(_RECV_SIZE)
            except (TimeoutError, OSError):
                return
            if not data:
                return
            protocol.receive_data(data)
            protocol.events_received()
            _flush(sock, protocol)


_RECV_SIZE = 1 << 18
_CLOSE_WAIT = 1.0


def _flush(sock: socket.socket, protocol: Any) -> None:
    """Write what the protocol wants sent; an empty chunk means: end the write side."""
    chunks = protocol.data_to_send()
    if not chunks:
        return
    data = [c for c in chunks if c]
    if data:
        sock.sendall(data[0] if len(data) == 1 else b"".join(data))
    if len(data) < len(chunks):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
