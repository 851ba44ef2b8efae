"""dm_env on both sides of relay.

Client: :func:`make_dm_env` / :class:`RemoteDmEnv`, a ``dm_env.Environment``
whose environment lives behind a relay URL -- served as a dm_env or as a
Gymnasium env, it does not matter.

Server: :class:`DmEnvAsGym` wraps a ``dm_env.Environment`` as the
``gymnasium.Env`` that relay's server hosts; :func:`serving_factory` is what
:func:`relay.serve` uses to accept a dm_env instance or a factory returning one.

Mapping between the two APIs (protocol relay/1, ``docs/protocol.md``):

=======================================  =========================================
dm_env ``TimeStep``                      Gymnasium
=======================================  =========================================
``reset()`` -> FIRST, reward/discount    ``reset() -> (obs, info)``
None
MID, reward r, discount d                ``(obs, r, False, False, {"discount": d})``
LAST with discount 0                     ``terminated=True``, ``info["discount"]``
LAST with discount > 0                   ``truncated=True``, ``info["discount"]``
=======================================  =========================================

``info["discount"]`` carries the exact discount, so a dm_env client rebuilds
the exact ``TimeStep``; from a Gymnasium env (no discount in ``info``),
``terminated`` gives LAST with discount 0.0, ``truncated`` LAST with 1.0, and
a plain step MID with 1.0.  A reward whose spec is not a scalar travels in
``info["reward"]`` (the Gymnasium reward is its sum).  Specs travel as the
space descriptions of :mod:`relay.adapters.specs` (exact for a dm_env server),
reward and discount specs in ``Made.metadata["dm_env"]``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import dm_env
import gymnasium as gym
import numpy as np

from relay.adapters import specs
from relay.adapters.config import load_settings
from relay.connection import ClientConnection
from relay.core import spaces
from relay.core.errors import ConfigError, RelayError
from relay.core.messages import Close, Made, Make, Observation, Reset, Step, Transition
from relay.core.url import URL, make_url

__all__ = ["DmEnvAsGym", "RemoteDmEnv", "make_dm_env", "serving_factory"]

METADATA_KEY = "dm_env"
"""Key of ``Made.metadata`` holding ``{"reward_spec": ..., "discount_spec": ...}`` descriptions."""


# -- server side -------------------------------------------------------------------

class DmEnvAsGym(gym.Env):
    """A ``dm_env.Environment`` seen as a ``gymnasium.Env`` (see the module table).

    Args:
        env: the dm_env environment.
        rebuild: ``rebuild(seed) -> dm_env.Environment``, used by
            ``reset(seed=...)`` to make a freshly seeded environment (the old
            one is closed).  Without it, ``reset(seed=...)`` reseeds the
            ``numpy`` random states it finds on the environment (``_rng``,
            ``_random``, ``random``, and those of its ``task``, as in bsuite and
            dm_control), and raises ``ConfigError`` if there is none (the
            client gets it as a ``RemoteError`` with code ``config``): an
            unseeded reset must not pass for a seeded one.
        owned: close ``env`` on :meth:`close` (False for an instance the caller
            keeps).
        on_close: called once by :meth:`close`.

    Attributes:
        relay_descriptions: exact spec descriptions for relay's server (the
            Gymnasium spaces alone lose names and container types).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        env: dm_env.Environment,
        *,
        rebuild: Callable[[int], dm_env.Environment] | None = None,
        owned: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self._rebuild = rebuild
        self._owned = owned
        self._on_close = on_close
        self._obs = specs.describe_spec(env.observation_spec())
        self._act = specs.describe_spec(env.action_spec())
        self._reward_spec = env.reward_spec()
        self.observation_space = spaces.build(self._obs)
        self.action_space = spaces.build(self._act)
        self.relay_descriptions = {
            "observation_space": self._obs,
            "action_space": self._act,
            "metadata": {METADATA_KEY: {
                "reward_spec": specs.describe_spec(self._reward_spec),
                "discount_spec": specs.describe_spec(env.discount_spec()),
            }},
        }

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed(seed)
        timestep = self.env.reset()
        return specs.to_gym_value(timestep.observation, self._obs), {}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        timestep = self.env.step(specs.to_dm_value(action, self._act))
        obs = specs.to_gym_value(timestep.observation, self._obs)
        if timestep.first():  # a step after LAST started a new episode (dm_env rules)
            return obs, 0.0, False, False, {}
        info: dict[str, Any] = {"discount": timestep.discount}
        reward = timestep.reward
        if np.ndim(reward) != 0:
            info["reward"] = np.asarray(reward, dtype=self._reward_spec.dtype)
            reward = float(np.sum(reward))
        last = timestep.last()
        terminated = bool(last and timestep.discount == 0)
        return obs, reward, terminated, bool(last and not terminated), info

    def _seed(self, seed: int) -> None:
        if self._rebuild is not None:
            old, self.env = self.env, self._rebuild(seed)
            if self._owned:
                old.close()
            self._owned = True
            return
        if not _reseed(self.env, seed):
            raise ConfigError(
                f"reset(seed={seed}) cannot seed {type(self.env).__qualname__}: no numpy "
                "random state found on it; serve a factory with a 'seed' parameter "
                "(factory(env_id, seed=None, **kwargs))")

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            if self._owned:
                self.env.close()
        finally:
            if on_close is not None:
                on_close()


