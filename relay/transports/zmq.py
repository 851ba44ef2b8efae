"""``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH``: relay over ZeroMQ (pyzmq).

Design (one server thread per channel, no socket shared between threads):

* The :class:`ZmqListener` binds a ROUTER socket that is only a rendezvous.
  A client's rendezvous DEALER sends ``[b"relay-zmq/1"]``; ``accept`` answers
  it with ``[b"relay-zmq/1", ENDPOINT]`` after binding a *dedicated* DEALER
  for that client on a fresh ephemeral endpoint (``tcp://HOST:*``, or the
  listener's ipc path plus a random suffix, removed on close).  ENDPOINT is
  the port number for tcp (the client keeps the host it dialled) or the ipc
  path.  Anything else arriving at the rendezvous is ignored.
* The client closes its rendezvous socket and connects a DEALER to that
  endpoint: the channel is a DEALER-DEALER pair with exactly one peer each.
  A relay message is one ZeroMQ multipart message (frames kept as is; frames
  of :data:`ZERO_COPY_MIN` bytes and more are sent without a copy, received
  frames are writable ``memoryview`` s over ZeroMQ's buffer, no copy either).
* Hot path: ``send`` is one ``zmq_msg_send`` per frame (non-blocking);
  ``recv`` is one blocking ``zmq_msg_recv`` per frame, with ``RCVTIMEO`` of
  at most :data:`CHECK_INTERVAL`; no ``zmq_poll`` (polling the monitor socket
  on every ``recv`` cost ~50 µs of system time per round trip here).
  Before blocking, ``recv`` polls without blocking for up to ``?spin=``
  microseconds (:data:`relay.transports.base.DEFAULT_SPIN_US`), yielding the core:
  an answer that comes within the peer's turn is then taken without putting
  this thread to sleep, and a sleep plus wake-up costs 50-100 µs on these
  VMs.  Measured (relay bench, both sides spinning vs not), median µs S/M/L:
  zmq+ipc 184/176/216 vs 345/265/356; zmq+tcp 186/195/224 vs 348/345/449.
  ``?spin=0`` turns it off (an idle agent or env then costs no CPU at all).
* Peer death: each channel socket has a monitor socket, read only when a
  ``recv`` wait expires; ``EVENT_DISCONNECTED`` (or a failed handshake, or a
  connect that gave up) turns into ``ConnectionLost`` once no data is left,
  so a dead peer is noticed within :data:`CHECK_INTERVAL` seconds.  ``connect``
  returns only after the ZMTP handshake with the channel endpoint, so each
  side sees the other's death from then on.
  Reconnection is disabled on channels, and ZMTP heartbeats
  (:data:`HEARTBEAT_IVL_MS`, :data:`HEARTBEAT_TIMEOUT_MS`) drop a peer that
  stopped answering (a frozen process, a lost machine).

Safety settings: ``LINGER 0`` on every socket (closing never blocks),
``MAXMSGSIZE`` = ``settings.max_message_size`` on channels (ZeroMQ drops a
larger frame *and the connection*: the receiver sees ``ConnectionLost``) and
a few KiB on the rendezvous, one context per process (re-created after
``fork``), and every ``zmq.ZMQError`` translated to the
:class:`~relay.core.errors.RelayError` tree with the original as ``__cause__``.

A channel or listener is used by one thread at a time (ZeroMQ sockets are
not thread-safe); the server gives each channel its own thread.

Zero-copy note: a frame sent without a copy is read by ZeroMQ's I/O thread
after ``send`` returns; do not mutate it until the peer has answered (the
request/reply pattern of relay guarantees this).

Source of the socket semantics: the libzmq API docs (zmq_socket, zmq_setsockopt,
zmq_socket_monitor), libzmq 4.3.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence

import zmq

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, spin_ns, spin_until

__all__ = ["HEARTBEAT_IVL_MS", "HEARTBEAT_TIMEOUT_MS", "ZmqChannel", "ZmqListener",
           "ZmqTransport"]

MAGIC = b"relay-zmq/1"
"""First frame of the rendezvous hello and of its answer."""

HEARTBEAT_IVL_MS = 2000
"""ZMTP heartbeat interval on channels, milliseconds."""

HEARTBEAT_TIMEOUT_MS = 10_000
"""A channel peer that answers no heartbeat for this long is dropped, milliseconds."""

CHECK_INTERVAL = 0.1
"""Seconds a waiting ``recv`` blocks before it looks at the monitor (peer death)."""
CHECK_INTERVAL_MS = int(CHECK_INTERVAL * 1000)

ZERO_COPY_MIN = 1 << 20
"""Frames from this size (bytes) on are sent without a copy.  Below it a copy is
cheaper: pyzmq's zero-copy send costs ~25 µs (a Frame, a release callback through
its garbage-collector thread) while copying 150 KB costs ~5 µs (measured here)."""

RENDEZVOUS_MAX_BYTES = 4096
"""MAXMSGSIZE of the rendezvous ROUTER: a hello is a few bytes."""

RENDEZVOUS_HANDSHAKE_MS = 5000
"""A connection to the rendezvous that sends no valid ZMTP greeting is dropped after this."""

_FATAL_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED  # a connecting socket gave up (reconnection is disabled)
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

_MORE = zmq.NOBLOCK | zmq.SNDMORE

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
    """A socket with linger 0 and a message-size limit.  Raises ``error`` (e.g. EMFILE)."""
    with _native("cannot create a ZeroMQ socket", error):
        sock = context().socket(kind)
        sock.copy_threshold = ZERO_COPY_MIN
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
    return sock


def _ms(timeout: float | None) -> int:
    """A zmq poll timeout in ms (-1: forever) from seconds."""
    if timeout is None:
        return -1
    return max(int(timeout * 1000 + 0.999), 0)


def _endpoint(url: URL, port: int | str | None = None) -> str:
    """The ZeroMQ endpoint of a relay URL (``port`` replaces the URL's)."""
    if url.scheme == "zmq+ipc":
        return f"ipc://{url.address}"
    host = url.host
    if url.port is None and port is None:
        raise InvalidURL(str(url), "zmq+tcp needs HOST:PORT (port 0 picks a free one)")
    if port is None:
        port = url.port if url.port else "*"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{port}"


class ZmqChannel:
    """One DEALER socket with exactly one peer; see the module docstring.

    ``recv`` returns writable ``memoryview`` frames owned by the caller.
    """

    def __init__(self, sock: zmq.Socket, settings: Settings, *, ipc_path: str | None = None,
                 name: str = "", spin: int = 0) -> None:
        self._sock = sock
        self._spin_ns = spin
        self._limit = settings.max_message_size
        self._receive_limit = HANDSHAKE_LIMIT
        self._send_timeout = settings.timeout
        self._ipc_path = ipc_path
        self._name = name
        self._monitor = sock.get_monitor_socket(_FATAL_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._rcvtimeo = -1
        self._closed = False
        self._lost: str | None = None
        self._io_lock = threading.Lock()  # held by send/recv; close() from another thread

    # -- hot path ---------------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message (one ZeroMQ multipart message).

        Waits up to ``settings.timeout`` seconds while the peer is not connected
        yet or its queue is full.

        Raises:
            MessageTooLarge, ConnectionLost, Timeout.
        """
        with self._io_lock:
            self._send_locked(frames)

    def _send_locked(self, frames: Sequence[Buffer]) -> None:
        if not frames:
            raise ValueError("a message has at least one frame")
        if self._lost is not None or self._closed:
            raise ConnectionLost(self._lost or f"{self._name}: channel is closed")
        size = 0
        for frame in frames:
            size += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        try:
            self._send(frames)
        except zmq.Again:
            self._send_slow(frames)
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: send failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    def _send(self, frames: Sequence[Buffer]) -> None:
        """One multipart message; frames from :data:`ZERO_COPY_MIN` bytes on are not copied.

        Raises zmq.Again when the first frame cannot be queued (no peer yet, or
        its queue is full); later frames of a message never do (ZeroMQ queues a
        multipart message atomically).
        """
        sock = self._sock
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            sock.send(frame, _MORE if i < last else zmq.NOBLOCK, copy=False)

    def _send_slow(self, frames: Sequence[Buffer]) -> None:
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
                    self._send(frames)
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
            Timeout, ConnectionLost (peer gone, closed, or a message over the limit).
        """
        with self._io_lock:
            return self._recv_locked(timeout)

    def _spin_recv(self, sock: zmq.Socket) -> zmq.Frame | None:
        """A frame that arrives within the spin budget, taken without sleeping."""
        if self._spin_ns and spin_until(lambda: bool(sock.poll(0)), self._spin_ns):
            return sock.recv(zmq.NOBLOCK, copy=False)
        return None

    def _recv_locked(self, timeout: float | None) -> list[Buffer]:
        if self._closed:
            raise ConnectionLost(f"{self._name}: channel is closed")
        sock = self._sock
        if self._lost is not None:
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
                    frame = self._spin_recv(sock) or sock.recv(0, copy=False)
                except zmq.Again:
                    if self._closed:  # close() from another thread
                        self._teardown()
                        raise ConnectionLost(f"{self._name}: channel is closed") from None
                    if self._lost is None:
                        self._check_monitor()
                    if self._lost is not None:
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
                    self._lost = (f"{self._name}: received "
                                  f"{over_limit(size, self._receive_limit, self._limit)}")
                    self._teardown()
                    raise ConnectionLost(self._lost)
                return frames
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: receive failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then; ``MAXMSGSIZE`` bounds each ZeroMQ frame by ``max_message_size``)."""
        self._receive_limit = nbytes

    def _wait_connected(self, deadline: float) -> None:
        """Wait for the ZMTP handshake with the peer (so either side sees a later death).

        Raises:
            ConnectError: the connection failed or did not complete by ``deadline``.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._monitor.poll(_ms(remaining)):
                self._teardown()
                raise ConnectError(f"{self._name}: the channel endpoint did not answer in time")
            event = int.from_bytes(self._monitor.recv_multipart()[0][:2], "little")
            if event & _FATAL_EVENTS:
                self._teardown()
                raise ConnectError(f"{self._name}: could not connect to the channel endpoint")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return

    def _check_monitor(self) -> None:
        """Drain monitor events; note in ``_lost`` that the peer is gone."""
        lost = False
        try:
            while self._monitor.poll(0):
                event = self._monitor.recv_multipart()
                lost = lost or (int.from_bytes(event[0][:2], "little") & _FATAL_EVENTS) != 0
            if lost:
                self._lost = f"{self._name}: the peer disconnected"
        except zmq.ZMQError as exc:
            self._lost = f"{self._name}: monitor failed: {exc}"
            raise ConnectionLost(self._lost) from exc

    # -- lifetime ----------------------------------------------------------------

    def _teardown(self) -> None:
        if self._sock.closed:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close(0)
        if self._ipc_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._ipc_path)

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
                if not self._sock.closed:
                    self._teardown()
            finally:
                self._io_lock.release()

    def __repr__(self) -> str:
        return f"<ZmqChannel {self._name}{' closed' if self._closed else ''}>"


