"""GrpcListener: a gRPC server whose one method hands each stream to accept."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectionLost,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import (
    spin_ns,
)
from relay.transports.grpc import _internals
from relay.transports.grpc._channel import _END, GrpcChannel
from relay.transports.grpc._config import (
    _ACCEPTED_KEY,
    _SERVER_ONLY_OPTIONS,
    SERVICE,
    _options,
    _target,
    tls_file,
)
from relay.transports.grpc._internals import _RequestReader, _ResponseSender
from relay.transports.grpc._portable import _ThreadReader


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

        handle.experimental_non_blocking = _internals._INTERNALS  # type: ignore[attr-defined]
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
