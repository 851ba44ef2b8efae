"""Reaching a served env's own methods and attributes: the server's allow-list,
refusals that name the setting, RemoteEnv.call / get_wrapper_attr /
set_wrapper_attr, and a vector env's call / get_attr / set_attr beside
SyncVectorEnv's, over shm and zmq."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

import relay
from relay.testing import FaultyEnv


class Dial(FaultyEnv):
    """FaultyEnv with a method taking arguments, an attribute, and a method nobody allows."""

    level = 3

    def turn(self, by, *, times=1):
        self.level += by * times
        return np.arange(self.level, dtype=np.int16)

    def secret(self):
        return "nobody may read this"


def dial(env_id=None, **kwargs):
    return Dial()


@pytest.fixture
def serve(serve_shm_zmq):
    return serve_shm_zmq


def test_allowed_method_called_with_arguments_values_through_the_codec(serve):
    server = serve(dial, allow_calls=["turn", "level"])
    with relay.make(server.address) as env:
        result = env.call("turn", 2, times=2)
        assert result.dtype == np.int16 and result.tolist() == list(range(7))
        assert env.call("level") == 7  # not callable: returned as is, as SyncVectorEnv.call
        assert env.get_wrapper_attr("level") == 7
        assert env.level == 7  # plain attribute access asks the server too
        method = env.get_wrapper_attr("turn")
        assert callable(method) and method(-1).tolist() == list(range(6))


def test_a_name_not_allowed_is_refused_naming_the_setting(serve):
    server = serve(dial, allow_calls=["turn"])
    with relay.make(server.address) as env:
        with pytest.raises(relay.NotAllowed, match=r"'secret'.*allow_calls.*--allow-call secret"):
            env.call("secret")
        with pytest.raises(AttributeError, match="allow_calls"):
            env.get_wrapper_attr("secret")
        assert not hasattr(env, "secret")
        with pytest.raises(relay.NotAllowed, match=r"allow_set.*--allow-set level"):
            env.set_wrapper_attr("level", 10)
        assert env.call("turn", 0).size == 3  # the refusals changed nothing
        assert not hasattr(env, "_private")  # private names are never asked for


def test_a_missing_allowed_name_is_the_envs_attribute_error(serve):
    server = serve("CartPole-v1")
    with relay.make(server.address) as env:
        # get_action_meanings is allowed by default; CartPole has none
        with pytest.raises(AttributeError, match="get_action_meanings"):
            env.call("get_action_meanings")
        assert not hasattr(env.unwrapped, "get_action_meanings")


def test_setting_an_allowed_attribute(serve):
    server = serve(dial, allow_calls=["level"], allow_set=["level"])
    with relay.make(server.address) as env:
        assert env.set_wrapper_attr("level", 11)
        assert env.level == 11
        env.set_wrapper_attr("observation_space", gym.spaces.Discrete(2))  # a local attribute
        assert env.observation_space == gym.spaces.Discrete(2)


def test_seeding_state_is_the_server_envs(serve):
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")
    with relay.make(server.address) as env:
        env.reset(seed=42)
        local.reset(seed=42)
        assert env.np_random_seed == local.np_random_seed == 42
        assert env.np_random.bit_generator.state == local.np_random.bit_generator.state
        assert env.unwrapped._np_random.bit_generator.state == \
            local.unwrapped._np_random.bit_generator.state
        # setting it sets the server env's: the next reset draws from it
        env.np_random = np.random.default_rng(5)
        local.unwrapped.np_random = np.random.default_rng(5)
        assert env.np_random_seed == local.np_random_seed == -1
        np.testing.assert_array_equal(env.reset()[0], local.reset()[0])


def test_a_served_env_that_ignores_its_seed_fails_check_env_as_locally(serve):
    class Unseeded(FaultyEnv):
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=None)

    from gymnasium.utils.env_checker import check_env

    with pytest.raises(AssertionError, match="super"):
        check_env(Unseeded(), skip_render_check=True)
    server = serve(lambda env_id=None, **kw: Unseeded())
    with relay.make(server.address) as env, pytest.raises(AssertionError, match="super"):
        check_env(env, skip_render_check=True)


def test_vector_call_get_attr_set_attr_agree_with_sync_vector_env(serve):
    server = serve(dial, allow_calls=["turn", "level"], allow_set=["level"])
    remote = relay.make_vec(server.address, num_envs=3)
    local = SyncVectorEnv([Dial for _ in range(3)])
    try:
        for envs in (remote, local):
            envs.reset(seed=1)
        for name, args, kwargs in [("turn", (1,), {"times": 2}), ("level", (), {}),
                                   ("action_space", (), {})]:
            got, want = remote.call(name, *args, **kwargs), local.call(name, *args, **kwargs)
            assert type(got) is tuple and len(got) == 3
            for a, b in zip(got, want, strict=True):
                assert np.array_equal(a, b) if isinstance(b, np.ndarray) else a == b
        for values in ([7, 8, 9], 4):
            remote.set_attr("level", values)
            local.set_attr("level", values)
            assert remote.get_attr("level") == local.get_attr("level")
        assert remote.np_random_seed == local.np_random_seed == (1, 2, 3)
        assert [g.bit_generator.state for g in remote.np_random] == \
            [g.bit_generator.state for g in local.np_random]
        for envs in (remote, local):
            with pytest.raises(ValueError, match="Values must be a list or tuple"):
                envs.set_attr("level", [1, 2])
        with pytest.raises(relay.NotAllowed, match="allow_calls") as info:
            remote.call("secret")
        assert info.value.env_index == 0
    finally:
        remote.close()
        local.close()


def test_vector_seeds_before_any_reset_are_one_per_sub_env(serve):
    server = serve("CartPole-v1")
    envs = relay.make_vec(server.address, num_envs=2)
    try:
        seeds = envs.np_random_seed
        assert type(seeds) is tuple and len(set(seeds)) == 2
    finally:
        envs.close()


@pytest.mark.slow
def test_sb3_style_get_action_meanings_on_atari(serve):
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    server = serve("ALE/Pong-v5")
    with relay.make(server.address) as env:
        # what SB3's NoopResetEnv and FireResetEnv ask
        meanings = env.unwrapped.get_action_meanings()
        assert meanings == gym.make("ALE/Pong-v5").unwrapped.get_action_meanings()
        assert meanings[0] == "NOOP" and meanings[1] == "FIRE"
    envs = relay.make_vec(server.address, num_envs=2)
    try:
        assert envs.call("get_action_meanings") == (meanings, meanings)
    finally:
        envs.close()


def test_relay_serve_allow_call_on_the_command_line():
    command = [sys.executable, "-m", "relay", "serve", "CartPole-v1", "--url",
               "zmq+tcp://127.0.0.1:0", "--allow-call", "gravity"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        url = server.stderr.readline().rsplit(" on ", 1)[1].strip()
        with relay.make(url) as env:
            assert env.call("gravity") == 9.8
            with pytest.raises(relay.NotAllowed, match="--allow-call length"):
                env.call("length")
    finally:
        server.terminate()
        server.wait(10)