class ZmqListener:
    """The rendezvous ROUTER of a server; ``accept`` gives one channel per hello."""

    def __init__(self, url: URL, settings: Settings) -> None:
        self._url = url
        self._settings = settings
        self._closed = False
        self._ipc_path: str | None = None
        self._spin_ns = spin_ns(url)
        if url.scheme == "zmq+ipc":
            _check_ipc_path_free(url)
        sock = _socket(zmq.ROUTER, RENDEZVOUS_MAX_BYTES)
        sock.setsockopt(zmq.HANDSHAKE_IVL, RENDEZVOUS_HANDSHAKE_MS)
        try:
            if url.scheme == "zmq+tcp" and ":" in url.host:
                sock.setsockopt(zmq.IPV6, 1)
            with _native(f"cannot listen on {url.render()}", TransportError):
                sock.bind(_endpoint(url))
                bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock
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

    def accept(self, timeout: float | None = None) -> ZmqChannel:
        """Wait up to ``timeout`` seconds for a client's hello; return its channel.

        Raises:
            Timeout: no client in time.  ConnectionLost: the listener is closed.
            TransportError: no ephemeral endpoint could be bound.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ConnectionLost("listener closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no client within {timeout} s")
            try:
                if not self._sock.poll(_ms(remaining)):
                    continue
                message = self._sock.recv_multipart()
            except zmq.ZMQError as exc:
                if self._closed:
                    raise ConnectionLost("listener closed") from exc
                raise ConnectionLost(f"listener failed: {exc}") from exc
            if len(message) != 2 or message[1] != MAGIC:
                continue  # not a relay-zmq hello: ignore it
            channel, reply = self._open_channel()
            try:
                self._sock.send_multipart([message[0], MAGIC, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                channel.close()  # the client went away meanwhile
                continue
            return channel

    def _open_channel(self) -> tuple[ZmqChannel, bytes]:
        settings = self._settings
        sock = _socket(zmq.DEALER, settings.max_message_size)
        channel: ZmqChannel | None = None
        try:
            with _native("cannot open a channel endpoint", TransportError):
                sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
                channel = ZmqChannel(sock, settings, name=f"{self._address.render()} (server)",
                                     spin=self._spin_ns)
                if self._url.scheme == "zmq+ipc":
                    ipc_path = f"{self._url.address}.{secrets.token_hex(6)}"
                    channel._ipc_path = ipc_path
                    sock.bind(f"ipc://{ipc_path}")
                    reply = ipc_path.encode()
                else:
                    if ":" in self._url.host:
                        sock.setsockopt(zmq.IPV6, 1)
                    sock.bind(_endpoint(self._url, "*"))
                    reply = sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1].encode()
        except BaseException:
            if channel is not None:
                channel.close()
            elif not sock.closed:
                sock.close(0)
            raise
        return channel, reply

    def close(self) -> None:
        """Stop listening (linger 0; the ipc file is removed); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(0)
        if self._ipc_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._ipc_path)


