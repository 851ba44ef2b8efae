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

Limits and liveness:

* gRPC's 4 MiB message limit is raised to ``settings.max_message_size`` plus
  the frame header (``grpc.max_send_message_length`` and
  ``grpc.max_receive_message_length``, on both sides);
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
                         next client gets ``ConnectError``.

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
(kept as ``__cause__``): no server / TLS failure at connect ->
``ConnectError``; ``RESOURCE_EXHAUSTED`` (an oversized message received) and
any end of the call -> ``ConnectionLost``.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import message_size

__all__ = ["METHOD", "GrpcChannel", "GrpcListener", "GrpcTransport", "pack", "tls_file", "unpack"]

SERVICE = "relay.v1.Relay"
METHOD = f"/{SERVICE}/Channel"
"""The full gRPC method name of a relay channel."""

_COUNT = struct.Struct("<I")
_MAX_GRPC_LENGTH = 2**31 - 1
_HEADER_ALLOWANCE = 64 * 1024  # frame header bytes on top of max_message_size
_END = object()
_SERVER_ONLY_OPTIONS = ("cert", "key", "client_ca")
_ACCEPTED_KEY = "relay-transport"  # initial metadata sent when a stream is accepted


def pack(frames: Sequence[Buffer]) -> bytes:
    """One relay message as the bytes of one gRPC message (see the module docstring)."""
    lengths = [memoryview(f).nbytes for f in frames]
    header = struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)
    return b"".join([header, *frames])


def unpack(data: bytes) -> list[memoryview]:
    """The frames of a gRPC message made by :func:`pack` (views into ``data``).

    Raises:
        ValueError: the header does not match the length of ``data``.
    """
    view = memoryview(data)
    (count,) = _COUNT.unpack_from(view, 0)
    offset = _COUNT.size + 8 * count
    if offset > len(view):
        raise ValueError(f"header announces {count} frames but the message has {len(view)} bytes")
    lengths = struct.unpack_from(f"<{count}Q", view, _COUNT.size)
    if offset + sum(lengths) != len(view):
        raise ValueError("frame lengths do not add up to the message length")
    frames = []
    for length in lengths:
        frames.append(view[offset:offset + length])
        offset += length
    return frames


def _grpc_limit(settings: Settings) -> int:
    return min(settings.max_message_size + _HEADER_ALLOWANCE, _MAX_GRPC_LENGTH)


def _float_option(url: URL, name: str, default: float) -> float:
    text = url.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"URL option {name}={text!r} must be a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"URL option {name}={text!r} must be positive")
    return value


def _options(url: URL, settings: Settings, *, server: bool) -> list[tuple[str, Any]]:
    limit = _grpc_limit(settings)
    keepalive_ms = int(_float_option(url, "keepalive", 10.0) * 1000)
    keepalive_timeout_ms = int(_float_option(url, "keepalive_timeout", 5.0) * 1000)
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
        if url.query.get("server_name"):
            options.append(("grpc.ssl_target_name_override", url.query["server_name"]))
    return options


def tls_file(url: URL, name: str, *, required: bool = False) -> bytes | None:
    """The PEM file named by URL option ``name`` (or ``RELAY_TLS_<NAME>``), or None.

    Raises:
        ConfigError: a required option is missing, or the file cannot be read.
    """
    path = url.query.get(name) or os.environ.get(f"RELAY_TLS_{name.upper()}")
    if not path:
        if required:
            raise ConfigError(
                f"{url.scheme}:// needs the URL option {name}=PATH (or RELAY_TLS_{name.upper()})"
            )
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS file {name}={path!r}: {exc}") from exc


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


class GrpcChannel:
    """One relay channel over one gRPC bidirectional stream (either side).

    Outgoing messages go through a queue that gRPC drains (the request
    iterator on a client, the response iterator on a server); incoming ones
    are read by one thread per channel into an inbox, so ``recv`` can wait
    with a timeout.
    """

    def __init__(self, limit: int, side: str) -> None:
        self._limit = limit
        self._side = side
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lost: BaseException | None = None
        self._ready = threading.Event()
        self._on_close: list[Any] = []

    # -- driven by gRPC -------------------------------------------------------
    def _outgoing(self) -> Iterator[bytes]:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item

    def _read(self, messages: Iterator[bytes]) -> None:
        try:
            for data in messages:
                self._inbox.put(data)
            self._inbox.put(ConnectionLost(f"the {self._peer} ended the stream"))
        except grpc.RpcError as exc:
            lost = ConnectionLost(f"gRPC stream to the {self._peer} failed: {_rpc_error_text(exc)}")
            lost.__cause__ = exc
            self._inbox.put(lost)
        except Exception as exc:  # grpc raises plain exceptions on a torn-down call
            lost = ConnectionLost(f"gRPC stream to the {self._peer} failed: {exc!r}")
            lost.__cause__ = exc
            self._inbox.put(lost)
        finally:  # the call is over: let gRPC's thread waiting for our next message go
            self._outbox.put(_END)

    @property
    def _peer(self) -> str:
        return "server" if self._side == "client" else "client"

    # -- Channel --------------------------------------------------------------
    def send(self, frames: Sequence[Buffer]) -> None:
        """Queue one message for sending.  Raises ConnectionLost, MessageTooLarge."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        size = message_size(frames)
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        self._outbox.put(pack(frames))

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """The next message, within ``timeout`` seconds.  Raises Timeout, ConnectionLost."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no message within {timeout} s") from None
        if isinstance(item, ConnectionLost):
            self._lost = item
            self._outbox.put(_END)
            raise item
        try:
            return unpack(item)  # type: ignore[return-value]
        except (ValueError, struct.error) as exc:
            self._lost = ConnectionLost(f"malformed relay message from the {self._peer}: {exc}")
            self._lost.__cause__ = exc
            self._close_stream()
            raise self._lost from exc

    def close(self) -> None:
        """End the stream (the peer sees ConnectionLost); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        self._outbox.put(_END)
        callbacks, self._on_close = self._on_close, []
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
        if self._max_clients < 1:
            raise ConfigError("URL option max_clients must be at least 1")
        self._pool = ThreadPoolExecutor(max_workers=self._max_clients + 1,
                                        thread_name_prefix="relay-grpc")
        self._server = grpc.server(
            self._pool,
            options=_options(url, settings, server=True),
            maximum_concurrent_rpcs=self._max_clients,
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Channel": grpc.stream_stream_rpc_method_handler(self._handle)}
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

    def _handle(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        channel = GrpcChannel(self._settings.max_message_size, "server")
        if self._closed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "relay listener is closed")
        context.send_initial_metadata(((_ACCEPTED_KEY, "grpc"),))
        context.add_callback(
            lambda: channel._inbox.put(ConnectionLost("the client's gRPC call ended"))
        )
        threading.Thread(target=channel._read, args=(requests,), name="relay-grpc-read",
                         daemon=True).start()
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
            ConnectError: nobody listens, TLS fails, or the server refuses the
                stream (e.g. ``max_clients`` reached) within ``timeout``.
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
        accepted = threading.Event()
        metadata: list[Any] = []

        def read() -> None:
            try:
                # returns once the server accepted (or refused) the stream
                metadata.extend(call.initial_metadata() or ())
            except Exception:  # grpc.RpcError: the reader below reports it
                pass
            accepted.set()
            channel._read(call)

        threading.Thread(target=read, name="relay-grpc-read", daemon=True).start()
        if not accepted.wait(timeout):
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
        return channel
