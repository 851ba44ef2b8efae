"""ActorPool failures and life cycle on the simulated cluster (see conftest): a dead
actor or node is ConnectionLost naming the sub-env, Ray's restart is reconnected on
reset, close() leaves nothing behind, and a detached pool is found by other drivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray
import ray.cloudpickle
import relay_ray
from gymnasium.vector import SyncVectorEnv

import relay
from relay.transports.shm import socket_path

# the actors unpickle the env factory below: ship this module's functions by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

ZEROS = np.zeros(4, dtype=np.int64)


def step_until_lost(envs, actions, limit=10.0):
    """Step until ConnectionLost (the dying process may answer a last step); return it
    and the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            envs.step(actions)
        except relay.ConnectionLost as exc:
            return exc, time.monotonic() - start
    raise AssertionError(f"no ConnectionLost within {limit} s")


@pytest.mark.slow
def test_killed_actor_is_lost_by_index_then_restarted_and_reconnected(nodes):
    """Sub-envs 1 and 3 live on actor 1; it is SIGKILLed. Their step fails within a
    second naming sub-env 1, 0 and 2 step on; a masked reset reconnects them to the
    actor Ray restarted (another process and port), and all four equal local envs."""
    with relay_ray.ActorPool("CartPole-v1", 2, num_cpus=0, resources={"worker": 1},
                             max_restarts=1) as pool:
        remote = pool.make_vec(num_envs=4)
        local = SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(4)])
        try:
            remote.reset(seed=0)
            local.reset(seed=0)
            old = pool.infos[1]
            os.kill(old["pid"], signal.SIGKILL)
            lost, seconds = step_until_lost(remote, ZEROS)
            local.step(ZEROS)  # the step in which 0 and 2 stepped and 1 and 3 failed
            assert seconds < 1.0
            assert lost.env_index == 1 and "sub-environment 1" in str(lost)
            mask = np.array([False, True, False, True])
            obs_r, _ = remote.reset(seed=[None, 21, None, 23], options={"reset_mask": mask})
            obs_l, _ = local.reset(seed=[None, 21, None, 23], options={"reset_mask": mask})
            np.testing.assert_array_equal(obs_r, obs_l)
            new = pool.infos[1]
            assert new["pid"] != old["pid"] and pool.urls[1] != old["network_url"]
            local.action_space.seed(0)
            for _ in range(50):
                actions = local.action_space.sample()
                for got, want in zip(remote.step(actions)[:4], local.step(actions)[:4],
                                     strict=True):
                    np.testing.assert_array_equal(got, want)
        finally:
            remote.close()
            local.close()


@pytest.mark.slow
def test_killed_batched_actor_is_lost_by_block_then_its_block_is_made_again(nodes):
    with relay_ray.ActorPool("CartPole-v1", 2, 3, num_cpus=0, resources={"worker": 1},
                             max_restarts=1) as pool:
        remote = pool.make_vec()
        try:
            remote.reset(seed=0)
            os.kill(pool.infos[1]["pid"], signal.SIGKILL)
            lost, seconds = step_until_lost(remote, np.zeros(6, dtype=np.int64))
            assert seconds < 1.0 and "sub-environments 3..5" in str(lost)
            obs, _ = remote.reset(seed=40)
            local = gym.make_vec("CartPole-v1", num_envs=3)
            np.testing.assert_array_equal(obs[3:], local.reset(seed=43)[0])
            assert remote.step(np.ones(6, dtype=np.int64))[1].tolist() == [1.0] * 6
        finally:
            remote.close()


@pytest.mark.slow
def test_removed_node_is_lost_then_the_actor_restarts_on_another_node(nodes):
    doomed = nodes.cluster.add_node(num_cpus=1, resources={"spare": 1})
    with relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"spare": 1},
                             max_restarts=1) as pool:
        assert pool.infos[0]["node_id"] == doomed.node_id
        spare = nodes.cluster.add_node(num_cpus=1, resources={"spare": 1})
        envs = pool.make_vec(num_envs=2)
        try:
            envs.reset(seed=0)
            nodes.cluster.remove_node(doomed)
            lost, seconds = step_until_lost(envs, np.array([0, 0]))
            assert seconds < 1.0 and lost.env_index == 0
            obs, _ = envs.reset(seed=4)
            want, _ = gym.make("CartPole-v1").reset(seed=5)
            np.testing.assert_array_equal(obs[1], want)
            assert pool.infos[0]["node_id"] == spare.node_id
        finally:
            envs.close()
    nodes.cluster.remove_node(spare)


