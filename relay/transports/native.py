"""Translating a native library's exceptions into relay's errors, in one place.

A transport wraps a call into a socket or a library in :func:`map_errors`
instead of writing ``try``/``except OSError`` around each one::

    with map_errors({OSError: TransportError}, f"cannot listen on {url.render()}"):
        sock = socket.create_server((host, port))

The pattern is httpcore's ``map_exceptions``: a mapping from native
exception types to :class:`~relay.core.errors.RelayError` subclasses; the
first entry the exception is an instance of wins, and the native exception
stays reachable as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from relay.core.errors import RelayError

__all__ = ["map_errors"]

ErrorMap = Mapping[type[BaseException], Callable[[str], RelayError]]
"""Native exception type -> the relay error (a class, or any callable taking the message)."""


@contextlib.contextmanager
def map_errors(mapping: ErrorMap, context: str = "") -> Iterator[None]:
    """Raise the mapped relay error for a native exception raised inside the block.

    Args:
        mapping: native exception type -> ``RelayError`` subclass (or a callable
            taking the message and returning the error).  Checked in order;
            exceptions of no listed type pass through unchanged, and so does
            any ``RelayError``.
        context: what was being done, put before the native message
            (``"cannot connect to tcp://h:1: [Errno 111] Connection refused"``).

    Raises:
        RelayError: the mapped error, with the native exception as ``__cause__``.
    """
    try:
        yield
    except RelayError:
        raise
    except BaseException as exc:
        for native, relay_error in mapping.items():
            if isinstance(exc, native):
                message = f"{context}: {exc}" if context else str(exc)
                raise relay_error(message) from exc
        raise
