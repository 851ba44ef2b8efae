"""The sans-I/O session: fed envelopes, no sockets, no sleeps, time passed in."""

import pytest

from relay.core.errors import ConnectionLost, LocalProtocolError, RemoteProtocolError
from relay.core.messages import (
    Closed,
    Envelope,
    Error,
    Hello,
    Made,
    Make,
    Observation,
    Reset,
    Step,
    Transition,
    Welcome,
)
from relay.core.session import ClientSession, ServerSession, State


def handshaken(codecs=("msgpack",)) -> tuple[ClientSession, ServerSession]:
    client = ClientSession(codecs)
    server = ServerSession(["msgpack", "json"])
    welcome = server.hello(client.hello())
    client.welcome(welcome)
    return client, server


def test_handshake_negotiates_first_common_codec():
    client, server = handshaken(("json", "msgpack"))
    assert client.state is State.READY and server.state is State.READY
    assert client.codec == server.codec == "json"


def test_request_before_handshake_is_local_error():
    with pytest.raises(LocalProtocolError, match="cannot request in state idle"):
        ClientSession().request(Reset(instance=1), now=0.0, timeout=1.0)


def test_server_refuses_unknown_codec_and_wrong_token():
    server = ServerSession(["msgpack"])
    answer = server.hello(Envelope(0, Hello(codecs=("bson",))))
    assert isinstance(answer.message, Error) and "bson" in answer.message.message
    assert server.state is State.CLOSED
    guarded = ServerSession(["msgpack"], token="s3cret")
    answer = guarded.hello(Envelope(0, Hello(token="wrong")))
    assert isinstance(answer.message, Error) and "token" in answer.message.message


def test_client_refuses_other_protocol_major():
    client = ClientSession()
    client.hello()
    with pytest.raises(RemoteProtocolError, match="relay/2"):
        client.welcome(Envelope(0, Welcome(protocol="relay/2")))
    assert client.state is State.CLOSED


def test_answers_matched_by_id_and_type():
    client, server = handshaken()
    envelope = client.request(Make(env_id="CartPole-v1"), now=0.0, timeout=5.0)
    assert server.request(envelope) == envelope.message
    answer = server.answer(envelope.id, Made(instance=1, observation_space={},
                                             action_space={}))
    request_id, message = client.receive(answer)
    assert request_id == envelope.id and isinstance(message, Made)


def test_late_answer_is_never_taken_for_the_next_request():
    client, _ = handshaken()
    first = client.request(Step(instance=1, action=0), now=0.0, timeout=1.0)
    assert client.expire(now=2.0) == [first.id]
    second = client.request(Step(instance=1, action=1), now=2.0, timeout=1.0)
    late = Envelope(first.id, Transition(obs=0, reward=0.0, terminated=False, truncated=False))
    assert client.receive(late) is None
    assert client.dropped == 1
    on_time = Envelope(second.id, Transition(obs=1, reward=1.0, terminated=False,
                                             truncated=False))
    assert client.receive(on_time)[1].obs == 1


def test_wrong_answer_type_is_remote_protocol_error():
    client, _ = handshaken()
    envelope = client.request(Reset(instance=1), now=0.0, timeout=1.0)
    with pytest.raises(RemoteProtocolError, match="Reset answered with Closed"):
        client.receive(Envelope(envelope.id, Closed()))


def test_error_answers_any_request():
    client, _ = handshaken()
    envelope = client.request(Reset(instance=1), now=0.0, timeout=1.0)
    _, message = client.receive(Envelope(envelope.id, Error(code="env", message="x")))
    assert isinstance(message, Error)


def test_server_rejects_non_requests_and_reused_ids():
    client, server = handshaken()
    with pytest.raises(RemoteProtocolError, match="not a request"):
        server.request(Envelope(5, Observation(obs=0)))
    server.request(Envelope(6, Reset(instance=1)))
    with pytest.raises(RemoteProtocolError, match="not increasing"):
        server.request(Envelope(6, Reset(instance=1)))


def test_server_rejects_request_before_handshake():
    server = ServerSession(["msgpack"])
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        server.request(Envelope(1, Reset(instance=1)))


def test_lost_session_fails_fast():
    client, _ = handshaken()
    client.lost()
    with pytest.raises(ConnectionLost):
        client.request(Reset(instance=1), now=0.0, timeout=1.0)


def test_an_answer_read_after_its_deadline_is_still_taken_until_given_up_on():
    # several requests in flight: an answer that came in time may be read late
    client, _ = handshaken()
    first = client.request(Step(instance=1, action=0), now=0.0, timeout=1.0)
    second = client.request(Step(instance=2, action=0), now=0.0, timeout=1.0)
    client.cancel(second.id)
    answer = Transition(obs=0, reward=0.0, terminated=False, truncated=False)
    assert client.receive(Envelope(first.id, answer))[0] == first.id
    assert client.receive(Envelope(second.id, answer)) is None
    assert client.dropped == 1


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"protocol": 5}, "Hello.protocol must be a string, got 5"),
        ({"codecs": 5}, "Hello.codecs must be a list of strings, got 5"),
        ({"codecs": ["json", 5]}, "Hello.codecs must be a list of strings"),
        ({"codecs": {"json": 1}}, "Hello.codecs must be a list of strings"),
        ({"role": None}, "Hello.role must be a string, got None"),
        ({"token": 5}, "Hello.token must be a string or null"),
    ],
)
def test_server_answers_a_malformed_hello_with_a_protocol_error(fields, named):
    server = ServerSession(["msgpack"], token="s3cret")
    answer = server.hello(Envelope(0, Hello(**{"token": "s3cret", **fields})))
    assert isinstance(answer.message, Error) and answer.message.code == "protocol"
    assert named in answer.message.message and "s3cret" not in answer.message.message
    assert server.state is State.CLOSED


def test_client_refuses_a_malformed_welcome():
    client = ClientSession()
    client.hello()
    with pytest.raises(RemoteProtocolError, match="Welcome.protocol must be a string"):
        client.welcome(Envelope(0, Welcome(protocol=1)))  # type: ignore[arg-type]
    assert client.state is State.CLOSED


def test_token_is_compared_in_constant_time(monkeypatch):
    import hmac

    import relay.core.session as session_module

    compared = []
    compare = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(session_module.hmac, "compare_digest", spy)
    for given, accepted in (("s3cret", True), ("wrong", False), ("sécret", False)):
        server = ServerSession(["msgpack"], token="s3cret")
        answer = server.hello(Envelope(0, Hello(token=given)))
        assert isinstance(answer.message, Welcome) is accepted
    assert compared == [(b"s3cret", b"s3cret"), (b"wrong", b"s3cret"),
                        ("sécret".encode(), b"s3cret")]
