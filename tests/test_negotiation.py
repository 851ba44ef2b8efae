"""Codec negotiation: one rule for both roles (relay.core.session.offered_codecs).

A side set to codec X speaks X and json; the codec used is the first of the
client's codecs that the server speaks.
"""

from __future__ import annotations

import pytest

import relay
from relay.connection import HANDSHAKE_CODEC
from relay.core.messages import Envelope, Error, Hello, Welcome
from relay.core.plugins import get_transport
from relay.core.url import make_url

URLS = ["memory://negotiation", "ws://127.0.0.1:0"]


def hello(address: str, settings, codecs: tuple[str, ...]):
    """Send a raw Hello offering ``codecs``; return the server's answer."""
    url = make_url(address)
    channel = get_transport(url.scheme).connect(url, settings, timeout=5)
    try:
        channel.send(HANDSHAKE_CODEC.encode(Envelope(0, Hello(codecs=codecs))))
        return HANDSHAKE_CODEC.decode(channel.recv(5)).message
    finally:
        channel.close()


@pytest.mark.parametrize("url", URLS)
def test_a_json_server_refuses_a_msgpack_only_client_naming_both_sides(url):
    with relay.serve("CartPole-v1", url, codec="json") as server:
        answer = hello(server.address, server.settings, ("msgpack",))
    assert isinstance(answer, Error) and answer.code == "protocol"
    assert "'msgpack'" in answer.message and "['json']" in answer.message


@pytest.mark.parametrize("url", URLS)
def test_a_json_server_answers_a_msgpack_client_in_its_json_fallback(url):
    with relay.serve("CartPole-v1", url, codec="json") as server:
        env = relay.make(server.address, codec="msgpack")
        try:
            assert env.connection.codec.name == "json"
            env.reset(seed=0)
            env.step(0)
        finally:
            env.close()


@pytest.mark.parametrize(("server_codec", "client_codec", "used"), [
    ("msgpack", "msgpack", "msgpack"),
    ("msgpack", "json", "json"),
    ("json", "json", "json"),
])
def test_the_codec_used_is_the_first_of_the_clients_that_the_server_speaks(
        server_codec, client_codec, used):
    with relay.serve("CartPole-v1", "memory://negotiation", codec=server_codec) as server:
        env = relay.make(server.address, codec=client_codec)
        try:
            assert env.connection.codec.name == used
            env.reset(seed=0)
        finally:
            env.close()


def test_a_msgpack_server_accepts_a_json_only_client():
    # what a JavaScript client sends
    with relay.serve("CartPole-v1", "memory://negotiation") as server:
        answer = hello(server.address, server.settings, ("json",))
    assert isinstance(answer, Welcome) and answer.codec == "json"


def test_a_server_set_to_a_peer_protocol_for_relay1_is_a_config_error():
    from relay.connection import server_codecs
    from relay.core.config import Settings

    with pytest.raises(relay.ConfigError, match="peer protocol"):
        server_codecs(Settings(codec="gymie"))
    with pytest.raises(relay.UnknownCodec):
        server_codecs(Settings(codec="bson"))
