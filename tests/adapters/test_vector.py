"""RemoteVectorEnv: relay's gymnasium.vector.VectorEnv, equal to SyncVectorEnv of the same
envs run in-process, over real transports and servers."""

import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import relay
from relay.adapters.vector import RemoteVectorEnv
from relay.testing import faulty, run_both


def local_sync(env_id, num_envs, **kwargs):
    return SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)], **kwargs)


def test_cartpole_equals_sync_vector_env_with_autoresets(serve):
    server = serve("CartPole-v1")
    remote = relay.make_vec(server.address, num_envs=3)
    local = local_sync("CartPole-v1", 3)
    try:
        assert isinstance(remote, gym.vector.VectorEnv)
        assert remote.num_envs == 3
        assert remote.single_observation_space == local.single_observation_space
        assert remote.observation_space == local.observation_space
        assert remote.single_action_space == local.single_action_space
        assert remote.action_space == local.action_space
        assert remote.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert run_both(remote, local, steps=300, seed=42) >= 10  # autoresets happened
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("mode", [AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP])
def test_autoreset_modes_equal_sync(serve_tcp, mode):
    server = serve_tcp("CartPole-v1")
    remote = relay.make_vec(server.address, num_envs=2, autoreset_mode=mode.value)
    local = local_sync("CartPole-v1", 2, autoreset_mode=mode)
    try:
        assert remote.metadata["autoreset_mode"] is mode
        assert run_both(remote, local, steps=120, seed=[3, 9]) >= 4
    finally:
        remote.close()
        local.close()


def test_autoreset_disabled_with_reset_mask(serve_tcp):
    server = serve_tcp("CartPole-v1")
    remote = relay.make_vec(server.address, num_envs=2, autoreset_mode=AutoresetMode.DISABLED)
    local = local_sync("CartPole-v1", 2, autoreset_mode=AutoresetMode.DISABLED)
    try:
        np.testing.assert_array_equal(remote.reset(seed=5)[0], local.reset(seed=5)[0])
        ended = 0
        for _ in range(80):
            got, want = remote.step(np.array([1, 1])), local.step(np.array([1, 1]))
            np.testing.assert_array_equal(got[0], want[0])
            done = want[2] | want[3]
            np.testing.assert_array_equal(got[2] | got[3], done)
            if done.any():
                ended += 1
                options = {"reset_mask": done}
                got_obs, _ = remote.reset(options=options)
                want_obs, _ = local.reset(options=dict(options))
                np.testing.assert_array_equal(got_obs, want_obs)
                assert "reset_mask" in options  # the caller's dict is left alone
        assert ended >= 3
        remote.step(np.array([1, 1]))
        while True:  # step until one ends, then once more without resetting
            _, _, term, trunc, _ = remote.step(np.array([1, 1]))
            if (term | trunc).any():
                break
        with pytest.raises(relay.NotReset, match=r"sub-environment \d.*reset_mask"):
            remote.step(np.array([1, 1]))
    finally:
        remote.close()
        local.close()


def test_two_servers_round_robin(serve_tcp):
    first, second = serve_tcp("CartPole-v1"), serve_tcp("CartPole-v1")
    remote = relay.make_vec([first.address, second.address], num_envs=4, timeout=5.0)
    local = local_sync("CartPole-v1", 4)
    try:
        assert [env.url for env in remote.envs] == [relay.make_url(u) for u in
                                                    [first.address, second.address] * 2]
        assert run_both(remote, local, steps=60, seed=[1, 2, 3, 4]) >= 1
        # sub-envs 1 and 3 live on the second server: closing it breaks only them
        second.close()
        start = time.monotonic()
        with pytest.raises((relay.ConnectionLost, relay.Timeout)) as info:
            for _ in range(3):
                remote.step(np.array([0, 1, 0, 1]))
        assert info.value.env_index == 1
        assert "sub-environment 1" in str(info.value)
        assert time.monotonic() - start < 10
    finally:
        remote.close()
        remote.close()
        local.close()


