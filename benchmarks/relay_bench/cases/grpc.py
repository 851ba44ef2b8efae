"""Benchmark rows ``raw grpcio bidi`` (the baseline of ``relay grpc://``) and
``relay grpc:// channel only``.

A grpcio bidirectional stream ping-pong, server in a separate process
(``python -m relay_bench.cases.grpc`` prints its port), with no relay on
the hot path: the client sends the bytes relay's msgpack codec puts on the
wire for one ``Step`` and the server answers with those of the
``Transition`` of the payload (frames joined into one gRPC message, as
relay's grpc transport sends them).  Both ends use grpcio's plain sync API:
the client's requests come from a queue-fed iterator and it waits on the
response iterator; the server's handler is a generator over the requests.

``relay grpc:// channel only`` is the same ping-pong through relay's
:class:`~relay.transports.grpc.GrpcChannel` on both ends
(:func:`relay_bench.harness.channel_case`).
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from relay.transports.grpc import _INTERNALS
from relay_bench.harness import (
    BASELINES,
    LISTEN_URLS,
    PAYLOADS,
    CaseResult,
    Payload,
    bench_case,
    channel_case,
    spawn_server,
    time_calls,
    tls_files,
)

NAME = "raw grpcio bidi"
SERVICE = "relay_bench.Raw"
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@bench_case(NAME, group="raw")
def raw_grpc(payloads: Sequence[Payload], steps: int) -> CaseResult:
    import grpc

    with spawn_server([sys.executable, "-m", "relay_bench.cases.grpc"]) as port:
        for payload in payloads:
            request = b"".join(payload.wire_frames()[0])
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
            outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

            def requests(outbox: queue.SimpleQueue[Any] = outbox) -> Iterator[bytes]:
                while (item := outbox.get()) is not None:
                    yield item

            call = channel.stream_stream(f"/{SERVICE}/Echo")(requests())
            try:
                outbox.put(payload.name.encode())
                next(call)

                def round_trip(call: Any = call, outbox: Any = outbox,
                               request: bytes = request) -> None:
                    outbox.put(request)
                    next(call)

                yield payload.name, time_calls(round_trip, steps)
            finally:
                outbox.put(None)
                call.cancel()
                channel.close()


BASELINES.setdefault("grpc", NAME)
if not _INTERNALS:  # an upgrade must not slow relay grpc down silently
    print(f"note: grpcio {grpc.__version__} lacks the internals of relay's in-thread gRPC "
          "reads and sends: the relay grpc rows measure the slower threaded fallback",
          file=sys.stderr)
BASELINES.setdefault("grpcs", NAME)
if "grpcs" not in LISTEN_URLS and (_tls := tls_files()) is not None:
    LISTEN_URLS["grpcs"] = f"grpcs://127.0.0.1:0?cert={_tls[0]}&key={_tls[1]}&ca={_tls[0]}"


bench_case("relay grpc:// channel only", group="transport", baseline=NAME)(
    channel_case("grpc://127.0.0.1:0"))


def _serve() -> None:
    import grpc

    replies = {name.encode(): b"".join(p.wire_frames()[1]) for name, p in PAYLOADS.items()}

    def echo(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        reply = replies[next(requests)]
        yield b"ok"
        for _ in requests:
            yield reply

    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.stream_stream_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    _serve()
