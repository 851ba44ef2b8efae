"""A Gymnasium env served and driven through ``tcp://``; a server survives bad clients."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_match import check_environments_match

import relay
from relay.testing import check_env_as_local


@pytest.fixture
def server() -> Iterator[relay.Server]:
    with relay.serve("CartPole-v1", "tcp://127.0.0.1:0") as server:
        yield server


def test_server_address_has_real_port(server: relay.Server) -> None:
    assert server.address.scheme == "tcp"
    assert server.address.host == "127.0.0.1"
    assert server.address.port not in (None, 0)


def test_check_env_passes_with_no_warning_of_its_own(server: relay.Server) -> None:
    """The remote env warns about nothing that CartPole itself does not (its inf bounds)."""
    env = relay.make(server.address)
    local = gym.make("CartPole-v1").unwrapped
    try:
        check_env_as_local(env, local, skip_render_check=True)
    finally:
        env.close()
        local.close()


def test_matches_local_cartpole(server: relay.Server) -> None:
    remote = relay.make(server.address)
    local = gym.make("CartPole-v1")
    try:
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        check_environments_match(local, remote, num_steps=300, seed=7, skip_render=True)
    finally:
        remote.close()
        local.close()


def test_observations_bit_identical(server: relay.Server) -> None:
    remote = relay.make(server.address)
    local = gym.make("CartPole-v1")
    try:
        obs_r, _ = remote.reset(seed=3)
        obs_l, _ = local.reset(seed=3)
        for _ in range(50):
            assert obs_r.dtype == obs_l.dtype and obs_r.tobytes() == obs_l.tobytes()
            obs_r, rew_r, term_r, trunc_r, _ = remote.step(1)
            obs_l, rew_l, term_l, trunc_l, _ = local.step(1)
            assert (rew_r, term_r, trunc_r) == (rew_l, term_l, trunc_l)
            if term_l or trunc_l:
                break
        assert isinstance(obs_r, np.ndarray)
    finally:
        remote.close()
        local.close()


def _assert_hung_up(raw: socket.socket) -> None:
    raw.settimeout(10.0)
    try:
        while raw.recv(4096):  # the server may answer with an Error first
            pass
    except ConnectionResetError:
        pass


def _assert_still_serving(server: relay.Server) -> None:
    env = relay.make(server.address, timeout=10.0)
    try:
        obs, _ = env.reset(seed=0)
        env.step(0)
        assert obs.shape == (4,)
    finally:
        env.close()


@pytest.mark.parametrize("garbage", [
    b"\x00\xff garbage that is not relay at all \x13\x37" * 10,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack("<IQ", 1, 9) + b"not json!",  # a well-framed but undecodable Hello
], ids=["binary", "http", "bad-hello"])
def test_garbage_drops_only_that_connection(server: relay.Server, garbage: bytes) -> None:
    host, port = server.address.host, server.address.port
    with socket.create_connection((host, port), timeout=5.0) as raw:
        raw.sendall(garbage)
        _assert_hung_up(raw)
    _assert_still_serving(server)


def test_oversized_header_drops_only_that_connection(server: relay.Server) -> None:
    host, port = server.address.host, server.address.port
    with socket.create_connection((host, port), timeout=5.0) as raw:
        raw.sendall(struct.pack("<IQ", 1, (1 << 63) - 1))  # nothing may be allocated for it
        _assert_hung_up(raw)
    _assert_still_serving(server)


def test_a_silent_client_does_not_block_others(server: relay.Server) -> None:
    host, port = server.address.host, server.address.port
    with socket.create_connection((host, port), timeout=5.0):
        _assert_still_serving(server)


def test_relay_plugins_lists_tcp() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relay", "plugins"], capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith("tcp://"))
    assert "relay_tcp.transport:TcpTransport" in line
    assert line.split()[-1] == "relay-tcp"
