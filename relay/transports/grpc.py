"""``grpc://HOST:PORT`` and ``grpcs://HOST:PORT``: relay frames over one gRPC stream.

A channel is one bidirectional streaming call of the method
``/relay.v1.Relay/Channel``, defined with grpcio's generic handlers and raw
bytes (no ``.proto``).  Each gRPC message carries one whole relay message::

    u32 n | n x u64 frame lengths | frame 0 bytes | frame 1 bytes | ...

(all little-endian).  The receiver slices the frames out of the received
``bytes`` without copying, so returned frames stay valid.  One gRPC message
per relay message (instead of one per frame) keeps the per-message gRPC
overhead constant whatever the number of frames.

Server side, every incoming call becomes a :class:`GrpcChannel` returned by
:meth:`GrpcListener.accept`; the server sends its initial metadata at once,
and :meth:`GrpcTransport.connect` returns only when it has arrived, so a
connected channel is an accepted one.

Threads and wake-ups (each thread hand-off costs 50-100 µs on a loaded VM,
more than relay's own work per step, so the hot path has none of ours):

* ``recv`` waits in the calling thread on the call's own condition variable,
  which grpcio's completion-queue thread notifies when a message arrives, as
  grpcio's blocking iterators do but with a deadline (``_CallReader``,
  ``_RequestReader``); it first polls for up to ``?spin=`` microseconds
  (default :data:`~relay.transports.base.DEFAULT_SPIN_US`) so the wake-up is
  usually not a sleep;
* a server serves each call through grpcio's non-blocking stream handler (the
  ``experimental_non_blocking`` mechanism of grpcio's health service): no
  pool thread is held per client, and ``send`` starts the send operation in
  the calling thread without waiting for the write to finish
  (``_ResponseSender``);
* a client's ``send`` also starts the send operation in the calling thread
  (``_RequestSender``) instead of queueing it for the request thread grpcio
  runs per call, which then only ends the stream on close.

``send`` never waits: gRPC allows one send in flight per call, so a message
sent while the previous one is still being written (a peer not reading) waits
in a queue that the completion of each send drains.  These readers and
senders use grpcio internals (``_state`` of a call, cygrpc operations),
checked at import and when a call starts; with a grpcio whose internals
differ, a helper thread per channel reads, a client's messages go through
grpcio's request thread and a server's through a response generator (or a
thread feeding grpcio's blocking send callback): the same behaviour, slower.

Measured (relay bench, relay grpc:// over raw grpcio bidi, median of the
per-round ratios of 8 interleaved rounds, S/M/L): 0.95/0.94/0.93; with reader
threads and queues instead 1.52/1.40/1.16; without the spin 1.56/1.00/1.20.

Limits and liveness:

* gRPC's 4 MiB message limit is raised to ``settings.max_message_size`` plus
  the frame header (``grpc.max_send_message_length`` and
  ``grpc.max_receive_message_length``, on both sides);
* a server closes a connection that has not finished its TLS and HTTP/2
  handshake within ``settings.connect_timeout`` seconds
  (``grpc.server_handshake_timeout_ms``; gRPC's default is 120 s);
* HTTP/2 keepalive pings every ``keepalive`` seconds (default 10) and a
  ``keepalive_timeout`` (default 5) make a silently dead peer (host gone,
  cable cut) surface as :class:`~relay.core.errors.ConnectionLost`; a peer
  process that dies is noticed at once through its closed socket;
* no gRPC object exists before ``listen``/``connect`` is called (a process
  may fork freely before).

URL options (query) of this transport, besides relay's settings:

``keepalive``            seconds between keepalive pings (default 10).
``keepalive_timeout``    seconds to wait for a ping's answer (default 5).
``max_clients``          server: most simultaneous channels (default 64); the
                         next client gets ``ConnectError``.  Counted by the
                         listener until each call ends (grpcio's
                         ``maximum_concurrent_rpcs`` counts busy handler
                         threads, and handlers return at once here).
``spin``                 microseconds ``recv`` polls before it sleeps (default
                         250; 0: never poll, no CPU spent while idle).

``grpcs://`` adds TLS (paths to PEM files; each option may also come from the
environment variable ``RELAY_TLS_<NAME>``, e.g. ``RELAY_TLS_CA``):

``cert``, ``key``        server: its certificate chain and private key
                         (required).  Client: a client certificate for mutual
                         TLS (optional).
``client_ca``            server: require client certificates signed by these
                         roots (mutual TLS).
``ca``                   client: the root certificates that sign the server's
                         certificate (default: the system roots).  On a listen
                         URL it is unused by the server but kept in
                         ``listener.address`` for the clients of that address.
``server_name``          client: the name to check the server certificate
                         against, when it differs from HOST.

``listener.address`` keeps every query option except ``cert``, ``key`` and
``client_ca``.

Errors: every ``grpc.RpcError`` becomes a :class:`~relay.core.errors.RelayError`
(kept as ``__cause__``): no server at connect -> ``ConnectError`` after the
timeout; a TLS failure (untrusted certificate, a plain server for
``grpcs://``, a TLS server for ``grpc://``) -> :class:`~relay.core.errors.TLSError`
at once, naming the cause (gRPC itself only retries: while waiting, connect
tries the handshake with :mod:`ssl`, see :mod:`relay.transports.tls`);
``RESOURCE_EXHAUSTED`` (an oversized message received) and any end of the
call -> ``ConnectionLost``.
"""

