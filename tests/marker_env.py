"""``MarkerCartPole-v0``: CartPole that writes a file when it is closed, so a test
can tell that a server (also one in another process) closed its envs.

``gymnasium.make("marker_env:MarkerCartPole-v0", marker=PATH)`` imports this
module (it registers the id) and makes the env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class MarkerCartPole(CartPoleEnv):
    def __init__(self, marker: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def close(self) -> None:
        self.marker.write_text("closed")
        super().close()


if "MarkerCartPole-v0" not in gym.registry:
    gym.register("MarkerCartPole-v0", entry_point=MarkerCartPole, max_episode_steps=500)
