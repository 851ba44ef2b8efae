"""A ``gymnasium.Env`` whose environment lives behind a relay URL.

``relay.make(url, env_id=...)`` or ``gymnasium.make("relay/Remote-v0",
url=..., env_id=...)`` connect, create the environment on the server and
mirror its spaces, metadata, render mode and spec.  ``reset``/``step``/
``render``/``close`` are one round trip each.

Beyond the Gymnasium core, the env's own methods and attributes are reached
through ``Call`` requests, for the names the server allows
(:mod:`relay.access`): :meth:`RemoteEnv.call`, ``get_wrapper_attr``,
``set_wrapper_attr``, and plain attribute access for names the env does not
have locally (``env.unwrapped.get_action_meanings()``, as SB3's Atari
wrappers call it).  ``np_random`` and ``np_random_seed`` are the server
env's, read when asked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from relay.access import rng_from_state, rng_state, wrapper_spec_dict
from relay.adapters.config import load_settings
from relay.connection import ClientConnection
from relay.core import spaces
from relay.core.errors import ConfigError, EnvClosed, MissingDependency, NotAllowed, RelayError
from relay.core.messages import (
    Call,
    Close,
    Frame,
    Made,
    Make,
    Observation,
    Render,
    Reset,
    Returned,
    Step,
    Transition,
)
from relay.core.url import URL, make_url

__all__ = ["ENV_ID", "RemoteEnv", "make", "register_envs"]

ENV_ID = "relay/Remote-v0"
"""The Gymnasium id under which :class:`RemoteEnv` is registered."""


class RemoteEnv(gym.Env):
    """A Gymnasium environment served by a relay server.

    Args:
        url: the server, e.g. ``"zmq+tcp://127.0.0.1:5555"``; query options
            override settings (``?codec=json&timeout=5``).
        env_id: the env to create on the server (None: the one it serves).
        render_mode: passed to the server's env; ``"rgb_array"`` frames travel
            back.  ``"human"`` asks the server for ``rgb_array`` frames and shows
            them here in a pygame window after every reset and step.
        wrappers: Gymnasium wrappers the server applies to its env, innermost
            first: ``WrapperSpec``s (e.g. a local env's
            ``spec.additional_wrappers``), ``gymnasium.Wrapper`` classes, or
            ``{"entry_point": "module:Class", "kwargs": {...}}`` dicts.  For
            wrappers that need the real env (``AtariPreprocessing`` reads
            ``env.unwrapped.ale``); the server applies only those it allows
            (:mod:`relay.access`).
        codec, timeout, connect_timeout, max_message_size, token, zero_copy:
            settings, see :class:`relay.core.config.Settings`.
        connection: an open connection to ``url`` to share (another env's
            ``.connection``): this env makes its own instance on it, and
            ``close`` leaves the connection open for its owner.  Requests of
            envs sharing a connection are answered in order by one server
            thread.  None (default): a connection of its own.
        **env_kwargs: keyword arguments of the remote ``gymnasium.make``.

    Attributes:
        spec: how to make this env again: ``gymnasium.make(env.spec)`` or
            ``gymnasium.make(env.spec.id)`` (an id registered in this process,
            ``relay/<served id>.<hash>``) connect to the same server and env
            with the same arguments (the token excepted: give it through
            ``RELAY_TOKEN``); ``max_episode_steps``, ``reward_threshold`` and
            ``nondeterministic`` are the served env's.
        remote_spec: the served env's own ``EnvSpec``, or None.

    Raises:
        ConnectError, Timeout, RemoteError (e.g. unknown env id on the server),
        NotAllowed (a wrapper the server does not allow), UnknownScheme,
        InvalidURL, ConfigError (wrappers to a server that cannot apply them).
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array", "ansi",
                                                 "rgb_array_list", "ansi_list"]}

    def __init__(
        self,
        url: str | URL,
        env_id: str | None = None,
        *,
        render_mode: str | None = None,
        wrappers: Sequence[Any] = (),
        codec: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_message_size: int | None = None,
        token: str | None = None,
        zero_copy: bool | None = None,
        connection: ClientConnection | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.url = make_url(url)
        given: dict[str, Any] = {
            "codec": codec, "timeout": timeout, "connect_timeout": connect_timeout,
            "max_message_size": max_message_size, "zero_copy": zero_copy}
        self.settings = load_settings(self.url, token=token, **given)
        wrapper_dicts = [wrapper_spec_dict(w) for w in wrappers]
        # How to make this env again (check_env and gymnasium.make(spec) use it): every
        # argument but the token and the connection
        spec_kwargs: dict[str, Any] = {
            "url": str(self.url.with_options(token=None)), "env_id": env_id,
            **{k: v for k, v in given.items() if v is not None}}
        if render_mode is not None:
            spec_kwargs["render_mode"] = render_mode
        if wrapper_dicts:
            spec_kwargs["wrappers"] = wrapper_dicts
        spec_kwargs.update(env_kwargs)
        self._window: _Window | None = None
        if render_mode == "human":
            self._window = _Window()
            env_kwargs["render_mode"] = "rgb_array"
        elif render_mode is not None:
            env_kwargs["render_mode"] = render_mode
        self._owns_connection = connection is None
        self.connection = (ClientConnection.open(self.url, self.settings)
                           if connection is None else connection)
        self._instance: int | None = None
        self._rng: np.random.Generator | None = None  # the mirror of the server env's
        self._rng_stale = True
        self._local_seed: int | None = None
        try:
            if wrapper_dicts:
                self._require("wrappers", "server-side wrappers")
            made = self.connection.call(
                Make(env_id=env_id, kwargs=env_kwargs, wrappers=wrapper_dicts),
                timeout=max(self.settings.timeout, 60.0))
        except BaseException:
            if self._owns_connection:
                self.connection.close()
            raise
        assert isinstance(made, Made)
        self._instance = made.instance
        self.observation_space = spaces.build(made.observation_space)
        self.action_space = spaces.build(made.action_space)
        self.metadata = dict(made.metadata)
        self.render_mode = "human" if self._window is not None else made.render_mode
        self.remote_spec = (
            gym.envs.registration.EnvSpec.from_json(made.spec) if made.spec else None
        )
        self._spec = _own_spec(spec_kwargs, self.remote_spec)

    # -- spec ------------------------------------------------------------------------

    @property  # type: ignore[override]
    def spec(self) -> gym.envs.registration.EnvSpec:
        return self._spec

    @spec.setter
    def spec(self, value: gym.envs.registration.EnvSpec | None) -> None:
        # gymnasium.make sets its own spec (max_episode_steps=None): keep the served
        # env's limits, and an id that makes this env again
        if value is None:
            return
        own = self._spec
        self._spec = replace(
            value, id=own.id if value.id == ENV_ID else value.id,
            max_episode_steps=(own.max_episode_steps if value.max_episode_steps is None
                               else value.max_episode_steps),
            reward_threshold=(own.reward_threshold if value.reward_threshold is None
                              else value.reward_threshold),
            nondeterministic=value.nondeterministic or own.nondeterministic)

    @property
    def instance(self) -> int:
        if self._instance is None:
            raise EnvClosed("the remote environment is closed")
        return self._instance

    # -- the Gymnasium core ----------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the remote env (``seed`` and ``options`` go to its ``reset``)."""
        answer = self.connection.call(Reset(instance=self.instance, seed=seed, options=options))
        assert isinstance(answer, Observation)
        if seed is not None:
            self._rng_stale = True
            self._local_seed = seed
        if self._window is not None:
            self.render()
        return answer.obs, answer.info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """One remote step: Gymnasium's ``(obs, reward, terminated, truncated, info)``.

        Raises:
            InvalidAction: ``action`` is not in the action space (env unchanged).
            NotReset: no ``reset`` yet.  RemoteEnvError: the env raised.
            Timeout, ConnectionLost.
        """
        answer = self.connection.call(Step(instance=self.instance, action=action))
        assert isinstance(answer, Transition)
        if self._window is not None:
            self.render()
        return answer.obs, answer.reward, answer.terminated, answer.truncated, answer.info

    def render(self) -> Any:
        """The remote env's ``render()``: an (H, W, 3) uint8 array, text, a list, or None."""
        answer = self.connection.call(Render(instance=self.instance))
        assert isinstance(answer, Frame)
        if self._window is not None:
            self._window.show(answer.frame, self.metadata.get("render_fps"))
            return None
        return answer.frame

    def close(self) -> None:
        """Close the remote env and its own connection (not a shared one); idempotent,
        also after ConnectionLost."""
        instance, self._instance = self._instance, None
        try:
            if instance is not None and not self.connection.closed:
                self.connection.call(Close(instance=instance),
                                     timeout=min(self.settings.timeout, 5.0))
        except RelayError:
            pass
        finally:
            if self._owns_connection:
                self.connection.close()
            if self._window is not None:
                self._window.close()
        super().close()

    # -- the env's own methods and attributes ----------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the served env's method ``name`` on the server and return its result
        (an attribute that is not callable is returned as is, as
        ``SyncVectorEnv.call`` does).  Arguments and result travel through the
        codec: value trees only.

        Raises:
            NotAllowed: the server does not allow ``name`` (its ``allow_calls``).
            ConfigError: the server's protocol has no calls (a peer protocol).
            RemoteEnvError: the env raised (an ``AttributeError`` for a missing name).
            Timeout, ConnectionLost.
        """
        return self._call(name, "call", list(args), kwargs).value

    def get_wrapper_attr(self, name: str) -> Any:
        """The attribute ``name``: this object's own (spaces, ``spec``...), else the
        served env's (a method comes back as a function that calls it remotely).

        Raises:
            AttributeError: neither has it, or the server does not allow reading it
                (the message says which).
        """
        return getattr(self, name)

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        """Set ``name`` here if this object has it (``np_random`` sets the server
        env's), else on the served env (value trees only).

        Raises:
            NotAllowed: the server does not allow setting ``name`` (its ``allow_set``).
        """
        if hasattr(type(self), name) or name in self.__dict__:
            setattr(self, name, value)
            return True
        self._call(name, "set", [value], {})
        return True

    def __getattr__(self, name: str) -> Any:
        # only called for names this object does not have: ask the served env
        if name.startswith("_") or self.__dict__.get("_instance") is None \
                or not self._offers("call"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            answer = self._call(name, "get", [], {})
        except NotAllowed as exc:
            raise AttributeError(f"{name!r}: {exc.remote_message}") from exc
        if answer.callable:
            return _RemoteMethod(self, name)
        return answer.value

    def _call(self, name: str, kind: str, args: list[Any], kwargs: dict[str, Any]) -> Returned:
        self._require("call", "env method calls")
        answer = self.connection.call(Call(instance=self.instance, name=name, kind=kind,
                                           args=args, kwargs=kwargs))
        assert isinstance(answer, Returned)
        return answer

    def _offers(self, capability: str) -> bool:
        session = getattr(self.connection, "session", None)
        return capability in getattr(session, "capabilities", ())

    def _require(self, capability: str, what: str) -> None:
        if not self._offers(capability):
            raise ConfigError(f"the server at {self.url.render()} offers no {what} (its "
                              f"protocol lacks the {capability!r} capability)")

    # -- seeding: the server env's ---------------------------------------------------

    @property
    def np_random(self) -> np.random.Generator:
        """The server env's generator: a copy in the state the server's had at the
        first read after the last ``reset(seed=...)``; drawing from it advances the
        copy only.  A server without calls (a peer protocol): a local generator
        seeded by ``reset(seed=...)``.  Setting it sets the server env's."""
        if self._rng is None or self._rng_stale:
            if self._offers("call"):
                self._rng = rng_from_state(self._call("np_random", "get", [], {}).value)
            else:
                self._rng, seed = gym.utils.seeding.np_random(self._local_seed)
                self._local_seed = seed
            self._rng_stale = False
        return self._rng

    @np_random.setter
    def np_random(self, value: np.random.Generator) -> None:
        if self._offers("call"):
            self._call("np_random", "set", [rng_state(value)], {})
        self._rng, self._rng_stale, self._local_seed = value, False, -1

    @property
    def np_random_seed(self) -> int:  # type: ignore[override]
        """The server env's ``np_random_seed`` (read now), or the local one's."""
        if self._offers("call"):
            return int(self._call("np_random_seed", "get", [], {}).value)
        self.np_random  # noqa: B018 (seeds the local generator if need be)
        return -1 if self._local_seed is None else self._local_seed

    # what check_env reads on env.unwrapped
    _np_random = property(lambda self: self.np_random)  # type: ignore[assignment]
    _np_random_seed = property(lambda self: self.np_random_seed)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<RemoteEnv {self.url.render()} instance={self._instance}>"


class _RemoteMethod:
    """A method of a served env: calling it is :meth:`RemoteEnv.call`."""

    def __init__(self, env: RemoteEnv, name: str) -> None:
        self._env = env
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._env.call(self.__name__, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self.__name__} of {self._env!r}>"


def _own_spec(kwargs: dict[str, Any],
              served: gym.envs.registration.EnvSpec | None) -> gym.envs.registration.EnvSpec:
    """The spec of a RemoteEnv made with ``kwargs``, with the served env's limits;
    its id is registered in this process (with these kwargs) so that
    ``gymnasium.make(spec.id)`` works too."""
    name = kwargs.get("env_id") or (served.id if served is not None else "Remote")
    name = "".join(c if c.isalnum() or c in "_-.:" else "." for c in str(name))
    text = json.dumps(kwargs, sort_keys=True, default=repr)
    env_id = f"relay/{name}.{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    spec = gym.envs.registration.EnvSpec(
        id=env_id, entry_point=f"{__name__}:RemoteEnv", kwargs=kwargs,
        max_episode_steps=served.max_episode_steps if served is not None else None,
        reward_threshold=served.reward_threshold if served is not None else None,
        nondeterministic=served.nondeterministic if served is not None else False,
    )
    if env_id not in gym.registry:
        gym.registry[env_id] = spec
    return spec


class _Window:
    """A pygame window showing (H, W, 3) uint8 frames, as Gymnasium's human mode does."""

    def __init__(self) -> None:
        try:
            import pygame
        except ImportError as exc:
            raise MissingDependency("render_mode='human'", "pygame") from exc
        self._pygame = pygame
        self._screen: Any = None
        self._clock: Any = None

    def show(self, frame: Any, fps: float | None) -> None:
        pygame = self._pygame
        if frame is None:
            return
        if self._screen is None:
            pygame.init()
            pygame.display.init()
            self._screen = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            self._clock = pygame.time.Clock()
        surface = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
        self._screen.blit(surface, (0, 0))
        pygame.event.pump()
        if fps:
            self._clock.tick(fps)
        pygame.display.flip()

    def close(self) -> None:
        if self._screen is not None:
            self._pygame.display.quit()
            self._screen = None


def make(url: str | URL, env_id: str | None = None, **kwargs: Any) -> RemoteEnv:
    """Connect to a relay server and return its environment as a ``gymnasium.Env``.

    Same as ``RemoteEnv(url, env_id, **kwargs)``; see :class:`RemoteEnv` for the
    arguments and errors.
    """
    return RemoteEnv(url, env_id, **kwargs)


def register_envs() -> None:
    """Register ``relay/Remote-v0`` with Gymnasium (idempotent).

    ``gymnasium.make`` gives a :class:`RemoteEnv`; ``gymnasium.make_vec``
    (vectorization mode None or ``"vector_entry_point"``) gives what
    :func:`relay.make_vec` gives: a :class:`relay.adapters.batch.RemoteBatchVectorEnv`
    for servers that host batches, else a
    :class:`relay.adapters.vector.RemoteVectorEnv` (imported only then).
    """
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="relay.adapters.gymnasium:RemoteEnv",
                     vector_entry_point="relay.adapters.vector:make_vec",
                     disable_env_checker=False)