def _reseed(obj: Any, seed: int, depth: int = 0) -> bool:
    """Reseed the numpy random states found on ``obj`` (and nested envs/tasks)."""
    found = False
    try:
        attributes = vars(obj)
    except TypeError:
        return False
    for name, value in list(attributes.items()):
        if isinstance(value, np.random.RandomState):
            value.seed(seed)
            found = True
        elif isinstance(value, np.random.Generator):
            setattr(obj, name, np.random.default_rng(seed))
            found = True
        elif depth < 3 and (isinstance(value, dm_env.Environment)
                            or name in ("_task", "task", "_env", "_environment")):
            found = _reseed(value, seed, depth + 1) or found
    return found


def _accepts_seed(factory: Callable[..., Any]) -> bool:
    try:
        return "seed" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def serving_factory(env: Any) -> Callable[..., gym.Env]:
    """The ``factory(env_id, **kwargs) -> gymnasium.Env`` that relay's server uses for ``env``.

    * a ``dm_env.Environment`` instance: served to one client at a time (a
      second simultaneous ``Make`` gets a ``ConfigError``; serve a factory
      for several clients); it is not closed when a client leaves;
    * a callable: called per ``Make`` as ``env(env_id, **kwargs)``; a
      ``dm_env.Environment`` it returns is wrapped in :class:`DmEnvAsGym`
      (if it has a ``seed`` parameter, ``reset(seed=s)`` makes a new env with
      ``seed=s``, also when ``Make`` gave a ``seed``: that one seeds the
      first episodes only); a ``gymnasium.Env`` is served as is.

    Raises:
        ConfigError: ``env`` is neither.
    """
    if isinstance(env, dm_env.Environment):
        lock = threading.Lock()

        def single(env_id: str | None, **kwargs: Any) -> gym.Env:
            if kwargs:
                raise ConfigError(f"this server serves one dm_env instance; it takes no "
                                  f"arguments (got {sorted(kwargs)})")
            if not lock.acquire(blocking=False):
                raise ConfigError("this server serves one dm_env instance, in use by another "
                                  "client; serve a factory to have one per client")
            try:
                return DmEnvAsGym(env, owned=False, on_close=lock.release)
            except BaseException:
                lock.release()
                raise

        return single
    if not callable(env):
        raise ConfigError(f"cannot serve {env!r}: give an env id, a gymnasium.Env or "
                          "dm_env.Environment factory, or a dm_env.Environment")
    seeded = _accepts_seed(env)

    def factory(env_id: str | None, **kwargs: Any) -> gym.Env:
        made = env(env_id, **kwargs)
        if isinstance(made, dm_env.Environment):
            rebuild = None
            if seeded:
                def rebuild(seed: int) -> dm_env.Environment:
                    return env(env_id, **{**kwargs, "seed": seed})
            return DmEnvAsGym(made, rebuild=rebuild)
        return made

    return factory


# -- client side -------------------------------------------------------------------

