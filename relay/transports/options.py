"""The URL options every network transport shares, parsed in one place.

One set of names for every transport (``grpcs://``, ``wss://``, plugins):

=====================  ========================================================
``cert``, ``key``      PEM certificate chain and private key (a server's own;
                       a client's for mutual TLS).  ``key`` may be omitted when
                       ``cert`` holds both.
``ca``                 (client) PEM of the CA(s) to trust instead of the system's.
``client_ca``          (server) require client certificates signed by these CAs.
``server_name``        (client) the name the server's certificate must carry.
``keepalive``          seconds between keepalive pings.
``keepalive_timeout``  seconds to wait for a ping's answer before the
                       connection counts as dead.
=====================  ========================================================

Each TLS option falls back to the environment variable ``RELAY_TLS_<NAME>``
(``RELAY_TLS_CA=/etc/ca.pem``).  The ws transport's former names still work
and warn (:class:`DeprecationWarning`): ``certfile`` (``cert``), ``keyfile``
(``key``), ``cafile`` (``ca``), ``ping_interval`` (``keepalive``),
``ping_timeout`` (``keepalive_timeout``).
"""

from __future__ import annotations

import os
import ssl
import warnings
from dataclasses import dataclass

from relay.core.errors import ConfigError, InvalidURL
from relay.core.url import URL

__all__ = ["ALIASES", "TLS_OPTIONS", "Keepalive", "TLSOptions", "option", "seconds"]

TLS_OPTIONS = ("cert", "key", "ca", "client_ca", "server_name")
ALIASES = {"certfile": "cert", "keyfile": "key", "cafile": "ca",
           "ping_interval": "keepalive", "ping_timeout": "keepalive_timeout"}
"""Former option name -> its name now (they still work, with a DeprecationWarning)."""
_FORMER = {new: old for old, new in ALIASES.items()}


def option(url: URL, name: str) -> str | None:
    """The value of URL option ``name``: given under its name, or under its former
    name (warns), or for a TLS option in ``RELAY_TLS_<NAME>``; None when absent
    or empty."""
    value = url.query.get(name)
    if not value and name in _FORMER:
        value = url.query.get(_FORMER[name])
        if value:
            warnings.warn(f"the URL option {_FORMER[name]}= is now called {name}=",
                          DeprecationWarning, stacklevel=3)
    if not value and name in TLS_OPTIONS:
        value = os.environ.get(f"RELAY_TLS_{name.upper()}")
    return value or None


def seconds(url: URL, name: str, default: float, *, zero_disables: bool = False
            ) -> float | None:
    """URL option ``name`` as a number of seconds (``default`` when absent).

    Returns:
        The number, > 0; None for 0 or less when ``zero_disables``.

    Raises:
        InvalidURL: not a number, or not > 0 (unless ``zero_disables``).
    """
    text = option(url, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidURL(url.render(), f"{name}={text!r} must be a number of seconds") from None
    if value > 0:
        return value
    if zero_disables:
        return None
    raise InvalidURL(url.render(), f"{name}={text!r} must be positive")


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Keepalive pings: every ``interval`` seconds (None: none), answer within
    ``timeout`` seconds (None: wait forever)."""

    interval: float | None
    timeout: float | None

    @classmethod
    def from_url(cls, url: URL, *, interval: float, timeout: float,
                 zero_disables: bool = False) -> Keepalive:
        """``?keepalive=&keepalive_timeout=`` with this transport's defaults.

        Raises:
            InvalidURL: a value is not a positive number (0 allowed, meaning
                "off", when ``zero_disables``).
        """
        return cls(seconds(url, "keepalive", interval, zero_disables=zero_disables),
                   seconds(url, "keepalive_timeout", timeout, zero_disables=zero_disables))


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """The TLS options of a URL (paths of PEM files; see the module docstring)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    client_ca: str | None = None
    server_name: str | None = None

    @classmethod
    def from_url(cls, url: URL) -> TLSOptions:
        return cls(*(option(url, name) for name in TLS_OPTIONS))

    def read(self, name: str, *, scheme: str = "", required: bool = False) -> bytes | None:
        """The bytes of the PEM file of option ``name`` (None when not given).

        Raises:
            ConfigError: ``required`` and not given, or the file cannot be read.
        """
        path = getattr(self, name)
        if not path:
            if required:
                raise ConfigError(f"{scheme or 'a TLS URL'}:// needs the URL option "
                                  f"{name}=PATH (or RELAY_TLS_{name.upper()})")
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS file {name}={path!r}: {exc}") from exc

    def server_context(self, scheme: str = "") -> ssl.SSLContext:
        """A server's context: its ``cert``/``key``; with ``client_ca``, client
        certificates signed by it are required.

        Raises:
            ConfigError: no ``cert``, or a file cannot be loaded.
        """
        if not self.cert:
            raise ConfigError(f"{scheme or 'a TLS'}:// server needs the URL option cert=PEM "
                              "[&key=PEM] (or RELAY_TLS_CERT)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                context.load_verify_locations(cafile=self.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS files of {scheme or 'the'} server: "
                              f"{exc}") from exc
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client's context: trusts ``ca`` (else the system's CAs), presents
        ``cert``/``key`` when given.

        Raises:
            ConfigError: a file cannot be loaded.
        """
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client's TLS files: {exc}") from exc
        return context
