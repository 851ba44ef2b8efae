"""Benchmark rows of batched serving (section "batched"): env-steps per second.

One timed call is one ``VectorEnv.step`` of the whole batch (actions all 1,
then all 0, ...; autoresets included as the vector env does them); the table's
``env-steps/s`` column is the batch size over the median call (and ``x
baseline`` a ratio of times: its inverse is the ratio of throughputs).  Only the S
payload runs these rows (their envs are fixed):

* ``batched CartPole xN local make_vec`` (N = 64, 1,024, 4,096):
  ``gymnasium.make_vec("CartPole-v1", num_envs=N)``, Gymnasium's
  ``CartPoleVectorEnv`` (numpy), in this process: the baseline of
* ``batched CartPole xN over SCHEME://`` for ``shm``, ``zmq+ipc`` and
  ``tcp``: the same vector env served by ``relay serve --num-envs N`` in a
  separate process, stepped by one ``step_batch`` message per call;
* ``batched EnvPool Pong x16 local`` and ``... over shm://``: EnvPool's
  ``Pong-v5`` (16 envs, its own threads) here, and served by relay;
* ``batched 16 CartPole SyncVectorEnv`` / ``AsyncVectorEnv shm`` (one
  process per env, ``shared_memory=True``: the baseline) / ``over
  --workers 2 shm://``: 16 scalar CartPoles, the last as two server
  processes (``relay serve --workers 2``) each stepping a server-side batch
  of 8 (``vectorization_mode="sync"``), both stepped at once by one client.

Run: ``relay bench --only batched --payloads S``.
"""

from __future__ import annotations

import functools
import itertools
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from relay_bench.harness import (
    CaseResult,
    Payload,
    Unavailable,
    bench_case,
    spawn_server,
    time_calls,
)

SIZES = (64, 1024, 4096)
"""Batch sizes of the CartPole vector rows."""

SCHEMES = {"shm": "shm://relay-batch-{uid}", "zmq+ipc": "zmq+ipc://{tmp}/relay-batch.sock",
           "tcp": "tcp://127.0.0.1:0"}
"""Listen URL template of each transport row."""

POOL = 16
"""Envs of the EnvPool and scalar CartPole rows."""


def _step(venv: Any, actions: Iterator[np.ndarray]) -> None:
    venv.step(next(actions))


def _time_batch(venv: Any, n: int, steps: int) -> list[float]:
    venv.reset()
    actions = itertools.cycle([np.ones(n, np.int64), np.zeros(n, np.int64)])
    return time_calls(functools.partial(_step, venv, actions), steps)


def _only_s(payloads: Sequence[Payload]) -> bool:
    return any(p.name == "S" for p in payloads)


def _local_case(make: Callable[[], Any], n: int) -> Any:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        if not _only_s(payloads):
            return
        venv = make()
        try:
            yield "S", _time_batch(venv, n, steps)
        finally:
            venv.close()

    return run_case


def _served(template: str, spec: dict[str, Any]) -> Iterator[str]:
    """A ``_serve-batch`` server process for ``spec`` on ``template``; yields its address."""
    tmp = tempfile.mkdtemp(prefix="rbb-")
    try:
        url = template.format(tmp=tmp, uid=secrets.token_hex(4))
        argv = [sys.executable, "-m", "relay_bench", "_serve-batch", json.dumps({**spec,
                                                                                 "url": url})]
        with spawn_server(argv) as address:
            yield address
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _relay_case(template: str, spec: dict[str, Any], n: int, urls: int = 1,
                **make_kwargs: Any) -> Any:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        import relay
        from relay.core.errors import UnknownScheme
        from relay.core.plugins import get_transport

        if not _only_s(payloads):
            return
        try:
            get_transport(template.split("://")[0])
        except UnknownScheme as exc:
            raise Unavailable(str(exc)) from None
        for address in _served(template, spec):
            venv = relay.make_vec([address] * urls, num_envs=n, **make_kwargs)
            try:
                yield "S", _time_batch(venv, n, steps)
            finally:
                venv.close()

    return run_case


def _envpool(num_envs: int) -> Any:
    try:
        import envpool
    except ImportError:
        raise Unavailable("envpool is not installed (pip install envpool)") from None
    return envpool.make_gymnasium("Pong-v5", num_envs=num_envs)


for _n in SIZES:
    _local = f"batched CartPole x{_n} local make_vec"
    bench_case(_local, group="batched", batch=_n)(_local_case(
        functools.partial(gym.make_vec, "CartPole-v1", num_envs=_n), _n))
    for _scheme, _template in SCHEMES.items():
        bench_case(f"batched CartPole x{_n} over {_scheme}://", group="batched",
                   baseline=_local, batch=_n)(
            _relay_case(_template, {"env": "CartPole-v1", "num_envs": _n}, _n))

_POOL_LOCAL = f"batched EnvPool Pong x{POOL} local"
bench_case(_POOL_LOCAL, group="batched", batch=POOL)(
    _local_case(functools.partial(_envpool, POOL), POOL))
bench_case(f"batched EnvPool Pong x{POOL} over shm://", group="batched", baseline=_POOL_LOCAL,
           batch=POOL)(_relay_case(SCHEMES["shm"], {"env": "envpool:Pong-v5", "num_envs": POOL},
                                   POOL))

_ASYNC = f"batched {POOL} CartPole AsyncVectorEnv shm"
bench_case(f"batched {POOL} CartPole SyncVectorEnv", group="batched", batch=POOL)(
    _local_case(lambda: gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * POOL),
                POOL))
bench_case(_ASYNC, group="batched", batch=POOL)(_local_case(
    lambda: gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1")] * POOL,
                                      shared_memory=True), POOL))
bench_case(f"batched {POOL} CartPole over --workers 2 shm://", group="batched",
           baseline=_ASYNC, batch=POOL)(
    _relay_case(SCHEMES["shm"], {"env": "CartPole-v1", "num_envs": POOL // 2, "workers": 2},
                POOL, urls=2, vectorization_mode="sync"))


def serve_batch(arg: str) -> None:
    """The server process of a row: ``arg`` is JSON ``{"url", "env", "num_envs",
    "workers"}``; ``env`` ``"envpool:ID"`` serves EnvPool's ``make_gymnasium(ID)``."""
    import relay

    spec = json.loads(arg)
    env: Any = spec["env"]
    if env.startswith("envpool:"):
        task, size = env.split(":", 1)[1], spec["num_envs"]

        def env(env_id: str | None, **kwargs: Any) -> Any:
            import envpool

            return envpool.make_gymnasium(task, num_envs=size, **kwargs)

    server = relay.serve(env, spec["url"], num_envs=spec["num_envs"],
                         workers=spec.get("workers"))
    print(server.address, flush=True)
    server.serve_forever()
