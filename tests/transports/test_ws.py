"""The ws:// and wss:// transport: compliance suite, TLS, auth, keepalive, bad input."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

import relay
from relay.core.config import Settings
from relay.core.errors import ConnectError, ConnectionLost, TLSError
from relay.core.plugins import get_transport
from relay.core.url import URL, make_url
from relay.testing import TransportCompliance, check_env_as_local, make_certificate
from relay.transports.ws import pack_header


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def upgraded_socket(port: int) -> socket.socket:
    """A raw socket to a ws:// listener on ``port`` after the HTTP upgrade."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/relay"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    protocol.send_request(protocol.connect())
    for chunk in protocol.data_to_send():
        sock.sendall(chunk)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101")
    return sock


class TestWs(TransportCompliance):
    url = "ws://127.0.0.1:0/relay"
    unreachable_url = "ws://127.0.0.1:1/relay"

    def declare(self, address: URL, nbytes: int) -> socket.socket:
        assert address.port is not None
        sock = upgraded_socket(address.port)
        # a masked binary frame announcing nbytes (64-bit length), and no payload
        sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", nbytes) + b"mask")
        return sock


class TestWss(TransportCompliance):
    unreachable_url = "wss://127.0.0.1:1/relay"

    @pytest.fixture(autouse=True)
    def _tls_url(self, certificate: tuple[Path, Path]) -> None:
        certfile, keyfile = certificate
        # the client side reads ca; the server side cert/key
        self.url = f"wss://127.0.0.1:0/relay?cert={certfile}&key={keyfile}&ca={certfile}"


def test_wss_refuses_an_untrusted_certificate(certificate: tuple[Path, Path]) -> None:
    certfile, keyfile = certificate
    url = make_url(f"wss://127.0.0.1:0/relay?cert={certfile}&key={keyfile}")
    settings = Settings(connect_timeout=3.0)
    listener = get_transport("wss").listen(url, settings)
    try:
        assert "cert" not in listener.address.query
        with pytest.raises(ConnectError, match="certificate"):
            get_transport("wss").connect(listener.address, settings, timeout=3.0)
    finally:
        listener.close()


@pytest.mark.parametrize("case,cause", [
    ("wrong CA", "certificate is not trusted"),
    ("plain client, TLS server", "speaks TLS: connect with wss://"),
    ("TLS client, plain server", "does not speak TLS"),
])
def test_tls_problems_are_tls_errors_at_once(certificate: tuple[Path, Path], tmp_path: Path,
                                             case: str, cause: str) -> None:
    certfile, keyfile = certificate
    other, _ = make_certificate(tmp_path)
    tls_server = case != "TLS client, plain server"
    settings = Settings(connect_timeout=20.0)
    listener = get_transport("wss" if tls_server else "ws").listen(make_url(
        f"wss://127.0.0.1:0/relay?cert={certfile}&key={keyfile}" if tls_server
        else "ws://127.0.0.1:0/relay"), settings)
    port = listener.address.port
    url = make_url({
        "wrong CA": f"wss://127.0.0.1:{port}/relay?ca={other}",
        "plain client, TLS server": f"ws://127.0.0.1:{port}/relay",
        "TLS client, plain server": f"wss://127.0.0.1:{port}/relay?ca={certfile}",
    }[case])
    try:
        start = time.monotonic()
        with pytest.raises(TLSError, match=cause):
            get_transport(url.scheme).connect(url, settings, timeout=20.0)
        assert time.monotonic() - start < 3.0
    finally:
        listener.close()


# -- end to end ----------------------------------------------------------------

@pytest.fixture(params=["ws", "wss"])
def served_cartpole(request: pytest.FixtureRequest, certificate: tuple[Path, Path]):
    if request.param == "ws":
        url = "ws://127.0.0.1:0/relay"
        client_options = ""
    else:
        certfile, keyfile = certificate
        url = f"wss://127.0.0.1:0/relay?cert={certfile}&key={keyfile}"
        client_options = f"?ca={certfile}"
    with relay.serve("CartPole-v1", url) as server:
        yield server.address.without_options().render() + client_options


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_check_env(served_cartpole: str, codec: str) -> None:
    env = relay.make(served_cartpole, codec=codec)
    try:
        check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_environments_match(served_cartpole: str) -> None:
    from gymnasium.utils.env_match import check_environments_match

    remote = relay.make(served_cartpole)
    local = gym.make("CartPole-v1")
    try:
        check_environments_match(local, remote, num_steps=200, seed=7,
                                 skip_render=True, info_comparison="equivalence")
    finally:
        remote.close()
        local.close()


# -- auth, keepalive, bad input -------------------------------------------------

def test_token_checked_in_the_upgrade_request() -> None:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay", token="s3cret") as server:
        address = server.address
        with pytest.raises(ConnectError, match="401"):
            relay.make(address)
        with pytest.raises(ConnectError, match="401"):
            relay.make(address, token="wrong")
        # the token travels in the Authorization header, never in the URL
        with pytest.raises(InvalidStatus) as info:
            ws_client.connect(f"ws://{address.address}?token=s3cret", proxy=None)
        assert info.value.response.status_code == 401
        env = relay.make(address, token="s3cret")
        env.reset(seed=0)
        env.close()


