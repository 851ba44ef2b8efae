"""The main job end to end: an env served over each transport, driven through
the plain gymnasium.Env API, equal to the same env run in-process."""

import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_match import check_environments_match

import relay
from relay.core.errors import ConnectError, InvalidURL, UnknownScheme
from relay.testing import check_env_as_local, faulty


def test_check_env_passes_with_no_warning_of_its_own(serve):
    server = serve("CartPole-v1")
    remote = relay.make(server.address, render_mode="rgb_array")
    local = gym.make("CartPole-v1", render_mode="rgb_array").unwrapped
    try:
        check_env_as_local(remote, local)
    finally:
        remote.close()


@pytest.mark.parametrize(
    ("env_id", "kwargs", "steps"),
    [
        ("CartPole-v1", {"render_mode": "rgb_array"}, 150),
        ("MountainCarContinuous-v0", {}, 300),
    ],
)
def test_remote_equals_local(serve, env_id, kwargs, steps):
    server = serve(env_id)
    remote = relay.make(server.address, **kwargs)
    try:
        check_environments_match(gym.make(env_id, **kwargs), remote, num_steps=steps,
                                 seed=123)
        assert remote.observation_space == gym.make(env_id).observation_space
    finally:
        remote.close()


@pytest.mark.slow
def test_atari_pong_remote_equals_local(serve):
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    server = serve("ALE/Pong-v5")
    remote = relay.make(server.address)
    try:
        assert remote.observation_space.shape == (210, 160, 3)
        check_environments_match(gym.make("ALE/Pong-v5"), remote, num_steps=200, seed=7)
        obs, *_ = remote.step(0)
        assert obs.dtype == np.uint8 and obs.shape == (210, 160, 3)
    finally:
        remote.close()


@pytest.mark.slow
def test_minigrid_dict_with_text_remote_equals_local(serve):
    pytest.importorskip("minigrid")  # importing it registers its envs
    server = serve("MiniGrid-Empty-5x5-v0")
    remote = relay.make(server.address)
    try:
        obs, _ = remote.reset(seed=1)
        assert isinstance(obs["mission"], str) and type(obs["direction"]) is int
        check_environments_match(gym.make("MiniGrid-Empty-5x5-v0"), remote, num_steps=100)
    finally:
        remote.close()


def test_gymnasium_make_registered_id(serve):
    server = serve("CartPole-v1")
    env = gym.make("relay/Remote-v0", url=str(server.address), env_id="CartPole-v1")
    try:
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space
        assert env.unwrapped.remote_spec.id == "CartPole-v1"
        assert env.unwrapped.remote_spec.max_episode_steps == 500
    finally:
        env.close()


def test_render_frame_equals_local(serve):
    server = serve("CartPole-v1")
    remote = relay.make(server.address, render_mode="rgb_array")
    local = gym.make("CartPole-v1", render_mode="rgb_array")
    try:
        remote.reset(seed=4)
        local.reset(seed=4)
        frame = remote.render()
        assert frame.dtype == np.uint8 and frame.shape == (400, 600, 3)
        assert np.array_equal(frame, local.render())
        assert remote.metadata["render_fps"] == local.metadata["render_fps"]
        assert remote.render_mode == "rgb_array"
    finally:
        remote.close()


def test_several_clients_each_with_own_env(serve):
    server = serve("CartPole-v1")
    clients = [relay.make(server.address) for _ in range(3)]
    locals_ = [gym.make("CartPole-v1") for _ in range(3)]
    try:
        for seed, (remote, local) in enumerate(zip(clients, locals_, strict=True)):
            assert np.array_equal(remote.reset(seed=seed)[0], local.reset(seed=seed)[0])
        for step in range(20):
            for remote, local in zip(clients, locals_, strict=True):
                action = step % 2
                assert np.array_equal(remote.step(action)[0], local.step(action)[0])
    finally:
        for remote in clients:
            remote.close()


def test_env_exception_comes_back_and_server_keeps_serving(serve):
    server = serve(faulty)
    env = relay.make(server.address)
    try:
        env.reset()
        with pytest.raises(relay.RemoteEnvError, match="divided by zero") as info:
            env.step(1)
        assert info.value.remote_type == "builtins.ZeroDivisionError"
        assert "raise ZeroDivisionError" in info.value.remote_traceback
        assert env.step(0)[0][0] == 1.0
        other = relay.make(server.address)
        other.reset()
        assert other.step(0)[0][0] == 1.0
        other.close()
    finally:
        env.close()


def test_action_outside_space_is_clear_error_and_session_usable(serve):
    server = serve("CartPole-v1")
    env = relay.make(server.address)
    try:
        env.reset(seed=0)
        with pytest.raises(relay.InvalidAction, match="not in Discrete"):
            env.step(7)
        obs, *_ = env.step(1)
        assert obs in env.observation_space
    finally:
        env.close()


def test_step_before_reset(serve):
    server = serve("CartPole-v1")
    env = relay.make(server.address)
    try:
        with pytest.raises(relay.NotReset, match="reset"):
            env.step(0)
        env.reset()
        env.step(0)
    finally:
        env.close()


def test_timeout_then_late_answer_dropped(serve):
    server = serve(faulty)
    env = relay.make(server.address, timeout=0.2)
    try:
        env.reset()
        start = time.monotonic()
        with pytest.raises(relay.Timeout):
            env.step(2)  # sleeps 1 s on the server
        assert time.monotonic() - start < 0.9
        time.sleep(1.0)
        # the late answer (count 1) is dropped; this step's answer is count 2
        assert env.step(0)[0][0] == 2.0
        assert env.connection.session.dropped == 1
    finally:
        env.close()


def test_unknown_env_id_is_remote_error(serve):
    server = serve(None)
    with pytest.raises(relay.RemoteError, match="NoSuchEnv"):
        relay.make(server.address, env_id="NoSuchEnv-v0")


def test_server_serving_one_id_refuses_another(serve):
    server = serve("CartPole-v1")
    with pytest.raises(relay.RemoteError, match="serves 'CartPole-v1' only"):
        relay.make(server.address, env_id="Pendulum-v1")


def test_close_is_idempotent(serve):
    server = serve("CartPole-v1")
    env = relay.make(server.address)
    env.close()
    env.close()
    with pytest.raises(relay.RelayError):
        env.step(0)


def test_unknown_scheme_and_malformed_url():
    with pytest.raises(UnknownScheme, match="did you mean 'zmq\\+tcp'"):
        relay.make("zqm+tcp://127.0.0.1:1")
    with pytest.raises(InvalidURL, match="missing '://'"):
        relay.make("127.0.0.1:5555")


def test_connect_to_nobody_fails_within_connect_timeout():
    start = time.monotonic()
    with pytest.raises(ConnectError):
        relay.make("memory://nobody", connect_timeout=1.0)
    assert time.monotonic() - start < 2.0


def test_gymnasium_make_with_a_url_object_keeps_a_spec_that_round_trips(serve_tcp):
    import copy
    import pickle

    server = serve_tcp("CartPole-v1")
    url = relay.make_url(f"{server.address}?codec=json")
    env = gym.make("relay/Remote-v0", url=url)
    try:
        assert env.spec is not None and env.spec.kwargs["url"] == url
        for spec in (copy.deepcopy(env.spec), pickle.loads(pickle.dumps(env.spec))):
            assert spec == env.spec
            again = gym.make(spec)
            assert again.reset(seed=1)[0].shape == (4,)
            again.close()
    finally:
        env.close()