class ZmqTransport:
    """``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH`` (see the module docstring)."""

    schemes = ("zmq+tcp", "zmq+ipc")

    def listen(self, url: URL, settings: Settings) -> ZmqListener:
        """Bind the rendezvous of ``url`` (port 0: a free port, see ``address``).

        Raises:
            InvalidURL, TransportError (address in use, bad interface...).
        """
        _check(url)
        return ZmqListener(url, settings)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> ZmqChannel:
        """Say hello to the rendezvous at ``url`` and connect to the channel it gives.

        Raises:
            ConnectError: nobody answered within ``timeout`` seconds.
        """
        _check(url)
        deadline = time.monotonic() + timeout
        target = url.render()
        hello = _socket(zmq.DEALER, RENDEZVOUS_MAX_BYTES, ConnectError)
        try:
            with _native(f"cannot connect to {target}", ConnectError):
                if url.scheme == "zmq+tcp" and ":" in url.host:
                    hello.setsockopt(zmq.IPV6, 1)
                hello.connect(_endpoint(url))
                hello.send(MAGIC)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not hello.poll(_ms(remaining)):
                        raise ConnectError(f"no relay server answered at {target} "
                                           f"within {timeout} s")
                    answer = hello.recv_multipart()
                    if len(answer) == 2 and answer[0] == MAGIC:
                        break
        finally:
            hello.close(0)
        try:
            if url.scheme == "zmq+ipc":
                endpoint = f"ipc://{answer[1].decode()}"
            else:
                endpoint = _endpoint(url, int(answer[1]))
        except ValueError as exc:
            raise ConnectError(f"{target} gave a malformed channel address "
                               f"{answer[1][:100]!r}") from exc
        sock = _socket(zmq.DEALER, settings.max_message_size, ConnectError)
        channel: ZmqChannel | None = None
        try:
            with _native(f"cannot connect to {target}", ConnectError):
                sock.setsockopt(zmq.RECONNECT_IVL, -1)
                sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
                if url.scheme == "zmq+tcp" and ":" in url.host:
                    sock.setsockopt(zmq.IPV6, 1)
                channel = ZmqChannel(sock, settings, name=f"{target} (client)",
                                     spin=spin_ns(url))
                sock.connect(endpoint)
                channel._wait_connected(deadline)
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
