"""Serving a batch: the *vector instances* behind ``MakeBatch``/``StepBatch``/``ResetBatch``.

A server started with ``num_envs`` (``relay.serve(env, url, num_envs=N)``,
``relay serve ENV --num-envs N``), or given a ``gymnasium.vector.VectorEnv``,
hosts one vector instance per ``MakeBatch``: a ``VectorEnv`` whose
``step(actions)`` takes the ``(N, ...)`` action batch of one ``StepBatch``
and whose stacked outputs are the one ``TransitionBatch`` answer.  Its arrays
go to the codec as they are (no per-env loop, no copy in relay).

Where the vector instance comes from (:func:`vector_factory`):

* an env id: ``gymnasium.make_vec(env_id, num_envs=N)`` with the env's
  ``vector_entry_point`` when it has one (``CartPoleVectorEnv``), else N
  envs stepped in turn by the server (:class:`~gymnasium.vector.SyncVectorEnv`);
  the client's ``vectorization_mode="sync"`` kwarg asks for the latter;
* a factory ``factory(env_id, **kwargs)``: a ``VectorEnv`` it returns is
  served as is (EnvPool's ``envpool.make_gymnasium(...)``, a JAX env...);
  a ``gymnasium.Env`` (or ``dm_env.Environment``) it returns is made N times
  and stepped as a ``SyncVectorEnv``;
* a ``VectorEnv`` instance: served to one client at a time, never closed
  by relay (its owner closes it).

Sub-environments that the server steps itself are wrapped so that an
exception names the sub-env's index (``Error.env_index``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from relay.access import Access, serve_call
from relay.core.errors import ConfigError
from relay.core.messages import Call, Returned

__all__ = ["Hosted", "SubEnvError", "VectorFactory", "serve_vector_call", "vector_factory"]


class Hosted(NamedTuple):
    """A vector instance made for one client, and how to let go of it."""

    env: VectorEnv
    close: Callable[[], None]


VectorFactory = Callable[[str | None, int | None, AutoresetMode | None, dict[str, Any]], Hosted]
"""``factory(env_id, num_envs, autoreset_mode, kwargs) -> Hosted`` (None: the default)."""


class SubEnvError(Exception):
    """An exception of sub-environment ``index`` of a vector instance (the ``__cause__``)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class _Indexed(gym.Wrapper):
    """A sub-env whose ``reset``/``step`` exceptions say which sub-env it is."""

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self._index = index

    def step(self, action: Any) -> Any:
        try:
            return self.env.step(action)
        except Exception as exc:
            raise SubEnvError(self._index) from exc

    def reset(self, **kwargs: Any) -> Any:
        try:
            return self.env.reset(**kwargs)
        except Exception as exc:
            raise SubEnvError(self._index) from exc


def _sync(envs: list[gym.Env], mode: AutoresetMode | None) -> VectorEnv:
    """The sub-envs as a ``SyncVectorEnv`` stepped by the server, each indexed."""
    fns = [lambda e=env, i=i: _Indexed(e, i) for i, env in enumerate(envs)]
    return SyncVectorEnv(fns, autoreset_mode=mode or AutoresetMode.NEXT_STEP)


def _mismatch(env: VectorEnv, num_envs: int | None, mode: AutoresetMode | None) -> str | None:
    """Why ``env`` is not the size or autoreset mode asked (None: it is)."""
    have = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
    if num_envs is not None and env.num_envs != num_envs:
        return f"the served vector env has num_envs={env.num_envs}, not {num_envs}"
    if mode is not None and have is not mode:
        return (f"the served vector env's autoreset mode is {have.value}, not {mode.value} "
                "(for an env id, the kwarg vectorization_mode='sync' gives a "
                "SyncVectorEnv, which has every mode)")
    return None


def _checked(env: VectorEnv, num_envs: int | None, mode: AutoresetMode | None) -> VectorEnv:
    """``env`` if it has the size and autoreset mode asked; else closes it and raises."""
    problem = _mismatch(env, num_envs, mode)
    if problem is None:
        return env
    env.close()
    raise ConfigError(problem)


