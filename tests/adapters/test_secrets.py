"""A token given in a URL (``?token=``) never shows in an error message or a log
record: not when nobody listens, not when a handshake or a step times out, not
when the token is refused, not when the peer goes away.  Over every transport."""

import base64
import logging
import threading
import traceback

import numpy as np
import pytest

import relay
from relay.core.config import Settings
from relay.core.errors import RelayError
from relay.core.plugins import get_transport
from relay.core.url import make_url
from relay.testing import faulty

TOKEN = "Tok3n-never-shown"
OTHER = "0ther-never-shown"


def with_token(address, token=TOKEN) -> str:
    url = make_url(address)
    return str(url.with_options(token=token))


def assert_hidden(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Neither token (nor its base64, as in a WebSocket subprotocol) is in the
    messages of ``exc`` and its causes, or in any log record."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None:
        texts.append("".join(traceback.format_exception_only(seen)))
        seen = seen.__cause__ or seen.__context__
    texts += [record.getMessage() for record in caplog.records]
    texts += [record.exc_text or "" for record in caplog.records]
    for secret in (TOKEN, OTHER):
        encoded = base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=")
        for text in texts:
            assert secret not in text and encoded not in text, text


@pytest.fixture(autouse=True)
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)


def test_connect_to_nobody(listen_url, caplog):
    server = relay.serve("CartPole-v1", listen_url, token=TOKEN)
    address = with_token(server.address)
    server.close()
    with pytest.raises(RelayError) as info:
        relay.make(address, connect_timeout=1.0)
    assert_hidden(info.value, caplog)


def test_handshake_timeout(listen_url, caplog):
    # a listener that accepts but never answers the Hello
    url = make_url(listen_url)
    listener = get_transport(url.scheme).listen(url, Settings())
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(5.0)))
    thread.start()
    try:
        with pytest.raises(RelayError) as info:
            relay.make(with_token(listener.address), connect_timeout=0.5)
        assert_hidden(info.value, caplog)
    finally:
        thread.join(10.0)
        for channel in accepted:
            channel.close()
        listener.close()


def test_wrong_token(listen_url, caplog):
    with relay.serve("CartPole-v1", listen_url, token=TOKEN) as server:
        with pytest.raises(RelayError) as info:
            relay.make(with_token(server.address, OTHER), connect_timeout=5.0)
        assert_hidden(info.value, caplog)


def test_step_timeout_and_lost_peer(listen_url, caplog):
    server = relay.serve(faulty, listen_url, token=TOKEN)
    env = relay.make(with_token(server.address), timeout=0.3)
    try:
        env.reset()
        with pytest.raises(relay.Timeout) as info:
            env.step(2)  # sleeps 1 s on the server
        assert_hidden(info.value, caplog)
        server.close()
        with pytest.raises(RelayError) as info:
            env.step(0)
            env.step(0)
        assert_hidden(info.value, caplog)
    finally:
        env.close()
        server.close()


@pytest.mark.parametrize(
    "address",
    ["zmq+tcp://127.0.0.1:notaport", "zmq+tcp://127.0.0.1", "zmq+ipc://", "ws://127.0.0.1",
     "grpc://127.0.0.1", "tcp://127.0.0.1:99999", "shm://a/b", "memory://"],
)
def test_invalid_url(address, caplog):
    with pytest.raises(RelayError) as info:
        relay.make(f"{address}?token={TOKEN}", connect_timeout=1.0)
    assert_hidden(info.value, caplog)


def test_listen_on_a_taken_address(listen_url, caplog):
    with relay.serve("CartPole-v1", listen_url) as server:
        with pytest.raises(RelayError) as info:
            relay.serve("CartPole-v1", with_token(server.address))
        assert_hidden(info.value, caplog)


def test_vector_env_errors_name_sub_envs_without_the_token(caplog):
    from relay.adapters.vector import RemoteVectorEnv

    server = relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:0", token=TOKEN)
    address = with_token(server.address)
    with pytest.raises(relay.InvalidAction, match="sub-environment 1") as info:
        env = RemoteVectorEnv(address, num_envs=2)  # the URL as a string, as users give it
        try:
            env.reset(seed=0)
            env.step(np.array([0, 7]))
        finally:
            env.close()
    assert_hidden(info.value, caplog)
    server.close()
    with pytest.raises(RelayError, match="sub-environment 0") as info:
        RemoteVectorEnv(address, num_envs=2, connect_timeout=1.0)
    assert_hidden(info.value, caplog)


def test_env_connecting_out_to_nobody(free_port, caplog):
    with pytest.raises(RelayError) as info:
        relay.connect_env(f"zmq+tcp://127.0.0.1:{free_port}?token={TOKEN}", "CartPole-v1",
                          connect_timeout=0.5)
    assert_hidden(info.value, caplog)


def test_gymie_client_to_nobody(free_port, caplog):
    with pytest.raises(RelayError) as info:
        relay.make(f"ws://127.0.0.1:{free_port}/gym?codec=gymie&token={TOKEN}", "CartPole-v1",
                   connect_timeout=0.5)
    assert_hidden(info.value, caplog)
