"""A JavaScript environment (clients/js/examples/catch.js) driven from Python in
inverted mode: the Node process connects out to relay.listen_env."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import relay
from relay.testing import check_env_as_local

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js"
GAME = CLIENT / "examples" / "catch.js"



@pytest.fixture(autouse=True)
def node_ready() -> None:
    """Skip without node and the client's packages, except in CI (``CI`` set, as
    ``.ci/run`` does), which installs both: a missing one fails there."""
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (CLIENT / "node_modules" / "ws").is_dir():
        missing = "the JavaScript client's packages are missing: `npm ci` in clients/js"
    else:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{missing}; CI runs the JavaScript env tests (make test installs them)")
    pytest.skip(f"{missing} (make test does it)")


@pytest.fixture
def game_processes():
    processes: list[subprocess.Popen[str]] = []

    def start(address: relay.URL, *extra: str) -> None:
        processes.append(subprocess.Popen(["node", str(GAME), str(address), *extra],
                                          stderr=subprocess.PIPE, text=True))

    yield start, processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_check_env_passes(game_processes) -> None:
    start, processes = game_processes
    env = relay.listen_env("ws://127.0.0.1:0/env", on_listen=start, connect_timeout=20)
    try:
        assert env.observation_space.shape == (10, 5)
        assert env.observation_space.dtype == np.float32
        assert int(env.action_space.n) == 3
        # no local twin, so no warning at all; the render check only warns that the
        # env has no registered spec (rendering is tested in test_episodes_and_render)
        check_env_as_local(env, None, skip_render_check=True)
    finally:
        env.close()
    assert processes[0].wait(10) == 0


def test_episodes_and_render(game_processes) -> None:
    start, processes = game_processes
    env = relay.listen_env("ws://127.0.0.1:0/env", on_listen=start, connect_timeout=20)
    try:
        for seed in range(3):
            obs, info = env.reset(seed=seed)
            assert obs in env.observation_space
            done, steps = False, 0
            while not done:
                obs, reward, terminated, truncated, info = env.step(1)
                steps += 1
                done = terminated or truncated
            assert steps == 9 and reward in (-1, 1) and "ball_column" in info
        assert env.render().count("\n") == 10
        with pytest.raises(relay.InvalidAction):
            env.step(5)
    finally:
        env.close()


def test_game_reattaches_after_losing_the_agent_connection(game_processes) -> None:
    """The game reconnects when its connection drops; the agent's reset waits for it."""
    start, processes = game_processes
    env = relay.listen_env("ws://127.0.0.1:0/env", on_listen=start, connect_timeout=20,
                           timeout=5)
    try:
        first, _ = env.reset(seed=5)
        env.connection.channel.close()        # the link breaks
        with pytest.raises(relay.ConnectionLost):
            env.step(1)
        again, _ = env.reset(seed=5)          # catch.js connected again
        np.testing.assert_array_equal(first, again)
    finally:
        env.close()
    assert processes[0].wait(10) == 0
    assert "connecting again" in processes[0].stderr.read()


def test_wrong_token_is_refused(game_processes) -> None:
    start, processes = game_processes
    with pytest.raises(relay.Timeout):
        relay.listen_env("ws://127.0.0.1:0/env", token="right",
                         on_listen=lambda a: start(a, "--token", "wrong"), connect_timeout=2)
    assert processes[0].wait(10) == 1
    assert "401" in processes[0].stderr.read()
