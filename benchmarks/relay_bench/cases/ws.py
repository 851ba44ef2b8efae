"""Benchmark rows for the WebSocket transport.

* ``raw websockets``: a ping-pong with the websockets library alone (sync API,
  no compression, server in a separate process) of the very bytes relay puts
  on the wire for one step: the msgpack frames of ``Step`` and ``Transition``
  in relay's WebSocket framing.  It is the baseline of the ``relay ws://`` and
  ``relay wss://`` rows.
* ``relay ws channel only``: relay's ws transport alone (its framing, no
  codec, no session, no environment) with the same bytes: the transport's
  share of a ``relay ws://`` step (:func:`relay_bench.harness.channel_case`).
* ``relay wss://`` gets a listen URL with a self-signed certificate made here
  (only if the ``cryptography`` package is installed).

Server process: ``python -m relay_bench.cases.ws ws://127.0.0.1:0``
prints its address, then answers every message with the reply bytes of the
payload named by the client's first message.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from relay.transports.ws import pack_header
from relay_bench.harness import (
    BASELINES,
    LISTEN_URLS,
    CaseResult,
    Payload,
    Unavailable,
    bench_case,
    channel_case,
    spawn_server,
    time_calls,
    tls_files,
)

RAW = "raw websockets"


def framed(frames: Sequence[bytes]) -> bytes:
    """One WebSocket message holding relay frames (relay/transports/ws.py framing)."""
    return pack_header([len(f) for f in frames]) + b"".join(frames)


@bench_case(RAW, group="raw")
def raw_websockets(payloads: Sequence[Payload], steps: int) -> CaseResult:
    import websockets.sync.client as ws_client

    argv = [sys.executable, "-m", "relay_bench.cases.ws", "ws://127.0.0.1:0"]
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


# relay's ws transport alone (its framing, no codec, no session, no env)
bench_case(CHANNEL, group="raw")(channel_case("ws://127.0.0.1:0"))


def _serve(url: str) -> None:
    import websockets.sync.server as ws_server

    from relay_bench.harness import PAYLOADS

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
        _serve(sys.argv[1])
    except KeyboardInterrupt:
        pass
