"""dm_env on both sides of relay: dm_env's own test mixin on relay's dm_env client,
real dm_env environments (bsuite, dm_control) served and driven as dm_env and as
Gymnasium, Gymnasium environments driven as dm_env, and the errors."""

from __future__ import annotations

import collections
import time
import unittest

import dm_env
import gymnasium as gym
import numpy as np
import pytest
import tree
from dm_env import specs as S
from dm_env import test_utils

import relay
from relay.adapters.dm_env import serving_factory
from relay.testing import check_env_as_local

bsuite = pytest.importorskip("bsuite")
from bsuite.environments import catch  # noqa: E402

URLS = ["memory://0", "shm://0", "grpc://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"]


def catch_factory(env_id, seed=None):
    """bsuite's catch (``bsuite.load_from_id("catch/0")`` is this with seed 0)."""
    return catch.Catch(seed=0 if seed is None else seed)


class NestedEnv(dm_env.Environment):
    """A small dm_env with every kind of spec, nested (dict, OrderedDict, tuple, list).

    The episode lasts ``length`` steps; the last step is a truncation (discount
    0.5) on odd episodes and a termination (discount 0) on even ones.
    """

    def __init__(self, length: int = 4, delay: float = 0.0) -> None:
        self._length = length
        self._delay = delay
        self._t = 0
        self._episode = 0
        self._rng = np.random.RandomState(0)
        self._needs_reset = True

    def observation_spec(self):
        return collections.OrderedDict(
            pixels=S.BoundedArray((4, 4, 3), np.uint8, 0, 255, name="pixels"),
            state=(S.Array((2,), np.float32, name="pos"), [S.Array((), np.int32, name="t")]),
            mission=S.StringArray((), name="mission"),
            flags=S.Array((3,), bool, name="flags"),
        )

    def action_spec(self):
        return {"move": S.DiscreteArray(4, dtype=np.int32, name="move"),
                "force": S.BoundedArray((2,), np.float32, -1.0, 1.0, name="force")}

    def reward_spec(self):
        return S.Array((), np.float32, name="reward")

    def _obs(self):
        return collections.OrderedDict(
            pixels=self._rng.randint(0, 256, (4, 4, 3)).astype(np.uint8),
            state=(self._rng.standard_normal(2).astype(np.float32), [np.int32(self._t)]),
            mission=np.array(f"go {self._t}", dtype=object),
            flags=np.array([self._t % 2 == 0, True, False]),
        )

    def reset(self):
        self._t = 0
        self._episode += 1
        self._needs_reset = False
        return dm_env.restart(self._obs())

    def step(self, action):
        if self._needs_reset:
            return self.reset()
        if self._delay:
            time.sleep(self._delay)
        self.action_spec()["move"].validate(action["move"])
        self.action_spec()["force"].validate(action["force"])
        self._t += 1
        reward = np.float32(action["move"] + 0.5)
        if self._t < self._length:
            return dm_env.transition(reward, self._obs())
        discount = 0.5 if self._episode % 2 else 0.0
        self._needs_reset = True
        return dm_env.TimeStep(dm_env.StepType.LAST, reward, np.float64(discount), self._obs())


def nested_factory(env_id, length: int = 4, delay: float = 0.0):
    return NestedEnv(length, delay)


# -- dm_env's test mixin on relay's dm_env client -----------------------------------

class _ServedMixin(test_utils.EnvironmentTestMixin):
    url = "memory://0"
    factory = staticmethod(catch_factory)
    env_id: str | None = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = relay.serve(cls.factory, cls.url)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        super().tearDownClass()

    def make_object_under_test(self):
        return relay.make_dm_env(self.server.address, self.env_id, timeout=10)

    def make_action_sequence(self):
        for _ in range(25):  # several episodes: LAST then FIRST is checked
            yield self.make_action()


def _mixin_case(name: str, url: str, factory, env_id=None):
    attrs = {"url": url, "factory": staticmethod(factory), "env_id": env_id}
    return type(name, (_ServedMixin, unittest.TestCase), attrs)


