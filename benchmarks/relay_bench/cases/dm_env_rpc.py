"""Benchmark rows for dm_env_rpc (listed in :data:`relay_bench.harness.CASE_MODULES`).

=========================================  ===================================================
row                                        what is timed (one ``step``)
=========================================  ===================================================
``dm_env_rpc stock client -> reference``   dm_env_rpc's ``DmEnvAdaptor`` against a stock
                                           server (``PayloadService`` of
                                           :mod:`relay_bench.peers.dm_env_rpc_reference`: a
                                           fixed observation of the payload's shape and dtype)
                                           in another process: the baseline of the rows below
``dm_env_rpc stock client -> relay``       the same client against ``relay.serve(...,
                                           "grpc://...?codec=dm_env_rpc")`` in another process
``relay grpc:// codec=dm_env_rpc``         relay's Gymnasium client with ``?codec=dm_env_rpc``
                                           against that relay server
``relay client -> dm_env_rpc reference``   relay's Gymnasium client against the stock server
=========================================  ===================================================

Payload S is CartPole for relay's server and a fixed 4-float32 observation for
the reference server (it has no CartPole).  A stock client is slow for large
float tensors (``tensor_utils`` packs and unpacks element by element), so a row
times at most ~10 s of steps per payload (never fewer than 50 steps).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from relay_bench.harness import WARMUP, CaseResult, Payload, Unavailable, bench_case, spawn_server

BASELINE = "dm_env_rpc stock client -> reference"
BUDGET = 10.0
"""Seconds of timed steps per row and payload, at most."""


def _timed(step: Callable[[], Any], steps: int) -> list[float]:
    clock = time.perf_counter
    start = clock()
    warmup = 0
    while warmup < WARMUP and (warmup < 5 or clock() - start < BUDGET / 10):
        step()
        warmup += 1
    per_step = (clock() - start) / warmup
    count = max(50, min(steps, int(BUDGET / max(per_step, 1e-9))))
    out = [0.0] * count
    for i in range(count):
        t0 = clock()
        step()
        out[i] = clock() - t0
    return out


def _shape_dtype(payload: Payload) -> tuple[list[int], str]:
    if payload.env_id == "CartPole-v1":
        return [4], "float32"
    return list(payload.env_kwargs["shape"]), str(payload.env_kwargs["dtype"])


def _stock_rows(address: str, settings_of: Callable[[Payload], dict[str, Any]],
                payloads: Sequence[Payload], steps: int) -> CaseResult:
    import grpc
    from dm_env_rpc.v1 import connection, dm_env_adaptor

    for payload in payloads:
        channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        stock = connection.Connection(channel)
        try:
            env, _ = dm_env_adaptor.create_and_join_world(stock, settings_of(payload), {})
            env.reset()
            counter = iter(range(1 << 62))

            def step(env: Any = env, actions: Any = counter) -> None:
                if env.step({"action": np.int64(next(actions) & 1)}).last():
                    env.reset()

            yield payload.name, _timed(step, steps)
            env.close()
        finally:
            stock.close()
            channel.close()


def _relay_server() -> Any:
    return spawn_server([sys.executable, "-m", "relay_bench", "_serve-relay",
                         "grpc://127.0.0.1:0?codec=dm_env_rpc"])


def _reference_server() -> Any:
    return spawn_server([sys.executable, "-m", "relay_bench.cases.dm_env_rpc"])


@bench_case(BASELINE, group="raw")
def stock_vs_reference(payloads: Sequence[Payload], steps: int) -> CaseResult:
    def settings(payload: Payload) -> dict[str, Any]:
        shape, dtype = _shape_dtype(payload)
        return {"shape": shape, "dtype": dtype}

    with _reference_server() as port:
        yield from _stock_rows(f"127.0.0.1:{port}", settings, payloads, steps)


@bench_case("dm_env_rpc stock client -> relay", group="relay", baseline=BASELINE)
def stock_vs_relay(payloads: Sequence[Payload], steps: int) -> CaseResult:
    def settings(payload: Payload) -> dict[str, Any]:
        return {"env_id": payload.env_id, **payload.env_kwargs}

    with _relay_server() as url:
        address = url.split("://", 1)[1].split("?", 1)[0]
        yield from _stock_rows(address, settings, payloads, steps)


def _relay_rows(url: str, kwargs_of: Callable[[Payload], tuple[str | None, dict[str, Any]]],
                payloads: Sequence[Payload], steps: int) -> CaseResult:
    import relay

    for payload in payloads:
        env_id, kwargs = kwargs_of(payload)
        env = relay.make(url, env_id, **kwargs)
        try:
            env.reset()

            def step(env: Any = env) -> None:
                _, _, terminated, truncated, _ = env.step(1)
                if terminated or truncated:
                    env.reset()

            yield payload.name, _timed(step, steps)
        finally:
            env.close()


@bench_case("relay grpc:// codec=dm_env_rpc", group="relay", baseline=BASELINE)
def relay_vs_relay(payloads: Sequence[Payload], steps: int) -> CaseResult:
    with _relay_server() as url:
        yield from _relay_rows(url, lambda p: (p.env_id, dict(p.env_kwargs)), payloads, steps)


@bench_case("relay client -> dm_env_rpc reference", group="relay", baseline=BASELINE)
def relay_vs_reference(payloads: Sequence[Payload], steps: int) -> CaseResult:
    def kwargs(payload: Payload) -> tuple[str | None, dict[str, Any]]:
        shape, dtype = _shape_dtype(payload)
        return None, {"shape": shape, "dtype": dtype}

    with _reference_server() as port:
        try:
            yield from _relay_rows(f"grpc://127.0.0.1:{port}?codec=dm_env_rpc", kwargs,
                                   payloads, steps)
        except ImportError as exc:  # pragma: no cover
            raise Unavailable(str(exc)) from exc


def _serve_reference() -> None:
    """Run the stock payload server; print its port, serve until killed."""
    from relay_bench.peers.dm_env_rpc_reference import PayloadService, start

    server, port = start(PayloadService())
    print(port, flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    _serve_reference()
