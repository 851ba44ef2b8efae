"""What a hostile client can do to a server, and what a server tells its
clients: malformed handshakes are answered, tracebacks withheld on request.
Over every transport (tokens kept out of logs: test_secrets.py)."""

import pytest

import relay
from relay.connection import HANDSHAKE_CODEC
from relay.core.config import resolve_settings
from relay.core.errors import ConnectionLost
from relay.core.messages import Envelope, Error, Hello
from relay.core.plugins import get_transport
from relay.testing import faulty


def handshake_answer(address, hello_body):
    """The server's answer to a Hello with these (possibly ill-typed) fields, or None
    if the connection ended without one."""
    channel = get_transport(address.scheme).connect(address, resolve_settings(address),
                                                    timeout=10)
    try:
        channel.send(HANDSHAKE_CODEC.encode(Envelope(0, Hello(**hello_body))))
        try:
            return HANDSHAKE_CODEC.decode(channel.recv(10)).message
        except ConnectionLost:
            return None
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("hello_body", "named"),
    [
        ({"protocol": 5}, "Hello.protocol must be a string, got 5"),
        ({"codecs": 5}, "Hello.codecs must be a list of strings, got 5"),
        ({"codecs": [["msgpack"]]}, "Hello.codecs must be a list of strings"),
        ({"role": {"a": 1}}, "Hello.role must be a string"),
    ],
)
def test_malformed_hello_is_answered_with_a_protocol_error(serve, listen_url, hello_body,
                                                           named):
    server = serve("CartPole-v1")
    answer = handshake_answer(server.address, hello_body)
    if answer is None:  # zmq may drop the answer with the connection it closes
        assert listen_url.startswith("zmq")
    else:
        assert isinstance(answer, Error) and answer.code == "protocol"
        assert named in answer.message
    env = relay.make(server.address)  # the server keeps serving
    env.reset(seed=0)
    env.close()


def test_server_can_withhold_tracebacks(serve):
    # (the traceback that is sent by default: test_gymnasium's exception test)
    env = relay.make(serve(faulty, tracebacks=False).address)
    try:
        env.reset()
        with pytest.raises(relay.RemoteEnvError, match="divided by zero") as caught:
            env.step(1)
        assert caught.value.remote_type == "builtins.ZeroDivisionError"
        assert caught.value.remote_traceback == ""
        assert "Remote traceback" not in str(caught.value)
    finally:
        env.close()


@pytest.mark.parametrize("how", ["url", "environment"])
def test_tracebacks_setting_from_url_and_environment(monkeypatch, how):
    url = "zmq+tcp://127.0.0.1:0"
    if how == "url":
        url += "?tracebacks=false"
    else:
        monkeypatch.setenv("RELAY_TRACEBACKS", "0")
    with relay.serve(faulty, url) as server:
        assert server.settings.tracebacks is False
        env = relay.make(server.address)
        env.reset()
        with pytest.raises(relay.RemoteEnvError) as caught:
            env.step(1)
        assert caught.value.remote_traceback == ""
        env.close()


def test_dm_env_rpc_server_can_withhold_tracebacks():
    pytest.importorskip("dm_env_rpc")
    for tracebacks in (True, False):
        with relay.serve(faulty, "grpc://127.0.0.1:0?codec=dm_env_rpc",
                         tracebacks=tracebacks) as server:
            env = relay.make(server.address)
            try:
                env.reset()
                with pytest.raises(relay.RemoteError, match="divided by zero") as caught:
                    env.step(1)
                assert bool(caught.value.remote_traceback) is tracebacks
            finally:
                env.close()
