"""A separate process for tests whose failure mode is a crash: a segfault shows
as a negative exit status instead of killing pytest.

``python hostile_peer.py decode``: decode a frame holding 400 nested msgpack
tuple extensions (which once overflowed the C stack) and print the error.

``python hostile_peer.py URL``: serve CartPole-v1 on URL, send the server that
frame, print the server's answer (or ``lost`` if the connection ended first),
then check that a new client is still served and print ``served``.
"""

from __future__ import annotations

import sys

import msgpack

import relay
from relay.codecs.msgpack import MsgpackCodec
from relay.connection import HANDSHAKE_CODEC
from relay.core.config import resolve_settings
from relay.core.errors import ConnectionLost
from relay.core.messages import Envelope, Hello
from relay.core.plugins import get_transport


def deep_tuple_frame(depth: int) -> bytes:
    """Frame 0 of a ``step`` whose action is ``depth`` nested tuples (ext type 3)."""
    payload = msgpack.packb([])
    for _ in range(depth):
        payload = msgpack.packb([msgpack.ExtType(3, payload)])
    return msgpack.packb([1, "step", {"instance": 1, "action": msgpack.ExtType(3, payload)}])


def main(url: str) -> None:
    with relay.serve("CartPole-v1", url) as server:
        settings = resolve_settings(server.address)
        channel = get_transport(server.address.scheme).connect(server.address, settings,
                                                               timeout=10)
        channel.send(HANDSHAKE_CODEC.encode(Envelope(0, Hello(codecs=("msgpack",)))))
        print(HANDSHAKE_CODEC.decode(channel.recv(10)).message.tag, flush=True)
        channel.send([deep_tuple_frame(400)])
        try:
            print(MsgpackCodec().decode(channel.recv(10)).message, flush=True)
        except ConnectionLost:  # the server hung up before its answer came through
            print("lost", flush=True)
        channel.close()
        env = relay.make(server.address)
        env.reset(seed=0)
        env.close()
        print("served", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "decode":
        try:
            MsgpackCodec().decode([deep_tuple_frame(400)])
        except Exception as exc:
            print(type(exc).__name__, exc)
    else:
        main(sys.argv[1])
