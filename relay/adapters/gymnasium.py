"""A ``gymnasium.Env`` whose environment lives behind a relay URL.

``relay.make(url, env_id=...)`` or ``gymnasium.make("relay/Remote-v0",
url=..., env_id=...)`` connect, create the environment on the server and
mirror its spaces, metadata, render mode and spec.  ``reset``/``step``/
``render``/``close`` are one round trip each.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym

from relay.connection import ClientConnection
from relay.core import spaces
from relay.core.config import resolve_settings
from relay.core.errors import MissingDependency, RelayError
from relay.core.messages import (
    Close,
    Frame,
    Made,
    Make,
    Observation,
    Render,
    Reset,
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
        codec, timeout, connect_timeout, max_message_size, token, zero_copy:
            settings, see :class:`relay.core.config.Settings`.
        connection: an open connection to ``url`` to share (another env's
            ``.connection``): this env makes its own instance on it, and
            ``close`` leaves the connection open for its owner.  Requests of
            envs sharing a connection are answered in order by one server
            thread.  None (default): a connection of its own.
        **env_kwargs: keyword arguments of the remote ``gymnasium.make``.

    Raises:
        ConnectError, Timeout, RemoteError (e.g. unknown env id on the server),
        UnknownScheme, InvalidURL.
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array", "ansi",
                                                 "rgb_array_list", "ansi_list"]}

    def __init__(
        self,
        url: str | URL,
        env_id: str | None = None,
        *,
        render_mode: str | None = None,
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
        self.settings = resolve_settings(
            self.url, codec=codec, timeout=timeout, connect_timeout=connect_timeout,
            max_message_size=max_message_size, token=token, zero_copy=zero_copy,
        )
        # How to make this env again (check_env and EnvSpec.make use it);
        # gymnasium.make replaces it with its own spec.
        self.spec = gym.envs.registration.EnvSpec(
            id=ENV_ID, entry_point=f"{__name__}:RemoteEnv",
            kwargs={"url": str(self.url), "env_id": env_id, **env_kwargs},
        )
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
        try:
            made = self.connection.call(Make(env_id=env_id, kwargs=env_kwargs),
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
        """The server-side env's ``EnvSpec`` (id, max_episode_steps...), or None."""

    @property
    def instance(self) -> int:
        if self._instance is None:
            raise RelayError("the remote environment is closed")
        return self._instance

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the remote env; ``seed`` also seeds this env's local ``np_random``."""
        super().reset(seed=seed)
        answer = self.connection.call(Reset(instance=self.instance, seed=seed, options=options))
        assert isinstance(answer, Observation)
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

    def __repr__(self) -> str:
        return f"<RemoteEnv {self.url.render()} instance={self._instance}>"


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
    (vectorization mode None or ``"vector_entry_point"``) gives a
    :class:`relay.adapters.vector.RemoteVectorEnv` (imported only then).
    """
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="relay.adapters.gymnasium:RemoteEnv",
                     vector_entry_point="relay.adapters.vector:RemoteVectorEnv",
                     disable_env_checker=False)
