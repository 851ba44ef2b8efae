"""Gymie's protocol (``?codec=gymie``): relay's server answers what the real Gymie server
answers, relay's client drives the real Gymie server.

``RECORDED`` holds answers of the real Gymie 0.5.4 server (``gymie/api.py``,
``gymie/server.py``), recorded by ``test_real_gymie_matches_recording``, which
re-records them live (slow: it builds Gymie's own venv on first use).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import relay
from relay.compat.gymie import (
    FLOAT32_MAX,
    GymieClose,
    GymieSession,
    array_text,
    space_from_info,
    space_info,
)
from relay.core.errors import ConnectionLost, InvalidAction, RemoteError
from relay.server import EnvHost, gymnasium_factory
from relay.testing import check_env_as_local

SEED = 3
ACTIONS = (0, 1, 1, 0)

RECORDED: dict[str, Any] = {
    # CartPole-v1 hosted by the real Gymie server through Gymie's get_env
    # override (relay_bench/peers/gymie_launcher.py): the same gymnasium env relay
    # serves, so the same numbers; make with seed 3, then reset, steps ACTIONS.
    "reset": "[-0.041435081511735916, -0.026318948715925217, 0.030127447098493576, "
             "0.008216203190386295]",
    "steps": [
        "[[-0.041961461305618286, -0.22185972332954407, 0.03029177151620388, "
        "0.3102504014968872], 1.0, false, {}]",
        "[[-0.04639865830540657, -0.027182159945368767, 0.03649677708745003, "
        "0.027272429317235947], 1.0, false, {}]",
        "[[-0.04694230109453201, 0.1673979014158249, 0.037042226642370224, "
        "-0.253675639629364], 1.0, false, {}]",
        "[[-0.04359434172511101, -0.028232838958501816, 0.03196871280670166, "
        "0.05045710876584053], 1.0, false, {}]",
    ],
    "close": "true",
    "action_space": '{"name": "Discrete", "n": 2}',
    # gym 0.17.3's own CartPole-v1 (bounds at the float32 maximum): what relay
    # sends for gymnasium's CartPole, whose infinite bounds it clamps.
    "observation_space": '{"name": "Box", "shape": [4], "low": [-4.800000190734863, '
                         '-3.4028234663852886e+38, -0.41887903213500977, '
                         '-3.4028234663852886e+38], "high": [4.800000190734863, '
                         '3.4028234663852886e+38, 0.41887903213500977, '
                         '3.4028234663852886e+38]}',
}

# (message sent first thing on a connection, (close code, reason)) recorded from Gymie.
BAD_MESSAGES: list[tuple[str | bytes, tuple[int, str]]] = [
    ("not json", (1003, "Message `not json` is invalid")),
    (b"\x00\xff", (1003, "Message `b'\\x00\\xff'` is invalid")),
    ('{"method":"make"}', (1003, "Message keys ['method'] are missing or invalid")),
    ('{"method": "nope", "params": {}}', (1007, "Method `nope` not found")),
    ('{"method": null, "params": {}}', (1007, "Method `None` not found")),
    ('{"method": ["x"], "params": {}}', (1007, "Parameters `{}` are wrong")),
    ('{"method": "make", "params": [1]}', (1007, "Parameters `[1]` are wrong")),
    ('{"method": "make", "params": {"env_id": "CartPole-v1", "bogus": 1}}',
     (1007, "Parameters `{'env_id': 'CartPole-v1', 'bogus': 1}` are wrong")),
    ('{"params": {}, "method": "reset", "x": 1}', (1007, "Parameters `{}` are wrong")),
    ('{"method": "reset", "params": {"instance_id": "zz"}}', (1007, "Instance `zz` not found")),
    ('{"method": "reset", "params": {"instance_id": "zz", "seed": 1}}',
     (1007, "Parameters `{'instance_id': 'zz', 'seed': 1}` are wrong")),
    ('{"method": "close", "params": {"instance_id": ["x"]}}',
     (1007, "Parameters `{'instance_id': ['x']}` are wrong")),
    ('{"method": "action_sample", "params": {"instance_id": "nope"}}',
     (1007, "Instance `nope` not found")),
    ('{"method": "make", "params": {"env_id": "Nope-v3"}}',
     (1007, "Environment `Nope-v3` not found")),
    ('{"method": "make", "params": {"env_id": "foo"}}', (1007, "Environment `foo` is malformed")),
    ('{"method": "make", "params": {"env_id": "CartPole-v1", "seed": -1}}',
     (1007, "Unknonwn error: Seed must be a non-negative integer or omitted, not -1")),
]
# after make + reset of CartPole-v1: (action, reason); "step before reset" is the last
BAD_ACTIONS = [(5, "Action `5` is wrong"), ("x", "Action `x` is wrong"),
               ([0], "Action `[0]` is wrong"), (0.5, "Action `0.5` is wrong")]


# -- helpers ----------------------------------------------------------------------------


def gymie_sequence(url: str, env_id: str) -> dict[str, Any]:
    """The answers to the fixed request sequence of RECORDED, over a plain websockets client."""
    out: dict[str, Any] = {}
    with connect(url, compression=None, open_timeout=10) as ws:

        def call(method: str, **params: Any) -> str:
            ws.send(json.dumps({"method": method, "params": params}))
            answer = ws.recv(timeout=30)
            assert isinstance(answer, str), "Gymie answers with text messages"
            return answer

        out["make"] = instance = call("make", env_id=env_id, seed=SEED)
        out["observation_space"] = call("observation_space", instance_id=instance)
        out["action_space"] = call("action_space", instance_id=instance)
        out["reset"] = call("reset", instance_id=instance)
        out["steps"] = [call("step", instance_id=instance, action=a) for a in ACTIONS]
        out["action_sample"] = call("action_sample", instance_id=instance)
        out["close"] = call("close", instance_id=instance)
    return out


def close_of(url: str, *messages: str | bytes) -> tuple[int, str]:
    """Send ``messages`` (answers ignored) and return the server's close code and reason."""
    with connect(url, compression=None, open_timeout=10) as ws:
        try:
            for message in messages:
                ws.send(message)
                ws.recv(timeout=30)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"closed without a close frame: {exc}"
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError(f"the server answered {messages!r} instead of closing")


