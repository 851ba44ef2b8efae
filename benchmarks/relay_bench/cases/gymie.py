"""Benchmark rows for Gymie's protocol: the real Gymie 0.5.4 server vs relay's Gymie mode.

Listed in :data:`relay_bench.harness.CASE_MODULES`.  Rows:

``real Gymie 0.5.4``
    The real server (:mod:`relay_bench.peers.gymie_server`, its own venv, built on
    first use).  S is its own gym 0.17.3 ``CartPole-v1``; M and L are relay's
    :class:`~relay_bench.envs.FixedObsEnv` (``relay_bench/envs.py`` loaded there
    by path), hosted through Gymie's documented ``@override("get_env")``
    (:mod:`relay_bench.peers.gymie_launcher`).
    The client offers per-message deflate, as browsers and the websockets
    library do; Gymie's eventlet accepts it.
``real Gymie 0.5.4, no deflate``
    The same with a client that does not offer deflate.
``relay gymie-mode server``
    ``relay.serve(None, "ws://127.0.0.1:0/gym?codec=gymie")`` in another
    process (gymnasium ``CartPole-v1`` for S), the same client (deflate
    offered, relay's server declines it).  Baseline: the real Gymie row.
``relay.make -> real Gymie``
    relay's Gymnasium client (``relay.make(url + "?codec=gymie")``) driving
    the real server: the full path of a relay user, answers parsed into numpy.

The raw client sends one ``step`` text per round trip and receives the
answer; it parses answers under 4 KiB only (to reset CartPole after
``done``; FixedObsEnv never ends), so the rows measure the servers.  Steps
taken by ``reset`` are not timed.  A row stops a payload after
:data:`TIME_BUDGET` seconds (the real Gymie server needs ~40 ms per M step).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from relay_bench.harness import (
    PAYLOADS,
    WARMUP,
    CaseResult,
    Payload,
    Unavailable,
    bench_case,
    internal,
    spawn_server,
    time_env,
)

TIME_BUDGET = 20.0
"""Seconds of timed steps per row and payload at most (at least :data:`MIN_STEPS`)."""
MIN_STEPS = 30
REAL = "real Gymie 0.5.4"
PREFIX = "gymnasium/"


def env_id(payload: Payload) -> str:
    """The id under which both servers make this payload's env (Gymie's make has no kwargs)."""
    if payload.env_id == "CartPole-v1":
        return payload.env_id
    return f"relay-bench/FixedObs-{payload.name}-v0"


def _register() -> None:
    for payload in PAYLOADS.values():
        name = env_id(payload)
        if payload.env_id != "CartPole-v1" and name not in gym.registry:
            gym.register(name, entry_point="relay_bench.envs:FixedObsEnv",
                         kwargs=dict(payload.env_kwargs), disable_env_checker=True)


_register()


def drive(url: str, env: str, steps: int, *, deflate: bool) -> list[float]:
    """Seconds per Gymie ``step`` round trip over a websockets client (see the module)."""
    from websockets.sync.client import connect

    with connect(url, compression="deflate" if deflate else None, max_size=None,
                 ping_interval=None, open_timeout=30) as ws:

        def call(method: str, **params: Any) -> Any:
            ws.send(json.dumps({"method": method, "params": params}))
            return ws.recv(timeout=120)

        instance = call("make", env_id=env)
        if len(instance) != 32:
            raise Unavailable(f"make {env} failed: {instance!r}")
        call("reset", instance_id=instance)
        texts = [json.dumps({"method": "step", "params": {"instance_id": instance, "action": a}})
                 for a in (1, 0)]
        clock = time.perf_counter
        out: list[float] = []
        warmup = WARMUP
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            i = 0
            budget_end = None
            while len(out) < steps:
                start = clock()
                ws.send(texts[i & 1])
                answer = ws.recv(timeout=120)
                elapsed = clock() - start
                if i >= warmup:
                    out.append(elapsed)
                    budget_end = budget_end or start + TIME_BUDGET
                    if len(out) >= MIN_STEPS and clock() > budget_end:
                        break
                elif i == 5 and elapsed > 0.01:  # a slow server: keep the warm-up short
                    warmup = 10
                if len(answer) < 4096 and json.loads(answer)[2]:
                    call("reset", instance_id=instance)
                i += 1
        finally:
            if gc_was_enabled:
                gc.enable()
        call("close", instance_id=instance)
    return out


def _real_server(payloads: Sequence[Payload]) -> Any:
    from relay_bench.peers.gymie_server import GymieVenvError, ensure_gymie_venv, real_gymie_server

    try:
        python = ensure_gymie_venv()
    except GymieVenvError as exc:
        raise Unavailable(str(exc)) from exc
    return python, real_gymie_server


def _ids(payload: Payload, real: bool) -> str:
    name = env_id(payload)
    return name if not real or name == "CartPole-v1" else PREFIX + name


def _registrations() -> list[str]:
    """The payload envs, for the real server: relay_bench/envs.py, loaded by path there."""
    import relay_bench.envs

    return [f"{env_id(p)}={relay_bench.envs.__file__}:FixedObsEnv:{json.dumps(p.env_kwargs)}"
            for p in PAYLOADS.values() if p.env_id != "CartPole-v1"]


def _real_rows(payloads: Sequence[Payload], steps: int, *, deflate: bool,
               relay_client: bool = False) -> CaseResult:
    import relay

    python, real_gymie_server = _real_server(payloads)
    with real_gymie_server(python, gymnasium_prefix=PREFIX,
                           register=_registrations()) as url:
        for payload in payloads:
            if relay_client:
                env = relay.make(url + "?codec=gymie", _ids(payload, True))
                try:
                    yield payload.name, _budgeted_env(env, steps)
                finally:
                    env.close()
            else:
                yield payload.name, drive(url, _ids(payload, True), steps, deflate=deflate)


def _budgeted_env(env: gym.Env, steps: int) -> list[float]:
    probe = time_env(env, 5, warmup=5)
    per_step = sorted(probe)[len(probe) // 2]
    fit = int(TIME_BUDGET / max(per_step, 1e-6))
    return time_env(env, max(MIN_STEPS, min(steps, fit)), warmup=min(WARMUP, max(fit // 10, 5)))


@bench_case(REAL, group="gymie")
def real_gymie(payloads: Sequence[Payload], steps: int) -> CaseResult:
    yield from _real_rows(payloads, steps, deflate=True)


@bench_case(f"{REAL}, no deflate", group="gymie")
def real_gymie_no_deflate(payloads: Sequence[Payload], steps: int) -> CaseResult:
    yield from _real_rows(payloads, steps, deflate=False)


@bench_case("relay gymie-mode server", group="gymie", baseline=REAL)
def relay_gymie(payloads: Sequence[Payload], steps: int) -> CaseResult:
    argv = [sys.executable, "-m", "relay_bench.cases.gymie", "ws://127.0.0.1:0/gym?codec=gymie"]
    with spawn_server(argv) as address:
        url = address.split("?", 1)[0]
        for payload in payloads:
            yield payload.name, drive(url, _ids(payload, False), steps, deflate=True)


@bench_case(f"relay.make -> {REAL}", group="gymie", baseline=REAL)
def relay_client_real_gymie(payloads: Sequence[Payload], steps: int) -> CaseResult:
    yield from _real_rows(payloads, steps, deflate=False, relay_client=True)


if __name__ == "__main__":  # relay's gymie-mode server, with this module's env ids registered
    internal("_serve-relay", sys.argv[1])
