"""A separate process for the shm tests (run as ``python shm_peer.py MODE ...``).

Modes:
    serve NAME [MAX_BYTES]   serve :class:`SlowEnv` / :class:`BigEnv` on shm://NAME
    client NAME              connect, make a SlowEnv(delay=1), reset, print "stepping", step
    channel NAME             connect a bare channel, send b"hello", then sleep
    pending                  create a segment and a semaphore (names not yet
                             unlinked, as during a handshake), print the names, sleep;
                             on SIGINT print "interrupted" and exit 0

Each mode prints one line on stdout when ready.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np


class SlowEnv(gym.Env):
    """CartPole whose ``step`` first sleeps ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self._env = gym.make("CartPole-v1")
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self.delay = delay

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._env.reset(seed=seed, options=options)

    def step(self, action: Any):
        time.sleep(self.delay)
        return self._env.step(action)


class BigEnv(gym.Env):
    """Observations of ``size`` random bytes, reproducible from the reset seed.

    Observation ``k`` of an episode reset with ``seed`` is :func:`big_obs` (seed, k).
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size,), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self._seed = 0
        self._k = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._seed, self._k = (seed or 0), 0
        return big_obs(self._seed, 0, self.size), {}

    def step(self, action: Any):
        self._k += 1
        return big_obs(self._seed, self._k, self.size), 1.0, False, False, {}


def big_obs(seed: int, k: int, size: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng([seed, k]).bytes(size), np.uint8).copy()


def factory(env_id: str | None, **kwargs: Any) -> gym.Env:
    return BigEnv(**kwargs) if env_id == "big" else SlowEnv(**kwargs)


def main(argv: list[str]) -> None:
    import relay

    mode = argv[0]
    if mode == "serve":
        settings = {"max_message_size": int(argv[2])} if len(argv) > 2 else {}
        server = relay.serve(factory, f"shm://{argv[1]}", **settings)
        print("ready", server.address, flush=True)
        server.serve_forever()
    elif mode == "client":
        env = relay.make(f"shm://{argv[1]}", delay=1.0)
        env.reset(seed=0)
        print("stepping", flush=True)
        env.step(0)
        print("stepped", flush=True)
    elif mode == "channel":
        from relay.core.config import Settings
        from relay.core.url import make_url
        from relay.transports.shm import ShmTransport

        channel = ShmTransport().connect(make_url(f"shm://{argv[1]}"), Settings(), timeout=5.0)
        channel.send([b"hello"])
        print("sent", flush=True)
        time.sleep(60)
    elif mode == "pending":
        from relay.transports.shm import _names

        seg_name, mapping = _names._create_segment(8192)
        sem_name, sem = _names._create_semaphore()
        try:
            print(seg_name, sem_name, flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