def bad_action_close(url: str, env_id: str, action: Any, *, reset: bool = True) -> tuple[int, str]:
    with connect(url, compression=None, open_timeout=10) as ws:
        ws.send(json.dumps({"method": "make", "params": {"env_id": env_id}}))
        instance = ws.recv(timeout=30)
        if reset:
            ws.send(json.dumps({"method": "reset", "params": {"instance_id": instance}}))
            ws.recv(timeout=30)
        ws.send(json.dumps({"method": "step", "params": {"instance_id": instance,
                                                         "action": action}}))
        try:
            ws.recv(timeout=30)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError(f"action {action!r} was accepted")


def run_episode(env: gym.Env, seed: int | None = None) -> tuple[int, float, bool, bool]:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    steps, total, terminated, truncated = 0, 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        steps += 1
        total += float(reward)
    return steps, total, terminated, truncated


@pytest.fixture
def server() -> Iterator[relay.Server]:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/gym?codec=gymie") as srv:
        yield srv


def plain(url: Any) -> str:
    return str(url).split("?", 1)[0]


# -- formats, no sockets ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", ">i2", "?"])
@pytest.mark.parametrize("shape", [(64,), (8, 8), (84, 84, 4), (3, 5, 7, 2), (1, 64), (64, 1, 1)])
def test_array_text_is_json_dumps_and_str_of_tolist(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    if dtype == "?":
        array = rng.integers(0, 2, shape).astype(bool)
    else:
        info = np.iinfo(np.dtype(dtype))
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        array.reshape(-1)[:2] = [info.min, info.max]
    assert array_text(array, json_style=True) == json.dumps(array.tolist())
    assert array_text(array, json_style=False) == str(array.tolist())
    view = array[::-1]  # not contiguous
    assert array_text(view, json_style=True) == json.dumps(view.tolist())


@pytest.mark.parametrize("array", [np.zeros(4, np.float32), np.zeros(10, np.uint8),
                                   np.zeros((0, 80), np.uint8), np.zeros(100, np.int64)])
def test_array_text_declines_what_it_cannot_make(array: np.ndarray) -> None:
    assert array_text(array, json_style=True) is None


def test_space_info_is_gymies_with_finite_bounds() -> None:
    env = gym.make("CartPole-v1")
    assert np.isinf(env.observation_space.high).any()  # gymnasium's CartPole: infinite
    assert json.dumps(space_info(env.observation_space)) == RECORDED["observation_space"]
    assert json.dumps(space_info(env.action_space)) == RECORDED["action_space"]
    assert space_info(gym.spaces.MultiBinary(5)) == {"name": "MultiBinary", "n": 5, "shape": [5]}
    assert space_info(gym.spaces.MultiDiscrete([2, 3])) == {"name": "MultiDiscrete"}
    box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    assert space_info(box)["high"] == [FLOAT32_MAX, FLOAT32_MAX]
    assert "Infinity" not in json.dumps(space_info(box))


def test_space_from_info_rebuilds_the_spaces() -> None:
    assert space_from_info(json.loads(RECORDED["action_space"])) == gym.spaces.Discrete(2)
    box = space_from_info(json.loads(RECORDED["observation_space"]))
    assert box == gym.make("CartPole-v1").observation_space.__class__(
        low=np.array([-4.8, -FLOAT32_MAX, -0.41887903, -FLOAT32_MAX], np.float32),
        high=np.array([4.8, FLOAT32_MAX, 0.41887903, FLOAT32_MAX], np.float32))
    assert space_from_info({"name": "MultiBinary", "n": 3, "shape": [3]}) == \
        gym.spaces.MultiBinary(3)
    with pytest.raises(relay.CodecError):
        space_from_info({"name": "MultiDiscrete"})


def test_session_answers_without_sockets() -> None:
    host = EnvHost(gymnasium_factory("CartPole-v1"))
    session = GymieSession(host.handle, new_id=lambda: "a" * 32)
    assert session.receive(json.dumps({"method": "make",
                                       "params": {"env_id": "CartPole-v1", "seed": SEED}})) \
        == "a" * 32
    where = {"instance_id": "a" * 32}
    assert session.receive(json.dumps({"method": "reset", "params": where})) == RECORDED["reset"]
    for action, expected in zip(ACTIONS, RECORDED["steps"], strict=True):
        message = {"method": "step", "params": {**where, "action": action}}
        assert session.receive(json.dumps(message).encode()) == expected  # binary too
    assert session.receive(json.dumps({"method": "close", "params": where})) == "true"
    assert session.receive(json.dumps({"method": "close", "params": where})) == \
        GymieClose(1007, "Instance `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa` not found")
    host.close()


def test_session_reports_truncation_as_gym_017_did() -> None:
    host = EnvHost(lambda env_id, **kw: gym.make("CartPole-v1", max_episode_steps=3))
    session = GymieSession(host.handle)
    instance = session.receive('{"method": "make", "params": {"env_id": "CartPole-v1"}}')
    assert isinstance(instance, str) and re.fullmatch(r"[0-9a-f]{32}", instance)
    session.receive(json.dumps({"method": "reset", "params": {"instance_id": instance}}))
    answers = [json.loads(session.receive(json.dumps(
        {"method": "step", "params": {"instance_id": instance, "action": i % 2}})))
        for i in range(3)]
    assert [a[2] for a in answers] == [False, False, True]
    assert answers[-1][3] == {"TimeLimit.truncated": True}
    host.close()


def test_session_never_raises_on_garbage() -> None:
    session = GymieSession(EnvHost(gymnasium_factory("CartPole-v1")).handle)
    for message in ["[1, 2]", '"abc"', "5", "null", '{"method": {}, "params": {}}', "\ud800",
                    b"\xff" * 10, '{"method": "step", "params": {"instance_id": {}}}']:
        answer = session.receive(message)
        assert isinstance(answer, GymieClose) and answer.code in (1003, 1007), message


# -- relay's Gymie-mode server, real sockets -----------------------------------------------


def test_server_answers_like_the_recording(server: relay.Server) -> None:
    answers = gymie_sequence(plain(server.address), "CartPole-v1")
    assert re.fullmatch(r"[0-9a-f]{32}", answers["make"])
    for key in ("observation_space", "action_space", "reset", "steps", "close"):
        assert answers[key] == RECORDED[key], key
    assert answers["action_sample"] in ("0", "1")


@pytest.mark.parametrize(("message", "closed"), BAD_MESSAGES)
def test_server_closes_on_bad_messages_like_gymie(server: relay.Server, message: str | bytes,
                                                  closed: tuple[int, str]) -> None:
    url = plain(server.address)
    assert close_of(url, message) == closed
    assert gymie_sequence(url, "CartPole-v1")["reset"] == RECORDED["reset"]  # still serving


def test_server_closes_on_bad_actions_like_gymie(server: relay.Server) -> None:
    url = plain(server.address)
    for action, reason in BAD_ACTIONS:
        assert bad_action_close(url, "CartPole-v1", action) == (1007, reason)
    assert bad_action_close(url, "CartPole-v1", 0, reset=False) == (1007, "Action `0` is wrong")
    assert bad_action_close(url, "CartPole-v1", 1.0) == (1007, "Action `1.0` is wrong")


def test_server_refuses_other_env_ids(server: relay.Server) -> None:
    message = '{"method": "make", "params": {"env_id": "MountainCar-v0"}}'
    assert close_of(plain(server.address), message) == \
        (1007, "Environment `MountainCar-v0` not found")


def test_server_survives_what_gymie_does_not(server: relay.Server) -> None:
    url = plain(server.address)
    # JSON that is not an object: Gymie's handler crashes and writes garbage
    assert close_of(url, "[1, 2]") == (1003, "Message `[1, 2]` is invalid")
    # a reason longer than a close frame holds is cut to 123 bytes (Gymie's frame is invalid)
    code, reason = close_of(url, "x" * 300)
    assert code == 1003 and reason.startswith("Message `xxx") and len(reason.encode()) == 123
    # invalid UTF-8 in a text frame
    with raw_websocket(server.address.port) as sock:
        sock.sendall(bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]))  # masked text, bad UTF-8
        frame = sock.recv(4096)
        assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1007
    assert gymie_sequence(url, "CartPole-v1")["reset"] == RECORDED["reset"]


