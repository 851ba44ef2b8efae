"""URL options, TLS files and gRPC channel arguments of the grpc transport."""

from __future__ import annotations

import ssl
from typing import Any

import grpc

from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
)
from relay.core.url import URL
from relay.transports.options import Keepalive, TLSOptions, option
from relay.transports.tls import diagnose

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
