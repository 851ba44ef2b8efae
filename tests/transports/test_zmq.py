"""The ZeroMQ transport: the compliance suite over tcp and ipc, then real servers."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import zmq

import relay
from relay.core.config import Settings
from relay.core.errors import (
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import make_url
from relay.testing import TransportCompliance
from relay.transports.zmq import MAGIC, ZmqTransport, context


class TestZmqTcp(TransportCompliance):
    url = "zmq+tcp://127.0.0.1:0"

    @pytest.fixture(autouse=True)
    def _unreachable(self, free_port: int) -> None:
        self.unreachable_url = f"zmq+tcp://127.0.0.1:{free_port}"


class TestZmqIpc(TransportCompliance):
    @pytest.fixture(autouse=True)
    def _paths(self, tmp_path) -> None:
        self.url = f"zmq+ipc://{tmp_path}/relay.sock"
        self.unreachable_url = f"zmq+ipc://{tmp_path}/nobody.sock"


def test_close_from_another_thread_ends_a_blocked_recv():
    settings = Settings(connect_timeout=3.0)
    listener = ZmqTransport().listen(make_url("zmq+tcp://127.0.0.1:0"), settings)
    try:
        client, server = TransportCompliance.connect_pair(listener, settings)
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                client.recv(30.0)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=blocked)
        thread.start()
        time.sleep(0.2)
        start = time.monotonic()
        client.close()
        thread.join(5.0)
        assert not thread.is_alive() and time.monotonic() - start < 2.0
        assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
        with pytest.raises(ConnectionLost):
            server.recv(5.0)  # the sockets really closed
        server.close()
    finally:
        listener.close()


# -- real servers, real peers --------------------------------------------------------

SERVER_SCRIPT = """
import sys, relay
server = relay.serve("CartPole-v1", sys.argv[1])
print(server.address, flush=True)
server.serve_forever()
"""


@pytest.fixture
def server_process():
    """A relay server in a subprocess; yields (process, address)."""
    procs = []

    def start(url: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, url],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "server process did not start"
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_serve_and_make_cartpole(kind, tmp_path):
    url = "zmq+tcp://127.0.0.1:0" if kind == "tcp" else f"zmq+ipc://{tmp_path}/relay.sock"
    with relay.serve("CartPole-v1", url) as server:
        if kind == "tcp":
            assert server.address.port not in (None, 0)
        env = relay.make(server.address)
        local = gym.make("CartPole-v1")
        try:
            obs, _ = env.reset(seed=5)
            expected, _ = local.reset(seed=5)
            np.testing.assert_array_equal(obs, expected)
            for action in [0, 1, 1, 0, 1]:
                got = env.step(action)
                want = local.step(action)
                np.testing.assert_array_equal(got[0], want[0])
                assert got[1:4] == want[1:4]
                assert got[0].dtype == np.float32
        finally:
            env.close()
            local.close()
    if kind == "ipc":
        assert list(tmp_path.iterdir()) == []  # rendezvous and channel files removed


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_server_killed_mid_episode(kind, tmp_path, server_process):
    url = "zmq+tcp://127.0.0.1:0" if kind == "tcp" else f"zmq+ipc://{tmp_path}/relay.sock"
    proc, address = server_process(url)
    env = relay.make(address, timeout=5.0)
    env.reset(seed=0)
    env.step(0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    start = time.monotonic()
    with pytest.raises(ConnectionLost):
        env.step(1)
    assert time.monotonic() - start < 5.0  # within the request deadline
    start = time.monotonic()
    for _ in range(3):
        with pytest.raises(ConnectionLost):
            env.step(0)
    assert time.monotonic() - start < 0.5  # later calls fail fast
    env.close()
    env.close()


def _wait_until_stopped(pid: int) -> None:
    """Wait until every thread of process ``pid`` is stopped (state T in /proc)."""
    deadline = time.monotonic() + 10.0
    while True:
        states = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/stat") as f:
                states.add(f.read().rsplit(")", 1)[1].split()[0])
        if states <= {"T", "t"}:
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: {states}"
        time.sleep(0.005)


def test_frozen_server_is_a_timeout_within_the_deadline(server_process):
    proc, address = server_process("zmq+tcp://127.0.0.1:0")
    env = relay.make(address, timeout=1.0)
    env.reset(seed=0)
    proc.send_signal(signal.SIGSTOP)
    try:
        _wait_until_stopped(proc.pid)  # a spinning thread may run on until it is
        start = time.monotonic()
        with pytest.raises(Timeout):
            env.step(0)
        assert time.monotonic() - start < 3.0
        start = time.monotonic()
        env.close()  # Close gets no answer either; close still returns
        assert time.monotonic() - start < 3.0
    finally:
        proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_client_death_closes_its_envs_and_others_are_served(kind, tmp_path):
    closed: dict[str, threading.Event] = {"dead": threading.Event(), "alive": threading.Event()}

    class Watched(gym.Wrapper):
        def __init__(self, tag):
            super().__init__(gym.make("CartPole-v1"))
            self.tag = tag

        def close(self):
            closed[self.tag].set()
            super().close()

    def factory(env_id, tag="alive"):
        return Watched(tag)

    client = (
        "import sys, time, relay\n"
        "env = relay.make(sys.argv[1], tag='dead')\n"
        "env.reset(seed=0)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    url = "zmq+tcp://127.0.0.1:0" if kind == "tcp" else f"zmq+ipc://{tmp_path}/relay.sock"
    with relay.serve(factory, url) as server:
        survivor = relay.make(server.address)
        survivor.reset(seed=1)
        proc = subprocess.Popen([sys.executable, "-c", client, str(server.address)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.kill()
            proc.wait(10)
            assert closed["dead"].wait(5.0), "the dead client's env was not closed"
            assert survivor.step(0)[0].shape == (4,)  # the other client is still served
            assert not closed["alive"].is_set()
        finally:
            survivor.close()
            proc.kill()
            proc.wait(10)
            proc.stdout.close()


def _assert_serves(address) -> None:
    env = relay.make(address, connect_timeout=5.0)
    try:
        env.reset(seed=1)
        assert env.step(0)[0].shape == (4,)
    finally:
        env.close()


def test_garbage_bytes_on_the_server_port():
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        port = server.address.port
        for garbage in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 40,
                        b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03" * 100]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(garbage)
                raw.settimeout(2)
                with contextlib.suppress(OSError):
                    while raw.recv(4096):  # ZeroMQ hangs up on a bad greeting
                        pass
        _assert_serves(server.address)


def test_bad_hellos_are_ignored():
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        ctx = zmq.Context()
        try:
            endpoint = f"tcp://127.0.0.1:{server.address.port}"
            for message in ([b"garbage"], [MAGIC], [MAGIC, b"short"], [b"relay-zmq/1"], [b""],
                            [MAGIC, bytes(8), b"extra"]):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(endpoint)
                sock.send_multipart(message)
                assert not sock.poll(200), "the server answered a bad hello"
                sock.close()
            _assert_serves(server.address)
        finally:
            ctx.term()


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_over_the_servers_limit(kind, tmp_path):
    url = "zmq+tcp://127.0.0.1:0" if kind == "tcp" else f"zmq+ipc://{tmp_path}/relay.sock"
    limit = 1 << 20
    with relay.serve("CartPole-v1", url, max_message_size=limit) as server:
        channel = ZmqTransport().connect(server.address, Settings(max_message_size=8 * limit),
                                         timeout=5.0)
        try:  # the server's hello told its limit: refused before sending, naming it
            with pytest.raises(MessageTooLarge, match=f"max_message_size={limit} "):
                channel.send([b"x" * (2 * limit)])
        finally:
            channel.close()
        # a peer that sends it anyway is dropped by ZeroMQ, and only that peer
        endpoint = (f"tcp://127.0.0.1:{server.address.port}" if kind == "tcp"
                    else f"ipc://{server.address.address}")
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(endpoint)
            sock.send_multipart([MAGIC, (8 * limit).to_bytes(8, "little")])
            assert sock.poll(5000) and sock.recv_multipart()[0] == MAGIC
            sock.send(b"x" * (2 * limit))
            assert monitor.poll(5000), "the server kept the connection"
            sock.disable_monitor()
            monitor.close()
            sock.close()
        finally:
            ctx.term()
        _assert_serves(server.address)


def test_connect_to_nobody_is_connect_error(free_port):
    start = time.monotonic()
    with pytest.raises(ConnectError):
        relay.make(f"zmq+tcp://127.0.0.1:{free_port}", connect_timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_native_errors_are_translated(tmp_path):
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        with pytest.raises(TransportError) as info:
            relay.serve("CartPole-v1", server.address)  # address in use
        assert isinstance(info.value.__cause__, zmq.ZMQError)
    with pytest.raises(TransportError):
        relay.serve("CartPole-v1", f"zmq+ipc://{tmp_path}/no/such/dir/relay.sock")
    with pytest.raises(InvalidURL):
        relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1")


def test_ipc_path_of_a_live_server_is_not_taken(tmp_path):
    path = tmp_path / "relay.sock"
    with relay.serve("CartPole-v1", f"zmq+ipc://{path}") as server:
        with pytest.raises(TransportError, match="in use"):
            relay.serve("CartPole-v1", f"zmq+ipc://{path}")
        _assert_serves(server.address)  # the first server still owns its path
    not_a_socket = tmp_path / "notes.txt"
    not_a_socket.write_text("keep me")
    with pytest.raises(TransportError, match="not a socket"):
        relay.serve("CartPole-v1", f"zmq+ipc://{not_a_socket}")
    assert not_a_socket.read_text() == "keep me"


def test_stale_ipc_socket_file_is_replaced(tmp_path):
    path = tmp_path / "relay.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a server that died without cleaning up
    stale.close()
    with relay.serve("CartPole-v1", f"zmq+ipc://{path}") as server:
        _assert_serves(server.address)


def _child_connects(address: str) -> None:
    env = relay.make(address, connect_timeout=5.0)
    env.reset(seed=0)
    env.step(0)
    env.close()


def test_fork_safe_context():
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        _assert_serves(server.address)  # the parent's context exists now
        child = multiprocessing.get_context("fork").Process(
            target=_child_connects, args=(str(server.address),))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        _assert_serves(server.address)


def test_several_clients_at_once():
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        envs = [relay.make(server.address) for _ in range(3)]
        try:
            firsts = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
            assert not np.array_equal(firsts[0], firsts[1])
            for env in envs:
                env.step(1)
        finally:
            for env in envs:
                env.close()


def test_one_ipc_path_whatever_the_number_of_clients(tmp_path):
    with relay.serve("CartPole-v1", f"zmq+ipc://{tmp_path}/relay.sock") as server:
        envs = [relay.make(server.address) for _ in range(4)]
        try:
            for i, env in enumerate(envs):
                env.reset(seed=i)
            assert [p.name for p in tmp_path.iterdir()] == ["relay.sock"]
        finally:
            for env in envs:
                env.close()


def test_monitor_addresses_are_never_reused():
    # pyzmq names a monitor after the socket's descriptor number by default; a
    # socket dropped without close() can leave that address bound, and a new
    # socket given the same number then failed with "Address already in use"
    with relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0") as server:
        squatter = context().socket(zmq.PAIR)
        try:
            lowest = os.open(os.devnull, os.O_RDONLY)  # the next descriptors are from here
            os.close(lowest)
            for fd in range(lowest, lowest + 64):
                squatter.bind(f"inproc://monitor.s-{fd}")
            _assert_serves(server.address)
        finally:
            squatter.close(0)


@pytest.mark.slow
def test_relay_demo_runs_end_to_end():
    result = subprocess.run([sys.executable, "-m", "relay", "demo", "--episodes", "2"],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "steps/s" in result.stdout
    assert "zmq+ipc://" in result.stdout


@pytest.mark.parametrize("spin", ["0", "1000"])
def test_spin_option_round_trips(spin):
    with relay.serve("CartPole-v1", f"zmq+tcp://127.0.0.1:0?spin={spin}") as server:
        env = relay.make(server.address.with_options(spin=spin))
        try:
            env.reset(seed=0)
            assert env.step(0)[0].shape == (4,)
        finally:
            env.close()


def test_bad_spin_option_is_a_config_error():
    with pytest.raises(relay.ConfigError, match="spin"):
        relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0?spin=-5")
