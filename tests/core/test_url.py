import pytest

from relay.core.errors import InvalidURL
from relay.core.url import URL, make_url


def test_parse_scheme_variant_address_query():
    url = make_url("zmq+tcp://127.0.0.1:5555?codec=json&timeout=5")
    assert url.scheme == "zmq+tcp"
    assert (url.base, url.variant) == ("zmq", "tcp")
    assert (url.host, url.port) == ("127.0.0.1", 5555)
    assert dict(url.query) == {"codec": "json", "timeout": "5"}
    assert str(url) == "zmq+tcp://127.0.0.1:5555?codec=json&timeout=5"


def test_paths_and_names():
    assert make_url("zmq+ipc:///tmp/relay.sock").address == "/tmp/relay.sock"
    assert make_url("shm://cartpole").address == "cartpole"
    ws = make_url("ws://127.0.0.1:5000/gym?codec=gymie")
    assert (ws.host, ws.port, ws.path) == ("127.0.0.1", 5000, "/gym")
    assert make_url("grpc://[::1]:80").host == "::1"


def test_make_url_is_idempotent_and_immutable():
    url = make_url("memory://x")
    assert make_url(url) is url
    changed = url.with_options(codec="json")
    assert dict(url.query) == {} and changed.query["codec"] == "json"
    with pytest.raises(TypeError):
        url.query["codec"] = "json"  # type: ignore[index]
    assert isinstance(url.set(address="y"), URL) and url.address == "x"


def test_token_masked_in_repr():
    url = make_url("ws://h:1/p?token=secret")
    assert "secret" not in repr(url)
    assert "secret" in str(url)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:5555", "missing '://'"),
        ("zmq+tcp://", "empty address"),
        ("zmq+tcp://host:99999", "port '99999'"),
        ("zmq+tcp://host:abc", "port 'abc'"),
        ("1zmq://host", "scheme"),
        ("zmq+tcp://h:1?codec=a&codec=b", "given twice"),
        ("zmq+tcp://h :1", "whitespace"),
        ("ws://h:80/gym?codec=gymie#frag", "fragment"),
        ("ws://h:80/gym#frag", "fragment"),
        ("tcp://user:pw@h:5", "user info"),
        ("ws://user@h:5/relay", "user info"),
    ],
)
def test_bad_urls_rejected_with_reason(text, reason):
    with pytest.raises(InvalidURL, match=reason):
        make_url(text)


def test_abstract_zmq_socket_name_is_not_user_info():
    assert make_url("zmq+ipc://@relay").address == "@relay"


@pytest.mark.parametrize(
    "text",
    ["tcp://user:s3cret@h:5", "ws://user:s3cret@h:5/relay?token=s3cret",
     "ws://h:1/p?password=s3cret#x"],
)
def test_invalid_url_errors_mask_user_info_and_secrets(text):
    with pytest.raises(InvalidURL) as caught:
        make_url(text)
    assert "s3cret" not in str(caught.value) and "s3cret" not in caught.value.url
    assert "***" in str(caught.value)


def test_url_pickles_and_deep_copies():
    import copy
    import pickle

    url = make_url("zmq+tcp://127.0.0.1:5555?codec=json&token=s3cret")
    for copied in (pickle.loads(pickle.dumps(url)), copy.deepcopy(url), copy.copy(url)):
        assert copied == url and str(copied) == str(url)
        assert dict(copied.query) == {"codec": "json", "token": "s3cret"}
