"""The Gymie client: relay's requests as Gymie calls over one WebSocket, and
:class:`GymieProtocol`, the ``gymie`` protocol plugin (see the package docstring).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import logging
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium.spaces as gs

from relay.compat.gymie._messages import (
    GYMIE_PATH,
    _json,
    _to_space_value,
    _tolist,
    space_from_info,
)
from relay.compat.gymie._server import GymieServer
from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidAction,
    NotReset,
    RemoteEnvError,
    RemoteError,
    Timeout,
)
from relay.core.messages import (
    Close,
    Closed,
    Envelope,
    Frame,
    Made,
    Make,
    Observation,
    Render,
    Request,
    Reset,
    Response,
    Step,
    Transition,
)
from relay.core.url import URL
from relay.transports.options import option
from relay.transports.ws import token_safe_logger

log = logging.getLogger("relay.compat.gymie")

# ---------------------------------------------------------------------------
# Client side: relay's requests as Gymie calls


@dataclass(slots=True)
class _Remote:
    instance_id: str
    env_id: str
    observation_space: gs.Space[Any]
    action_space: gs.Space[Any]
    options: dict[str, Any] = field(default_factory=dict)


_CLIENT_ERRORS: list[tuple[str, type[RemoteError]]] = [
    ("Action `", InvalidAction),
    ("Instance `", NotReset),
    ("Environment `", RemoteError),
    ("Unknonwn error", RemoteEnvError),
]


class GymieClientConnection:
    """A connection to a Gymie server that answers relay/1 requests (``call``).

    Made by :meth:`open`; used by :class:`relay.adapters.gymnasium.RemoteEnv`
    like a :class:`relay.connection.ClientConnection`.  Gymie has no request
    ids, so a call that times out leaves an answer in flight: the connection
    is closed then (``Timeout``, later calls ``ConnectionLost``).
    """

    def __init__(self, websocket: Any, url: URL, settings: Settings) -> None:
        self._ws = websocket
        self.url = url
        self.settings = settings
        self._remotes: dict[int, _Remote] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None

    @classmethod
    def open(cls, url: URL, settings: Settings) -> GymieClientConnection:
        """Connect to ``url`` (``ws://`` or ``wss://``; path ``/gym`` if none) within
        ``settings.connect_timeout``, with websockets' sync client.

        No keepalive pings (Gymie's eventlet server cannot answer them while an
        env step runs) and no compression.  ``wss://`` trusts the system's CAs
        or ``?ca=PEM`` (the ws transport's TLS options); ``settings.token`` goes
        in ``Authorization: Bearer``.

        Raises:
            ConfigError: another scheme.  ConnectError: nobody listens, TLS
                failed, or not a WebSocket server at this path (HTTP status).
        """
        if url.scheme not in ("ws", "wss"):
            raise ConfigError(f"the gymie protocol runs over ws:// or wss://, not {url.scheme}://")
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        address = url.address if url.path else url.address + GYMIE_PATH
        target = f"{url.scheme}://{address}"
        options: dict[str, Any] = {}
        if "legacy" in inspect.signature(connect).parameters:  # websockets >= 17.1
            options["legacy"] = True
        if url.scheme == "wss":
            try:
                options["ssl"] = ssl.create_default_context(cafile=option(url, "ca"))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the CA file: {exc}") from exc
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token}"
        try:
            websocket = connect(target, compression=None, max_size=settings.max_message_size,
                                open_timeout=settings.connect_timeout, ping_interval=None,
                                close_timeout=1, additional_headers=headers, proxy=None,
                                logger=token_safe_logger(log), **options)
        except InvalidStatus as exc:
            raise ConnectError(f"{target} refused the WebSocket: HTTP "
                               f"{exc.response.status_code}") from exc
        except InvalidURI as exc:
            raise ConfigError(f"invalid Gymie URL {target}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectError(f"cannot open a Gymie connection to {target}: {exc}") from exc
        return cls(websocket, url, settings)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def close(self) -> None:
        """Close the WebSocket; idempotent."""
        if self._lost is None:
            self._lost = "the connection was closed"
        with contextlib.suppress(Exception):
            self._ws.close()

    def _exchange(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        """Send one Gymie call, return its decoded answer (``str`` for ``make``)."""
        if self._lost is not None:
            raise ConnectionLost(f"Gymie connection to {self.url.render()}: {self._lost}")
        from websockets.exceptions import ConnectionClosed

        text = _json({"method": method, "params": params})
        try:
            self._ws.send(text)
            answer = self._ws.recv(timeout)
        except TimeoutError:
            self._lost = f"{method} got no answer within {timeout} s"
            with contextlib.suppress(Exception):
                self._ws.close()
            raise Timeout(f"Gymie {method} got no answer within {timeout} s") from None
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is not None and received.code in (1003, 1007):
                self._lost = f"the server closed it after an error: {received.reason}"
                raise self._error(received.code, received.reason) from None
            self._lost = f"the server went away ({exc})"
            raise ConnectionLost(f"Gymie server {self.url.render()} went away: {exc}") from exc
        except OSError as exc:
            self._lost = f"the socket failed ({exc})"
            raise ConnectionLost(f"Gymie connection failed: {exc}") from exc
        if method == "make":
            return answer if isinstance(answer, str) else answer.decode()
        return _decode_answer(answer)

    @staticmethod
    def _error(code: int, reason: str) -> RemoteError:
        for prefix, cls in _CLIENT_ERRORS:
            if reason.startswith(prefix):
                return cls(reason, remote_type=f"gymie {code}")
        return RemoteError(reason, remote_type=f"gymie {code}")

    def call(self, request: Request, timeout: float | None = None) -> Response:
        """Answer a relay/1 request with Gymie calls (see the module docstring).

        Raises:
            ConfigError: something Gymie cannot express (env kwargs, reset options).
            RemoteError (InvalidAction, NotReset, RemoteEnvError): Gymie closed
                the connection with this reason.  Timeout, ConnectionLost, CodecError.
        """
        timeout = self.settings.timeout if timeout is None else timeout
        match request:
            case Make(env_id=env_id, kwargs=kwargs):
                if env_id is None:
                    raise ConfigError("a Gymie server needs an env_id to make an environment")
                if any(value is not None for value in kwargs.values()):
                    raise ConfigError(f"Gymie's make takes no environment kwargs, got {kwargs}")
                remote = self._make(env_id, None, timeout)
                instance = next(self._ids)
                self._remotes[instance] = remote
                return Made(instance=instance,
                            observation_space=spaces.describe(remote.observation_space),
                            action_space=spaces.describe(remote.action_space),
                            metadata={"render_modes": []}, render_mode=None, spec=None)
            case Reset(instance=i, seed=seed, options=options):
                remote = self._remote(i)
                if options:
                    raise ConfigError(f"Gymie's reset takes no options, got {options}")
                if seed is not None:
                    remote = self._reseed(i, remote, seed, timeout)
                obs = self._exchange("reset", {"instance_id": remote.instance_id}, timeout)
                return Observation(obs=self._obs(obs, remote), info={})
            case Step(instance=i, action=action):
                remote = self._remote(i)
                answer = self._exchange(
                    "step", {"instance_id": remote.instance_id, "action": _tolist(action)},
                    timeout)
                try:
                    obs, reward, done, info = answer
                except (TypeError, ValueError) as exc:
                    raise CodecError(f"a Gymie step answer is [obs, reward, done, info], "
                                     f"got {str(answer)[:200]}") from exc
                info = info if isinstance(info, dict) else {}
                truncated = bool(done) and bool(info.get("TimeLimit.truncated", False))
                return Transition(obs=self._obs(obs, remote), reward=float(reward),
                                  terminated=bool(done) and not truncated, truncated=truncated,
                                  info=info)
            case Render():
                return Frame(frame=None)  # Gymie renders on its own screen only
            case Close(instance=i):
                if i in self._remotes:
                    remote = self._remotes.pop(i)
                    self._exchange("close", {"instance_id": remote.instance_id}, timeout)
                return Closed()
        raise ConfigError(f"Gymie cannot answer {type(request).__name__}")

    def _remote(self, instance: int) -> _Remote:
        remote = self._remotes.get(instance)
        if remote is None:
            raise NotReset(f"no environment instance {instance} on this Gymie connection")
        return remote

    def _make(self, env_id: str, seed: int | None, timeout: float) -> _Remote:
        params: dict[str, Any] = {"env_id": env_id}
        if seed is not None:
            params["seed"] = seed
        instance_id = self._exchange("make", params, timeout)
        where = {"instance_id": instance_id}
        return _Remote(
            instance_id=instance_id, env_id=env_id,
            observation_space=space_from_info(self._exchange("observation_space", where,
                                                             timeout)),
            action_space=space_from_info(self._exchange("action_space", where, timeout)),
        )

    def _reseed(self, instance: int, remote: _Remote, seed: int, timeout: float) -> _Remote:
        """Gymie seeds only in ``make``: replace the instance by a seeded one."""
        if seed == 0:
            warnings.warn("Gymie ignores seed 0 (it seeds only when the seed is truthy): "
                          "this reset is not seeded", RuntimeWarning, stacklevel=4)
        self._exchange("close", {"instance_id": remote.instance_id}, timeout)
        params: dict[str, Any] = {"env_id": remote.env_id, "seed": seed}
        instance_id = self._exchange("make", params, timeout)
        fresh = _Remote(instance_id=instance_id, env_id=remote.env_id,
                        observation_space=remote.observation_space,
                        action_space=remote.action_space)
        self._remotes[instance] = fresh
        return fresh

    @staticmethod
    def _obs(value: Any, remote: _Remote) -> Any:
        try:
            return _to_space_value(value, remote.observation_space)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"Gymie observation does not fit "
                             f"{remote.observation_space}: {exc}") from exc


def _decode_answer(answer: str | bytes) -> Any:
    """A Gymie answer: JSON, or Python's list text (``reset``, ``action_sample``)."""
    try:
        return json.loads(answer)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    import ast

    try:  # str() of a list holding True/False/None, which JSON spells otherwise
        return ast.literal_eval(answer if isinstance(answer, str) else answer.decode())
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise CodecError(f"cannot decode a Gymie answer: {str(answer)[:200]!r}") from exc


# ---------------------------------------------------------------------------
# The registered "codec"


class GymieProtocol:
    """``codec=gymie``: Gymie's wire protocol, which replaces relay/1 on a ``ws://`` URL.

    Not a relay/1 codec (``encode``/``decode`` raise): a *peer protocol* with
    its own server (``serve``, used by :func:`relay.serve`) and client
    connection (``open_client``, used by ``ClientConnection.open``).
    """

    name = "gymie"
    content_type = "application/json"

    def encode(self, envelope: Envelope) -> list[Any]:
        raise CodecError("gymie is a peer protocol, not a relay/1 codec")

    def decode(self, frames: Sequence[Any], *, zero_copy: bool = False) -> Envelope:
        raise CodecError("gymie is a peer protocol, not a relay/1 codec")

    def serve(self, factory: Callable[..., Any], url: URL, settings: Settings) -> GymieServer:
        """The hook of :func:`relay.serve`: a running :class:`GymieServer`."""
        return GymieServer(factory, url, settings)

    def open_client(self, url: URL, settings: Settings) -> GymieClientConnection:
        """The hook of :meth:`relay.connection.ClientConnection.open`."""
        return GymieClientConnection.open(url, settings)
