"""Inverted mode: the environment process connects out to a listening agent.

As in Unity ML-Agents, a game engine or a program in another language is the
one that connects; the Python agent listens and sees a ``gymnasium.Env``::

    # agent process: listen, wait for an environment to connect
    env = relay.listen_env("ws://127.0.0.1:8765/env")        # a gymnasium.Env
    obs, info = env.reset(seed=0)

    # environment process (Python; clients/js has the JavaScript side)
    relay.connect_env("ws://127.0.0.1:8765/env", MyGame())   # serves until the agent closes

Only who connects is inverted; the session roles are the usual ones: the
listening agent is the relay/1 *client* (it sends ``Hello``, ``Make``,
``Reset``...) and the connecting environment answers as the *server*
(:func:`relay.connection.serve_channel` with :class:`relay.server.EnvHost`).
So the same environment side works over every transport, and an environment
in another language implements exactly the server half of docs/protocol.md.

Disconnects: when the environment process goes away, the call in progress
raises :class:`~relay.core.errors.ConnectionLost`; the next ``reset()`` waits
(up to ``connect_timeout``) for an environment process to attach again, makes
the env again (its spaces must not change) and resets it.  An agent started
before its environment waits up to ``connect_timeout`` seconds in
:func:`listen_env`, then raises :class:`~relay.core.errors.Timeout`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym

from relay.adapters.config import load_settings
from relay.connection import ClientConnection, serve_channel
from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    RelayError,
    RemoteProtocolError,
    Timeout,
)
from relay.core.messages import (
    Close,
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
from relay.core.plugins import get_transport
from relay.core.url import URL, make_url
from relay.server import EnvFactory, EnvHost, gymnasium_factory

__all__ = ["EnvConnection", "ListeningEnv", "connect_env", "listen_env"]

log = logging.getLogger("relay.inverted")


class ListeningEnv(gym.Env):
    """A ``gymnasium.Env`` whose environment process connects to it.

    Construction listens on ``url``, calls ``on_listen(address)`` (the real
    URL, e.g. to start the environment process with it), then waits up to
    ``connect_timeout`` seconds for an environment to connect, handshakes and
    sends ``Make``; the spaces, metadata and render mode come from its answer.

    Args:
        url: where to listen, e.g. ``"ws://127.0.0.1:0/env"`` (port 0: read
            ``env.address``, or use ``on_listen``).
        env_id: passed in ``Make`` (an environment process may serve several).
        on_listen: called once with the bound address before waiting.
        render_mode, **env_kwargs: passed in ``Make``.
        codec, timeout, connect_timeout, max_message_size, token: settings
            (:class:`relay.core.config.Settings`); ``connect_timeout`` is how long
            to wait for an environment process to (re)attach.

    Attributes:
        address: the URL environment processes connect to.

    Raises:
        Timeout: no environment process connected within ``connect_timeout``.
        RemoteProtocolError: the environment refused the handshake (token, codec).
        RemoteError: its ``Make`` failed.  UnknownScheme, InvalidURL, TransportError.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        url: str | URL,
        env_id: str | None = None,
        *,
        on_listen: Callable[[URL], Any] | None = None,
        render_mode: str | None = None,
        codec: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_message_size: int | None = None,
        token: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.url = make_url(url)
        self.settings: Settings = load_settings(
            self.url, codec=codec, timeout=timeout, connect_timeout=connect_timeout,
            max_message_size=max_message_size, token=token,
        )
        if render_mode is not None:
            env_kwargs["render_mode"] = render_mode
        self._make = Make(env_id=env_id, kwargs=env_kwargs)
        self.connection: ClientConnection | None = None
        self._instance: int | None = None
        self._spaces_known = False
        self._listener = get_transport(self.url.scheme).listen(self.url, self.settings)
        self.address: URL = self._listener.address
        try:
            if on_listen is not None:
                on_listen(self.address)
            made = self._attach()
        except BaseException:
            self._listener.close()
            raise
        self.observation_space = spaces.build(made.observation_space)
        self.action_space = spaces.build(made.action_space)
        self._spaces_known = True
        self.metadata = dict(made.metadata)
        self.render_mode = made.render_mode
        self.remote_spec = (
            gym.envs.registration.EnvSpec.from_json(made.spec) if made.spec else None
        )
        """The environment's own ``EnvSpec`` if it sent one, else None."""

    # -- attaching -----------------------------------------------------------

    def _attach(self) -> Made:
        """Wait for an environment process, handshake, ``Make``; the answer."""
        wait = self.settings.connect_timeout
        deadline = time.monotonic() + wait
        last_error: RelayError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f" (last attempt: {last_error})" if last_error else ""
                raise Timeout(f"no environment process connected to {self.address.render()} "
                              f"within {wait} s{detail}")
            try:
                channel = self._listener.accept(remaining)
            except Timeout:
                continue
            try:
                connection = ClientConnection.over(
                    channel, self.settings, deadline=deadline,
                    peer="the environment process")
            except RemoteProtocolError:
                raise
            except (ConnectionLost, CodecError, Timeout) as exc:
                # a stray or broken connection: keep waiting for a real one
                log.warning("an environment connection failed its handshake: %s", exc)
                last_error = exc
                continue
            try:
                made = connection.call(self._make, timeout=max(self.settings.timeout, 60.0))
            except BaseException:
                connection.close()
                raise
            assert isinstance(made, Made)
            self._check_same_spaces(made, connection)
            self.connection = connection
            self._instance = made.instance
            return made

    def _check_same_spaces(self, made: Made, connection: ClientConnection) -> None:
        if not self._spaces_known:
            return
        observation_space = spaces.build(made.observation_space)
        action_space = spaces.build(made.action_space)
        if observation_space != self.observation_space or action_space != self.action_space:
            connection.close()
            raise ConfigError(
                "the environment that attached again has other spaces: "
                f"{observation_space}, {action_space} instead of "
                f"{self.observation_space}, {self.action_space}"
            )

    def _detach(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def _call(self, request: Request) -> Response:
        if self.connection is None or self.connection.closed:
            raise ConnectionLost("no environment process is attached; "
                                 "reset() waits for one to connect")
        try:
            return self.connection.call(request)
        except ConnectionLost as exc:
            self._detach()
            raise ConnectionLost(
                f"the environment process disconnected ({exc}); "
                "reset() waits for it to attach again") from exc

    @property
    def attached(self) -> bool:
        """Whether an environment process is connected right now (as far as known)."""
        return self.connection is not None and not self.connection.closed

    # -- gymnasium.Env ---------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the environment; first wait for one to (re)attach if it went away.

        Raises:
            Timeout: no environment process attached within ``connect_timeout``.
        """
        super().reset(seed=seed)
        if not self.attached:
            self._detach()
            self._attach()
        try:
            answer = self._call(Reset(instance=self._live_instance(), seed=seed,
                                      options=options))
        except ConnectionLost:
            # it left while idle: wait for the next one once
            self._attach()
            answer = self._call(Reset(instance=self._live_instance(), seed=seed,
                                      options=options))
        assert isinstance(answer, Observation)
        return answer.obs, answer.info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """One step of the attached environment.

        Raises:
            ConnectionLost: the environment process is gone (``reset`` re-attaches).
            InvalidAction, NotReset, RemoteEnvError, Timeout.
        """
        answer = self._call(Step(instance=self._live_instance(), action=action))
        assert isinstance(answer, Transition)
        return answer.obs, answer.reward, answer.terminated, answer.truncated, answer.info

    def render(self) -> Any:
        """The environment's ``render()`` result (frame array, text, list or None)."""
        answer = self._call(Render(instance=self._live_instance()))
        assert isinstance(answer, Frame)
        return answer.frame

    def _live_instance(self) -> int:
        if self._instance is None:
            raise RelayError("the environment is closed")
        return self._instance

    def close(self) -> None:
        """Tell the environment process to close, hang up and stop listening; idempotent."""
        instance, self._instance = self._instance, None
        try:
            if instance is not None and self.attached:
                assert self.connection is not None
                self.connection.call(Close(instance=instance),
                                     timeout=min(self.settings.timeout, 5.0))
        except RelayError:
            pass
        finally:
            self._detach()
            self._listener.close()
        super().close()

    def __repr__(self) -> str:
        return f"<ListeningEnv {self.address.render()} attached={self.attached}>"


def listen_env(url: str | URL, env_id: str | None = None, **kwargs: Any) -> ListeningEnv:
    """Listen on ``url`` and return the environment that connects there as a ``gymnasium.Env``.

    Blocks until an environment process connects (up to ``connect_timeout``
    seconds).  Same as ``ListeningEnv(url, env_id, **kwargs)``; see
    :class:`ListeningEnv` for the arguments (``on_listen`` gives the real
    address when port 0 was asked) and errors.
    """
    return ListeningEnv(url, env_id, **kwargs)


# -- the environment side ----------------------------------------------------------


class _Borrowed(gym.Wrapper):
    """The caller's env instance: the agent's ``Close`` does not close it."""

    def close(self) -> None:
        pass


def _factory(env: gym.Env | EnvFactory | str | None) -> EnvFactory:
    if isinstance(env, gym.Env):
        borrowed = _Borrowed(env)

        def instance_factory(env_id: str | None, **kwargs: Any) -> gym.Env:
            if kwargs:
                raise ConfigError(f"this environment is already made; Make kwargs {kwargs!r} "
                                  "cannot apply (pass a factory to connect_env instead)")
            return borrowed

        return instance_factory
    if env is None or isinstance(env, str):
        return gymnasium_factory(env)
    return env


class EnvConnection:
    """The environment side of one inverted connection (see :func:`connect_env`).

    Runs in a background thread; :meth:`join` waits for the agent to close the
    environment and re-raises what ended the connection otherwise.
    """

    def __init__(self, url: URL, factory: EnvFactory, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self._factory = factory
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-connect-env",
                                        daemon=True)

    def start(self) -> EnvConnection:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # handed to join()
            self._error = exc

    def run(self) -> None:
        """Connect (retrying until ``connect_timeout``) and serve until the agent closes.

        Raises:
            ConnectError: no agent listened within ``connect_timeout``.
            ConnectionLost: the agent went away without closing the environment.
        """
        try:
            self._serve()
        finally:
            self._finished.set()

    def _serve(self) -> None:
        channel = _connect_retrying(self.url, self.settings, self._stop)
        host = EnvHost(self._factory, tracebacks=self.settings.tracebacks)
        closed = threading.Event()

        def handle(request: Request) -> Response:
            response = host.handle(request)
            if isinstance(request, Close):
                closed.set()
            return response

        serve_channel(channel, handle, self.settings, stop=self._stop, on_close=host.close)
        if not closed.is_set() and not self._stop.is_set():
            raise ConnectionLost(
                f"the agent at {self.url.render()} disconnected (or refused the handshake) "
                "before closing the environment")

    @property
    def done(self) -> bool:
        """Whether the connection has ended (the agent closed, or it failed)."""
        return self._finished.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the end of the connection; re-raise its error, if any.

        Raises:
            Timeout: still connected after ``timeout`` seconds.
            ConnectError, ConnectionLost: as :meth:`run`.
        """
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise Timeout(f"the agent still uses the environment after {timeout} s")
        if self._error is not None:
            raise self._error

    def close(self, timeout: float = 5.0) -> None:
        """Hang up (the agent sees ConnectionLost) and wait for the thread; idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _connect_retrying(url: URL, settings: Settings, stop: threading.Event) -> Any:
    transport = get_transport(url.scheme)
    deadline = time.monotonic() + settings.connect_timeout
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            return transport.connect(url, settings, timeout=max(remaining, 0.05))
        except ConnectError as exc:
            remaining = deadline - time.monotonic()
            if getattr(exc, "permanent", False):  # e.g. HTTP 401: refused, not absent
                raise
            if remaining <= 0 or stop.is_set():
                raise ConnectError(
                    f"no agent listens on {url.render()} "
                    f"(waited {settings.connect_timeout} s): {exc}") from exc
            stop.wait(min(delay, remaining))
            delay = min(delay * 2, 1.0)


def connect_env(
    url: str | URL,
    env: gym.Env | EnvFactory | str | None,
    *,
    block: bool = True,
    **settings: Any,
) -> EnvConnection:
    """Connect out to an agent listening on ``url`` and serve ``env`` to it.

    Args:
        url: the agent's address (what :func:`listen_env` listens on).
        env: a ``gymnasium.Env`` instance (served as is, not closed by the
            agent's ``close``: it stays yours), a factory
            ``factory(env_id, **kwargs) -> gymnasium.Env``, or a Gymnasium id.
        block: serve until the agent closes the environment (default), or
            return at once with the running connection.
        **settings: overrides of :class:`~relay.core.config.Settings`;
            ``connect_timeout`` is how long to keep trying to reach the agent.

    Returns:
        The :class:`EnvConnection` (already finished when ``block``).

    Raises:
        ConnectError: no agent listened within ``connect_timeout`` (``block`` only).
        ConnectionLost: the agent went away without closing (``block`` only);
            call again to re-attach.
    """
    parsed = make_url(url)
    resolved = load_settings(parsed, **settings)
    connection = EnvConnection(parsed, _factory(env), resolved)
    if block:
        connection.run()
        return connection
    return connection.start()
