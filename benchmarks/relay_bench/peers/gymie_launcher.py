"""Start the real Gymie 0.5.4 server; this file runs inside Gymie's own venv.

It imports nothing from relay (that venv has gym 0.17.3, eventlet, Gymie and
Gymnasium, see :mod:`relay_bench.peers.gymie_server`) and starts Gymie with its
documented programmatic API, ``gymie.start(host, port)``.  With
``--gymnasium-prefix P`` it also installs Gymie's documented extension point
``@gymie.override("get_env")`` so that an id ``P<id>`` (``gymnasium/CartPole-v1``)
is made with ``gymnasium.make(<id>)`` and wrapped in the gym 0.17 API Gymie
calls (``seed(s)``, ``reset() -> obs``, ``step(a) -> (obs, reward, done, info)``,
gym 0.17's ``TimeLimit.truncated`` info key, gym 0.17 space classes).  Every
other id goes to Gymie's own ``get_env`` (gym 0.17.3's registry), unchanged.
Gymie's own code encodes every answer either way.

``--register ID=FILE:CLASS:KWARGS_JSON`` registers a Gymnasium env class
loaded from a Python file by path (not imported as part of its package, so
relay's benchmark env runs here without relay's dependencies).

Usage: ``python gymie_launcher.py --host 127.0.0.1 --port 0 [--gymnasium-prefix
gymnasium/] [--register ID=FILE:CLASS:KWARGS_JSON ...]``; eventlet logs
``wsgi starting up on http://HOST:PORT`` on stderr once it listens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys


def _old_space(space):
    import gym
    import gymnasium
    import numpy as np

    if isinstance(space, gymnasium.spaces.Discrete):
        return gym.spaces.Discrete(int(space.n))
    if isinstance(space, gymnasium.spaces.Box):
        return gym.spaces.Box(low=space.low, high=space.high, dtype=space.dtype)
    if isinstance(space, gymnasium.spaces.MultiBinary):
        return gym.spaces.MultiBinary(int(np.prod(space.shape)))
    return space


class _OldApiEnv:
    """A Gymnasium env seen through the gym 0.17 API (what Gymie's api.py calls)."""

    def __init__(self, env) -> None:
        self.env = env
        self.observation_space = _old_space(env.observation_space)
        self.action_space = _old_space(env.action_space)
        self._seed = None

    def seed(self, seed=None):
        self._seed = seed
        return [seed]

    def reset(self):
        seed, self._seed = self._seed, None
        obs, _info = self.env.reset(seed=seed)
        return obs

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        if truncated:  # what gym 0.17.3's TimeLimit wrapper reports
            info["TimeLimit.truncated"] = not terminated
        return obs, reward, bool(terminated or truncated), info

    def render(self, mode="human"):
        return self.env.render()

    def close(self):
        self.env.close()


def _register(entry: str) -> None:
    """``ID=FILE:CLASS:KWARGS_JSON``: register a Gymnasium env class from a file."""
    import gymnasium

    env_id, _, rest = entry.partition("=")
    path, class_name, kwargs = rest.split(":", 2)
    name = "gymie_launcher_" + os.path.splitext(os.path.basename(path))[0]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    gymnasium.register(env_id, entry_point=getattr(module, class_name),
                       kwargs=json.loads(kwargs), disable_env_checker=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default=0, type=int)
    parser.add_argument("--gymnasium-prefix", default=None)
    parser.add_argument("--register", action="append", default=[])
    args = parser.parse_args()
    for entry in args.register:
        _register(entry)

    import gymie
    import gymie.api

    if args.gymnasium_prefix:
        prefix = args.gymnasium_prefix
        gym_get_env = gymie.api.get_env

        @gymie.override("get_env")
        def get_env(env_id, seed=None):
            if not (isinstance(env_id, str) and env_id.startswith(prefix)):
                return gym_get_env(env_id, seed=seed)
            import gymnasium

            try:
                env = gymnasium.make(env_id[len(prefix):])
            except gymnasium.error.UnregisteredEnv as exc:
                raise gymie.EnvironmentNotFound(env_id) from exc
            except gymnasium.error.Error as exc:
                raise gymie.EnvironmentMalformed(env_id) from exc
            wrapped = _OldApiEnv(env)
            if seed:  # Gymie's own get_env seeds only a truthy seed
                wrapped.seed(seed)
            return wrapped

    gymie.start(args.host, args.port)


if __name__ == "__main__":
    main()
