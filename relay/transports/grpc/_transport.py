"""GrpcTransport: listen and connect for grpc:// and grpcs://."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    TLSError,
)
from relay.core.url import URL
from relay.transports.base import (
    spin_ns,
)
from relay.transports.grpc._channel import GrpcChannel
from relay.transports.grpc._config import (
    _ACCEPTED_KEY,
    METHOD,
    TLS_LOOK_AFTER,
    TLS_LOOK_EVERY,
    _options,
    _rpc_error_text,
    _target,
    _tls_problem,
    tls_file,
)
from relay.transports.grpc._internals import _CallReader, _RequestSender
from relay.transports.grpc._listener import GrpcListener
from relay.transports.grpc._portable import _ThreadReader


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
