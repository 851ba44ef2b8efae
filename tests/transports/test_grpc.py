"""grpc:// and grpcs://: the transport compliance suite, TLS, limits, liveness, and
the Gymnasium end-to-end checks of the core over grpc://."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_match import check_environments_match

import relay
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    Timeout,
    TLSError,
    TransportError,
)
from relay.core.plugins import get_transport
from relay.core.url import make_url
from relay.testing import TransportCompliance, check_env_as_local
from relay.transports.grpc import _internals as grpc_internals
from relay.transports.grpc import pack, unpack

ROOT = Path(__file__).resolve().parents[2]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=relay test CA", cwd=directory)
    (directory / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                 "-extfile", "san.ext", cwd=directory)
    # a second, unrelated CA the server certificate does not chain to
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "other.key", "-out", "other.pem", "-subj", "/CN=other CA", cwd=directory)
    return {p.stem + p.suffix.replace(".", "_"): p for p in directory.iterdir()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


class TestGrpc(TransportCompliance):
    url = "grpc://127.0.0.1:0"
    unreachable_url = "grpc://127.0.0.1:1"


class TestGrpcPortable(TransportCompliance):
    """The fallback for a grpcio whose internals differ: a helper thread reads, grpcio's
    request thread sends a client's messages, a generator streams a server's."""

    url = "grpc://127.0.0.1:0"
    unreachable_url = "grpc://127.0.0.1:1"

    @pytest.fixture(autouse=True)
    def _portable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(grpc_internals, "_INTERNALS", False)


class TestGrpcSendThread(TransportCompliance):
    """Non-blocking handlers without the internal sender: a thread drains the server's
    queue into grpcio's blocking send callback."""

    url = "grpc://127.0.0.1:0"
    unreachable_url = "grpc://127.0.0.1:1"

    @pytest.fixture(autouse=True)
    def _send_thread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(grpc_internals._ResponseSender, "usable", staticmethod(lambda _: False))


@pytest.mark.parametrize("internals", [True, False])
@pytest.mark.parametrize("closing", ["client", "server"])
def test_close_from_another_thread_ends_a_waiting_recv(
        monkeypatch: pytest.MonkeyPatch, internals: bool, closing: str) -> None:
    monkeypatch.setattr(grpc_internals, "_INTERNALS", internals)
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
    try:
        client = transport.connect(listener.address, Settings(), timeout=5.0)
        server = listener.accept(5.0)
        channel = client if closing == "client" else server
        timer = threading.Timer(0.2, channel.close)
        timer.start()
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            channel.recv(10.0)
        assert time.monotonic() - start < 2.0
        timer.join()
        client.close()
        server.close()
    finally:
        listener.close()


def test_last_message_before_close_arrives() -> None:
    """A reply sent just before the server hangs up (e.g. an Error) reaches the client."""
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
    try:
        client = transport.connect(listener.address, Settings(), timeout=5.0)
        server = listener.accept(5.0)
        client.set_receive_limit(Settings().max_message_size)  # as after the handshake
        big = np.arange(300_000, dtype=np.uint8).tobytes()
        server.send([b"first", big])
        server.send([b"last"])
        server.close()
        assert bytes(client.recv(5.0)[1]) == big
        assert bytes(client.recv(5.0)[0]) == b"last"
        with pytest.raises(ConnectionLost):
            client.recv(5.0)
        client.close()
    finally:
        listener.close()


def test_reply_before_hang_up_survives_a_failed_send() -> None:
    """A send after the server hung up fails, but the reply sent before is still read."""
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
    try:
        client = transport.connect(listener.address, Settings(), timeout=5.0)
        server = listener.accept(5.0)
        server.send([b"error reply"])
        server.close()
        time.sleep(0.5)
        try:
            client.send([b"next request"])
        except ConnectionLost:
            pass
        assert bytes(client.recv(5.0)[0]) == b"error reply"
        with pytest.raises(ConnectionLost):
            client.recv(5.0)
        with pytest.raises(ConnectionLost):
            client.send([b"again"])
        client.close()
    finally:
        listener.close()


