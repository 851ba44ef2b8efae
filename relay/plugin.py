"""Everything a plugin author needs, in one module: a transport or codec
plugin imports ``relay.plugin`` and nothing else from relay.

* the interfaces: :class:`Transport`, :class:`Listener`, :class:`Channel`
  (their contract is the docstring of :mod:`relay.transports.base`) and
  :class:`Codec`;
* registration: :data:`hookimpl` and the :class:`Register` callable the
  ``relay_register_transports``/``relay_register_codecs``/``relay_register_commands``
  hooks receive;
* the values a transport receives and the errors it raises: :class:`URL`,
  :class:`Settings`, :class:`RelayError` and its transport subclasses;
* relay's frame header (:func:`pack_header`, :func:`unpack`, ...;
  :mod:`relay.transports.framing` states the layout), which grpc, ws and the
  tcp plugin all use;
* :func:`map_errors`, which turns a library's exceptions into relay's;
* the shared URL options: :class:`TLSOptions` (``cert``, ``key``, ``ca``,
  ``client_ca``, ``server_name``), :class:`Keepalive` (``keepalive``,
  ``keepalive_timeout``), :func:`option`, :func:`seconds`, :func:`spin_ns`;
* helpers every stream transport needs: :data:`HANDSHAKE_LIMIT`,
  :func:`over_limit`, :func:`readable`, :func:`spin_until`;
* :class:`TransportCompliance`, the test suite a transport subclasses
  (imported on first use: it needs pytest).

``plugins/relay-tcp`` in relay's repository is a complete transport written
against this module alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.codecs.base import NESTING_LIMIT, Buffer, Codec, check_nesting
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    RelayError,
    Timeout,
    TLSError,
    TransportError,
)
from relay.core.plugins import Register, hookimpl
from relay.core.url import URL, make_url
from relay.transports.base import (
    HANDSHAKE_LIMIT,
    Channel,
    Listener,
    Transport,
    message_size,
    over_limit,
    readable,
    spin_ns,
    spin_until,
)
from relay.transports.framing import (
    MAX_FRAMES,
    check_count,
    check_lengths,
    header_size,
    pack,
    pack_header,
    read_count,
    read_lengths,
    unpack,
)
from relay.transports.native import map_errors
from relay.transports.options import Keepalive, TLSOptions, option, seconds
from relay.transports.tls import diagnose

if TYPE_CHECKING:
    from relay.testing import TransportCompliance

__all__ = [
    "HANDSHAKE_LIMIT",
    "MAX_FRAMES",
    "NESTING_LIMIT",
    "URL",
    "Buffer",
    "Channel",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "InvalidURL",
    "Keepalive",
    "Listener",
    "MessageTooLarge",
    "Register",
    "RelayError",
    "Settings",
    "TLSError",
    "TLSOptions",
    "Timeout",
    "Transport",
    "TransportCompliance",
    "TransportError",
    "check_count",
    "check_lengths",
    "check_nesting",
    "diagnose",
    "header_size",
    "hookimpl",
    "make_url",
    "map_errors",
    "message_size",
    "option",
    "over_limit",
    "pack",
    "pack_header",
    "read_count",
    "read_lengths",
    "readable",
    "seconds",
    "spin_ns",
    "spin_until",
    "unpack",
]


def __getattr__(name: str) -> Any:
    if name == "TransportCompliance":  # needs pytest: imported only when asked for
        from relay.testing import TransportCompliance

        return TransportCompliance
    raise AttributeError(f"module 'relay.plugin' has no attribute {name!r}")
