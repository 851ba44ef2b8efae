"""Served vector instances (StepBatch/ResetBatch): equal step for step to the local vector
env, over every transport and autoreset mode; several servers as one VectorEnv; EnvPool
style send/recv; errors naming the sub-env."""

import os
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import relay
from relay.adapters.batch import RemoteBatchVectorEnv
from relay.adapters.vector import RemoteVectorEnv
from relay.testing import faulty, run_both


def test_vector_entry_point_env_equals_local_make_vec(serve):
    server = serve("CartPole-v1", num_envs=8)
    remote = relay.make_vec(server.address)
    local = gym.make_vec("CartPole-v1", num_envs=8)
    try:
        assert isinstance(remote, RemoteBatchVectorEnv)
        assert remote.num_envs == 8
        assert remote.single_observation_space == local.single_observation_space
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert remote.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert run_both(remote, local, steps=150, seed=7) >= 10  # autoresets happened
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_every_autoreset_mode_equals_local_sync_vector_env(serve, mode):
    server = serve("CartPole-v1", num_envs=3)
    remote = relay.make_vec(server.address, autoreset_mode=mode, vectorization_mode="sync")
    local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": mode})
    try:
        assert remote.metadata["autoreset_mode"] is mode
        # SAME_STEP: final_obs (an object array) and final_info travel in the infos
        assert run_both(remote, local, steps=80, seed=3) >= 4
    finally:
        remote.close()
        local.close()


def test_json_codec_carries_same_step_infos_exactly(serve_tcp):
    server = serve_tcp("CartPole-v1", num_envs=3)
    remote = relay.make_vec(server.address, codec="json", vectorization_mode="sync",
                            autoreset_mode=AutoresetMode.SAME_STEP)
    local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    try:
        assert remote._parts[0].connection.codec.name == "json"
        assert run_both(remote, local, steps=60, seed=8) >= 3  # final_obs as $objects
    finally:
        remote.close()
        local.close()


def test_two_servers_are_one_vector_env_equal_to_one_local(serve_tcp):
    """Blocks of 3 on each server; seed s gives the second block s + 3, as a local
    SyncVectorEnv of 6 seeds its envs s..s+5; infos merge as Gymnasium merges them."""
    first, second = (serve_tcp("CartPole-v1", num_envs=5) for _ in range(2))
    remote = relay.make_vec([first.address, second.address], num_envs=6,
                            vectorization_mode="sync", autoreset_mode="SameStep")
    local = gym.make_vec("CartPole-v1", num_envs=6, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    try:
        assert remote.num_envs == 6
        assert remote.urls == [first.address.render(), second.address.render()]
        assert run_both(remote, local, steps=100, seed=10) >= 10
    finally:
        remote.close()
        local.close()


def test_disabled_reset_mask_skips_a_server_and_keeps_its_observations(serve_tcp):
    first, second = (serve_tcp("CartPole-v1", num_envs=2) for _ in range(2))
    remote = relay.make_vec([first.address, second.address], vectorization_mode="sync",
                            autoreset_mode=AutoresetMode.DISABLED)
    local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED})
    try:
        assert run_both(remote, local, steps=60, seed=1) >= 3
        before, *_ = remote.step(np.zeros(4, np.int64))
        local.step(np.zeros(4, np.int64))
        mask = np.array([True, False, False, False])
        got, got_info = remote.reset(options={"reset_mask": mask})
        want, want_info = local.reset(options={"reset_mask": mask})
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[2:], before[2:])  # the second server was not asked
    finally:
        remote.close()
        local.close()


def test_sub_env_errors_name_the_global_index(serve_tcp):
    first, second = serve_tcp(faulty, num_envs=2), serve_tcp(faulty, num_envs=2)
    remote = relay.make_vec([first.address, second.address])
    try:
        remote.reset()
        with pytest.raises(relay.RemoteEnvError, match="sub-environment 3 .*divided by zero"
                           ) as info:
            remote.step(np.array([0, 0, 0, 1]))
        assert info.value.env_index == 3
        assert info.value.remote_type == "builtins.ZeroDivisionError"
        assert "raise ZeroDivisionError" in info.value.remote_traceback
        assert str(info.value).count("sub-environment") == 1
        remote.reset()
        with pytest.raises(relay.InvalidAction, match=r"sub-environment 2 .*action 7") as info:
            remote.step(np.array([0, 0, 7, 0]))
        assert info.value.env_index == 2
        obs, *_ = remote.step(np.array([0, 0, 0, 0]))  # an invalid action changes nothing
        np.testing.assert_array_equal(obs[:, 0], [2, 2, 1, 1])
    finally:
        remote.close()