@pytest.mark.parametrize("path", ["internals", "portable", "send thread"])
def test_sends_do_not_wait_for_a_peer_that_is_not_reading(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Messages beyond gRPC's flow-control window queue up in order; close ends the
    stream after them."""
    if path == "portable":
        monkeypatch.setattr(grpc_internals, "_INTERNALS", False)
    elif path == "send thread":
        monkeypatch.setattr(grpc_internals._ResponseSender, "usable", staticmethod(lambda _: False))
    settings = Settings(max_message_size=16 << 20)
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), settings)
    try:
        client = transport.connect(listener.address, settings, timeout=5.0)
        server = listener.accept(5.0)
        for channel in (client, server):  # as after relay's handshake
            channel.set_receive_limit(settings.max_message_size)
        big = [bytes([i]) * (6 << 20) for i in range(3)]
        for sender, receiver in ((client, server), (server, client)):
            start = time.monotonic()
            for i, data in enumerate(big):
                sender.send([str(i).encode(), data])
            assert time.monotonic() - start < 3.0
            for i, data in enumerate(big):
                received = receiver.recv(10.0)
                assert bytes(received[0]) == str(i).encode() and bytes(received[1]) == data
        server.send([b"last"])
        server.close()
        assert bytes(client.recv(10.0)[0]) == b"last"
        with pytest.raises(ConnectionLost):
            client.recv(5.0)
        client.close()
    finally:
        listener.close()


def test_recv_timeout_is_kept_while_spinning() -> None:
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0?spin=5000"), Settings())
    try:
        client = transport.connect(listener.address, Settings(), timeout=5.0)
        server = listener.accept(5.0)
        for channel in (client, server):
            start = time.monotonic()
            with pytest.raises(Timeout):
                channel.recv(0.001)
            assert time.monotonic() - start < 0.5
        client.close()
        server.close()
    finally:
        listener.close()


class TestGrpcs(TransportCompliance):
    unreachable_url = "grpcs://127.0.0.1:1?ca=/nonexistent-is-not-read"

    @pytest.fixture(autouse=True)
    def _tls_url(self, certs: dict[str, Path]) -> None:
        self.url = (f"grpcs://127.0.0.1:0?cert={certs['server_pem']}"
                    f"&key={certs['server_key']}&ca={certs['ca_pem']}")
        self.unreachable_url = f"grpcs://127.0.0.1:1?ca={certs['ca_pem']}"


def test_pack_unpack_round_trip() -> None:
    frames = [b"", b"abc", memoryview(np.arange(10, dtype=np.float32))]
    out = unpack(pack(frames))
    assert [bytes(f) for f in out] == [bytes(f) for f in frames]
    with pytest.raises(ValueError):
        unpack(pack(frames)[:-1])


def test_tls_address_keeps_only_client_options(certs: dict[str, Path]) -> None:
    url = make_url(f"grpcs://127.0.0.1:0?cert={certs['server_pem']}&key={certs['server_key']}"
                   f"&ca={certs['ca_pem']}&timeout=3")
    listener = get_transport("grpcs").listen(url, Settings())
    try:
        assert set(listener.address.query) == {"ca", "timeout"}
        assert listener.address.port not in (None, 0)
    finally:
        listener.close()


@pytest.mark.parametrize("case,cause", [
    ("wrong CA", "certificate is not trusted"),
    ("plain client, TLS server", "speaks TLS: connect with grpcs://"),
    ("TLS client, plain server", "does not speak TLS"),
    ("no client certificate", "wants a client certificate"),
])
def test_tls_problems_are_tls_errors_at_once(certs: dict[str, Path], case: str,
                                             cause: str) -> None:
    # gRPC retries a failed handshake as if nobody answered: it took the whole timeout
    tls = (f"grpcs://127.0.0.1:0?cert={certs['server_pem']}&key={certs['server_key']}"
           + (f"&client_ca={certs['ca_pem']}" if case == "no client certificate" else ""))
    listener = get_transport("grpcs" if case != "TLS client, plain server" else "grpc").listen(
        make_url(tls if case != "TLS client, plain server" else "grpc://127.0.0.1:0"),
        Settings())
    port = listener.address.port
    url = make_url({
        "wrong CA": f"grpcs://127.0.0.1:{port}?ca={certs['other_pem']}",
        "plain client, TLS server": f"grpc://127.0.0.1:{port}",
        "TLS client, plain server": f"grpcs://127.0.0.1:{port}?ca={certs['ca_pem']}",
        "no client certificate": f"grpcs://127.0.0.1:{port}?ca={certs['ca_pem']}",
    }[case])
    try:
        start = time.monotonic()
        with pytest.raises(TLSError, match=cause):
            get_transport(url.scheme).connect(url, Settings(), timeout=20.0)
        assert time.monotonic() - start < 3.0
    finally:
        listener.close()


def test_a_connection_stuck_in_its_handshake_is_closed() -> None:
    """A client dribbling its HTTP/2 preface a byte at a time is hung up on after
    connect_timeout (gRPC's own default keeps it 120 s)."""
    listener = get_transport("grpc").listen(make_url("grpc://127.0.0.1:0"),
                                            Settings(connect_timeout=0.5))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", listener.address.port)) as sock:
            sock.settimeout(0.1)
            start = time.monotonic()
            hung_up = False
            while not hung_up and time.monotonic() - start < 3.0:
                try:
                    sock.send(preface[:1])
                    preface = preface[1:] or preface
                    hung_up = sock.recv(100) == b""
                except TimeoutError:
                    pass
                except OSError:
                    hung_up = True
            assert hung_up, "the server kept a connection that never finished its handshake"
            assert time.monotonic() - start < 2.0
    finally:
        listener.close()


def test_mutual_tls(certs: dict[str, Path]) -> None:
    url = make_url(f"grpcs://127.0.0.1:0?cert={certs['server_pem']}&key={certs['server_key']}"
                   f"&client_ca={certs['ca_pem']}&ca={certs['ca_pem']}")
    transport = get_transport("grpcs")
    listener = transport.listen(url, Settings())
    try:
        with pytest.raises(TLSError):  # no client certificate
            transport.connect(listener.address, Settings(), timeout=1.0)
        with_cert = listener.address.with_options(cert=certs["client_pem"],
                                                  key=certs["client_key"])
        client = transport.connect(with_cert, Settings(), timeout=5.0)
        server = listener.accept(5.0)
        client.send([b"hello over mTLS"])
        assert bytes(server.recv(5.0)[0]) == b"hello over mTLS"
        client.close()
        server.close()
    finally:
        listener.close()


def test_grpcs_needs_a_certificate() -> None:
    with pytest.raises(ConfigError):
        get_transport("grpcs").listen(make_url("grpcs://127.0.0.1:0"), Settings())


def test_port_in_use_is_transport_error() -> None:
    transport = get_transport("grpc")
    first = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
    try:
        with pytest.raises(TransportError):
            transport.listen(first.address, Settings()).close()
    finally:
        first.close()


def test_large_message_over_grpc_default_limit() -> None:
    """gRPC's own 4 MiB limit is raised to max_message_size (a 1080p RGB frame)."""
    settings = Settings(max_message_size=16 << 20)
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), settings)
    try:
        client, server = TransportCompliance.connect_pair(listener, settings)
        frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        client.send([b"frame", memoryview(frame)])
        received = server.recv(10.0)
        assert bytes(received[1]) == frame.tobytes()
        client.close()
        server.close()
    finally:
        listener.close()


