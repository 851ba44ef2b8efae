"""Immutable relay URLs: ``scheme[+variant]://address[?key=value&...]``.

The scheme picks the transport plugin (``zmq+tcp``, ``shm``, ``grpc``...), the
address is that transport's endpoint (``HOST:PORT``, a path, a name), and the
query string carries settings that override config (``?codec=json&timeout=5``).
Bad URLs are rejected at parse time with the reason (:class:`InvalidURL`),
among them a ``#fragment`` and ``user:password@`` (a token goes in
``?token=`` or the ``token`` setting).  Secrets in the query (``token``,
``password``) are shown as ``***`` wherever relay prints or logs a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from relay.core.errors import InvalidURL

__all__ = ["URL", "make_url", "mask_secrets"]

_SCHEME = re.compile(r"^[a-z][a-z0-9.\-]*(\+[a-z][a-z0-9.\-]*)*$")
_SECRET_KEYS = frozenset({"token", "password"})
_SECRET_VALUE = re.compile(
    rf"((?:^|[?&;\s'\"])(?:{'|'.join(sorted(_SECRET_KEYS))})=)[^&#;\s'\"]*")
_USER_INFO = re.compile(r"(://)[^/?#\s'\"]*@")


def mask_secrets(text: str) -> str:
    """``text`` (a URL, or a message that quotes one) with the value of every
    ``token=`` and ``password=`` query option shown as ``***``; for URLs that
    did not parse, which :meth:`URL.render` cannot mask; also a
    ``user:password@`` (which :func:`make_url` refuses)."""
    return _USER_INFO.sub(r"\1***@", _SECRET_VALUE.sub(r"\1***", text))


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed relay URL.  Build one with :func:`make_url`.

    Attributes:
        scheme: the full scheme, lower case, e.g. ``"zmq+tcp"``.
        address: everything between ``://`` and ``?``: ``"127.0.0.1:5555"``,
            ``"/tmp/relay.sock"``, ``"cartpole"``, ``"127.0.0.1:80/gym"``.
        query: the query options, read-only, values as strings.
    """

    scheme: str
    address: str
    query: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def base(self) -> str:
        """The part of the scheme before ``+`` (``"zmq"`` for ``zmq+tcp``)."""
        return self.scheme.split("+", 1)[0]

    @property
    def variant(self) -> str | None:
        """The part of the scheme after ``+`` (``"tcp"`` for ``zmq+tcp``), or None."""
        parts = self.scheme.split("+", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def host(self) -> str:
        """The host of a ``HOST:PORT[/path]`` address (brackets of IPv6 removed)."""
        return _split_hostport(self)[0]

    @property
    def port(self) -> int | None:
        """The port of a ``HOST:PORT[/path]`` address, or None if there is none."""
        return _split_hostport(self)[1]

    @property
    def path(self) -> str:
        """The ``/path`` after ``HOST:PORT`` (``""`` if none)."""
        head, sep, tail = self.address.partition("/")
        return sep + tail if sep and head else ("" if head else self.address)

    def set(self, **changes: Any) -> URL:
        """A copy with ``scheme``, ``address`` or ``query`` replaced."""
        if "query" in changes:
            changes["query"] = MappingProxyType(dict(changes["query"]))
        return replace(self, **changes)

    def with_options(self, **options: Any) -> URL:
        """A copy with these query options added or replaced (None removes one)."""
        query = dict(self.query)
        for key, value in options.items():
            if value is None:
                query.pop(key, None)
            else:
                query[key] = str(value)
        return self.set(query=query)

    def without_options(self) -> URL:
        """A copy with no query string."""
        return self.set(query={})

    def render(self, *, mask_secrets: bool = True) -> str:
        """The URL as a string; secrets (``token``) shown as ``***`` unless asked."""
        query = {
            k: ("***" if mask_secrets and k in _SECRET_KEYS else v) for k, v in self.query.items()
        }
        text = f"{self.scheme}://{self.address}"
        if query:
            text += "?" + urlencode(query, quote_via=quote, safe="/:*")
        return text

    def __str__(self) -> str:
        return self.render(mask_secrets=False)

    def __repr__(self) -> str:
        return f"URL({self.render()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy.deepcopy cannot handle the MappingProxyType query
        return make_url, (str(self),)


def _split_hostport(url: URL) -> tuple[str, int | None]:
    netloc = url.address.split("/", 1)[0]
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") == 1:
        host, _, port_text = netloc.partition(":")
    else:
        host, port_text = netloc, ""
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidURL(str(url), f"port {port_text!r} is not a number in 0..65535")
    return host, int(port_text)


def make_url(url: str | URL) -> URL:
    """Parse ``url`` (idempotent: a :class:`URL` is returned as is).

    Raises:
        InvalidURL: no ``://``, a bad scheme, an empty address, user info
            (``user:pw@``), a ``#fragment``, a bad port, or a repeated query key.
    """
    if isinstance(url, URL):
        return url
    if not isinstance(url, str):
        raise InvalidURL(repr(url), f"expected a string, got {type(url).__name__}")
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise InvalidURL(text, "missing '://' (expected scheme://address, e.g. zmq+tcp://127.0.0.1:5555)")
    scheme = scheme.lower()
    if not _SCHEME.match(scheme):
        raise InvalidURL(text, f"scheme {scheme!r} is not of the form name[+variant]")
    if "#" in rest:
        raise InvalidURL(text, "a '#fragment' is not allowed (relay URLs have none; "
                         "a '#' in a path or value is written %23)")
    address, _, query_text = rest.partition("?")
    if not address:
        raise InvalidURL(text, "empty address after '://'")
    if any(c.isspace() for c in address):
        raise InvalidURL(text, "whitespace in the address")
    netloc = address.split("/", 1)[0]
    if "@" in netloc[1:]:  # a leading "@" is zmq's abstract socket name
        raise InvalidURL(text, "user info ('user:password@') is not allowed; "
                         "give a token with ?token=... or the token setting")
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError as exc:
        raise InvalidURL(text, f"malformed query string {query_text!r}") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise InvalidURL(text, f"query option {key!r} given twice")
        query[key] = value
    parsed = URL(scheme, address, MappingProxyType(query))
    _split_hostport(parsed)  # validates the port, if any
    return parsed