class RemoteDmEnv(dm_env.Environment):
    """A ``dm_env.Environment`` served by a relay server (see the module table).

    Args:
        url: the server, e.g. ``"grpc://127.0.0.1:5555"``; query options
            override settings (``?codec=json&timeout=5``).
        env_id: the env to create on the server (None: the one it serves).
        codec, timeout, connect_timeout, max_message_size, token, zero_copy:
            settings, see :class:`relay.core.config.Settings`.
        **env_kwargs: keyword arguments of the server's env factory.

    ``step`` on a fresh env or after a LAST step starts a new episode (the
    action is ignored), as dm_env requires.  ``reset(seed=...)`` seeds the
    remote env (an extension of the dm_env API).

    Raises:
        ConnectError, Timeout, RemoteError (e.g. unknown env id on the server),
        CodecError (the server's spaces have no dm_env spec), UnknownScheme,
        InvalidURL.
    """

    def __init__(
        self,
        url: str | URL,
        env_id: str | None = None,
        *,
        codec: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_message_size: int | None = None,
        token: str | None = None,
        zero_copy: bool | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.url = make_url(url)
        self.settings = load_settings(
            self.url, codec=codec, timeout=timeout, connect_timeout=connect_timeout,
            max_message_size=max_message_size, token=token, zero_copy=zero_copy,
        )
        self._instance: int | None = None
        self.connection = ClientConnection.open(self.url, self.settings)
        try:
            made = self.connection.call(Make(env_id=env_id, kwargs=env_kwargs),
                                        timeout=max(self.settings.timeout, 60.0))
            assert isinstance(made, Made)
            self._instance = made.instance
            self._obs = made.observation_space
            self._act = made.action_space
            self._observation_spec = specs.spec_from_description(self._obs, "observation")
            self._action_spec = specs.spec_from_description(self._act, "action")
            extra = made.metadata.get(METADATA_KEY) or {}
            self._reward_spec = (specs.spec_from_description(extra["reward_spec"])
                                 if "reward_spec" in extra else specs.default_reward_spec())
            self._discount_spec = (specs.spec_from_description(extra["discount_spec"])
                                   if "discount_spec" in extra
                                   else specs.default_discount_spec())
        except BaseException:
            self.close()
            raise
        self.metadata = {k: v for k, v in made.metadata.items() if k != METADATA_KEY}
        self._needs_reset = True

    @property
    def instance(self) -> int:
        if self._instance is None:
            raise RelayError("the remote environment is closed")
        return self._instance

    def reset(self, *, seed: int | None = None) -> dm_env.TimeStep:
        """Start a new episode: a FIRST ``TimeStep`` (reward and discount None)."""
        answer = self.connection.call(Reset(instance=self.instance, seed=seed))
        assert isinstance(answer, Observation)
        self._needs_reset = False
        return dm_env.TimeStep(dm_env.StepType.FIRST, None, None,
                               specs.to_dm_value(answer.obs, self._obs))

    def step(self, action: Any) -> dm_env.TimeStep:
        """One remote step: MID or LAST, or FIRST on a fresh env / after LAST.

        Raises:
            InvalidAction: the action does not fit the action spec (env unchanged).
            RemoteEnvError, Timeout, ConnectionLost, CodecError.
        """
        if self._needs_reset:
            return self.reset()
        answer = self.connection.call(
            Step(instance=self.instance, action=specs.to_gym_value(action, self._act)))
        assert isinstance(answer, Transition)
        info = answer.info if isinstance(answer.info, dict) else {}
        last = bool(answer.terminated or answer.truncated)
        discount = info.get("discount")
        if discount is None:
            discount = 0.0 if answer.terminated else 1.0
        reward = info.get("reward", answer.reward)
        self._needs_reset = last
        return dm_env.TimeStep(
            dm_env.StepType.LAST if last else dm_env.StepType.MID,
            _conform(reward, self._reward_spec),
            _conform(discount, self._discount_spec),
            specs.to_dm_value(answer.obs, self._obs),
        )

    def observation_spec(self) -> Any:
        return self._observation_spec

    def action_spec(self) -> Any:
        return self._action_spec

    def reward_spec(self) -> Any:
        return self._reward_spec

    def discount_spec(self) -> Any:
        return self._discount_spec

    def close(self) -> None:
        """Close the remote env and the connection; idempotent, also after ConnectionLost."""
        instance, self._instance = self._instance, None
        try:
            if instance is not None and not self.connection.closed:
                self.connection.call(Close(instance=instance),
                                     timeout=min(self.settings.timeout, 5.0))
        except RelayError:
            pass
        finally:
            self.connection.close()

    def __repr__(self) -> str:
        return f"<RemoteDmEnv {self.url.render()} instance={self._instance}>"


def _conform(value: Any, spec: Any) -> Any:
    """A reward/discount with the spec's dtype (a numpy scalar when the spec is a scalar)."""
    if isinstance(spec, dm_env.specs.Array) and not isinstance(spec, dm_env.specs.StringArray):
        if spec.shape == ():
            return spec.dtype.type(np.asarray(value).item())
        return np.asarray(value, dtype=spec.dtype)
    return value


def make_dm_env(url: str | URL, env_id: str | None = None, **kwargs: Any) -> RemoteDmEnv:
    """Connect to a relay server and return its environment as a ``dm_env.Environment``.

    Same as ``RemoteDmEnv(url, env_id, **kwargs)``; see :class:`RemoteDmEnv`.
    """
    return RemoteDmEnv(url, env_id, **kwargs)