def serve_vector_call(env: VectorEnv, call: Call, access: Access) -> Returned:
    """Answer a ``Call`` on sub-env ``call.index`` of a vector instance, as
    :func:`relay.access.serve_call` on a single env (the same allowed names).

    The sub-envs are those of a served ``SyncVectorEnv`` (its ``envs``); a
    vector env without sub-env objects (CartPole's ``CartPoleVectorEnv``,
    EnvPool) has none to reach, as locally (Gymnasium's ``VectorEnv`` has no
    ``call``).

    Raises:
        ConfigError: no index, an index out of range, or no sub-env objects.
        NotAllowed, Exception: as :func:`relay.access.serve_call`.
    """
    subs = getattr(env, "envs", None)
    if not isinstance(subs, list):
        raise ConfigError(f"the served vector env ({type(env).__name__}) has no sub-env objects "
                          "to call (serve it with vectorization_mode='sync' for that)")
    if call.index is None or not 0 <= call.index < len(subs):
        raise ConfigError(f"a Call on a vector instance names a sub-env 0..{len(subs) - 1} in "
                          f"index, got {call.index!r}")
    return serve_call(subs[call.index], dataclasses.replace(call, index=None), access)


def vector_factory(env: Any, num_envs: int | None) -> VectorFactory:
    """The factory of vector instances that a server uses for ``env``.

    Args:
        env: an env id (None: any registered id the client names), a factory
            ``factory(env_id, **kwargs)`` returning a ``VectorEnv`` or a
            ``gymnasium.Env`` (:func:`relay.serve` wraps a factory of
            ``dm_env.Environment`` in :func:`~relay.adapters.dm_env.serving_factory`
            first), or a ``VectorEnv``.
        num_envs: the size when the client does not ask one (None: a
            ``VectorEnv`` instance or factory decides).

    Raises:
        ConfigError: ``num_envs < 1``, or ``env`` is none of these.
    """
    if num_envs is not None and (not isinstance(num_envs, int) or num_envs < 1):
        raise ConfigError(f"num_envs must be an int >= 1, not {num_envs!r}")
    if isinstance(env, VectorEnv):
        return _lent(env)
    if env is None or isinstance(env, str):
        return _by_id(env, num_envs)
    if not callable(env):
        raise ConfigError(f"cannot serve {env!r}: give an env id, a factory or a VectorEnv")
    scalar = env

    def factory(env_id: str | None, n: int | None, mode: AutoresetMode | None,
                kwargs: dict[str, Any]) -> Hosted:
        first = scalar(env_id, **kwargs)
        if isinstance(first, VectorEnv):
            made = _checked(first, n, mode)
            return Hosted(made, made.close)
        size = n or num_envs
        if size is None:
            first.close()
            raise ConfigError("the factory makes single envs: serve it with num_envs=N "
                              "or ask a num_envs")
        envs = [first]
        try:
            envs.extend(scalar(env_id, **kwargs) for _ in range(size - 1))
        except BaseException:
            for made_env in envs:
                made_env.close()
            raise
        vector = _sync(envs, mode)
        return Hosted(vector, vector.close)

    return factory


def _by_id(served_id: str | None, num_envs: int | None) -> VectorFactory:
    def factory(env_id: str | None, n: int | None, mode: AutoresetMode | None,
                kwargs: dict[str, Any]) -> Hosted:
        if served_id is not None and env_id not in (None, served_id):
            raise ConfigError(f"this server serves {served_id!r} only, not {env_id!r}")
        chosen = env_id or served_id
        if chosen is None:
            raise ConfigError("MakeBatch needs an env_id: this server serves any registered env")
        size = n or num_envs or 1
        kwargs = dict(kwargs)
        vectorization = kwargs.pop("vectorization_mode", None)
        if vectorization is None:
            has_vector = gym.spec(chosen).vector_entry_point is not None
            vectorization = "vector_entry_point" if has_vector else "sync"
        if vectorization == "sync":
            envs: list[gym.Env] = []
            try:
                for _ in range(size):
                    envs.append(gym.make(chosen, **kwargs))
            except BaseException:
                for made_env in envs:
                    made_env.close()
                raise
            vector = _sync(envs, mode)
        else:
            vector = _checked(gym.make_vec(chosen, num_envs=size,
                                           vectorization_mode=vectorization, **kwargs),
                              None, mode)
        return Hosted(vector, vector.close)

    return factory


def _lent(env: VectorEnv) -> VectorFactory:
    lock = threading.Lock()

    def factory(env_id: str | None, n: int | None, mode: AutoresetMode | None,
                kwargs: dict[str, Any]) -> Hosted:
        if kwargs:
            raise ConfigError(f"this server serves one vector env instance; it takes no "
                              f"arguments (got {sorted(kwargs)})")
        if not lock.acquire(blocking=False):
            raise ConfigError("this server serves one vector env instance, in use by another "
                              "client; serve a factory to have one per client")
        problem = _mismatch(env, n, mode)
        if problem is not None:
            lock.release()
            raise ConfigError(problem)
        return Hosted(env, lock.release)

    return factory