def test_send_recv_returns_the_fast_servers_envs_first(serve_tcp):
    slow, fast = serve_tcp(faulty, num_envs=1), serve_tcp(faulty, num_envs=3)
    envs = relay.make_vec([slow.address, fast.address], batch_size=2)
    try:
        envs.async_reset()
        got: list[int] = []
        while len(got) < 4:
            obs, rewards, *_, info = envs.recv()  # whole servers, >= batch_size if in flight
            np.testing.assert_array_equal(rewards, 0.0)
            got += info["env_id"].tolist()
        assert sorted(got) == [0, 1, 2, 3]
        start = time.monotonic()
        envs.send(np.array([2, 0, 0, 0]))  # action 2: the slow server's env sleeps 1 s
        obs, rewards, term, trunc, info = envs.recv()
        assert time.monotonic() - start < 0.8
        np.testing.assert_array_equal(info["env_id"], [1, 2, 3])
        assert info["env_id"].dtype == np.int32
        np.testing.assert_array_equal(obs[:, 0], [1, 1, 1])
        np.testing.assert_array_equal(rewards, [1.0, 1.0, 1.0])
        envs.send(np.array([0, 1, 0]), env_ids=np.array([1, 3, 2]))  # while slow steps
        with pytest.raises(relay.RemoteEnvError, match="sub-environment 3 .*divided by zero"):
            envs.recv()  # actions[j] went to env_ids[j]: env 3 got the failing action 1
        with pytest.raises(ValueError, match="whole servers"):
            envs.send(np.array([0]), env_ids=[1])
        with pytest.raises(ValueError, match="in flight"):
            envs.step(np.array([0, 0, 0, 0]))
        obs, *_, info = envs.recv()  # the slow one, at last
        np.testing.assert_array_equal(info["env_id"], [0])
        np.testing.assert_array_equal(obs[:, 0], [1])
        assert time.monotonic() - start >= 0.9
        with pytest.raises(ValueError, match="nothing in flight"):
            envs.recv()
    finally:
        envs.close()


def test_serves_a_vector_env_instance_to_one_client_at_a_time(serve_tcp):
    served = gym.make_vec("CartPole-v1", num_envs=4)
    server = serve_tcp(served)
    remote = relay.make_vec(server.address)
    local = gym.make_vec("CartPole-v1", num_envs=4)
    try:
        assert run_both(remote, local, steps=60, seed=2) >= 1
        with pytest.raises(relay.RemoteError, match="in use by another client"):
            relay.make_vec(server.address)
        with pytest.raises(relay.RemoteError, match="vector env"):
            relay.make(server.address)  # single envs: none to make
    finally:
        remote.close()
        local.close()
    again = relay.make_vec(server.address)  # free again; relay never closed it
    again.close()
    assert not served.closed
    served.close()


def test_a_mode_the_served_env_lacks_is_refused_with_the_fix(serve_tcp):
    server = serve_tcp("CartPole-v1", num_envs=2)
    with pytest.raises(relay.RemoteError, match="autoreset mode is NextStep, not SameStep.*"
                                                "vectorization_mode='sync'"):
        relay.make_vec(server.address, autoreset_mode="SameStep")


def test_scalar_servers_keep_one_instance_per_sub_env_and_mixing_is_refused(serve_tcp):
    scalar, batch = serve_tcp("CartPole-v1"), serve_tcp("CartPole-v1", num_envs=2)
    remote = relay.make_vec(scalar.address, num_envs=2)
    try:
        assert isinstance(remote, RemoteVectorEnv)
    finally:
        remote.close()
    with pytest.raises(relay.ConfigError, match="some servers host vector instances"):
        relay.make_vec([scalar.address, batch.address])
    single = relay.make(batch.address)  # a batch server still serves single envs
    single.close()


