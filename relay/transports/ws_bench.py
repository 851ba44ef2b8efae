"""Benchmark rows for the WebSocket transport (imported by :mod:`relay.bench`).

* ``raw websockets``: a ping-pong with the websockets library alone (sync API,
  no compression, server in a separate process) of the very bytes relay puts
  on the wire for one step: the msgpack frames of ``Step`` and ``Transition``
  in relay's WebSocket framing.  It is the baseline of the ``relay ws://`` and
  ``relay wss://`` rows.
* ``relay ws channel only``: relay's ws transport alone (its framing, no
  codec, no session, no environment) with the same bytes: the transport's
  share of a ``relay ws://`` step.
* ``relay wss://`` gets a listen URL with a self-signed certificate made here
  (only if the ``cryptography`` package is installed).

Server process: ``python -m relay.transports.ws_bench ws://127.0.0.1:0``
prints its address, then answers every message with the reply bytes of the
payload named by the client's first message.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from relay.bench import (
    BASELINES,
    LISTEN_URLS,
    CaseResult,
    Payload,
    Unavailable,
    bench_case,
    spawn_server,
    time_calls,
    tls_files,
)
from relay.transports.ws import pack_header

RAW = "raw websockets"


def framed(frames: Sequence[bytes]) -> bytes:
    """One WebSocket message holding relay frames (relay/transports/ws.py framing)."""
    return pack_header([len(f) for f in frames]) + b"".join(frames)


@bench_case(RAW, group="raw")
def raw_websockets(payloads: Sequence[Payload], steps: int) -> CaseResult:
    import websockets.sync.client as ws_client

    argv = [sys.executable, "-m", "relay.transports.ws_bench", "ws://127.0.0.1:0"]
    with spawn_server(argv) as address:
        for payload in payloads:
            request = framed(payload.wire_frames()[0])
            with ws_client.connect(address, compression=None, max_size=None, proxy=None) as ws:
                ws.send(payload.name)
                if ws.recv(timeout=30) != "ok":
                    raise Unavailable("raw websockets server did not answer")

                def round_trip(ws=ws, request=request) -> None:  # type: ignore[no-untyped-def]
                    ws.send(request)
                    ws.recv()

                yield payload.name, time_calls(round_trip, steps)


CHANNEL = "relay ws channel only"


@bench_case(CHANNEL, group="raw")
def ws_channel_only(payloads: Sequence[Payload], steps: int) -> CaseResult:
    """relay's ws transport alone (its framing, no codec, no session, no env):
    what the transport costs, to tell it apart from relay's per-step work."""
    from relay.core.config import Settings
    from relay.core.plugins import get_transport
    from relay.core.url import make_url

    argv = [sys.executable, "-m", "relay.transports.ws_bench", "--channel", "ws://127.0.0.1:0"]
    settings = Settings()
    with spawn_server(argv) as address:
        for payload in payloads:
            request = payload.wire_frames()[0]
            channel = get_transport("ws").connect(make_url(address), settings, timeout=30)
            try:
                channel.send([payload.name.encode()])
                channel.recv(30)

                def round_trip(channel=channel, request=request) -> None:  # type: ignore[no-untyped-def]
                    channel.send(request)
                    channel.recv(30)

                yield payload.name, time_calls(round_trip, steps)
            finally:
                channel.close()


def _serve_channel(url: str) -> None:
    import threading

    from relay.bench import PAYLOADS
    from relay.core.config import Settings
    from relay.core.errors import ConnectionLost
    from relay.core.plugins import get_transport
    from relay.core.url import make_url

    replies = {name.encode(): p.wire_frames()[1] for name, p in PAYLOADS.items()}
    listener = get_transport("ws").listen(make_url(url), Settings())
    print(listener.address, flush=True)

    def echo(channel) -> None:  # type: ignore[no-untyped-def]
        try:
            reply = replies[bytes(channel.recv(None)[0])]
            channel.send([b"ok"])
            while True:
                channel.recv(None)
                channel.send(reply)
        except ConnectionLost:
            channel.close()

    while True:
        threading.Thread(target=echo, args=(listener.accept(None),), daemon=True).start()


def _serve(url: str) -> None:
    import websockets.sync.server as ws_server

    from relay.bench import PAYLOADS

    replies = {name: framed(p.wire_frames()[1]) for name, p in PAYLOADS.items()}

    def handler(ws) -> None:  # type: ignore[no-untyped-def]
        reply = replies[ws.recv()]
        ws.send("ok")
        for _ in ws:
            ws.send(reply)

    host, port = url.removeprefix("ws://").split(":")
    with ws_server.serve(handler, host, int(port), compression=None, max_size=None) as server:
        print(f"ws://{host}:{server.socket.getsockname()[1]}", flush=True)
        server.serve_forever()


BASELINES.setdefault("ws", RAW)
BASELINES.setdefault("wss", RAW)
if "wss" not in LISTEN_URLS and (_tls := tls_files()) is not None:
    LISTEN_URLS["wss"] = f"wss://127.0.0.1:0?certfile={_tls[0]}&keyfile={_tls[1]}&cafile={_tls[0]}"


if __name__ == "__main__":
    try:
        if sys.argv[1] == "--channel":
            _serve_channel(sys.argv[2])
        else:
            _serve(sys.argv[1])
    except KeyboardInterrupt:
        pass
