"""relay's settings and the one order in which they are looked up.

Precedence, highest first:

1. an explicit keyword argument (``relay.make(url, timeout=5)``),
2. the URL query (``zmq+tcp://host:port?timeout=5``),
3. an environment variable ``RELAY_<NAME>`` (``RELAY_TIMEOUT=5``),
4. ``relay.toml`` (top level) or ``[tool.relay]`` in ``pyproject.toml``, in the
   current directory,
5. the built-in default below.

This module only merges the layers; the environment and the files are read
by :func:`relay.adapters.config.load_settings`, which relay's public
functions (``relay.make``, ``relay.serve``...) call.

Query options that are not settings belong to the transport (each transport
documents its own), so they are kept, not rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from relay.core.errors import ConfigError
from relay.core.url import URL

__all__ = ["Settings", "resolve_settings"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Resolved settings for one client or server.

    Attributes:
        codec: codec name for relay/1 (``msgpack``, ``json``) or a peer's wire
            format on a server (``dm_env_rpc``, ``gymie``).
        timeout: deadline of one request, seconds.
        connect_timeout: deadline to reach the peer and finish the handshake, seconds.
        max_message_size: largest message accepted or sent, bytes (sum of frames).
        token: optional shared secret a client must present in its ``Hello``.
        zero_copy: hand out arrays that view transport buffers (valid until the
            next call) instead of fresh copies, where the transport can.
        tracebacks: a server sends the traceback of an environment's exception
            to the client (its file paths and code lines); false sends only
            the exception's type and message.
        shutdown_grace: seconds a server shutting down (SIGTERM, Ctrl-C,
            ``close()``) gives its clients' current requests and env closes
            before it closes what is left by force.
    """

    codec: str = "msgpack"
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_message_size: int = 256 * MiB
    token: str | None = None
    zero_copy: bool = False
    tracebacks: bool = True
    shutdown_grace: float = 5.0

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    default = getattr(Settings(), name)
    kind = type(default) if default is not None else str
    try:
        if kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, str):
            return int(float(value)) if "e" in value.lower() else int(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"setting {name!r} from {source} must be {kind.__name__}, got {value!r}"
        ) from exc


def resolve_settings(
    url: URL | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    files: Mapping[str, Any] | None = None,
    **explicit: Any,
) -> Settings:
    """Settings for ``url`` after applying the precedence order of this module.

    Args:
        url: its query holds settings (and transport options, ignored here).
        environ: environment variables (``RELAY_TIMEOUT``...); None: none.
        files: the settings of ``relay.toml``/``[tool.relay]``; None: none.
        **explicit: arguments; those whose value is None are treated as not given.

    Raises:
        ConfigError: a value cannot be converted, or an explicit name is unknown.
    """
    environ = environ or {}
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("relay.toml/pyproject.toml", files or {}),
        ("environment", {
            name: environ[f"RELAY_{name.upper()}"]
            for name in _FIELDS if f"RELAY_{name.upper()}" in environ
        }),
        ("URL query", dict(url.query) if url is not None else {}),
        ("argument", {k: v for k, v in explicit.items() if v is not None}),
    ]
    for source, layer in layers:
        for name, value in layer.items():
            if name not in _FIELDS:
                if source == "argument":
                    raise ConfigError(f"unknown setting {name!r} (known: {', '.join(_FIELDS)})")
                continue
            values[name] = _coerce(name, value, source)
    settings = Settings(**values)
    if settings.timeout <= 0 or settings.connect_timeout <= 0:
        raise ConfigError("timeout and connect_timeout must be positive seconds")
    if not settings.shutdown_grace >= 0:
        raise ConfigError("shutdown_grace must be a number of seconds >= 0")
    if settings.max_message_size <= 0:
        raise ConfigError("max_message_size must be a positive number of bytes")
    return settings