from __future__ import annotations

import collections
import os
import queue
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    Timeout,
    TLSError,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import (
    HANDSHAKE_LIMIT,
    message_size,
    over_limit,
    spin_ns,
    spin_until,
)
from relay.transports.framing import pack, unpack
from relay.transports.options import Keepalive, TLSOptions, option
from relay.transports.tls import diagnose

try:  # grpcio internals behind the in-thread timed reads (_CallReader, _RequestReader)
    from grpc import _channel as _grpc_channel
    from grpc import _server as _grpc_server
    from grpc._cython import cygrpc as _cygrpc

    _RECEIVE = _cygrpc.OperationType.receive_message
    _SEND = _cygrpc.OperationType.send_message
    _REQUEST_TOKEN = _grpc_server._RECEIVE_MESSAGE_TOKEN
    _SEND_TOKEN = _grpc_server._SEND_MESSAGE_TOKEN
    _INTERNALS = callable(getattr(_grpc_channel, "_event_handler", None))
except (ImportError, AttributeError):  # another grpcio: the threaded fallback
    _INTERNALS = False

__all__ = ["METHOD", "GrpcChannel", "GrpcListener", "GrpcTransport", "pack", "tls_file", "unpack"]

SERVICE = "relay.v1.Relay"
METHOD = f"/{SERVICE}/Channel"
"""The full gRPC method name of a relay channel."""

_MAX_GRPC_LENGTH = 2**31 - 1
_HEADER_ALLOWANCE = 64 * 1024  # frame header bytes on top of max_message_size
_END = object()
_SERVER_ONLY_OPTIONS = ("cert", "key", "client_ca")
_ACCEPTED_KEY = "relay-transport"  # initial metadata sent when a stream is accepted
TLS_LOOK_AFTER = 0.1
"""Seconds a connect waits for the server before it looks for a TLS problem itself."""
TLS_LOOK_EVERY = 0.5
"""Seconds between such looks while nobody answers (the server may start meanwhile)."""


def _grpc_limit(settings: Settings) -> int:
    return min(settings.max_message_size + _HEADER_ALLOWANCE, _MAX_GRPC_LENGTH)


