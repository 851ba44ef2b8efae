"""relay.launch / launch_vec and ``relay serve MODULE:FACTORY``: real server
processes started, waited for, connected to and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

import relay
from relay.adapters.launch import ServerProcess
from relay.cli import main, served_env

SERVE = [sys.executable, "-m", "relay", "serve"]

FACTORIES = '''
import dm_env
import gymnasium as gym
import numpy as np
from dm_env import specs


class Counter(dm_env.Environment):
    """Counts up from `start` in steps of the action; `limit` steps an episode."""

    def __init__(self, start=0, limit=3):
        self.start, self.limit, self.t = start, limit, 0

    def reset(self):
        self.t = 0
        return dm_env.restart(np.array([self.start], np.int64))

    def step(self, action):
        self.t += 1
        obs = np.array([self.start + self.t * int(action)], np.int64)
        return dm_env.termination(1.0, obs) if self.t >= self.limit else \\
            dm_env.transition(1.0, obs)

    def observation_spec(self):
        return specs.Array((1,), np.int64, name="count")

    def action_spec(self):
        return specs.DiscreteArray(3, name="step")


def make_counter(start=0, limit=3):
    return Counter(start, limit)


def make_cartpole(max_episode_steps=None):
    return gym.make("CartPole-v1", max_episode_steps=max_episode_steps)
'''


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (zombies of other parents count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module of factories importable by this process and by launched ones."""
    (tmp_path / "launch_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def test_launch_env_id_is_ready_and_close_stops_the_process_group():
    # a shell whose background child shares the group, then the server: close stops both
    command = ["sh", "-c", 'sleep 300 & exec "$0" "$@"', *SERVE, "CartPole-v1",
               "--url", "{url}", "--ready-file", "{ready_file}"]
    env = relay.launch(command, max_episode_steps=7)
    (process,) = env.server_processes
    assert process.ready_file is not None and process.ready_file.exists()
    try:
        env.reset(seed=0)
        steps = 0
        while not any(env.step(env.action_space.sample())[2:4]):
            steps += 1
        assert steps < 7 and group_alive(process.pid)
    finally:
        env.close()
    assert process.popen.returncode in (0, -signal.SIGTERM)  # stopped by SIGTERM, not KILL
    assert not group_alive(process.pid)  # the backgrounded sleep is gone too
    assert not process.ready_file.exists()  # its temporary directory is removed


def test_launch_failure_carries_the_stderr_tail_and_leaves_nothing():
    with pytest.raises(relay.LaunchError) as caught:
        relay.launch("Nope-v9", timeout=30)
    assert "exited with code 1" in str(caught.value)
    assert "'Nope-v9' is not a registered Gymnasium env id" in caught.value.stderr_tail
    assert "Did you mean" in str(caught.value)


def test_launch_timeout_stops_a_silent_process():
    command = [sys.executable, "-c",
               "import sys, time; print('starting', file=sys.stderr, flush=True); "
               "print('not a url', flush=True); time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(relay.LaunchError, match="not ready within 0.5 s") as caught:
        relay.launch(command, timeout=0.5, grace=0.5)
    assert time.monotonic() - start < 5
    assert "starting" in caught.value.stderr_tail


def test_launch_connect_failure_stops_the_process():
    # ready at once, but nobody listens at the address it tells
    command = [sys.executable, "-c",
               "import time; print('zmq+tcp://127.0.0.1:1?connect_timeout=0.3', flush=True); "
               "time.sleep(60)"]
    with pytest.raises(relay.LaunchError, match="connecting to zmq") as caught:
        relay.launch(command, timeout=10, grace=0.5)
    assert isinstance(caught.value.__cause__, relay.RelayError)


def test_launch_bad_arguments_are_config_errors():
    with pytest.raises(relay.ConfigError, match="api"):
        relay.launch("CartPole-v1", api="jax")
    with pytest.raises(relay.ConfigError, match="empty"):
        relay.launch([])
    with pytest.raises(relay.LaunchError, match="cannot start"):
        relay.launch(["/nonexistent/relay-server", "--serve"])


def test_no_orphan_after_the_parent_is_sigkilled():
    parent_code = textwrap.dedent("""
        import sys, time
        from relay.adapters.launch import ServerProcess
        child = ServerProcess([sys.executable, "-c",
            "import time; print('zmq+tcp://127.0.0.1:9', flush=True); time.sleep(120)"])
        child.wait_ready(30)
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        assert not wait_gone(child, timeout=0.2)
        parent.kill()  # SIGKILL: no atexit, no finally
        parent.wait(10)
        assert wait_gone(child), f"process {child} outlived its parent"
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()


def test_interpreter_exit_stops_the_whole_group():
    # the parent-death signal reaches the direct child only: the backgrounded sleep
    # goes because exit stops the group
    parent_code = textwrap.dedent("""
        import sys
        from relay.adapters.launch import ServerProcess
        child = ServerProcess(["sh", "-c", "sleep 300 & exec " + sys.executable + " -c "
            + repr("import time; print('zmq+tcp://127.0.0.1:9', flush=True); time.sleep(120)")],
            grace=1)
        child.wait_ready(30)
        print(child.pid, flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", parent_code], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert not group_alive(int(result.stdout))


def test_launch_vec_owns_every_server():
    envs = relay.launch_vec("CartPole-v1", 2)
    processes = envs.server_processes
    try:
        assert envs.num_envs == 2 and len({p.pid for p in processes}) == 2
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4)
        envs.step(envs.action_space.sample())
    finally:
        envs.close()
    assert all(p.popen.returncode is not None and not group_alive(p.pid) for p in processes)


def test_launch_serves_a_dm_env_factory_with_env_kwargs(factories):
    command = [*SERVE, "launch_factories:make_counter", "--url", "{url}",
               "--env-kwargs", json.dumps({"start": 10, "limit": 2})]
    env = relay.launch(command, api="dm_env", process_env=factories, limit=3)
    try:
        assert int(env.reset().observation[0]) == 10  # --env-kwargs reached the factory
        counts = [int(env.step(2).observation[0]) for _ in range(3)]
        assert counts == [12, 14, 16]  # Make's limit=3 overrides --env-kwargs' 2
        assert env.step(1).first()
    finally:
        env.close()


def test_served_env_tells_a_factory_from_an_id(factories):
    factory = served_env("launch_factories:make_cartpole", {"max_episode_steps": 5})
    assert callable(factory)
    env = factory(None)
    assert env.spec.max_episode_steps == 5
    env.close()
    with pytest.raises(relay.ConfigError, match="serves 'launch_factories:make_cartpole' only"):
        factory("CartPole-v1")
    # not an attribute of the module: an id the module registers (gymnasium.make's module:id)
    assert served_env("gymnasium.envs.classic_control:CartPole-v1", {}) == \
        "gymnasium.envs.classic_control:CartPole-v1"
    make = served_env("CartPole-v1", {"max_episode_steps": 4})
    assert make(None).spec.max_episode_steps == 4
    with pytest.raises(relay.ConfigError, match="cannot import 'no_such_module'"):
        served_env("no_such_module:make", {})
    with pytest.raises(relay.ConfigError, match="nor a callable of 'launch_factories'"):
        served_env("launch_factories:Missing-v0", {})


def test_serve_gymnasium_factory_prints_its_address_and_writes_the_ready_file(factories,
                                                                               tmp_path):
    ready = tmp_path / "ready"
    process = ServerProcess([*SERVE, "launch_factories:make_cartpole", "--url",
                             "zmq+tcp://127.0.0.1:0", "--token", "s3cret",
                             "--env-kwargs", '{"max_episode_steps": 3}',
                             "--ready-file", str(ready)],
                            env=factories, grace=2)
    try:
        address = process.wait_ready(30)  # the first stdout line that is a URL
        assert ready.read_text() == address + "\n" and "s3cret" not in address
        env = relay.make(address, token="s3cret")
        try:
            assert env.spec.max_episode_steps == 3
            env.reset(seed=1)
            assert not env.step(0)[3] and not env.step(0)[3] and env.step(0)[3]
        finally:
            env.close()
    finally:
        process.stop()


@pytest.mark.parametrize("args, reason", [
    (["Nope-v9"], "'Nope-v9' is not a registered Gymnasium env id"),
    (["no_such_module:make"], "cannot import 'no_such_module'"),
    (["CartPole-v1", "--env-kwargs", "[1]"], "must be a JSON object"),
    (["CartPole-v1", "--env-kwargs", "{"], "not JSON"),
])
def test_serve_checks_what_it_serves_at_start(args, reason):
    result = CliRunner().invoke(main, ["serve", *args, "--url", "zmq+tcp://127.0.0.1:0"])
    assert result.exit_code in (1, 2) and reason in result.output, result.output
    assert result.exit_code == (2 if "JSON" in reason else 1)