def test_a_dead_actor_without_restarts_fails_reset_with_a_connect_error(nodes):
    with relay_ray.ActorPool("CartPole-v1", 1, num_cpus=0, resources={"worker": 1}) as pool:
        envs = pool.make_vec(num_envs=1)
        try:
            envs.reset(seed=0)
            ray.kill(pool.actors[0])
            step_until_lost(envs, np.array([0]))
            with pytest.raises(relay.ConnectError, match="sub-environment 0.*actor 0 is dead"):
                envs.reset(seed=0)
        finally:
            envs.close()


class MarkedCartPole(gym.Wrapper):
    """CartPole that writes a file when it is closed."""

    def __init__(self, marker: str) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.marker = marker

    def close(self) -> None:
        Path(self.marker).write_text("closed")
        super().close()


def relay_leftovers() -> set[str]:
    """relay's shared-memory names and this user's shm:// socket files of relay-ray."""
    shm = {name for name in os.listdir("/dev/shm") if "relay_" in name}
    sockets = {str(path) for path in socket_path("x").parent.glob("relay-ray-*")}
    return shm | sockets


@pytest.mark.slow
def test_close_closes_envs_and_leaves_no_actor_socket_or_segment(nodes, tmp_path):
    """Two actors on the learner's node (shm://), one elsewhere (tcp://); one of the
    shm ones is SIGKILLed first (its socket file stays behind until close)."""
    before = relay_leftovers()

    def factory(env_id, index):
        return MarkedCartPole(str(tmp_path / f"closed-{index}"))

    pool = relay_ray.ActorPool(factory, 3, num_cpus=0, resources={"head": 1})
    remote = relay_ray.ActorPool(factory, 1, num_cpus=0, resources={"a": 1})
    clients = []
    try:
        assert all(url.startswith("shm://") for url in pool.urls)
        assert remote.urls[0].startswith("tcp://")
        clients.append(pool.make_vec(num_envs=3, index=9))  # one env on each actor
        clients.append(relay.make(pool.urls[0], index=0))
        clients.append(relay.make(remote.urls[0], index=2))
        for client in clients:
            client.reset(seed=0)
        os.kill(pool.infos[2]["pid"], signal.SIGKILL)  # its env is never closed
        assert relay_leftovers() - before  # the servers' socket files
    finally:
        pool.close()  # the clients are still connected: the servers close their envs
        remote.close()
        for client in clients:
            client.close()
    assert {p.name for p in tmp_path.iterdir()} == {"closed-0", "closed-2", "closed-9"}
    assert relay_leftovers() <= before
    for actor in pool.actors + remote.actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.info.remote(), timeout=10)


def run_cli(nodes, *args):
    return subprocess.run(
        [sys.executable, "-m", "relay", "ray", *args, "--address", nodes.cluster.address,
         "--namespace", "relay-ray-cli"],
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_detached_pool_from_the_cli_is_found_by_another_driver(nodes):
    """`relay ray serve --detached` (one driver, which exits) prints the URLs; this
    driver finds the pool by name and drives it; `relay ray stop` (a third) ends it."""
    made = run_cli(nodes, "serve", "CartPole-v1", "--actors", "2", "--num-cpus", "0",
                   "--resource", "worker=1", "--name", "shared", "--detached")
    assert made.returncode == 0, made.stderr
    printed = made.stdout.split()
    assert len(printed) == 2 and all(url.startswith("tcp://127.0.0.1:") for url in printed)
    try:
        pool = relay_ray.lookup("shared", "relay-ray-cli")
        assert pool.urls == printed and pool.num_actors == 2
        envs = pool.make_vec()
        try:
            obs, _ = envs.reset(seed=7)
            want = [gym.make("CartPole-v1").reset(seed=7 + i)[0] for i in range(2)]
            np.testing.assert_array_equal(obs, np.stack(want))
        finally:
            envs.close()
    finally:
        stopped = run_cli(nodes, "stop", "shared")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(relay_ray.PoolNotFound):
        relay_ray.lookup("shared", "relay-ray-cli")


@pytest.mark.slow
def test_cli_serve_prints_urls_then_closes_the_pool_on_ctrl_c(nodes):
    server = subprocess.Popen(
        [sys.executable, "-m", "relay", "ray", "serve", "CartPole-v1", "--actors", "2",
         "--num-cpus", "0", "--resource", "worker=1", "--name", "foreground",
         "--address", nodes.cluster.address, "--namespace", "relay-ray-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = [server.stdout.readline().strip() for _ in range(2)]
        for url in urls:
            env = relay.make(url)
            try:
                assert env.reset(seed=0)[0].shape == (4,)
            finally:
                env.close()
        actors = relay_ray.lookup("foreground", "relay-ray-cli").actors
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    for actor in actors:  # the command exited 0 and its actors are gone
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.info.remote(), timeout=10)
    with pytest.raises(relay_ray.PoolNotFound):
        relay_ray.lookup("foreground", "relay-ray-cli")