def test_mountain_car_continuous_box_actions(serve_tcp):
    server = serve_tcp("MountainCarContinuous-v0")
    remote = relay.make_vec(server.address, num_envs=2)
    local = local_sync("MountainCarContinuous-v0", 2)
    try:
        assert remote.action_space == local.action_space
        assert remote.action_space.shape == (2, 1)
        assert remote.action_space.dtype == np.float32
        run_both(remote, local, steps=150, seed=11, actions_seed=4)
    finally:
        remote.close()
        local.close()


def test_env_exception_names_the_sub_env_and_others_stay_in_step(serve_tcp):
    server = serve_tcp(faulty)
    remote = relay.make_vec(server.address, num_envs=3)
    try:
        remote.reset()
        with pytest.raises(relay.RemoteEnvError, match="sub-environment 1 .*divided by zero"
                           ) as info:
            remote.step(np.array([0, 1, 0]))
        assert info.value.env_index == 1
        assert info.value.remote_type == "builtins.ZeroDivisionError"
        assert "raise ZeroDivisionError" in info.value.remote_traceback
        obs, rewards, *_, infos = remote.step(np.array([0, 0, 0]))
        np.testing.assert_array_equal(obs[:, 0], [2, 1, 2])  # 0 and 2 stepped before
        np.testing.assert_array_equal(infos["count"], [2, 1, 2])
        np.testing.assert_array_equal(infos["_count"], [True, True, True])
        with pytest.raises(relay.InvalidAction, match="sub-environment 2"):
            remote.step(np.array([0, 0, 7]))
    finally:
        remote.close()


def test_the_others_results_are_kept_when_one_sub_env_fails(serve_tcp):
    server = serve_tcp("CartPole-v1")
    remote = relay.make_vec(server.address, num_envs=2)
    try:
        remote.reset(seed=0)
        for _ in range(100):  # push sub-env 0 over (action 1), keep 1 alive (alternate)
            _, _, term, trunc, _ = remote.step(np.array([1, _ % 2]))
            if term[0] or trunc[0]:
                break
        assert term[0] or trunc[0]
        with pytest.raises(relay.InvalidAction, match="sub-environment 1"):
            remote.step(np.array([0, 7]))  # sub-env 0 autoresets meanwhile
        obs, rewards, term, trunc, _ = remote.step(np.array([0, 0]))
        np.testing.assert_array_equal(rewards, [1.0, 1.0])  # no second autoreset of 0
        assert not term.any() and not trunc.any()
        assert obs in remote.observation_space
    finally:
        remote.close()


def test_timeout_in_one_sub_env_then_late_answer_dropped(serve_tcp):
    server = serve_tcp(faulty)
    # a connection each: sub-env 2's answer does not wait behind sub-env 1's
    remote = relay.make_vec(server.address, num_envs=3, timeout=0.3, share_connections=False)
    try:
        remote.reset()
        start = time.monotonic()
        with pytest.raises(relay.Timeout, match="sub-environment 1") as info:
            remote.step(np.array([0, 2, 0]))  # sub-env 1 sleeps 1 s on the server
        assert info.value.env_index == 1
        assert time.monotonic() - start < 0.95
        time.sleep(1.0)
        obs, *_ = remote.step(np.array([0, 0, 0]))
        # sub-env 1's late answer (count 1) was dropped; this step is its count 2
        np.testing.assert_array_equal(obs[:, 0], [2, 2, 2])
        assert remote.envs[1].connection.session.dropped == 1
        assert remote.envs[0].connection.session.dropped == 0
    finally:
        remote.close()