def test_oversized_received_message_drops_connection() -> None:
    """A peer with a larger limit sends more than ours: ConnectionLost, not a hang."""
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings(max_message_size=1 << 16))
    try:
        client = transport.connect(listener.address, Settings(max_message_size=1 << 22),
                                   timeout=5.0)
        server = listener.accept(5.0)
        client.send([b"x" * (1 << 21)])
        with pytest.raises(ConnectionLost):
            server.recv(5.0)
        with pytest.raises(ConnectionLost):
            client.recv(5.0)
        client.close()
        server.close()
    finally:
        listener.close()


def test_max_clients_refuses_with_connect_error() -> None:
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0?max_clients=1"), Settings())
    try:
        first = transport.connect(listener.address, Settings(), timeout=5.0)
        accepted = listener.accept(5.0)
        with pytest.raises(ConnectError):
            transport.connect(listener.address, Settings(), timeout=2.0)
        first.close()
        accepted.close()
        # a client that left frees its place, whichever side hung up
        for closing in ("client", "server", "client"):
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    client = transport.connect(listener.address, Settings(), timeout=2.0)
                    break
                except ConnectError:
                    assert time.monotonic() < deadline, "the place of a closed channel stays taken"
                    time.sleep(0.05)
            server = listener.accept(5.0)
            (client if closing == "client" else server).close()
            client.close()
            server.close()
    finally:
        listener.close()


# -- the Gymnasium checks of the core, over grpc:// ---------------------------------

@pytest.fixture
def cartpole_server():
    server = relay.serve("CartPole-v1", "grpc://127.0.0.1:0")
    yield server
    server.close()


def test_check_env_over_grpc(cartpole_server) -> None:
    env = relay.make(cartpole_server.address)
    try:
        check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_environments_match_over_grpc(cartpole_server) -> None:
    remote = relay.make(cartpole_server.address)
    local = gym.make("CartPole-v1")
    try:
        check_environments_match(local, remote, num_steps=200, seed=7, skip_render=True)
    finally:
        remote.close()
        local.close()


def test_episode_and_errors_over_grpc(cartpole_server) -> None:
    env = relay.make(cartpole_server.address)
    try:
        obs, _ = env.reset(seed=3)
        assert obs.dtype == np.float32 and obs.shape == (4,)
        with pytest.raises(relay.InvalidAction):
            env.step(5)
        steps, done = 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
            steps += 1
        assert steps > 1
    finally:
        env.close()


SERVER_SCRIPT = textwrap.dedent("""
    import sys
    import relay
    server = relay.serve("CartPole-v1", "grpc://127.0.0.1:0")
    print(server.address, flush=True)
    sys.stdin.read()
""")