def _options(url: URL, settings: Settings, *, server: bool) -> list[tuple[str, Any]]:
    limit = _grpc_limit(settings)
    keepalive = Keepalive.from_url(url, interval=10.0, timeout=5.0)
    assert keepalive.interval is not None and keepalive.timeout is not None  # never disabled
    keepalive_ms = int(keepalive.interval * 1000)
    keepalive_timeout_ms = int(keepalive.timeout * 1000)
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),  # newer name of the deadline
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server:
        options += [
            # a connection that has not finished TLS and HTTP/2's SETTINGS
            # exchange by then is closed (gRPC's default: 120 s)
            ("grpc.server_handshake_timeout_ms", int(settings.connect_timeout * 1000)),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail
            ("grpc.http2.min_recv_ping_interval_without_data_ms", min(keepalive_ms, 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", min(keepalive_ms, 1000)),
        ]
    else:
        options += [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0),
        ]
        server_name = option(url, "server_name")
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
    return options


def _tls_problem(url: URL, timeout: float) -> str | None:
    """Why a connection to ``url`` fails at the TLS level (see :mod:`relay.transports.tls`)."""
    context = None
    if url.scheme == "grpcs":
        ca = tls_file(url, "ca")
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        tls = TLSOptions.from_url(url)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
        context.set_alpn_protocols(["h2"])
    return diagnose(url.host or "127.0.0.1", url.port or 0, context, timeout=timeout,
                    server_hostname=option(url, "server_name"),
                    tls_scheme="grpcs://")


def tls_file(url: URL, name: str, *, required: bool = False) -> bytes | None:
    """The PEM file named by URL option ``name`` (or ``RELAY_TLS_<NAME>``), or None.

    Raises:
        ConfigError: a required option is missing, or the file cannot be read.
    """
    return TLSOptions.from_url(url).read(name, scheme=url.scheme, required=required)


def _target(url: URL) -> str:
    netloc = url.address.split("/", 1)[0]
    if url.port is None:
        raise ConfigError(f"{url.scheme}:// needs HOST:PORT, got {url.address!r}")
    return netloc


def _rpc_error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            return f"{exc.code().name}: {exc.details()}"
        except Exception:  # a RpcError without call details
            pass
    return repr(exc)


def _spin(arrived: Callable[[], bool], budget_ns: int, timeout: float | None) -> float | None:
    """Poll ``arrived`` for up to ``budget_ns`` (within ``timeout``); the timeout left."""
    if not budget_ns or timeout == 0 or arrived():
        return timeout
    if timeout is None:
        spin_until(arrived, budget_ns)
        return None
    start = time.perf_counter_ns()
    spin_until(arrived, min(budget_ns, int(timeout * 1e9)))
    return max(0.0, timeout - (time.perf_counter_ns() - start) / 1e9)


class _ThreadReader:
    """Timed reads of a blocking message iterator through a helper thread.

    The portable fallback of :class:`_CallReader` and :class:`_RequestReader`
    (used when grpcio's internals differ from those they rely on): one thread
    pulls the iterator into a queue, which ``next`` waits on.  Costs one
    thread wake-up per message.
    """

    def __init__(self, messages: Iterator[bytes]) -> None:
        self._messages = messages
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            for data in self._messages:
                self._inbox.put(data)
            self._inbox.put(None)
        except BaseException as exc:  # handed to the reader: grpc.RpcError or a torn-down call
            self._inbox.put(exc)

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout, the iterator's error."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="relay-grpc-read", daemon=True)
            self._thread.start()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no message within {timeout} s") from None
        if isinstance(item, BaseException):
            self._inbox.put(item)  # every later call fails alike
            raise item
        if item is None:
            self._inbox.put(None)
        return item

    def wake(self) -> None:
        self._inbox.put(None)


class _CallReader:
    """Timed reads of a client call's responses in the calling thread.

    Does what grpcio's ``_MultiThreadedRendezvous.__next__`` does (start one
    receive operation, wait on the call's condition until the channel's spin
    thread delivers the message) but with a deadline, so no thread of ours
    sits between gRPC and ``recv``.  A receive that timed out stays pending
    and is the one the next call waits for.
    """

    def __init__(self, call: Any, spin: int) -> None:
        self._state = call._state
        self._core = call._call
        self._handler = _grpc_channel._event_handler(call._state, None)
        self._spin = spin
        self.closed = False

    def _arrived(self) -> bool:
        return self._state.response is not None or _RECEIVE not in self._state.due

    @staticmethod
    def usable(call: Any) -> bool:
        state = getattr(call, "_state", None)
        return (_INTERNALS and hasattr(call, "_call") and hasattr(state, "condition")
                and hasattr(state, "due") and hasattr(state, "response"))

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout."""
        state = self._state
        with state.condition:
            if state.response is None and _RECEIVE not in state.due:
                if state.code is not None:
                    return None
                state.due.add(_RECEIVE)
                if not self._core.operate((_cygrpc.ReceiveMessageOperation(0),), self._handler):
                    state.due.discard(_RECEIVE)
                    return None
        left = _spin(self._arrived, self._spin, timeout)
        with state.condition:
            if not state.condition.wait_for(
                lambda: state.response is not None or _RECEIVE not in state.due or self.closed,
                left,
            ):
                raise Timeout(f"no message within {timeout} s")
            response, state.response = state.response, None
            return response  # type: ignore[no-any-return]

    def wake(self) -> None:
        self.closed = True
        with self._state.condition:
            self._state.condition.notify_all()

    def status(self) -> str:
        """The call's final status as ``" (CODE: details)"``, once known (within 0.5 s)."""
        state = self._state
        with state.condition:
            state.condition.wait_for(lambda: state.code is not None, 0.5)
            if state.code is None:
                return ""
            return f" ({state.code.name}: {state.details})"


class _RequestSender:
    """A client call's sends started in the calling thread, never waiting.

    grpcio's own way (a request iterator drained by a thread per call) costs a
    thread wake-up before each message leaves.  This starts the send operation
    at once.  gRPC allows one send in flight per call: a message sent while the
    previous one is still being written (a peer not reading) waits in a queue,
    and the completion of each send, on grpcio's channel thread, starts the
    next.  The request iterator grpcio drains then only ends the stream.
    """

    def __init__(self, call: Any) -> None:
        self._state = call._state
        self._core = call._call
        self._grpc_handler = _grpc_channel._event_handler(call._state, None)
        self._queue: collections.deque[bytes] = collections.deque()

    def _start(self, data: bytes) -> bool:  # under the call's condition
        state = self._state
        state.due.add(_SEND)
        if self._core.operate((_cygrpc.SendMessageOperation(data, 0),), self._handle):
            return True
        state.due.discard(_SEND)
        return False

    def _handle(self, event: Any) -> bool:
        """grpcio's event handler, then the next queued send (grpcio's channel thread)."""
        done = self._grpc_handler(event)
        state = self._state
        with state.condition:
            if (self._queue and _SEND not in state.due and state.code is None
                    and not state.cancelled and self._start(self._queue.popleft())):
                return False  # the call has an operation due again
        return done  # type: ignore[no-any-return]

    def send(self, data: bytes) -> None:
        state = self._state
        with state.condition:
            if state.code is None and not state.cancelled:
                if _SEND in state.due or self._queue:
                    self._queue.append(data)
                    return
                if self._start(data):
                    return
        raise ConnectionLost(f"the gRPC call has ended ({state.code})")


class _RequestReader:
    """Timed reads of a server call's requests in the calling thread.

    What grpcio's ``_RequestIterator.__next__`` does, with a deadline (see
    :class:`_CallReader`).
    """

    def __init__(self, requests: Any, spin: int) -> None:
        self._requests = requests
        self._state = requests._state
        self._spin = spin
        self.closed = False

    def _arrived(self) -> bool:
        state = self._state
        return (state.request is not None or _REQUEST_TOKEN not in state.due
                or state.client == "cancelled")

    @staticmethod
    def usable(requests: Any) -> bool:
        state = getattr(requests, "_state", None)
        return (_INTERNALS and hasattr(requests, "_raise_or_start_receive_message")
                and hasattr(requests, "_look_for_request") and hasattr(state, "condition")
                and hasattr(state, "due") and hasattr(state, "request")
                and hasattr(state, "client"))

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout, grpc.RpcError."""
        state = self._state
        requests = self._requests
        with state.condition:
            try:
                if state.request is None and _REQUEST_TOKEN not in state.due:
                    requests._raise_or_start_receive_message()
            except StopIteration:
                return None
        left = _spin(self._arrived, self._spin, timeout)
        with state.condition:
            try:
                if not state.condition.wait_for(
                    lambda: (state.request is not None or _REQUEST_TOKEN not in state.due
                             or state.client == "cancelled" or self.closed),
                    left,
                ):
                    raise Timeout(f"no message within {timeout} s")
                return requests._look_for_request()  # type: ignore[no-any-return]
            except StopIteration:
                return None

    def wake(self) -> None:
        self.closed = True
        with self._state.condition:
            self._state.condition.notify_all()


class _ResponseSender:
    """A server call's sends that never wait for gRPC to finish writing.

    grpcio's own ``send_response`` blocks until the message is written, a
    thread wake-up (~100-200 µs here) on the serving thread between a reply
    and the next ``recv``.  This starts the same send operation and returns.
    gRPC allows one send in flight per call: a message sent meanwhile (a peer
    not reading) waits in a queue, and the completion of each send, on
    grpcio's server thread, starts the next one, then the final status once
    the channel is closed.
    """

    def __init__(self, context: Any, send_response: Any) -> None:
        self._state = context._state
        self._call = context._rpc_event.call
        self._grpc_done = _grpc_server._send_message(self._state, _SEND_TOKEN)
        self._send_response = send_response
        self._queue: collections.deque[bytes] = collections.deque()
        self._closing = False

    @staticmethod
    def usable(context: Any) -> bool:
        state = getattr(context, "_state", None)
        return (_INTERNALS and hasattr(getattr(context, "_rpc_event", None), "call")
                and hasattr(state, "condition") and hasattr(state, "due")
                and hasattr(state, "statused") and hasattr(state, "client"))

    def _ended(self) -> bool:
        return self._state.client == "cancelled" or self._state.statused  # type: ignore[no-any-return]

    def _start(self, data: bytes) -> None:  # under the call's condition
        self._call.start_server_batch((_cygrpc.SendMessageOperation(data, 0),), self._sent)
        self._state.due.add(_SEND_TOKEN)

    def _sent(self, event: Any) -> Any:
        """grpcio's completion of a send, then the next queued one (grpcio's server thread)."""
        state = self._state
        with state.condition:
            result = self._grpc_done(event)
            if not self._ended():
                if self._queue:
                    self._start(self._queue.popleft())
                elif self._closing:
                    self._send_response(None)  # status OK: the end of the stream
            return result

    def send(self, data: bytes) -> None:
        state = self._state
        with state.condition:
            if self._ended() or self._closing:
                raise ConnectionLost("the gRPC call has ended")
            if _SEND_TOKEN in state.due or self._queue:
                self._queue.append(data)
            else:
                self._start(data)

    def close(self) -> None:
        """The final status once every queued message is written (at once if none is)."""
        state = self._state
        with state.condition:
            self._closing = True
            if self._ended() or _SEND_TOKEN in state.due or self._queue:
                return
        self._send_response(None)


class GrpcChannel:
    """One relay channel over one gRPC bidirectional stream (either side).

    ``recv`` waits for gRPC's own delivery of the next message in the calling
    thread (``_CallReader``/``_RequestReader``, or a ``_ThreadReader``) and
    ``send`` starts the send there (``_RequestSender``/``_ResponseSender``, or
    grpcio's request thread, send callback or a response generator fed by a
    queue).
    """

    def __init__(self, limit: int, side: str) -> None:
        self._limit = limit
        self._receive_limit = HANDSHAKE_LIMIT
        self._side = side
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._send: Callable[[bytes], Any] = self._outbox.put
        self._reader: Any = None
        self._closed = False
        self._lost: BaseException | None = None
        self._on_close: list[Any] = []
        self._close_lock = threading.Lock()
        self._stream_closed = False

    # -- driven by gRPC -------------------------------------------------------
    def _outgoing(self) -> Iterator[bytes]:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item

    @property
    def _peer(self) -> str:
        return "server" if self._side == "client" else "client"

    # -- Channel --------------------------------------------------------------
    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message.  Raises ConnectionLost, MessageTooLarge."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        size = message_size(frames)
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        try:
            self._send(pack(frames))
        except ConnectionLost:  # the call has ended; recv still returns what arrived before
            raise
        except Exception as exc:  # grpc raises plain exceptions on a torn-down call
            raise ConnectionLost(f"gRPC stream to the {self._peer} failed: {exc!r}") from exc

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """The next message, within ``timeout`` seconds.  Raises Timeout, ConnectionLost."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        try:
            data = self._reader.next(timeout)
        except Timeout:
            raise
        except grpc.RpcError as exc:
            self._fail(ConnectionLost(
                f"gRPC stream to the {self._peer} failed: {_rpc_error_text(exc)}"), exc)
        except Exception as exc:  # grpc raises plain exceptions on a torn-down call
            self._fail(ConnectionLost(f"gRPC stream to the {self._peer} failed: {exc!r}"), exc)
        if data is None:
            if self._closed:
                raise ConnectionLost("grpc channel is closed")
            status = getattr(self._reader, "status", lambda: "")()
            self._fail(ConnectionLost(f"the {self._peer} ended the stream{status}"), None)
        try:
            frames = unpack(data)
        except (ValueError, struct.error) as exc:
            self._fail(ConnectionLost(f"malformed relay message from the {self._peer}: {exc}"),
                       exc)
        size = message_size(frames)
        if size > self._receive_limit:
            self._fail(ConnectionLost(
                f"the {self._peer} sent {over_limit(size, self._receive_limit, self._limit)}; "
                "connection dropped"), None)
        return frames  # type: ignore[return-value]

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then; gRPC itself receives up to ``max_message_size``, as it
        arrives, before this check)."""
        self._receive_limit = nbytes

    def _fail(self, lost: ConnectionLost, cause: BaseException | None) -> NoReturn:
        lost.__cause__ = cause
        self._lost = lost
        self._close_stream()
        raise lost

    def close(self) -> None:
        """End the stream (the peer sees ConnectionLost); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        with self._close_lock:
            if self._stream_closed:
                return
            self._stream_closed = True
            callbacks, self._on_close = self._on_close, []
        self._outbox.put(_END)
        if self._reader is not None:
            self._reader.wake()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # closing a torn-down gRPC object
                pass