@pytest.mark.parametrize("share", [True, False])
def test_sub_envs_on_one_url_share_a_connection_unless_asked(serve_tcp, share):
    a, b = serve_tcp("CartPole-v1"), serve_tcp("CartPole-v1")
    remote = relay.make_vec([a.address, b.address], num_envs=4, share_connections=share)
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
    try:
        connections = [env.connection for env in remote.envs]
        assert (connections[0] is connections[2]) == share
        assert (connections[1] is connections[3]) == share
        assert connections[0] is not connections[1]
        obs, _ = remote.reset(seed=7)
        np.testing.assert_array_equal(obs, local.reset(seed=7)[0])
        for t in range(60):
            actions = np.array([t % 2, 1, 0, (t // 3) % 2])
            got, want = remote.step(actions), local.step(actions)
            for g, w in zip(got[:4], want[:4], strict=True):
                np.testing.assert_array_equal(g, w)
    finally:
        remote.close()
        local.close()
    assert all(connection.closed for connection in connections)


def test_close_is_idempotent_and_survives_a_dead_server(serve_tcp):
    server = serve_tcp("CartPole-v1")
    remote = relay.make_vec(server.address, num_envs=2, timeout=1.0)
    remote.reset(seed=0)
    remote.close()
    remote.close()
    assert remote.closed
    assert all(env.connection.closed for env in remote.envs)
    with pytest.raises(relay.RelayError, match="closed"):
        remote.step(np.array([0, 0]))

    other = relay.make_vec(server.address, num_envs=2, timeout=1.0)
    server.close()
    start = time.monotonic()
    other.close()  # no answer to Close: every connection is closed anyway
    assert time.monotonic() - start < 3.0
    assert all(env.connection.closed for env in other.envs)


def test_gymnasium_make_vec_uses_the_vector_entry_point(serve_tcp):
    server = serve_tcp("CartPole-v1")
    for mode in ("vector_entry_point", None):
        envs = gym.make_vec("relay/Remote-v0", num_envs=3, vectorization_mode=mode,
                            url=str(server.address), env_id="CartPole-v1")
        try:
            assert isinstance(envs, RemoteVectorEnv)
            assert envs.num_envs == 3
            assert envs.spec.id == "relay/Remote-v0"
            assert envs.spec.kwargs["env_id"] == "CartPole-v1"
            obs, _ = envs.reset(seed=0)
            assert obs.shape == (3, 4) and obs in envs.observation_space
        finally:
            envs.close()
    sync = gym.make_vec("relay/Remote-v0", num_envs=2, vectorization_mode="sync",
                        url=str(server.address), env_id="CartPole-v1")
    try:  # Gymnasium's own SyncVectorEnv of relay.RemoteEnv works too
        assert isinstance(sync, SyncVectorEnv)
        assert sync.reset(seed=0)[0].shape == (2, 4)
    finally:
        sync.close()


def test_vector_env_checks(serve_tcp):
    """What Gymnasium checks of envs, for a vector env (1.4 has no vector checker)."""
    server = serve_tcp("CartPole-v1")
    envs = relay.make_vec(server.address, num_envs=2, render_mode="rgb_array")
    try:
        obs, infos = envs.reset(seed=7)
        assert obs in envs.observation_space and isinstance(infos, dict)
        again, _ = envs.reset(seed=7)
        np.testing.assert_array_equal(obs, again)  # seeding is deterministic
        other, _ = envs.reset(seed=[7, 9])
        np.testing.assert_array_equal(other[0], obs[0])
        assert not np.array_equal(other[1], obs[1])
        envs.action_space.seed(0)
        obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
        assert obs in envs.observation_space and obs.dtype == np.float32
        assert rewards.dtype == np.float64 and rewards.shape == (2,)
        assert terminations.dtype == np.bool_ and truncations.dtype == np.bool_
        assert isinstance(infos, dict)
        copy = envs.step(np.array([0, 1]))[0]
        envs.step(np.array([0, 1]))
        assert not np.shares_memory(copy, envs.step(np.array([0, 1]))[0])
        frames = envs.render()
        assert isinstance(frames, tuple) and len(frames) == 2
        assert all(f.shape == (400, 600, 3) and f.dtype == np.uint8 for f in frames)
        assert envs.render_mode == "rgb_array"
        with pytest.raises(ValueError, match="length must match"):
            envs.reset(seed=[1, 2, 3])
        with pytest.raises(ValueError, match="expected 2 actions"):
            envs.step(np.array([0, 1, 0]))
        assert repr(envs) == f"RemoteVectorEnv({server.address}, num_envs=2)"
    finally:
        envs.close()


def test_different_spaces_are_refused_and_everything_closed(serve_tcp):
    cartpole, car = serve_tcp("CartPole-v1"), serve_tcp("MountainCarContinuous-v0")
    with pytest.raises(relay.SpaceMismatch, match="sub-environment 1 .* observation_mode"
                       ) as info:
        relay.make_vec([cartpole.address, car.address], num_envs=2)
    assert isinstance(info.value, RuntimeError)  # what SyncVectorEnv raises


def test_make_failure_names_the_sub_env(serve_tcp):
    server = serve_tcp("CartPole-v1")
    with pytest.raises(relay.RemoteError, match="sub-environment 0 .*serves 'CartPole-v1' only"
                       ) as info:
        relay.make_vec(server.address, "Pendulum-v1", num_envs=2)
    assert info.value.env_index == 0
    with pytest.raises(relay.ConfigError, match="num_envs"):
        relay.make_vec(server.address, num_envs=0)
    with pytest.raises(relay.ConfigError, match="at least one URL"):
        relay.make_vec([], num_envs=2)
    with pytest.raises(relay.ConfigError, match="human"):
        relay.make_vec(server.address, num_envs=2, render_mode="human")


def test_peer_protocol_connections_fall_back_to_calls():
    """gymie connections have only call(): the sub-envs are stepped one after the other."""
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/gym?codec=gymie") as server:
        remote = relay.make_vec(server.address, "CartPole-v1", num_envs=2)
        local = local_sync("CartPole-v1", 2)
        try:
            assert not hasattr(remote.envs[0].connection, "submit")
            run_both(remote, local, steps=40, seed=1)  # Gymie ignores seed 0
        finally:
            remote.close()
            local.close()


def test_reset_reconnects_sub_envs_whose_connection_was_lost():
    """A server that goes away fails the steps of its sub-envs with ConnectionLost
    naming them while the others step on; resetting them (here with a mask)
    makes them anew at the URL resolve_url gives, while their server is back."""
    servers = [relay.serve("CartPole-v1", "shm://0") for _ in range(2)]
    moved: dict[int, relay.URL] = {}
    remote = relay.make_vec([s.address for s in servers], num_envs=4, connect_timeout=0.5,
                            resolve_url=lambda i: moved.get(i % 2, remote.urls[i]))
    try:
        before, _ = remote.reset(seed=0)
        servers[0].close()  # sub-envs 0 and 2 lived there
        start = time.monotonic()
        with pytest.raises(relay.ConnectionLost, match="sub-environment 0") as lost:
            remote.step(np.array([1, 1, 1, 1]))
        assert time.monotonic() - start < 1.0
        assert lost.value.env_index == 0
        mask = np.array([True, False, True, False])
        with pytest.raises(relay.ConnectError, match="sub-environment 0"):
            remote.reset(seed=[5, None, 7, None], options={"reset_mask": mask})  # still down
        servers.append(relay.serve("CartPole-v1", "shm://0"))
        moved[0] = servers[-1].address
        obs, _ = remote.reset(seed=[5, None, 7, None], options={"reset_mask": mask})
        for i, seed in ((0, 5), (2, 7)):
            want, _ = gym.make("CartPole-v1").reset(seed=seed)
            np.testing.assert_array_equal(obs[i], want)
            assert remote.urls[i] == servers[-1].address
        assert remote.envs[0].connection is remote.envs[2].connection  # shared again
        assert not np.array_equal(obs[1], before[1])  # 1 and 3 went on with their episodes
        obs, rewards, *_ = remote.step(np.array([0, 0, 0, 0]))
        assert rewards.tolist() == [1.0, 1.0, 1.0, 1.0]
    finally:
        remote.close()
        for server in servers:
            server.close()


def test_reset_reconnects_to_the_same_url_by_default():
    server = relay.serve("CartPole-v1", "shm://relay-test-reconnect")
    remote = relay.make_vec(server.address, num_envs=2)
    try:
        remote.reset(seed=0)
        server.close()
        with pytest.raises(relay.ConnectionLost):
            remote.step(np.array([0, 0]))
        server = relay.serve("CartPole-v1", "shm://relay-test-reconnect")
        obs, _ = remote.reset(seed=3)
        want, _ = gym.make("CartPole-v1").reset(seed=4)
        np.testing.assert_array_equal(obs[1], want)
    finally:
        remote.close()
        server.close()
