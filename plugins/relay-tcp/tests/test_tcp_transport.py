"""relay's transport compliance suite over ``tcp://``, plus TCP-specific edges."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest

from relay import URL, ConnectionLost, Settings, Timeout, make_url
from relay.core.plugins import get_transport
from relay.plugin import TransportCompliance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestTcp(TransportCompliance):
    url = "tcp://127.0.0.1:0"

    def declare(self, address: URL, nbytes: int) -> socket.socket:
        raw = socket.create_connection((address.host, address.port), timeout=5)
        raw.sendall(struct.pack("<IQ", 1, nbytes))  # a header, and never the frame
        return raw

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
    """A raw socket connected to ``listener`` and the accepted channel (its
    receive limit raised as after relay's handshake)."""
    raw = socket.create_connection((listener.address.host, listener.address.port), timeout=5)
    channel = listener.accept(5.0)
    channel.set_receive_limit(settings.max_message_size)
    return raw, channel


def connected(listener, settings: Settings):
    """A client and server channel, receive limits raised as after relay's handshake."""
    client = get_transport("tcp").connect(listener.address, settings, timeout=5.0)
    server = listener.accept(5.0)
    for channel in (client, server):
        channel.set_receive_limit(settings.max_message_size)
    return client, server


def test_empty_host_binds_loopback(settings: Settings) -> None:
    listener = get_transport("tcp").listen(make_url("tcp://:0"), settings)
    try:
        assert listener.address.host == "127.0.0.1"
        assert listener.address.port != 0
        assert isinstance(listener.address, URL)
    finally:
        listener.close()


def test_wire_format_is_documented_layout(listener, settings: Settings) -> None:
    client, server = connected(listener, settings)
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
    client, server = connected(listener, settings)
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
    client, server = connected(listener, settings)
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


@pytest.mark.parametrize("count", [3000, 20_000])  # over IOV_MAX; a header over the buffer
def test_many_frames(listener, settings: Settings, count: int) -> None:
    client, server = connected(listener, settings)
    try:
        frames = [i.to_bytes(4, "little") for i in range(count)]
        client.send(frames)
        client.send([b"after"])
        assert [bytes(f) for f in server.recv(5.0)] == frames
        assert server.recv(5.0) == [bytearray(b"after")]
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


def test_random_fragmentation_and_timeouts_keep_messages_whole(
    listener, settings: Settings
) -> None:
    """Messages cut at random points, with recv timing out in between, arrive intact."""
    rng = random.Random(1)
    sizes = [0, 1, 7, 300, 20_000, 70_000]
    messages = [
        [rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(0, 4))] for _ in range(150)
    ]
    wire = b"".join(
        struct.pack(f"<I{len(m)}Q", len(m), *map(len, m)) + b"".join(m) for m in messages
    )
    raw, channel = raw_peer(listener, settings)

    def dribble() -> None:
        position = 0
        while position < len(wire):
            step = rng.choice([1, 3, 11, 500, 9000, 100_000])
            raw.sendall(wire[position:position + step])
            position += step
            if rng.random() < 0.05:
                time.sleep(0.002)

    sender = threading.Thread(target=dribble)
    sender.start()
    received = []
    deadline = time.monotonic() + 20
    while len(received) < len(messages) and time.monotonic() < deadline:
        try:
            received.append([bytes(f) for f in channel.recv(0.001)])
        except Timeout:
            pass
    sender.join(10)
    raw.close()
    channel.close()
    assert received == messages


def test_burst_of_small_messages(listener, settings: Settings) -> None:
    """Many messages in one burst: some straddle the end of the receive buffer."""
    client, server = connected(listener, settings)
    try:
        messages = [[i.to_bytes(4, "little"), bytes([i % 256]) * (i % 997)] for i in range(2000)]
        for message in messages:
            client.send(message)
        assert [[bytes(f) for f in server.recv(5.0)] for _ in messages] == messages
    finally:
        client.close()
        server.close()


def test_header_straddling_the_receive_buffer(listener, settings: Settings) -> None:
    from relay_tcp.transport import _BUFFER_SIZE

    raw, channel = raw_peer(listener, settings)
    with raw:
        first = bytes(range(256)) * 300
        first = first[: _BUFFER_SIZE - 12 - 6]  # leaves 6 bytes of the next header in the buffer
        second = [b"abc", b"defg"]
        raw.sendall(struct.pack("<IQ", 1, len(first)) + first
                    + struct.pack("<IQQ", 2, 3, 4) + b"abcdefg")
        time.sleep(0.05)  # let it all arrive, so one read fills the buffer
        assert channel.recv(5.0) == [bytearray(first)]
        assert channel.recv(5.0) == [bytearray(f) for f in second]
        channel.close()
