"""The benchmark's synthetic environment, registered as ``relay-bench/FixedObs-v0``.

This module needs only numpy and Gymnasium (not relay): the real Gymie
server's venv loads it by path (:mod:`relay_bench.cases.gymie`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["FIXED_OBS_ID", "FixedObsEnv"]

FIXED_OBS_ID = "relay-bench/FixedObs-v0"


class FixedObsEnv(gym.Env):
    """Returns the same random observation of ``shape``/``dtype`` at every step.

    Action space ``Discrete(2)``; reward 1.0; never terminates.  Making the
    observation costs nothing, so a round trip measures only the transport.
    """

    def __init__(self, shape: Sequence[int] = (84, 84, 4), dtype: str = "uint8") -> None:
        self.observation_space = gym.spaces.Box(0, 255, tuple(shape), np.dtype(dtype))
        self.action_space = gym.spaces.Discrete(2)
        self._obs = np.random.default_rng(0).integers(0, 256, tuple(shape)).astype(dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return self._obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self._obs, 1.0, False, False, {}


if FIXED_OBS_ID not in gym.registry:
    gym.register(FIXED_OBS_ID, entry_point=f"{__name__}:FixedObsEnv", disable_env_checker=True)
