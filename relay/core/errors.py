"""The one exception tree of relay.

Every error relay raises is a :class:`RelayError`; native exceptions of the
libraries underneath (``zmq.ZMQError``, ``grpc.RpcError``, ``OSError``) are
translated once, at the transport boundary, and kept as ``__cause__``::

    RelayError
    ├── ConfigError                  a setting, URL or name is wrong
    │   ├── InvalidURL               the URL cannot be parsed (reason given)
    │   ├── UnknownScheme            no transport for the scheme ("did you mean")
    │   ├── UnknownCodec             no codec of that name ("did you mean")
    │   └── MissingDependency        an optional package is not installed
    ├── PluginError                  a plugin failed to load or registered twice
    ├── TransportError               moving frames failed
    │   ├── ConnectError             nobody listening / refused (also ConnectionError)
    │   │   └── TLSError             the TLS handshake failed (certificate, plain vs TLS)
    │   ├── ConnectionLost           the peer went away (also ConnectionError)
    │   │   └── ServerClosing        the server is shutting down and said so
    │   ├── Timeout                  a deadline passed (also TimeoutError)
    │   └── MessageTooLarge          a message is over ``max_message_size``
    ├── CodecError                   frames cannot be encoded or decoded
    ├── ProtocolError                a message arrived that relay/1 does not allow
    │   ├── LocalProtocolError       this side tried an illegal move
    │   └── RemoteProtocolError      the peer made an illegal move
    ├── EnvClosed                    the env was closed (also gymnasium's ClosedEnvironmentError)
    ├── SpaceMismatch                sub-envs of a vector env differ (also RuntimeError)
    └── RemoteError                  the peer answered with an ``Error`` message
        ├── RemoteEnvError           the environment itself raised (see below)
        ├── InvalidAction            the action is not in the action space
        │                            (also ValueError, gymnasium.error.InvalidAction)
        ├── NotReset                 step before reset / after the episode ended
        │                            (also gymnasium.error.ResetNeeded)
        └── NotAllowed               a call, attribute or wrapper the server does not allow

An environment's own exception arrives as a ``RemoteEnvError``; when its type
is a Python builtin exception or a ``gymnasium.error`` class, it is an
instance of a subclass of both (``remote_error_class``), so ``except
ValueError`` around ``reset(options=...)`` works as with a local env.  Types
are looked up by name among those two sets only; nothing named by the peer is
imported.
"""

from __future__ import annotations

import builtins
import difflib
import functools
from collections.abc import Iterable

import gymnasium.error as gym_error

__all__ = [
    "CodecError",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "EnvClosed",
    "InvalidAction",
    "InvalidURL",
    "LaunchError",
    "LocalProtocolError",
    "MessageTooLarge",
    "MissingDependency",
    "NotAllowed",
    "NotReset",
    "PluginError",
    "ProtocolError",
    "RelayError",
    "RemoteEnvError",
    "RemoteError",
    "RemoteProtocolError",
    "ServerClosing",
    "SpaceMismatch",
    "TLSError",
    "Timeout",
    "TransportError",
    "UnknownCodec",
    "UnknownScheme",
    "did_you_mean",
    "remote_error_class",
]


class RelayError(Exception):
    """Base of every error relay raises."""


class ConfigError(RelayError, ValueError):
    """A setting, URL or name given by the user is wrong."""


class InvalidURL(ConfigError):
    """A URL that cannot be parsed; the message says which part and why."""

    def __init__(self, url: str, reason: str) -> None:
        from relay.core.url import mask_secrets  # url.py imports this module

        # the URL may hold a token: the message, .url and .reason never show it
        url, reason = mask_secrets(url), mask_secrets(reason)
        super().__init__(f"invalid relay URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The closest of ``known`` to ``name``, or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return matches[0] if matches else None


class _UnknownName(ConfigError):
    kind = "name"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        self.did_you_mean = did_you_mean(name, self.known)
        hint = f"; did you mean {self.did_you_mean!r}?" if self.did_you_mean else ""
        super().__init__(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.known) or 'none'})"
        )


class UnknownScheme(_UnknownName):
    """No transport is registered for a URL scheme."""

    kind = "scheme"


class UnknownCodec(_UnknownName):
    """No codec is registered under a name."""

    kind = "codec"


class MissingDependency(ConfigError, ImportError):
    """An optional package needed for a scheme or codec is not installed."""

    def __init__(self, what: str, package: str, cause: str = "") -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(f"{what} needs the package {package!r}: pip install {package}{detail}")
        self.package = package


class PluginError(RelayError):
    """A plugin failed to load, or tried to take a name that is already taken."""


class TransportError(RelayError):
    """Moving frames between the two ends failed."""


class ConnectError(TransportError, ConnectionError):
    """No peer could be reached at the address within the connect timeout."""


class TLSError(ConnectError):
    """The TLS handshake failed: the certificate is not trusted (wrong CA, wrong
    host name, expired), or one side speaks TLS and the other does not.  Raised
    at once, not after the connect timeout; the message names the cause."""


