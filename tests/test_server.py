"""The server's own action check: an env that takes any action is served, so a
refused action can only have been refused by the server (``InvalidAction``,
env not stepped), and an accepted one reaches the env as sent.  Each space is
tried at its exact edges."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import relay
from relay.core.errors import InvalidAction


class AnyActionEnv(gym.Env[np.ndarray, Any]):
    """Steps with whatever action it gets; ``info["action"]`` is that action and
    ``info["steps"]`` how many steps it took since reset."""

    observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)

    def __init__(self, action_space: gym.Space[Any]) -> None:
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        return np.zeros(1, np.float32), 0.0, False, False, {"action": action,
                                                              "steps": self.steps}


INTS = (int, np.int64, np.int32, np.int16, np.uint8)  # action types of a Discrete space

CASES = {
    # space: (accepted actions, refused actions)
    "Discrete start 3": (
        gym.spaces.Discrete(5, start=3),
        [t(v) for t in INTS for v in (3, 7)],
        [t(v) for t in INTS for v in (2, 8)] + [3.0, np.float32(3), "3", [3]],
    ),
    "Discrete negative start": (
        gym.spaces.Discrete(3, start=-2),
        [t(v) for t in (int, np.int64, np.int32, np.int16) for v in (-2, 0)],
        [t(v) for t in (int, np.int64, np.int32, np.int16) for v in (-3, 1)],
    ),
    "MultiDiscrete with start": (
        gym.spaces.MultiDiscrete([3, 4], start=[-1, 2]),
        [np.array([-1, 2]), np.array([1, 5]), np.array([1, 5], np.int8)],
        [np.array([2, 2]), np.array([-2, 2]), np.array([1, 6]), np.array([0, 1]),
         np.array([0]), np.array([0, 2, 2]), np.array([[0, 2]])],
    ),
    "MultiDiscrete 2-d": (
        gym.spaces.MultiDiscrete(np.array([[2, 3], [4, 5]])),
        [np.array([[1, 2], [3, 4]]), np.zeros((2, 2), np.int64)],
        [np.array([[2, 0], [0, 0]]), np.array([[0, 0], [0, 5]]), np.array([[0, -1], [0, 0]]),
         np.zeros(4, np.int64)],
    ),
    "MultiBinary": (
        gym.spaces.MultiBinary(3),
        [np.array([0, 1, 1], np.int8), np.array([1, 1, 1])],
        [np.array([0, 2, 1], np.int8), np.array([-1, 0, 0]), np.array([0, 1], np.int8),
         np.array([0, 1, 1, 0], np.int8)],
    ),
    "MultiBinary 2-d": (
        gym.spaces.MultiBinary([2, 2]),
        [np.array([[0, 1], [1, 0]], np.int8)],
        [np.array([0, 1, 1, 0], np.int8), np.array([[0, 1], [1, 2]], np.int8)],
    ),
    # Box: shape and a dtype that casts (same kind), not the bounds (see _contains)
    "Box": (
        gym.spaces.Box(-1, 1, (2,), np.float32),
        [np.array([0.5, -0.5], np.float32), np.array([5.0, -5.0]), np.array([1, 2], np.int64),
         [0.0, 1.0]],
        [np.zeros(3, np.float32), np.zeros((1, 2), np.float32), np.zeros((2, 1), np.float32),
         np.float32(0), np.zeros(2, np.complex64), [[0.0], [1.0, 2.0]]],
    ),
    "Box int": (
        gym.spaces.Box(0, 10, (2,), np.int64),
        [np.array([0, 10], np.int64), np.array([11, -1], np.int32)],
        [np.array([0.0, 1.0]), np.zeros(1, np.int64)],
    ),
}


@pytest.fixture(params=["msgpack", "json"])
def codec(request) -> str:
    return request.param


@pytest.mark.parametrize("case", CASES, ids=str)
def test_server_checks_actions_at_the_edges_of_the_space(case, codec):
    space, accepted, refused = CASES[case]
    server = relay.serve(lambda env_id=None, **kw: AnyActionEnv(space), "memory://0",
                         codec=codec)
    env = relay.make(server.address, codec=codec)
    try:
        env.reset()
        steps = 0
        for action in accepted:
            steps += 1
            _, _, _, _, info = env.step(action)
            assert info["steps"] == steps, f"{action!r} was refused"
            assert np.array_equal(info["action"], action)
        for action in refused:
            with pytest.raises(InvalidAction, match="is not in"):
                env.step(action)
                pytest.fail(f"{action!r} reached the env")
        assert env.step(accepted[0])[4]["steps"] == steps + 1  # refusals left the env as it was
    finally:
        env.close()
        server.close()
