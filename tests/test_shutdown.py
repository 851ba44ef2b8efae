"""A server that stops (``close()``, SIGTERM, Ctrl-C) tells its clients so
(:class:`relay.ServerClosing`, not a bare ConnectionLost), closes their envs,
removes its socket files and, as ``relay serve``, exits 0."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import relay
from relay.testing import FaultyEnv
from relay.transports.shm import socket_path

TESTS = str(Path(__file__).parent)  # marker_env
sys.path.insert(0, TESTS)
import marker_env  # noqa: E402

LISTEN = ["memory://0", "ws://127.0.0.1:0/relay", "shm://0", "grpc://127.0.0.1:0",
          "tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"]


def step_until_closing(env, error: type[relay.ConnectionLost] = relay.ServerClosing,
                       deadline: float = 5.0) -> None:
    """Step ``env`` until the server says it closes (``error``); fail on anything else."""
    end = time.monotonic() + deadline
    with pytest.raises(error):
        while time.monotonic() < end:
            _, _, terminated, truncated, _ = env.step(0)
            if terminated or truncated:
                env.reset()
            time.sleep(0.05)


@pytest.mark.parametrize("url", LISTEN)
def test_close_tells_the_client_and_closes_its_envs(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    server = relay.serve(lambda env_id, **kw: marker_env.MarkerCartPole(**kw), url)
    env = relay.make(server.address, marker=str(marker), connect_timeout=5)
    try:
        env.reset(seed=1)
        server.close()
        assert marker.read_text() == "closed"
        step_until_closing(env)
    finally:
        env.close()
        server.close()


def test_a_stuck_env_is_forced_after_the_grace_period() -> None:
    server = relay.serve(lambda env_id, **kw: FaultyEnv(), "tcp://127.0.0.1:0",
                         shutdown_grace=0.2)
    env = relay.make(server.address)
    try:
        env.reset()
        pending = env.unwrapped.connection.submit(  # a step that sleeps 1 s
            relay.core.messages.Step(instance=env.unwrapped.instance, action=2))
        time.sleep(0.1)
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 0.8
        with pytest.raises(relay.ConnectionLost):
            env.unwrapped.connection.receive(pending)
    finally:
        env.close()


def start_server(url: str, *args: str) -> tuple[subprocess.Popen, str]:
    path = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "marker_env:MarkerCartPole-v0", "--url", url,
         *args], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if " on " not in line:
        proc.kill()
        pytest.fail(f"relay serve did not start: {line}{proc.stderr.read()}")
    return proc, line.rsplit(" on ", 1)[1].strip()


@pytest.mark.parametrize("transport,signum", [
    ("zmq+ipc", signal.SIGTERM), ("shm", signal.SIGTERM), ("ws", signal.SIGTERM),
    ("tcp", signal.SIGINT)])
def test_relay_serve_stops_gracefully_on_a_signal(transport: str, signum: int,
                                                  tmp_path: Path) -> None:
    name = f"shutdown-{os.getpid()}-{secrets.token_hex(3)}"
    url, socket_file = {
        "zmq+ipc": (f"zmq+ipc://{tmp_path}/relay.sock", tmp_path / "relay.sock"),
        "shm": (f"shm://{name}", socket_path(name)),
        "ws": ("ws://127.0.0.1:0/relay", None),
        "tcp": ("tcp://127.0.0.1:0", None),
    }[transport]
    marker = tmp_path / "closed"
    proc, address = start_server(url, "--grace", "3")
    try:
        if socket_file is not None:
            assert socket_file.exists()
        env = relay.make(address, marker=str(marker), connect_timeout=10)
        try:
            env.reset(seed=0)
            env.step(0)
            proc.send_signal(signum)
            step_until_closing(env)
        finally:
            env.close()
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        assert marker.read_text() == "closed"
        if socket_file is not None:
            assert not socket_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