class ConnectionLost(TransportError, ConnectionError):
    """The peer closed the connection or died; the channel is unusable now."""


class ServerClosing(ConnectionLost):
    """The server is shutting down (SIGTERM, Ctrl-C, ``Server.close``) and told
    this client so before hanging up: not a crash.  The client's environments
    there are closed; reconnect later or elsewhere.

    Sent as the relay/1 ``Error`` of code :attr:`code` with id 0."""

    code = "server_closing"


class Timeout(TransportError, TimeoutError):
    """A deadline passed before the peer answered."""


class MessageTooLarge(TransportError):
    """A message is larger than the ``max_message_size`` setting (bytes)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes is over max_message_size={limit} bytes "
            "(raise it with ?max_message_size=... or RELAY_MAX_MESSAGE_SIZE)"
        )
        self.size = size
        self.limit = limit


class LaunchError(RelayError):
    """A launched server process failed to start: it exited, or did not tell its
    address in time, or connecting to it failed (the cause is chained).

    ``stderr_tail`` holds the last lines the process wrote to stderr (also at the
    end of the message)."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        if stderr_tail:
            message = f"{message}\n--- last lines of the server's stderr ---\n{stderr_tail}"
        super().__init__(message)
        self.stderr_tail = stderr_tail


class CodecError(RelayError):
    """Frames could not be encoded or decoded (malformed, wrong dtype, wrong size)."""


class ProtocolError(RelayError):
    """A message arrived, or was sent, that protocol relay/1 does not allow now."""


class LocalProtocolError(ProtocolError):
    """This side tried an illegal move (e.g. a request before the handshake)."""


class RemoteProtocolError(ProtocolError):
    """The peer made an illegal move (e.g. an answer to no request)."""


class EnvClosed(RelayError, gym_error.ClosedEnvironmentError):
    """The environment (or vector env) was closed; make a new one."""


class SpaceMismatch(RelayError, RuntimeError):
    """The sub-environments of a vector env have spaces that cannot be batched together."""


class RemoteError(RelayError):
    """The peer answered a request with an ``Error`` message.

    Attributes:
        code: the relay/1 error code (``"env"``, ``"invalid_action"``, ...).
        remote_type: qualified name of the exception type on the peer.
        remote_message: its message.
        remote_traceback: the formatted traceback on the peer, or "".
    """

    code = "remote"

    def __init__(
        self, remote_message: str, *, remote_type: str = "", remote_traceback: str = ""
    ) -> None:
        prefix = f"{remote_type}: " if remote_type else ""
        super().__init__(f"{prefix}{remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = BaseException.__str__(self)  # not KeyError's repr in a KeyError subclass
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class RemoteEnvError(RemoteError):
    """The environment raised inside the server; the server keeps serving."""

    code = "env"


class InvalidAction(RemoteError, ValueError, gym_error.InvalidAction):
    """The action sent is not in the environment's action space."""

    code = "invalid_action"


class NotReset(RemoteError, gym_error.ResetNeeded):
    """``step`` was called before ``reset`` (or on an unknown instance)."""

    code = "not_reset"


class NotAllowed(RemoteError):
    """The server does not allow this call, attribute or wrapper; the message names
    the server setting that would (``allow_calls``, ``allow_set``, ``allow_wrappers``)."""

    code = "not_allowed"


REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    cls.code: cls for cls in (RemoteError, RemoteEnvError, InvalidAction, NotReset, NotAllowed)
}
"""relay/1 ``Error.code`` -> exception class raised on the client."""


def remote_error_class(code: str, remote_type: str) -> type[RemoteError]:
    """The class to raise for an ``Error`` of ``code`` whose remote exception type is
    ``remote_type`` (``"builtins.ValueError"``, ``"gymnasium.error.ResetNeeded"``).

    For code ``env`` and a builtin exception or ``gymnasium.error`` class: a
    subclass of ``RemoteEnvError`` and that class (built once, cached).
    Otherwise the class of the code (:data:`REMOTE_ERRORS`).
    """
    cls = REMOTE_ERRORS.get(code, RemoteError)
    if cls is RemoteEnvError and remote_type:
        return _standard_subclass(remote_type)
    return cls


@functools.lru_cache(maxsize=128)
def _standard_subclass(remote_type: str) -> type[RemoteError]:
    module, _, name = remote_type.rpartition(".")
    namespace = {"builtins": builtins, "gymnasium.error": gym_error}.get(module)
    standard = getattr(namespace, name, None) if namespace is not None else None
    if not (isinstance(standard, type) and issubclass(standard, Exception)) \
            or issubclass(standard, RelayError):
        return RemoteEnvError
    try:
        cls = type(f"RemoteEnvError[{name}]", (RemoteEnvError, standard),
                   {"__module__": __name__, "__doc__": f"A remote {remote_type}."})
        cls("probe", remote_type=remote_type)  # e.g. UnicodeDecodeError needs 5 arguments
    except TypeError:
        return RemoteEnvError
    return cls
