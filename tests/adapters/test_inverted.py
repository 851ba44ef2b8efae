"""Inverted mode: the environment connects out, the agent listens (relay.listen_env)."""

from __future__ import annotations

import threading
import time

import gymnasium as gym
import numpy as np
import pytest

import relay
from relay.adapters.inverted import EnvConnection
from relay.core.errors import ConnectError, ConnectionLost, Timeout
from relay.testing import check_env_as_local

URLS = [
    "memory://0",
    "shm://0",
    "zmq+tcp://127.0.0.1:0",
    "grpc://127.0.0.1:0",
    "ws://127.0.0.1:0/env",
]


@pytest.fixture(params=URLS)
def url(request: pytest.FixtureRequest) -> str:
    return request.param


class EnvProcess:
    """Stands for the environment process: connect_env in a background thread."""

    def __init__(self, env_factory=lambda: gym.make("CartPole-v1"), **settings) -> None:
        self.env_factory = env_factory
        self.settings = settings
        self.connections: list[EnvConnection] = []

    def __call__(self, address) -> None:
        self.attach(address)

    def attach(self, address) -> EnvConnection:
        connection = relay.connect_env(address, self.env_factory(), block=False,
                                       **self.settings)
        self.connections.append(connection)
        return connection


def test_check_env(url: str) -> None:
    process = EnvProcess()
    env = relay.listen_env(url, on_listen=process, connect_timeout=10)
    try:
        check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
    finally:
        env.close()
    # the agent closed: connect_env returns normally
    process.connections[0].join(5)
    assert process.connections[0].done


def test_environments_match(url: str) -> None:
    from gymnasium.utils.env_match import check_environments_match

    process = EnvProcess()
    env = relay.listen_env(url, on_listen=process, connect_timeout=10)
    local = gym.make("CartPole-v1")
    try:
        check_environments_match(local, env, num_steps=100, seed=3, skip_render=True,
                                 info_comparison="equivalence")
    finally:
        env.close()
        local.close()


def test_agent_before_env_waits(url: str) -> None:
    process = EnvProcess()

    def start_late(address) -> None:
        threading.Timer(0.5, process.attach, args=(address,)).start()

    start = time.monotonic()
    env = relay.listen_env(url, on_listen=start_late, connect_timeout=10)
    try:
        assert time.monotonic() - start >= 0.4
        obs, _ = env.reset(seed=0)
        assert obs in env.observation_space
    finally:
        env.close()


def test_no_env_times_out() -> None:
    start = time.monotonic()
    with pytest.raises(Timeout, match="no environment process connected"):
        relay.listen_env("ws://127.0.0.1:0/env", connect_timeout=0.5)
    assert time.monotonic() - start < 3


def test_env_disconnects_and_reattaches(url: str) -> None:
    process = EnvProcess()
    env = relay.listen_env(url, on_listen=process, connect_timeout=10, timeout=5)
    try:
        env.reset(seed=0)
        env.step(0)
        process.connections[0].close()          # the environment process goes away
        with pytest.raises(ConnectionLost, match="reset"):
            env.step(0)
        with pytest.raises(ConnectionLost):
            env.step(0)
        threading.Timer(0.2, process.attach, args=(env.address,)).start()
        obs, _ = env.reset(seed=1)              # waits for the new one, makes, resets
        assert obs in env.observation_space
        reference, _ = gym.make("CartPole-v1").reset(seed=1)
        np.testing.assert_array_equal(obs, reference)
        env.step(1)
    finally:
        env.close()


def test_env_side_without_agent_fails_in_time() -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError, match="no agent listens"):
        relay.connect_env("ws://127.0.0.1:1/env", gym.make("CartPole-v1"), connect_timeout=0.5)
    assert time.monotonic() - start < 3


def test_env_side_sees_agent_vanish() -> None:
    process = EnvProcess()
    env = relay.listen_env("ws://127.0.0.1:0/env", on_listen=process, connect_timeout=10)
    env.reset(seed=0)
    env.connection.close()     # the agent dies without closing the environment
    with pytest.raises(ConnectionLost, match="before closing"):
        process.connections[0].join(5)
    env._listener.close()


def test_instance_stays_open_for_its_owner() -> None:
    game = gym.make("CartPole-v1")
    closed: list[bool] = []
    game.close = lambda: closed.append(True)
    process = EnvProcess(env_factory=lambda: game)
    env = relay.listen_env("memory://0", on_listen=process, connect_timeout=10)
    env.reset(seed=0)
    env.close()
    process.connections[0].join(5)
    assert closed == []


def test_token() -> None:
    process = EnvProcess(token="secret")
    env = relay.listen_env("ws://127.0.0.1:0/env", on_listen=process, token="secret",
                           connect_timeout=10)
    env.reset(seed=0)
    env.close()
    intruder = EnvProcess(token="wrong", connect_timeout=5)
    with pytest.raises(Timeout):
        relay.listen_env("ws://127.0.0.1:0/env", on_listen=intruder, token="secret",
                         connect_timeout=1.0)
    with pytest.raises(ConnectError, match="401"):
        intruder.connections[0].join(5)