TestCatchMemory = _mixin_case("TestCatchMemory", "memory://0", catch_factory)
TestCatchGrpc = _mixin_case("TestCatchGrpc", "grpc://127.0.0.1:0", catch_factory)
TestCatchZmq = _mixin_case("TestCatchZmq", "zmq+tcp://127.0.0.1:0", catch_factory)
TestNestedMemory = _mixin_case("TestNestedMemory", "memory://0", nested_factory)
TestNestedGrpc = _mixin_case("TestNestedGrpc", "grpc://127.0.0.1:0", nested_factory)
TestNestedZmq = _mixin_case("TestNestedZmq", "zmq+tcp://127.0.0.1:0", nested_factory)


def _gym_factory(env_id, **kwargs):
    return gym.make("CartPole-v1", **kwargs)


TestCartPoleAsDmEnvGrpc = _mixin_case("TestCartPoleAsDmEnvGrpc", "grpc://127.0.0.1:0",
                                      _gym_factory)


# -- cross-serving ------------------------------------------------------------------

@pytest.fixture(params=URLS)
def listen_url(request) -> str:
    """The transports of these tests (``serve`` of tests/adapters/conftest.py uses it)."""
    return request.param


def run_dm_episodes(env, actions):
    """(step_type, reward, discount, observation) of ``env.step`` for each action."""
    out = []
    for action in actions:
        ts = env.step(action)
        out.append((ts.step_type, ts.reward, ts.discount, ts.observation))
    return out