def test_server_refuses_bad_http_and_oversized_frames() -> None:
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/gym?codec=gymie",
                     max_message_size=1 << 20) as server:
        port, url = server.address.port, plain(server.address)
        # plain HTTP without the upgrade
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /gym HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).split(b" ", 2)[1] in (b"400", b"426")
        # another path
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/other", open_timeout=10)
        assert refused.value.response.status_code == 404
        # garbage instead of HTTP
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01garbage\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(4096)[:12] in (b"", b"HTTP/1.1 400")
        # a 20 MB frame: closed with 1009 (message too big)
        with connect(url, compression=None, max_size=None, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.send("x" * (20 << 20))
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert gymie_sequence(url, "CartPole-v1")["steps"] == RECORDED["steps"]


class BigObsEnv(gym.Env):
    """A 2000x2000 uint8 frame per step: ~14 MB of Gymie JSON, more than socket buffers hold."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (2000, 2000), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.frame = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self.frame, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self.frame, 1.0, False, False, {}


def raw_websocket(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A socket after a WebSocket handshake on /gym, with no library reading behind it."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /gym HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def send_text(sock: socket.socket, text: str) -> None:
    data = text.encode()
    assert len(data) < 65536
    header = bytes([0x81, 0xFE]) + len(data).to_bytes(2, "big") + b"\0\0\0\0"  # mask 0
    sock.sendall(header + data)


def recv_text(sock: socket.socket) -> str:
    def exactly(n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = sock.recv(min(n - got, 1 << 20))
            assert chunk, "connection closed"
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    first, second = exactly(2)
    assert first == 0x81, first  # one unfragmented text frame
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(exactly(2), "big")
    elif size == 127:
        size = int.from_bytes(exactly(8), "big")
    return exactly(size).decode()


def test_server_waits_for_a_client_slow_to_read() -> None:
    with relay.serve(lambda env_id, **kw: BigObsEnv(), "ws://127.0.0.1:0/gym?codec=gymie") as srv:
        with raw_websocket(srv.address.port, rcvbuf=4096) as sock:
            send_text(sock, '{"method": "make", "params": {"env_id": "Big-v0"}}')
            instance = recv_text(sock)
            send_text(sock, json.dumps({"method": "reset", "params": {"instance_id": instance}}))
            recv_text(sock)
            send_text(sock, json.dumps({"method": "step", "params": {"instance_id": instance,
                                                                     "action": 1}}))
            threading.Event().wait(1.5)  # nobody reads: the server's send blocks meanwhile
            answer = recv_text(sock)
    obs, reward, done, info = json.loads(answer)
    assert np.array_equal(np.asarray(obs, np.uint8), BigObsEnv().frame)
    assert (reward, done, info) == (1.0, False, {})


def test_server_serves_several_clients_at_once(server: relay.Server) -> None:
    url = plain(server.address)
    results: list[Any] = []

    def client() -> None:
        try:
            results.append(gymie_sequence(url, "CartPole-v1"))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 6
    for answers in results:
        assert not isinstance(answers, Exception), answers
        assert answers["steps"] == RECORDED["steps"]
    assert len({answers["make"] for answers in results}) == 6


def test_server_closes_envs_of_a_client_that_leaves() -> None:
    closed: list[str] = []

    class Tracked(gym.Wrapper):
        def close(self) -> None:
            closed.append("closed")
            super().close()

    with relay.serve(lambda env_id, **kw: Tracked(gym.make("CartPole-v1")),
                     "ws://127.0.0.1:0/gym?codec=gymie") as server:
        with connect(plain(server.address), open_timeout=10) as ws:
            ws.send('{"method": "make", "params": {"env_id": "CartPole-v1"}}')
            ws.recv(timeout=30)
        deadline = threading.Event()
        for _ in range(50):
            if closed:
                break
            deadline.wait(0.1)
    assert closed == ["closed"]


def test_server_over_wss_with_a_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import ssl

    caplog.set_level(logging.DEBUG)  # websockets logs handshake headers at DEBUG

    from relay.testing import make_certificate

    certfile, keyfile = make_certificate(tmp_path)
    url = f"wss://127.0.0.1:0/gym?codec=gymie&cert={certfile}&key={keyfile}"
    with relay.serve("CartPole-v1", url, token="s3cret") as server:
        assert "cert" not in server.address.query and "key" not in server.address.query
        context = ssl.create_default_context(cafile=str(certfile))
        target = plain(server.address)
        with pytest.raises(InvalidStatus) as refused:
            connect(target, ssl=context, open_timeout=10)
        assert refused.value.response.status_code == 401
        with connect(target, ssl=context, open_timeout=10,
                     additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send(json.dumps({"method": "make", "params": {"env_id": "CartPole-v1"}}))
            assert len(ws.recv(timeout=30)) == 32
        env = relay.make(f"{server.address}&ca={certfile}", "CartPole-v1", token="s3cret")
        try:
            assert run_episode(env, seed=1)[0] > 0
        finally:
            env.close()
    # relay's client and server log the headers, never the token (the raw client
    # above logs to websockets.client)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    assert "< Authorization: ***" in logged and "> Authorization: ***" in logged
    assert not [text for text in logged if "s3cret" in text]


def test_cli_serves_gymie(free_port: int) -> None:
    url = f"ws://127.0.0.1:{free_port}/gym?codec=gymie"
    process = subprocess.Popen([sys.executable, "-m", "relay", "serve", "CartPole-v1",
                                "--url", url], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "serving" in line, line + process.stderr.read()
        answers = gymie_sequence(f"ws://127.0.0.1:{free_port}/gym", "CartPole-v1")
        assert answers["steps"] == RECORDED["steps"]
    finally:
        process.terminate()
        process.wait(10)


# -- relay's Gymnasium client over Gymie's protocol (relay's server here) -------------------


def test_client_passes_check_env_and_matches_local_episodes(server: relay.Server) -> None:
    env = relay.make(server.address, "CartPole-v1")
    try:
        check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
        local = gym.make("CartPole-v1")
        for seed in (1, 2):
            obs, _ = env.reset(seed=seed)
            expected, _ = local.reset(seed=seed)
            assert obs.dtype == np.float32 and np.array_equal(obs, expected)
            for action in (0, 1, 1, 0, 1):
                got = env.step(action)
                want = local.step(action)
                assert np.array_equal(got[0], want[0]) and got[1:4] == want[1:4]
        steps, total, terminated, truncated = run_episode(env, seed=5)
        assert steps == total and (terminated or truncated)
    finally:
        env.close()


def test_client_reports_truncation_and_gymie_errors() -> None:
    with relay.serve(lambda env_id, **kw: gym.make(env_id, max_episode_steps=4),
                     "ws://127.0.0.1:0/gym?codec=gymie") as server:
        env = relay.make(server.address, "CartPole-v1")
        try:
            env.reset(seed=1)
            results = [env.step(i % 2) for i in range(4)]
            assert [r[3] for r in results] == [False, False, False, True]  # truncated
            assert [r[2] for r in results] == [False] * 4
            with pytest.raises(InvalidAction, match="Action `7` is wrong"):
                env.step(7)
            with pytest.raises(ConnectionLost, match="closed it after an error"):
                env.step(0)  # Gymie's way: an error ends the connection
        finally:
            env.close()
        with pytest.raises(RemoteError, match="Environment `Nope-v0` not found"):
            relay.make(server.address, "Nope-v0")


def test_client_warns_that_gymie_ignores_seed_0(server: relay.Server) -> None:
    env = relay.make(server.address, "CartPole-v1")
    try:
        with pytest.warns(RuntimeWarning, match="seed 0"):
            env.reset(seed=0)
        with pytest.raises(relay.ConfigError, match="options"):
            env.reset(options={"low": -0.1})
    finally:
        env.close()
    with pytest.raises(relay.ConfigError, match="kwargs"):
        relay.make(server.address, "CartPole-v1", max_episode_steps=3)


def test_client_times_out_on_a_hung_server_and_sees_a_dead_one() -> None:
    from websockets.sync.server import serve as ws_serve

    release = threading.Event()

    def hung(websocket: Any) -> None:  # answers make, then never again
        websocket.recv()
        websocket.send("f" * 32)
        for name in ("observation_space", "action_space"):
            websocket.recv()
            websocket.send(RECORDED[name])
        release.wait(30)

    with ws_serve(hung, "127.0.0.1", 0) as hung_server:
        threading.Thread(target=hung_server.serve_forever, daemon=True).start()
        port = hung_server.socket.getsockname()[1]
        env = relay.make(f"ws://127.0.0.1:{port}/gym?codec=gymie", "CartPole-v1", timeout=1)
        try:
            with pytest.raises(relay.Timeout):
                env.reset()
            with pytest.raises(ConnectionLost):  # no request ids: the connection is spent
                env.reset()
        finally:
            env.close()
            release.set()
            hung_server.shutdown()

    server = relay.serve("CartPole-v1", "ws://127.0.0.1:0/gym?codec=gymie")
    env = relay.make(server.address, "CartPole-v1")
    try:
        env.reset(seed=1)
        server.close()
        with pytest.raises(ConnectionLost):
            env.step(0)
    finally:
        env.close()
        server.close()


def test_client_connect_errors() -> None:
    with pytest.raises(relay.ConnectError):
        relay.make("ws://127.0.0.1:1/gym?codec=gymie", "CartPole-v1", connect_timeout=2)
    with pytest.raises(relay.ConfigError):
        relay.make("zmq+tcp://127.0.0.1:1?codec=gymie", "CartPole-v1")


# -- the real Gymie server (slow: its own venv, built on first use) --------------------------


@pytest.fixture(scope="session")
def real_gymie() -> Iterator[str]:
    """The real Gymie 0.5.4 server's URL; it also hosts gymnasium envs as ``gymnasium/<id>``."""
    from relay_bench.peers.gymie_server import GymieVenvError, ensure_gymie_venv, real_gymie_server

    try:
        python = ensure_gymie_venv()
    except GymieVenvError as exc:
        pytest.skip(f"cannot install the real Gymie server (pip failed): {exc}")
    with real_gymie_server(python, gymnasium_prefix="gymnasium/") as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_gymie_matches_recording_and_relay(real_gymie: str, server: relay.Server) -> None:
    real = gymie_sequence(real_gymie, "gymnasium/CartPole-v1")
    ours = gymie_sequence(plain(server.address), "CartPole-v1")
    for answers in (real, ours):
        assert re.fullmatch(r"[0-9a-f]{32}", answers["make"])
        assert answers["action_sample"] in ("0", "1")
    for key in ("reset", "steps", "close", "action_space"):
        assert real[key] == RECORDED[key] == ours[key], key
    # gym 0.17.3's own CartPole declares float32-max bounds: the very bytes relay sends
    stock = gymie_sequence(real_gymie, "CartPole-v1")
    assert stock["observation_space"] == RECORDED["observation_space"] == ours["observation_space"]
    # Gymie with gymnasium's CartPole writes Infinity, which JSON.parse rejects
    assert "Infinity" in real["observation_space"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_gymie_closes_like_relay(real_gymie: str, server: relay.Server) -> None:
    ours = plain(server.address)
    for message, closed in BAD_MESSAGES:
        assert close_of(real_gymie, message) == closed == close_of(ours, message), message
    for action, reason in BAD_ACTIONS:
        assert bad_action_close(real_gymie, "CartPole-v1", action) == (1007, reason)
        assert bad_action_close(real_gymie, "gymnasium/CartPole-v1", action) == (1007, reason)
    assert bad_action_close(real_gymie, "CartPole-v1", 0, reset=False) == \
        (1007, "Action `0` is wrong")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "gymnasium/CartPole-v1"])
def test_relay_client_drives_the_real_gymie_server(real_gymie: str, env_id: str) -> None:
    env = relay.make(real_gymie + "?codec=gymie", env_id)
    try:
        check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
        assert env.action_space == gym.spaces.Discrete(2)
        first, _ = env.reset(seed=11)
        again, _ = env.reset(seed=11)
        assert np.array_equal(first, again)  # seeded through a fresh make
        if env_id.startswith("gymnasium/"):
            assert np.array_equal(first, gym.make("CartPole-v1").reset(seed=11)[0])
        for episode in range(3):
            steps, total, terminated, truncated = run_episode(env, seed=100 + episode)
            assert steps == total and steps > 0 and (terminated or truncated)
        with pytest.raises(InvalidAction, match="Action `3` is wrong"):
            env.step(3)
        with pytest.raises(ConnectionLost):
            env.step(0)
    finally:
        env.close()
