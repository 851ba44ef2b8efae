"""relay serve --workers: K real processes behind one URL, a dead one replaced, SIGTERM
stopping them all."""

import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest

import relay
from relay.core.errors import ConfigError


class PidEnv(gym.Wrapper):
    """CartPole whose reset info names the process that steps it."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "pid": os.getpid()}


def pid_env(env_id=None, **kwargs):
    return PidEnv(gym.make("CartPole-v1"))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.parametrize("url", ["shm://0", "tcp://127.0.0.1:0"])
def test_two_worker_processes_and_a_killed_one_is_replaced(url):
    if url.startswith("tcp"):
        pytest.importorskip("relay_tcp")
    pool = relay.serve(pid_env, url, workers=2)
    envs = []
    try:
        assert len(pool.pids) == 2 and os.getpid() not in pool.pids
        seen = {}
        for _ in range(4):  # the least busy worker takes the next client
            env = relay.make(pool.address, timeout=3.0)
            envs.append(env)
            seen.setdefault(env.reset(seed=0)[1]["pid"], []).append(env)
        assert set(seen) == set(pool.pids)
        assert [len(clients) for clients in seen.values()] == [2, 2]
        seen = {pid: clients[0] for pid, clients in seen.items()}
        victim, survivor = sorted(seen)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises((relay.ConnectionLost, relay.Timeout)):
            for _ in range(50):
                seen[victim].step(0)
        seen[survivor].step(0)  # the other worker's client goes on
        deadline = time.monotonic() + 5
        while pool.replaced == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.replaced == 1 and victim not in pool.pids and len(pool.pids) == 2
        for _ in range(4):  # new clients are served (by either worker)
            env = relay.make(pool.address, timeout=3.0)
            envs.append(env)
            assert env.reset(seed=1)[1]["pid"] in pool.pids
    finally:
        for env in envs:
            env.close()
        pids = pool.pids
        pool.close()
    assert not any(alive(pid) for pid in pids)


def test_workers_need_a_shareable_transport():
    with pytest.raises(ConfigError, match="shm://, tcp://.*not zmq\\+tcp://"):
        relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0", workers=2)


def test_cli_workers_batch_and_sigterm_stops_every_process(tmp_path):
    name = f"relay-workers-{os.getpid()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "CartPole-v1", "--url", f"shm://{name}",
         "--workers", "2", "--num-envs", "8"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "serving" in server.stderr.readline()
        workers = children(server.pid)
        assert len(workers) == 2
        envs = relay.make_vec(f"shm://{name}")
        try:
            envs.reset(seed=0)
            obs, *_ = envs.step(np.zeros(8, np.int64))
            assert obs.shape == (8, 4)
            server.send_signal(signal.SIGTERM)
            assert server.wait(15) == 0
            with pytest.raises((relay.ConnectionLost, relay.Timeout)):
                envs.step(np.zeros(8, np.int64))
        finally:
            envs.close()
        assert not any(alive(pid) for pid in workers)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