def assert_same_timesteps(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[0] is y[0]
        for u, v in zip(x[1:], y[1:], strict=True):
            if u is None or v is None:
                assert u is None and v is None
            else:
                tree.map_structure(
                    lambda p, q: np.testing.assert_array_equal(np.asarray(p), np.asarray(q)),
                    u, v)
                tree.assert_same_structure(u, v)
                for p, q in zip(tree.flatten(u), tree.flatten(v), strict=True):
                    assert np.asarray(p).dtype == np.asarray(q).dtype


def test_catch_as_dm_env_equals_local(serve) -> None:
    server = serve(catch_factory)
    remote = relay.make_dm_env(server.address)
    local = catch.Catch(seed=5)
    try:
        assert remote.observation_spec() == local.observation_spec()
        assert remote.observation_spec().name == "observation"
        assert remote.action_spec() == local.action_spec()
        assert isinstance(remote.action_spec(), S.DiscreteArray)
        assert remote.reward_spec() == local.reward_spec()
        assert remote.discount_spec() == local.discount_spec()
        first_remote, first_local = remote.reset(seed=5), local.reset()
        assert first_remote.first() and first_remote.reward is None
        assert first_remote.discount is None
        np.testing.assert_array_equal(first_remote.observation, first_local.observation)
        actions = [np.int64(a) for a in np.random.default_rng(0).integers(0, 3, 40)]
        assert_same_timesteps(run_dm_episodes(remote, actions), run_dm_episodes(local, actions))
    finally:
        remote.close()


def test_nested_specs_and_exact_timesteps(serve) -> None:
    server = serve(nested_factory)
    remote = relay.make_dm_env(server.address)
    local = NestedEnv()
    try:
        spec = remote.observation_spec()
        assert isinstance(spec, collections.OrderedDict) and list(spec) == list(
            local.observation_spec())
        assert isinstance(spec["state"], tuple) and isinstance(spec["state"][1], list)
        assert isinstance(spec["mission"], S.StringArray)
        assert spec["pixels"] == local.observation_spec()["pixels"]
        assert spec["pixels"].name == "pixels"
        assert remote.reward_spec() == local.reward_spec()
        action = {"move": np.int32(2), "force": np.zeros(2, np.float32)}
        for env in (remote, local):
            env.reset()
        steps = [action] * 10
        remote_steps, local_steps = run_dm_episodes(remote, steps), run_dm_episodes(local, steps)
        assert_same_timesteps(remote_steps, local_steps)
        # a truncation keeps its discount 0.5; a termination is discount 0
        assert [s[0] for s in remote_steps[:5]] == [dm_env.StepType.MID] * 3 + [
            dm_env.StepType.LAST, dm_env.StepType.FIRST]
        assert remote_steps[3][2] == 0.5 and remote_steps[3][2].dtype == np.float64
        assert remote_steps[3][1].dtype == np.float32
        assert remote_steps[8][0] is dm_env.StepType.LAST and remote_steps[8][2] == 0.0
        assert remote_steps[0][3]["mission"].dtype == object
    finally:
        remote.close()


def test_nested_dm_env_driven_as_gymnasium(serve) -> None:
    server = serve(nested_factory)
    env = relay.make(server.address)
    try:
        check_env_as_local(env, serving_factory(nested_factory)(None), skip_render_check=True)
        obs, info = env.reset()
        assert obs in env.observation_space and info == {}
        outcomes = []
        for _ in range(8):
            obs, reward, terminated, truncated, info = env.step(
                {"move": np.int32(1), "force": np.zeros(2, np.float32)})
            outcomes.append((terminated, truncated, info["discount"]))
            if terminated or truncated:
                env.reset()
        assert outcomes[3] in ((False, True, 0.5), (True, False, 0.0))
    finally:
        env.close()


def test_gymnasium_env_driven_as_dm_env(serve) -> None:
    server = serve("CartPole-v1")
    env = relay.make_dm_env(server.address)
    try:
        assert env.action_spec() == S.DiscreteArray(2, dtype=np.int64)
        assert isinstance(env.action_spec(), S.DiscreteArray)
        assert isinstance(env.observation_spec(), S.BoundedArray)
        ts = env.reset(seed=0)
        assert ts.first() and ts.reward is None and ts.discount is None
        assert ts.observation.dtype == np.float32
        while not ts.last():
            ts = env.step(np.int64(0))
        assert ts.discount == 0.0  # CartPole falls over: terminated
        assert env.step(np.int64(0)).first()  # step after LAST starts a new episode
    finally:
        env.close()
    truncating = relay.make_dm_env(server.address, max_episode_steps=5)
    try:
        truncating.reset(seed=0)
        steps = [truncating.step(np.int64(i % 2)) for i in range(5)]
        assert [s.step_type for s in steps] == [dm_env.StepType.MID] * 4 + [dm_env.StepType.LAST]
        assert steps[-1].discount == 1.0 and steps[-1].reward == 1.0
        assert all(isinstance(s.discount, np.float64) for s in steps)
    finally:
        truncating.close()


def test_catch_driven_as_gymnasium(serve) -> None:
    server = serve(catch_factory)
    env = relay.make(server.address)
    try:
        check_env_as_local(env, serving_factory(catch_factory)(None), skip_render_check=True)
        assert env.action_space == gym.spaces.Discrete(3)
        obs, _ = env.reset(seed=1)
        local = catch.Catch(seed=1)
        np.testing.assert_array_equal(obs, local.reset().observation)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(1)
            ts = local.step(1)
            np.testing.assert_array_equal(obs, ts.observation)
            assert reward == ts.reward and info["discount"] == ts.discount
            done = terminated or truncated
        assert terminated and not truncated and ts.last()
    finally:
        env.close()


def test_bsuite_load_from_id_instance(listen_url) -> None:
    """A dm_env *instance* (``bsuite.load_from_id``) serves one client at a time."""
    instance = bsuite.load_from_id("catch/0")
    server = relay.serve(instance, listen_url)
    try:
        first = relay.make_dm_env(server.address)
        with pytest.raises(relay.RemoteError, match="in use"):
            relay.make_dm_env(server.address)
        ts = first.reset()
        while not ts.last():
            ts = first.step(np.int64(1))
        first.close()
        second = relay.make(server.address)  # released: the next client gets it
        second.reset()
        _, _, terminated, truncated, _ = second.step(0)
        assert not (terminated or truncated)
        second.close()
    finally:
        server.close()


def test_invalid_action_from_dm_env_client() -> None:
    server = relay.serve(catch_factory, "grpc://127.0.0.1:0")
    env = relay.make_dm_env(server.address)
    try:
        env.reset()
        with pytest.raises(relay.InvalidAction):
            env.step(np.int64(7))
        assert env.step(np.int64(1)).mid()
    finally:
        env.close()
        server.close()


def test_deadline_expiry_is_timeout() -> None:
    server = relay.serve(nested_factory, "grpc://127.0.0.1:0")
    env = relay.make_dm_env(server.address, delay=1.5, timeout=0.2)
    try:
        env.reset()
        action = {"move": np.int32(0), "force": np.zeros(2, np.float32)}
        start = time.monotonic()
        with pytest.raises(relay.Timeout):
            env.step(action)
        assert time.monotonic() - start < 1.2  # the deadline, not the env's 1.5 s
        time.sleep(1.5)  # the late answer is dropped, the connection stays usable
        assert env.reset().first()
    finally:
        env.close()
        server.close()


# -- dm_control -------------------------------------------------------------------------

def cartpole_factory(env_id, seed=None):
    from dm_control import suite

    return suite.load("cartpole", "swingup", task_kwargs={"random": seed})


@pytest.mark.slow
def test_dm_control_cartpole_both_ways() -> None:
    pytest.importorskip("dm_control")
    server = relay.serve(cartpole_factory, "grpc://127.0.0.1:0")
    try:
        remote = relay.make_dm_env(server.address)
        local = cartpole_factory(None, seed=3)
        try:
            assert remote.observation_spec() == local.observation_spec()
            assert isinstance(remote.observation_spec(), collections.OrderedDict)
            assert remote.action_spec() == local.action_spec()
            first = remote.reset(seed=3)
            tree.map_structure(np.testing.assert_array_equal, first.observation,
                               local.reset().observation)
            actions = [np.array([a], np.float64)
                       for a in np.random.default_rng(0).uniform(-1, 1, 50)]
            assert_same_timesteps(run_dm_episodes(remote, actions),
                                  run_dm_episodes(local, actions))
        finally:
            remote.close()
        env = relay.make(server.address)
        try:
            assert set(env.observation_space.spaces) == {"position", "velocity"}
            check_env_as_local(env, serving_factory(cartpole_factory)(None),
                               skip_render_check=True)
        finally:
            env.close()
    finally:
        server.close()


class CoinEnv(dm_env.Environment):
    """One flip of a coin per episode, drawn from Python's ``random`` (a random
    state relay does not find to reseed: only a factory's ``seed`` can)."""

    def __init__(self, seed: int | None = None) -> None:
        import random

        self._coin = random.Random(seed)

    def observation_spec(self):
        return S.Array((), np.float64)

    def action_spec(self):
        return S.DiscreteArray(2)

    def reset(self):
        return dm_env.restart(np.float64(self._coin.random()))

    def step(self, action):
        return dm_env.termination(0.0, np.float64(0.0))


def coin_factory(env_id, seed=None):
    return CoinEnv(seed)


def test_reset_seed_reseeds_also_when_make_gave_a_seed(serve) -> None:
    server = serve(coin_factory)
    env = relay.make(server.address, seed=0)  # the seed of the first episodes only
    try:
        first = env.reset()[0]
        assert first == CoinEnv(0).reset().observation
        assert env.reset(seed=3)[0] == env.reset(seed=3)[0] == CoinEnv(3).reset().observation
        check_env_as_local(env, serving_factory(coin_factory)(None, seed=0), skip_render_check=True)
    finally:
        env.close()


def test_reset_seed_that_cannot_be_applied_is_an_error_on_the_client(serve) -> None:
    server = serve(lambda env_id: CoinEnv())  # no seed parameter, no numpy random state
    env = relay.make(server.address)
    try:
        env.reset()
        with pytest.raises(relay.RemoteError, match=r"reset\(seed=3\) cannot seed CoinEnv"):
            env.reset(seed=3)
    finally:
        env.close()
