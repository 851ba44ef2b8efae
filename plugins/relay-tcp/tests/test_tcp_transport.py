"""relay's transport compliance suite over ``tcp://``, plus TCP-specific edges."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from relay import URL, ConnectionLost, Settings, Timeout, make_url
from relay.core.plugins import get_transport
from relay.testing import TransportCompliance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestTcp(TransportCompliance):
    url = "tcp://127.0.0.1:0"

    @property
    def unreachable_url(self) -> str:  # type: ignore[override]
        return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def settings() -> Settings:
    return Settings(max_message_size=1 << 20, connect_timeout=3.0, timeout=3.0)


@pytest.fixture
def listener(settings: Settings):
    listener = get_transport("tcp").listen(make_url("tcp://127.0.0.1:0"), settings)
    yield listener
    listener.close()


def raw_peer(listener, settings: Settings):
    """A raw socket connected to ``listener`` and the accepted channel."""
    raw = socket.create_connection((listener.address.host, listener.address.port), timeout=5)
    return raw, listener.accept(5.0)


def test_empty_host_binds_loopback(settings: Settings) -> None:
    listener = get_transport("tcp").listen(make_url("tcp://:0"), settings)
    try:
        assert listener.address.host == "127.0.0.1"
        assert listener.address.port != 0
        assert isinstance(listener.address, URL)
    finally:
        listener.close()


def test_wire_format_is_documented_layout(listener, settings: Settings) -> None:
    client = get_transport("tcp").connect(listener.address, settings, timeout=5.0)
    server = listener.accept(5.0)
    try:
        client.send([b"ab", b"", b"cde"])
        frames = server.recv(5.0)
        assert frames == [bytearray(b"ab"), bytearray(b""), bytearray(b"cde")]
        assert all(type(f) is bytearray for f in frames)  # fresh and writable
        # what a raw peer sees on the wire
        raw, channel = raw_peer(listener, settings)
        with raw:
            channel.send([b"ab", b"", b"cde"])
            expected = struct.pack("<IQQQ", 3, 2, 0, 3) + b"abcde"
            got = b""
            while len(got) < len(expected):
                got += raw.recv(100)
            assert got == expected
            channel.close()
    finally:
        client.close()
        server.close()


def test_timeout_mid_message_keeps_stream_in_sync(listener, settings: Settings) -> None:
    raw, channel = raw_peer(listener, settings)
    with raw:
        payload = bytes(range(256)) * 400  # 102400 bytes, more than the receive buffer
        message = struct.pack("<IQQ", 2, 3, len(payload)) + b"xyz" + payload
        raw.sendall(message[:7])  # part of the header
        with pytest.raises(Timeout):
            channel.recv(0.05)
        raw.sendall(message[7:50_000])  # part of the large frame
        with pytest.raises(Timeout):
            channel.recv(0.1)
        raw.sendall(message[50_000:] + struct.pack("<IQ", 1, 4) + b"next")
        assert channel.recv(5.0) == [bytearray(b"xyz"), bytearray(payload)]
        assert channel.recv(5.0) == [bytearray(b"next")]
        channel.close()


def test_oversized_declaration_drops_connection(listener, settings: Settings) -> None:
    raw, channel = raw_peer(listener, settings)
    with raw:
        raw.sendall(struct.pack("<IQ", 1, 1 << 40))  # 1 TiB declared, nothing allocated
        with pytest.raises(ConnectionLost, match="max_message_size"):
            channel.recv(5.0)
        with pytest.raises(ConnectionLost):
            channel.recv(0.1)
        raw.settimeout(5.0)
        assert raw.recv(10) == b""  # hung up on


def test_too_many_frames_declared_drops_connection(listener, settings: Settings) -> None:
    raw, channel = raw_peer(listener, settings)
    with raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # "GET " read as a frame count
        with pytest.raises(ConnectionLost, match="frames"):
            channel.recv(5.0)


def test_eof_mid_message_is_connection_lost(listener, settings: Settings) -> None:
    raw, channel = raw_peer(listener, settings)
    raw.sendall(struct.pack("<IQ", 1, 100) + b"only part")
    raw.close()
    with pytest.raises(ConnectionLost):
        channel.recv(5.0)


def test_reset_is_connection_lost(listener, settings: Settings) -> None:
    raw, channel = raw_peer(listener, settings)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST
    with pytest.raises(ConnectionLost):
        channel.recv(5.0)
    with pytest.raises(ConnectionLost):
        channel.send([b"x"])


def test_send_to_a_peer_that_never_reads_ends(listener) -> None:
    settings = Settings(max_message_size=64 << 20, timeout=0.5)
    client = get_transport("tcp").connect(listener.address, settings, timeout=5.0)
    server = listener.accept(5.0)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionLost, match="read nothing"):
            for _ in range(20):
                client.send([bytes(32 << 20)])
        assert time.monotonic() - start < 10
    finally:
        client.close()
        server.close()


def test_close_from_another_thread_ends_a_blocked_recv(listener, settings: Settings) -> None:
    client = get_transport("tcp").connect(listener.address, settings, timeout=5.0)
    server = listener.accept(5.0)
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            client.recv(None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    time.sleep(0.1)
    client.close()
    thread.join(5.0)
    server.close()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)


def test_many_frames_beyond_iov_max(listener, settings: Settings) -> None:
    client = get_transport("tcp").connect(listener.address, settings, timeout=5.0)
    server = listener.accept(5.0)
    try:
        frames = [i.to_bytes(4, "little") for i in range(3000)]
        client.send(frames)
        assert [bytes(f) for f in server.recv(5.0)] == frames
    finally:
        client.close()
        server.close()


def test_listen_on_a_taken_port_is_a_relay_error(listener, settings: Settings) -> None:
    import relay

    with pytest.raises(relay.TransportError):
        get_transport("tcp").listen(listener.address, settings)


def test_url_without_port_is_rejected(settings: Settings) -> None:
    import relay

    with pytest.raises(relay.InvalidURL):
        get_transport("tcp").connect(make_url("tcp://127.0.0.1"), settings, timeout=1.0)
