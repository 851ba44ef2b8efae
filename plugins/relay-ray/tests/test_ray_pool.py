"""ActorPool on a simulated three-node Ray cluster (see conftest): actors land where
their resources say, the learner reaches them over shm:// on its node and tcp://
elsewhere, and steps equal local envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import ray
import relay_ray
from gymnasium.vector import SyncVectorEnv

import relay
from relay.testing import run_both


def test_actors_land_where_their_resources_say(nodes):
    with relay_ray.ActorPool("CartPole-v1", 3, num_cpus=0, resources={"a": 1}) as on_a, \
            relay_ray.ActorPool("CartPole-v1", 2, num_cpus=0, resources={"b": 1}) as on_b:
        assert {info["node_id"] for info in on_a.infos} == {nodes.a}
        assert {info["node_id"] for info in on_b.infos} == {nodes.b}
        for url in on_a.urls + on_b.urls:  # other nodes than the driver's: a network URL
            parsed = relay.make_url(url)
            assert parsed.scheme == "tcp" and parsed.host == "127.0.0.1"
            assert parsed.port not in (0, None)
        assert len(set(on_a.urls)) == 3


def test_spread_placement_uses_both_workers(nodes):
    with relay_ray.ActorPool("CartPole-v1", 4, num_cpus=1, resources={"worker": 1},
                             placement="SPREAD") as pool:
        where = [info["node_id"] for info in pool.infos]
        assert sorted(where) == sorted([nodes.a, nodes.a, nodes.b, nodes.b])


def test_actors_on_the_learners_node_use_shm(nodes):
    with relay_ray.ActorPool("CartPole-v1", 2, num_cpus=0, resources={"head": 1}) as pool:
        assert all(url.startswith("shm://relay-ray-") for url in pool.urls)
        assert {info["node_id"] for info in pool.infos} == {nodes.head}
        envs = pool.make_vec()
        try:
            obs, _ = envs.reset(seed=0)
            assert obs.shape == (2, 4)
        finally:
            envs.close()


def test_transport_can_be_forced(nodes):
    for scheme in ("tcp", "zmq+tcp"):
        with relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"head": 1},
                                 transport=scheme) as pool:
            assert pool.urls[0].startswith(f"{scheme}://127.0.0.1:")
            envs = pool.make_vec(num_envs=2)
            try:
                assert envs.reset(seed=0)[0].shape == (2, 4)
            finally:
                envs.close()
    with pytest.raises(relay.ConfigError, match="not on this driver's node"):
        relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"a": 1}, transport="shm")


def test_urls_are_reachable_by_plain_relay(nodes):
    with relay_ray.ActorPool("CartPole-v1", 2, num_cpus=0, resources={"worker": 1}) as pool:
        for url in pool.urls:
            env = relay.make(url)
            try:
                obs, _ = env.reset(seed=1)
                want, _ = gym.make("CartPole-v1").reset(seed=1)
                np.testing.assert_array_equal(obs, want)
            finally:
                env.close()


@pytest.mark.slow
def test_pool_of_four_steps_equal_to_local_envs(nodes):
    """Two actors on the head (shm://), one on each worker (tcp://), one env each."""
    with relay_ray.ActorPool("CartPole-v1", 4, num_cpus=1, placement="SPREAD") as pool:
        schemes = sorted(relay.make_url(url).scheme for url in pool.urls)
        assert "tcp" in schemes
        remote = pool.make_vec()
        local = SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(4)])
        try:
            assert run_both(remote, local, steps=300, seed=11, actions_seed=3) > 0
        finally:
            remote.close()
            local.close()


def test_bad_arguments_are_config_errors(nodes):
    with pytest.raises(relay.ConfigError, match="num_actors"):
        relay_ray.ActorPool("CartPole-v1", 0)
    with pytest.raises(relay.ConfigError, match="placement"):
        relay_ray.ActorPool("CartPole-v1", 1, placement="EVERYWHERE")
    with pytest.raises(relay.ConfigError, match="needs a name"):
        relay_ray.ActorPool("CartPole-v1", 1, lifetime="detached")
    with pytest.raises(relay.UnknownScheme):
        relay_ray.ActorPool("CartPole-v1", 1, transport="tpc")
    with pytest.raises(relay.ConfigError, match="NoSuchEnv"):
        relay_ray.ActorPool("NoSuchEnv-v0", 1, num_cpus=0)


def test_resources_the_cluster_lacks_time_out_with_their_names(nodes):
    with pytest.raises(relay.Timeout, match="gpu_x"):
        relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"gpu_x": 1},
                            start_timeout=1.0)
    with pytest.raises(relay.Timeout, match="gpu_x"):
        relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"gpu_x": 1},
                            placement="PACK", start_timeout=1.0)
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)]


@pytest.mark.slow
def test_batched_actors_step_equal_to_local_vector_envs(nodes):
    """num_envs_per_actor=3: each actor hosts a CartPole vector instance; actor a
    steps sub-envs 3a..3a+2 in one message."""
    from relay.adapters.batch import RemoteBatchVectorEnv

    with relay_ray.ActorPool("CartPole-v1", 2, 3, num_cpus=0,
                             resources={"worker": 1}) as pool:
        remote = pool.make_vec()
        local = [gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="vector_entry_point")
                 for _ in range(2)]
        try:
            assert isinstance(remote, RemoteBatchVectorEnv) and remote.num_envs == 6
            obs, _ = remote.reset(seed=5)
            np.testing.assert_array_equal(obs, np.concatenate(
                [local[0].reset(seed=5)[0], local[1].reset(seed=8)[0]]))
            rng = np.random.default_rng(0)
            for _ in range(200):
                actions = rng.integers(0, 2, size=6)
                got = remote.step(actions)
                parts = local[0].step(actions[:3]), local[1].step(actions[3:])
                for k in range(4):
                    np.testing.assert_array_equal(got[k], np.concatenate(
                        [parts[0][k], parts[1][k]]))
        finally:
            remote.close()
            for env in local:
                env.close()