def test_server_killed_mid_episode_is_connection_lost() -> None:
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env_vars, cwd=ROOT)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("grpc://"), address
        env = relay.make(address, timeout=5.0)
        env.reset(seed=0)
        env.step(0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            env.step(1)
        assert time.monotonic() - start < 5.0
        with pytest.raises(ConnectionLost):
            env.step(1)
        env.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


CLIENT_SCRIPT = textwrap.dedent("""
    import sys
    import relay
    env = relay.make(sys.argv[1])
    env.reset(seed=0)
    env.step(0)
    print("stepped", flush=True)
    sys.stdin.read()
""")


def test_client_killed_server_keeps_serving(cartpole_server) -> None:
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(cartpole_server.address)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env_vars, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "stepped"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        env = relay.make(cartpole_server.address)
        env.reset(seed=1)
        env.step(0)
        env.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


HI_CLIENT_SCRIPT = textwrap.dedent("""
    import sys
    from relay.core.config import Settings
    from relay.core.plugins import get_transport
    from relay.core.url import make_url
    ch = get_transport("grpc").connect(make_url(sys.argv[1]), Settings(), timeout=5)
    ch.send([b"hi"])
    print("sent", flush=True)
    sys.stdin.read()
""")


def _client_process(listener) -> subprocess.Popen:
    """A client process that connects to ``listener``, sends b"hi", prints "sent", then waits."""
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", HI_CLIENT_SCRIPT, str(listener.address)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env_vars, cwd=ROOT)


def test_server_sees_dead_client_as_connection_lost() -> None:
    """A client process SIGKILLed: the server channel gets ConnectionLost, not silence."""
    transport = get_transport("grpc")
    listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
    proc = _client_process(listener)
    try:
        server = listener.accept(10.0)
        assert bytes(server.recv(10.0)[0]) == b"hi"
        assert proc.stdout.readline().strip() == "sent"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(ConnectionLost):
            server.recv(5.0)
        server.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        listener.close()


FROZEN_SERVER = textwrap.dedent("""
    import sys
    from relay.core.config import Settings
    from relay.core.plugins import get_transport
    from relay.core.url import make_url
    listener = get_transport("grpc").listen(make_url("grpc://127.0.0.1:0"), Settings())
    print(listener.address, flush=True)
    channel = listener.accept(30)
    channel.send(channel.recv(30))
    sys.stdin.read()
""")


def test_frozen_server_is_noticed_by_keepalive() -> None:
    """A server that stops answering (SIGSTOP: its socket stays open) is ConnectionLost
    through HTTP/2 keepalive, before the receive deadline."""
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", FROZEN_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env_vars, cwd=ROOT)
    try:
        address = make_url(proc.stdout.readline().strip()).with_options(
            keepalive=0.5, keepalive_timeout=1)
        client = get_transport("grpc").connect(address, Settings(), timeout=10.0)
        client.send([b"ping"])
        assert bytes(client.recv(10.0)[0]) == b"ping"
        os.kill(proc.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            client.recv(20.0)
        assert time.monotonic() - start < 10.0
        client.close()
    finally:
        proc.kill()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(10)


def test_frozen_client_is_noticed_by_server_keepalive() -> None:
    transport = get_transport("grpc")
    listener = transport.listen(
        make_url("grpc://127.0.0.1:0?keepalive=0.5&keepalive_timeout=1"), Settings())
    proc = _client_process(listener)
    try:
        server = listener.accept(10.0)
        assert bytes(server.recv(10.0)[0]) == b"hi"
        assert proc.stdout.readline().strip() == "sent"
        os.kill(proc.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            server.recv(20.0)
        assert time.monotonic() - start < 10.0
        server.close()
    finally:
        proc.kill()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(10)
        listener.close()


FORK_SCRIPT = textwrap.dedent("""
    import os, threading
    from relay.core.config import Settings
    from relay.core.plugins import get_transport
    from relay.core.url import make_url
    transport = get_transport("grpc")          # imports grpc, creates no gRPC object
    assert threading.active_count() == 1, threading.enumerate()

    def ping():
        listener = transport.listen(make_url("grpc://127.0.0.1:0"), Settings())
        client = transport.connect(listener.address, Settings(), timeout=5)
        server = listener.accept(5)
        client.send([b"ping"])
        server.send(server.recv(5))
        assert bytes(client.recv(5)[0]) == b"ping"
        client.close(); server.close(); listener.close()

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ping()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ping()
    print("ok")
""")


def test_import_then_fork_then_use() -> None:
    """Importing the transport creates no gRPC object, so a process may fork after it."""
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                          env=env_vars, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