class GrpcListener:
    """A gRPC server whose streams are accepted as channels."""

    def __init__(self, url: URL, settings: Settings) -> None:
        self._settings = settings
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._max_clients = int(url.query.get("max_clients", "64"))
        self._open_calls = 0
        self._spin = spin_ns(url)
        self._count_lock = threading.Lock()
        if self._max_clients < 1:
            raise ConfigError("URL option max_clients must be at least 1")
        self._pool = ThreadPoolExecutor(max_workers=self._max_clients + 1,
                                        thread_name_prefix="relay-grpc")
        self._server = grpc.server(
            self._pool,
            options=_options(url, settings, server=True),
            maximum_concurrent_rpcs=self._max_clients,
        )
        def handle(requests: Iterator[bytes], context: grpc.ServicerContext,
                   send_response: Any = None) -> Iterator[bytes] | None:
            return self._handle(requests, context, send_response)

        handle.experimental_non_blocking = _INTERNALS  # type: ignore[attr-defined]
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Channel": grpc.stream_stream_rpc_method_handler(handle)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        target = _target(url)
        try:
            if url.scheme == "grpcs":
                credentials = grpc.ssl_server_credentials(
                    [(tls_file(url, "key", required=True), tls_file(url, "cert", required=True))],
                    root_certificates=tls_file(url, "client_ca"),
                    require_client_auth=bool(url.query.get("client_ca")
                                             or os.environ.get("RELAY_TLS_CLIENT_CA")),
                )
                port = self._server.add_secure_port(target, credentials)
            else:
                port = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            self._pool.shutdown(wait=False)
            raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
        if not port:
            self._pool.shutdown(wait=False)
            raise TransportError(f"cannot listen on {url.render()}")
        self._server.start()
        host = url.address.split("/", 1)[0].rsplit(":", 1)[0]
        query = {k: v for k, v in url.query.items() if k not in _SERVER_ONLY_OPTIONS}
        self._address = url.set(address=f"{host}:{port}", query=query)

    def _handle(self, requests: Iterator[bytes], context: grpc.ServicerContext,
                send_response: Any = None) -> Iterator[bytes] | None:
        """One incoming call becomes a channel for ``accept``.

        grpcio calls this with ``send_response`` because of the
        ``experimental_non_blocking`` attribute set in ``__init__`` (the
        mechanism of grpcio's own health service): the channel then sends from
        the thread that calls ``send`` and this pool thread returns at once.
        Without it (grpcio internals differ), the returned generator is the
        response stream, fed by ``send`` through a queue.
        """
        channel = GrpcChannel(self._settings.max_message_size, "server")
        if self._closed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "relay listener is closed")
        with self._count_lock:  # grpcio's maximum_concurrent_rpcs counts busy handler threads
            if self._open_calls >= self._max_clients:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"relay server has reached max_clients={self._max_clients}")
            self._open_calls += 1
        reader: Any = (_RequestReader(requests, self._spin) if _RequestReader.usable(requests)
                       else _ThreadReader(requests))
        channel._reader = reader

        def ended() -> None:
            reader.wake()
            with self._count_lock:
                self._open_calls -= 1

        if not context.add_callback(ended):
            ended()
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before it was accepted")
        context.send_initial_metadata(((_ACCEPTED_KEY, "grpc"),))
        if send_response is not None and _ResponseSender.usable(context):
            sender = _ResponseSender(context, send_response)
            channel._send = sender.send
            channel._on_close.append(sender.close)
            self._pending.put(channel)
            return None
        if send_response is not None:  # grpcio's send blocks: a thread of ours drains the queue
            def drain() -> None:
                try:
                    for data in channel._outgoing():
                        send_response(data)
                    send_response(None)  # status OK: the end of the stream
                except Exception:  # the call was torn down: recv reports it
                    pass

            threading.Thread(target=drain, name="relay-grpc-send", daemon=True).start()
            self._pending.put(channel)
            return None
        self._pending.put(channel)
        return channel._outgoing()

    @property
    def address(self) -> URL:
        return self._address

    def accept(self, timeout: float | None = None) -> GrpcChannel:
        """The next client's channel within ``timeout`` seconds.

        Raises:
            Timeout: no client came.  ConnectionLost: the listener is closed.
        """
        if self._closed:
            raise ConnectionLost("listener closed")
        try:
            channel = self._pending.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no client within {timeout} s") from None
        if channel is _END:
            raise ConnectionLost("listener closed")
        return channel

    def close(self) -> None:
        """Stop the server: every open stream ends (clients see ConnectionLost)."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(_END)
        self._server.stop(grace=None).wait(5.0)
        self._pool.shutdown(wait=False)


class GrpcTransport:
    """``grpc://HOST:PORT`` and ``grpcs://HOST:PORT`` (TLS); see the module docstring."""

    schemes = ("grpc", "grpcs")

    def listen(self, url: URL, settings: Settings) -> GrpcListener:
        """Start a gRPC server on ``url`` (port 0: a free port, see ``address``).

        Raises:
            TransportError: the address cannot be bound.  ConfigError: bad options
            or unreadable TLS files.
        """
        return GrpcListener(url, settings)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> GrpcChannel:
        """Open a stream to the server at ``url``, waiting up to ``timeout`` seconds.

        Returns once the server has accepted the stream.

        Raises:
            TLSError: the TLS handshake fails (see the module docstring), at once.
            ConnectError: nobody listens, or the server refuses the stream
                (e.g. ``max_clients`` reached) within ``timeout``.
            ConfigError: bad options or unreadable TLS files.
        """
        target = _target(url)
        options = _options(url, settings, server=False)
        if url.scheme == "grpcs":
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_file(url, "ca"),
                private_key=tls_file(url, "key"),
                certificate_chain=tls_file(url, "cert"),
            )
            grpc_channel = grpc.secure_channel(target, credentials, options=options)
        else:
            grpc_channel = grpc.insecure_channel(target, options=options)
        channel = GrpcChannel(settings.max_message_size, "client")
        try:
            stream = grpc_channel.stream_stream(
                METHOD, request_serializer=None, response_deserializer=None,
            )
            call = stream(channel._outgoing(), wait_for_ready=True)
        except Exception as exc:
            grpc_channel.close()
            raise ConnectError(f"cannot open a gRPC stream to {url.render()}: {exc!r}") from exc
        channel._on_close.append(call.cancel)
        channel._on_close.append(grpc_channel.close)
        metadata: list[Any] = []

        def wait_accepted() -> None:
            try:
                # returns once the server accepted (or refused) the stream
                metadata.extend(call.initial_metadata() or ())
            except Exception:  # grpc.RpcError: told below
                pass

        waiter = threading.Thread(target=wait_accepted, name="relay-grpc-connect", daemon=True)
        waiter.start()
        # gRPC retries a failed TLS handshake as if nobody answered: while we wait,
        # look for a TLS problem ourselves now and then, and report it at once
        deadline = time.monotonic() + timeout
        look = time.monotonic() + TLS_LOOK_AFTER
        while waiter.is_alive() and (remaining := deadline - time.monotonic()) > 0:
            waiter.join(min(remaining, max(look - time.monotonic(), 0.0)))
            if waiter.is_alive() and time.monotonic() >= look:
                problem = _tls_problem(url, min(max(remaining, 0.1), 2.0))
                if problem is not None:
                    channel._close_stream()
                    raise TLSError(f"cannot connect to {url.render()}: {problem}")
                look = time.monotonic() + TLS_LOOK_EVERY
        if waiter.is_alive():
            channel._close_stream()
            raise ConnectError(
                f"cannot connect to {url.render()}: no gRPC server answered within {timeout} s"
            )
        if (_ACCEPTED_KEY, "grpc") not in [tuple(m) for m in metadata]:
            channel._close_stream()
            detail = ""
            try:
                detail = _rpc_error_text(call) if call.done() else ""
            except Exception:  # nothing more to say
                pass
            raise ConnectError(f"cannot connect to {url.render()}: the server refused the "
                               f"stream {detail}".rstrip())
        if _CallReader.usable(call):
            channel._reader = _CallReader(call, spin_ns(url))
            channel._send = _RequestSender(call).send
        else:
            channel._reader = _ThreadReader(call)
        return channel
