"""The ``shm://`` rendezvous: the listener's UNIX socket, the JSON hello that hands the
segments over, and the transport that dials it (see the package docstring).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import posix_ipc

from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidURL,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import readable, spin_ns
from relay.transports.shm._channel import ShmChannel
from relay.transports.shm._names import (
    _create_segment,
    _create_semaphore,
    _forget,
    _install_hooks,
    _linked,
    _linked_lock,
    _open_segment,
    _open_semaphore,
    socket_path,
    sweep_orphans,
)
from relay.transports.shm._ring import (
    _STRONG_ORDER,
    DEFAULT_SEGMENT_SIZE,
    HEADER,
    _align,
    _max_segment,
)

HELLO_LIMIT = 4096
HELLO_TIMEOUT = 2.0
"""Seconds ``accept`` waits for a connected client's hello line (a client sends it
at once; a silent one must not hold up the clients behind it for long)."""
PROTOCOL = "relay-shm/2"

def _options(url: URL) -> tuple[int, int]:
    """``(segment bytes, spin budget in ns)`` from the URL query."""
    try:
        size = int(url.query.get("segment_size", DEFAULT_SEGMENT_SIZE))
    except ValueError as exc:
        raise ConfigError(f"bad shm option in {url.render()}: {exc}") from exc
    if size < 4096:
        raise ConfigError("segment_size must be >= 4096 bytes")
    spin = spin_ns(url)  # ConfigError unless a number of µs >= 0
    return _align(size), (spin if _STRONG_ORDER else 0)

def _recv_line(sock: socket.socket, deadline: float) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("shm handshake timed out")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(HELLO_LIMIT)
        except TimeoutError:
            raise Timeout("shm handshake timed out") from None
        if not chunk:
            raise ConnectionLost("the shm peer closed during the handshake")
        data += chunk
        if len(data) > HELLO_LIMIT:
            raise ConnectionLost("shm handshake line too long")
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ConnectionLost(f"bad shm handshake: {exc}") from exc
    if not isinstance(message, dict):
        raise ConnectionLost("bad shm handshake: not an object")
    return message


def _send_line(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


@contextlib.contextmanager
def _native(what: str, error: type[TransportError] = ConnectionLost) -> Iterator[None]:
    try:
        yield
    except TransportError:
        raise
    except (OSError, posix_ipc.Error) as exc:
        raise error(f"{what}: {exc}") from exc


class ShmListener:
    """Accepts ``shm://NAME`` clients on a UNIX socket; each gets its own segments."""

    def __init__(self, name: str, settings: Settings, spin: int) -> None:
        self._name = name
        self._settings = settings
        self._spin = spin
        self._path = socket_path(name)
        _install_hooks()
        sweep_orphans()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind()
        except BaseException:
            self._sock.close()
            raise
        self._inode = os.stat(self._path).st_ino
        self._readable = readable(self._sock)
        with _linked_lock:
            _linked[str(self._path)] = ("sock", os.getpid())
        self._closed = False

    def _bind(self) -> None:
        path = str(self._path)
        try:
            self._sock.bind(path)
        except OSError as exc:
            if not os.path.exists(path):
                raise TransportError(f"cannot bind {path}: {exc}") from exc
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
            except OSError:  # nobody there: the socket of a dead process
                with contextlib.suppress(OSError):
                    os.unlink(path)
                with _native(f"cannot bind {path}", TransportError):
                    self._sock.bind(path)
            else:
                raise InvalidURL(f"shm://{self._name}",
                                 "already listened on by another process") from None
            finally:
                probe.close()
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._sock.setblocking(False)

    @property
    def address(self) -> URL:
        return URL("shm", self._name)

    def accept(self, timeout: float | None = None) -> ShmChannel:
        """Wait up to ``timeout`` seconds for a client and finish its handshake.

        A client that fails its handshake is dropped and waiting goes on.

        Raises:
            Timeout: no client in time.  ConnectionLost: the listener is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ConnectionLost("the shm listener is closed")
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                ready = self._readable(wait)
            except (OSError, ValueError) as exc:
                raise ConnectionLost(f"the shm listener is closed: {exc}") from exc
            if not ready:
                raise Timeout(f"no shm client within {timeout} s")
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if self._closed:
                    raise ConnectionLost("the shm listener is closed") from exc
                continue
            try:
                return self._handshake(conn)
            except (TransportError, OSError, posix_ipc.Error):
                conn.close()

    def _handshake(self, conn: socket.socket) -> ShmChannel:
        hello = _recv_line(conn, time.monotonic() + min(self._settings.connect_timeout,
                                                        HELLO_TIMEOUT))
        if hello.get("protocol") != PROTOCOL:
            _send_line(conn, {"error": f"expected {PROTOCOL}"})
            raise ConnectionLost("shm client speaks another protocol")
        # The client's c2s ring is our input, its s2c ring our output.
        limit = _max_segment(self._settings.max_message_size)
        opened: list[Any] = []
        try:
            in_map = _open_segment(str(hello.get("c2s")), limit)
            opened.append(in_map)
            out_map = _open_segment(str(hello.get("s2c")), limit)
            opened.append(out_map)
            in_sem = _open_semaphore(str(hello.get("sem_c2s")))
            opened.append(in_sem)
            out_sem = _open_semaphore(str(hello.get("sem_s2c")))
            opened.append(out_sem)
            _send_line(conn, {"ok": True, "pid": os.getpid()})
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _send_line(conn, {"error": str(exc)})
            for item in opened:
                item.close()
            raise
        conn.settimeout(None)
        return ShmChannel(conn, out_map, in_map, out_sem, in_sem, self._settings,
                          spin=self._spin)

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours); idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        _forget(str(self._path), unlink=False)
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)


class ShmTransport:
    """``shm://NAME``: shared memory between processes of one machine.

    ``shm://0`` listens on a fresh unique name (read it from ``address``).
    Options: ``?segment_size=BYTES`` and ``?spin=MICROSECONDS``.
    """

    schemes = ("shm",)

    def listen(self, url: URL, settings: Settings) -> ShmListener:
        _, spin = _options(url)
        name = url.address
        if name == "0":
            name = f"anon-{os.getpid()}-{secrets.token_hex(4)}"
        return ShmListener(name, settings, spin)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> ShmChannel:
        """Connect to the listener of ``url`` and create this connection's segments.

        Retries until ``timeout`` seconds while nobody listens yet.

        Raises:
            ConnectError: nobody listens within ``timeout``, or the handshake failed.
        """
        size, spin = _options(url)
        path = str(socket_path(url.address))
        deadline = time.monotonic() + timeout
        sock = self._dial(path, url, deadline)
        names: list[str] = []
        maps: list[mmap.mmap] = []
        sems: list[posix_ipc.Semaphore] = []
        try:
            for _ in range(2):
                name, mapping = _create_segment(HEADER + size)
                names.append(name)
                maps.append(mapping)
            for _ in range(2):
                name, sem = _create_semaphore()
                names.append(name)
                sems.append(sem)
            with _native("shm handshake failed", ConnectError):
                _send_line(sock, {"protocol": PROTOCOL, "pid": os.getpid(), "size": size,
                                  "c2s": names[0], "s2c": names[1],
                                  "sem_c2s": names[2], "sem_s2c": names[3]})
                try:
                    answer = _recv_line(sock, deadline)
                except Timeout:
                    raise ConnectError(f"no shm handshake answer from {url.render()} "
                                       f"within {timeout} s") from None
                except ConnectionLost as exc:
                    raise ConnectError(f"shm handshake with {url.render()} failed: "
                                       f"{exc}") from exc
            if not answer.get("ok"):
                raise ConnectError(f"shm server refused: {answer.get('error', answer)}")
            sock.settimeout(None)
        except BaseException:
            for name in names:
                _forget(name, unlink=True)
            for mapping in maps:
                mapping.close()
            for sem in sems:
                sem.close()
            sock.close()
            raise
        for name in names:
            _forget(name, unlink=True)  # the server has mapped them; unlinking is harmless
        return ShmChannel(sock, maps[0], maps[1], sems[0], sems[1], settings, spin=spin)

    @staticmethod
    def _dial(path: str, url: URL, deadline: float) -> socket.socket:
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise ConnectError(f"nobody listens on {url.render()} ({path})") from exc
            except OSError as exc:
                sock.close()
                raise ConnectError(f"cannot connect to {url.render()}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