def test_gymnasium_make_vec_of_a_batch_server_steps_batches(serve_tcp):
    server = serve_tcp("CartPole-v1", num_envs=8)
    envs = gym.make_vec("relay/Remote-v0", num_envs=4, url=str(server.address))
    local = gym.make_vec("CartPole-v1", num_envs=4)
    try:
        assert isinstance(envs, RemoteBatchVectorEnv) and envs.num_envs == 4
        assert run_both(envs, local, steps=40, seed=4) >= 1
    finally:
        envs.close()
        local.close()


@pytest.mark.parametrize("copy", [True, False])
def test_zero_copy_observations_view_the_ring_unless_copied(copy):
    server = relay.serve("CartPole-v1", "shm://0", num_envs=512)
    envs = relay.make_vec(f"{server.address}?zero_copy=1", copy=copy)
    local = gym.make_vec("CartPole-v1", num_envs=512)
    try:
        np.testing.assert_array_equal(envs.reset(seed=1)[0], local.reset(seed=1)[0])
        actions = np.ones(512, np.int64)
        obs = envs.step(actions)[0]
        want = local.step(actions)[0]
        np.testing.assert_array_equal(obs, want)
        assert obs.flags.owndata is copy  # a view of the shared-memory ring, or a copy
        envs.step(actions)
        local.step(actions)
        # the next receive reuses the ring: a view is overwritten, a copy stays
        assert np.array_equal(obs, want) is copy
    finally:
        envs.close()
        local.close()
        server.close()


def test_call_get_attr_set_attr_reach_the_served_sub_envs(serve_tcp):
    servers = [serve_tcp("CartPole-v1", num_envs=2, allow_calls=["gravity", "step"],
                         allow_set=["gravity"]) for _ in range(2)]
    remote = relay.make_vec([s.address for s in servers], vectorization_mode="sync")
    local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    try:
        assert remote.get_attr("gravity") == local.get_attr("gravity") == (9.8,) * 4
        remote.set_attr("gravity", [1.0, 2.0, 3.0, 4.0])
        assert remote.get_attr("gravity") == (1.0, 2.0, 3.0, 4.0)  # each sub-env its own
        remote.set_attr("gravity", 9.8)
        assert remote.get_attr("observation_space") == local.get_attr("observation_space")
        remote.reset(seed=0)
        local.reset(seed=0)
        got, want = remote.call("step", 1), local.call("step", 1)
        for g, w in zip(got, want, strict=True):  # each sub-env's own 5-tuple
            np.testing.assert_array_equal(g[0], w[0])
            assert g[1:4] == w[1:4]
        with pytest.raises(relay.NotAllowed, match="length"):
            remote.get_attr("length")
        with pytest.raises(ValueError, match="number of environments"):
            remote.set_attr("gravity", [1.0])
    finally:
        remote.close()
        local.close()
    native = relay.make_vec(serve_tcp("CartPole-v1", num_envs=2).address)
    try:  # CartPoleVectorEnv has no sub-env objects (and locally no call either)
        with pytest.raises(relay.RemoteError, match="no sub-env objects"):
            native.get_attr("gravity")
    finally:
        native.close()


def test_rgb_frames_of_every_sub_env(serve_tcp):
    server = serve_tcp("CartPole-v1", num_envs=2)
    remote = relay.make_vec(server.address, render_mode="rgb_array")
    try:
        remote.reset(seed=0)
        frames = remote.render()
        assert len(frames) == 2 and frames[0].shape == (400, 600, 3)
    finally:
        remote.close()


