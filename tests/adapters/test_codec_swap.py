"""The codec is a setting: URL query, RELAY_CODEC or relay.toml change the bytes on the wire."""

import json

import numpy as np
import pytest

import relay
from relay.transports.memory import MemoryChannel


@pytest.fixture
def wire(monkeypatch):
    """Every message the client sends after the handshake, as sent on the memory transport."""
    sent: list[list[bytes]] = []
    original = MemoryChannel.send

    def spy(self, frames):
        sent.append([bytes(f) for f in frames])
        original(self, frames)

    monkeypatch.setattr(MemoryChannel, "send", spy)
    return sent


@pytest.fixture
def server():
    with relay.serve("CartPole-v1", "memory://0") as server:
        yield server


def drive(url, **kwargs):
    env = relay.make(url, **kwargs)
    try:
        obs, _ = env.reset(seed=0)
        env.step(1)
        assert obs.dtype == np.float32
        return env.connection.codec.name
    finally:
        env.close()


def json_steps(wire):
    steps = []
    for frames in wire:
        try:
            tree = json.loads(frames[0])
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if tree.get("tag") == "step":
            steps.append(tree)
    return steps


def test_default_is_msgpack_not_json(server, wire, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELAY_CODEC", raising=False)
    assert drive(server.address) == "msgpack"
    assert json_steps(wire) == []


def test_codec_from_url(server, wire):
    assert drive(server.address.with_options(codec="json")) == "json"
    (step,) = json_steps(wire)
    assert step["body"]["action"] == 1


def test_codec_from_environment_variable(server, wire, monkeypatch):
    monkeypatch.setenv("RELAY_CODEC", "json")
    assert drive(server.address) == "json"
    assert len(json_steps(wire)) == 1


def test_codec_from_relay_toml(server, wire, monkeypatch, tmp_path):
    monkeypatch.delenv("RELAY_CODEC", raising=False)
    (tmp_path / "relay.toml").write_text('codec = "json"\n')
    monkeypatch.chdir(tmp_path)
    assert drive(server.address) == "json"
    assert len(json_steps(wire)) == 1


def test_argument_beats_environment(server, wire, monkeypatch):
    monkeypatch.setenv("RELAY_CODEC", "json")
    assert drive(server.address, codec="msgpack") == "msgpack"
    assert json_steps(wire) == []


def test_unknown_codec_is_clear_error(server):
    with pytest.raises(relay.UnknownCodec, match="did you mean 'json'"):
        relay.make(server.address.with_options(codec="jsno"))