def test_token_in_a_subprotocol_for_browsers() -> None:
    """Browsers cannot set headers: the token may come as a subprotocol."""
    from relay.transports.ws import token_subprotocol

    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay", token="s3cret") as server:
        uri = f"ws://{server.address.address}"
        offer = token_subprotocol("s3cret")
        assert offer == "relay.token.czNjcmV0"
        with ws_client.connect(uri, proxy=None, subprotocols=[offer]) as ws:
            assert ws.subprotocol == offer
        with pytest.raises(InvalidStatus) as info:
            ws_client.connect(uri, proxy=None, subprotocols=[token_subprotocol("wrong")])
        assert info.value.response.status_code == 401


def test_wrong_path_is_404() -> None:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay") as server:
        with pytest.raises(ConnectError, match="404"):
            relay.make(f"ws://127.0.0.1:{server.address.port}/elsewhere")


class SlowEnv(gym.Wrapper):
    def step(self, action):
        time.sleep(1.5)
        return self.env.step(action)


def test_long_step_survives_keepalive() -> None:
    """Pings every 0.1 s with a 0.5 s timeout on both sides (room for a loaded
    machine's scheduling delays); a step takes 1.5 s.  The answers are right."""
    url = "ws://127.0.0.1:0/relay?keepalive=0.1&keepalive_timeout=0.5"
    with relay.serve(lambda env_id, **kw: SlowEnv(gym.make("CartPole-v1")), url) as server:
        env = relay.make(server.address)
        local = gym.make("CartPole-v1")
        try:
            assert np.array_equal(env.reset(seed=0)[0], local.reset(seed=0)[0])
            for action in (0, 1):
                start = time.monotonic()
                obs, reward, terminated, truncated, _ = env.step(action)
                assert time.monotonic() - start >= 1.5  # ~15 pings went by meanwhile
                expected = local.step(action)
                assert np.array_equal(obs, expected[0]) and obs.dtype == expected[0].dtype
                assert (reward, terminated, truncated) == expected[1:4]
            assert np.array_equal(env.reset(seed=1)[0], local.reset(seed=1)[0])
        finally:
            env.close()


def _still_serves(address) -> None:
    env = relay.make(address)
    try:
        env.reset(seed=0)
        env.step(1)
    finally:
        env.close()


def test_http_request_without_upgrade(free_port: int) -> None:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay") as server:
        with socket.create_connection(("127.0.0.1", server.address.port), timeout=5) as sock:
            sock.sendall(b"GET /relay HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 4"), answer
        with socket.create_connection(("127.0.0.1", server.address.port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
            sock.settimeout(5)
            try:
                sock.recv(4096)
            except ConnectionResetError:
                pass
        _still_serves(server.address)


@pytest.mark.parametrize(("message", "code"), [
    ('{"method": "make"}', 1003),                       # text
    (b"\x01\x00", 1007),                               # shorter than a header
    (pack_header([100]) + b"short", 1007),              # lengths do not add up
    (pack_header([5]) + b"hello", 1007),                # a frame, but not a Hello
])
def test_bad_messages_close_with_a_reason(message: bytes | str, code: int) -> None:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay") as server:
        with ws_client.connect(f"ws://{server.address.address}", proxy=None,
                               compression=None) as ws:
            ws.send(message)
            if code == 1007 and message.endswith(b"hello"):
                # a well-framed message that is not a Hello: relay answers Error
                answer = ws.recv(timeout=5)
                assert b"bad Hello" in answer
            else:
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=5)
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == code
                assert info.value.rcvd.reason
        _still_serves(server.address)


def test_20_mb_message_over_the_limit() -> None:
    url = "ws://127.0.0.1:0/relay?max_message_size=8000000"
    with relay.serve("CartPole-v1", url) as server:
        with ws_client.connect(f"ws://{server.address.address}", proxy=None,
                               compression=None, max_size=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.send(pack_header([20_000_000]) + bytes(20_000_000))
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        _still_serves(server.address)


def test_server_close_ends_client_connection() -> None:
    server = relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay")
    env = relay.make(server.address, timeout=5)
    env.reset(seed=0)
    server.close()
    with pytest.raises(ConnectionLost):
        env.step(0)
    env.close()


def test_keepalive_drops_a_silent_peer() -> None:
    """A peer that never answers pings is dropped after keepalive_timeout (here 0.2 s)."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    settings = Settings(connect_timeout=3.0)
    url = make_url("ws://127.0.0.1:0/relay?keepalive=0.1&keepalive_timeout=0.2")
    listener = get_transport("ws").listen(url, settings)
    try:
        port = listener.address.port
        protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/relay"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            protocol.send_request(protocol.connect())
            for chunk in protocol.data_to_send():
                sock.sendall(chunk)
            server = listener.accept(5.0)
            start = time.monotonic()
            with pytest.raises(ConnectionLost, match="pong|closed"):
                server.recv(5.0)      # nobody answers the server's pings
            assert time.monotonic() - start < 2.0
            server.close()
    finally:
        listener.close()


def test_send_to_a_peer_that_stops_reading_fails_in_time() -> None:
    """A frozen peer (reads nothing) makes a large send fail within the timeout."""
    settings = Settings(connect_timeout=3.0, timeout=0.5, max_message_size=64 << 20)
    listener = get_transport("ws").listen(make_url("ws://127.0.0.1:0/relay"), settings)
    try:
        client, server = TransportCompliance.connect_pair(listener, settings)
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            for _ in range(20):          # nobody reads on the server side
                client.send([bytes(8 << 20)])
        assert time.monotonic() - start < 5.0
        client.close()
        server.close()
    finally:
        listener.close()