def test_cli_serves_a_batch(tmp_path):
    url = f"zmq+ipc://{tmp_path}/b.sock"
    server = subprocess.Popen([sys.executable, "-m", "relay", "serve", "CartPole-v1", "--url",
                               url, "--num-envs", "16"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "serving" in server.stderr.readline()
        remote = relay.make_vec(url)
        try:
            assert remote.num_envs == 16
            obs, _ = remote.reset(seed=0)
            assert obs.shape == (16, 4)
        finally:
            remote.close()
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_envpool_pong_frames_served_bit_for_bit():
    envpool = pytest.importorskip("envpool")

    def make(env_id, **kwargs):
        return envpool.make_gymnasium("Pong-v5", num_envs=2, seed=3)

    server = relay.serve(make, "shm://0", num_envs=2)
    remote = relay.make_vec(server.address)
    local = envpool.make_gymnasium("Pong-v5", num_envs=2, seed=3)
    try:
        got, want = remote.reset(), local.reset()
        assert got[0].shape == (2, 4, 84, 84) and got[0].dtype == np.uint8
        np.testing.assert_array_equal(got[0], want[0])
        rng = np.random.default_rng(1)
        for _ in range(30):
            actions = rng.integers(0, 6, 2)
            got, want = remote.step(actions), local.step(actions)
            for g, w in zip(got[:4], want[:4], strict=True):
                np.testing.assert_array_equal(g, w)
                assert g.dtype == w.dtype
            np.testing.assert_array_equal(got[4]["lives"], want[4]["lives"])
    finally:
        remote.close()
        local.close()
        server.close()


@pytest.mark.slow
def test_envpool_served_equals_local_envpool(serve_tcp):
    envpool = pytest.importorskip("envpool")

    def make(env_id, **kwargs):
        return envpool.make_gymnasium("CartPole-v1", num_envs=4, seed=5)

    server = serve_tcp(make, num_envs=4)
    remote = relay.make_vec(server.address)
    local = envpool.make_gymnasium("CartPole-v1", num_envs=4, seed=5)
    try:
        assert remote.single_observation_space == local.single_observation_space
        assert remote.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        got, want = remote.reset(), local.reset()
        np.testing.assert_array_equal(got[0], want[0])
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(200):
            actions = rng.integers(0, 2, 4)
            got, want = remote.step(actions), local.step(actions)
            for g, w in zip(got[:4], want[:4], strict=True):
                np.testing.assert_array_equal(g, w)
                assert g.dtype == w.dtype
            assert list(got[4]) == list(want[4])
            np.testing.assert_array_equal(got[4]["elapsed_step"], want[4]["elapsed_step"])
            np.testing.assert_array_equal(got[4]["env_id"], want[4]["env_id"])
            ended += int((want[2] | want[3]).sum())
        assert ended >= 5
    finally:
        remote.close()
        local.close()


def test_reset_reconnects_a_lost_server_and_makes_its_block_again():
    """The second server goes away: its block's step fails naming sub-envs 2..3; a
    reset while it is down is a ConnectError naming them; once a server is back (at
    the URL resolve_url gives), reset makes the block again, equal to a local one."""
    servers = [relay.serve("CartPole-v1", "shm://0", num_envs=2) for _ in range(2)]
    moved: dict[int, relay.URL] = {}
    remote = relay.make_vec([s.address for s in servers], connect_timeout=0.5,
                            resolve_url=lambda offset: moved.get(offset, servers[1].address))
    local = [gym.make_vec("CartPole-v1", num_envs=2) for _ in range(2)]
    try:
        remote.reset(seed=0)
        servers[1].close()
        with pytest.raises(relay.ConnectionLost, match=r"sub-environments 2\.\.3"):
            remote.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(relay.ConnectError, match=r"sub-environments 2\.\.3"):
            remote.reset(seed=0)
        servers.append(relay.serve("CartPole-v1", "shm://0", num_envs=2))
        moved[2] = servers[-1].address
        obs, _ = remote.reset(seed=10)
        np.testing.assert_array_equal(obs, np.concatenate(
            [local[0].reset(seed=10)[0], local[1].reset(seed=12)[0]]))
        assert remote.urls[1] == servers[-1].address.render()
        for t in range(20):
            actions = np.array([t % 2, 1, 0, (t // 3) % 2])
            got = remote.step(actions)
            want = local[0].step(actions[:2]), local[1].step(actions[2:])
            for k in range(4):
                np.testing.assert_array_equal(got[k], np.concatenate([want[0][k], want[1][k]]))
    finally:
        remote.close()
        for env in local:
            env.close()
        for server in servers:
            server.close()
