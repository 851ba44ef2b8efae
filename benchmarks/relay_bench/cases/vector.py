"""Benchmark rows for the vector env.

One timed call is one ``VectorEnv.step`` of :data:`NUM_ENVS` sub-environments
of the payload's env (actions all 1, then all 0, ...; autoresets, NEXT_STEP,
included as each vectorizer does them), median µs per *vector* step:

* ``vector x4 gymnasium SyncVectorEnv``: the envs in this process, one after
  the other (no transport: the floor);
* ``vector x4 gymnasium AsyncVectorEnv shm``: one worker process per env,
  ``shared_memory=True`` (Gymnasium's own way to step envs in parallel; the
  baseline of the relay rows);
* ``vector x4 relay zmq+ipc://`` and ``vector x4 relay shm://``:
  :class:`~relay.adapters.vector.RemoteVectorEnv` with every sub-env on *one*
  ``relay.serve`` process (a thread per connection), round trips overlapped;
* ``vector x4 relay shm://?spin=0``: the same without spinning before sleeping
  (four server threads, one per sub-env, spin for their next request and
  compete for the cores and the GIL: this row shows what the spin buys).

Run: ``relay bench --only "vector x4" --payloads S``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from relay_bench.harness import CaseResult, Payload, bench_case, relay_server, time_calls

NUM_ENVS = 4
ASYNC = f"vector x{NUM_ENVS} gymnasium AsyncVectorEnv shm"


def _step(venv: gym.vector.VectorEnv, actions: Iterator[np.ndarray]) -> None:
    venv.step(next(actions))


def _time_vector(venv: gym.vector.VectorEnv, steps: int) -> list[float]:
    venv.reset(seed=0)
    actions = itertools.cycle([np.ones(NUM_ENVS, np.int64), np.zeros(NUM_ENVS, np.int64)])
    return time_calls(functools.partial(_step, venv, actions), steps)


def _gymnasium_case(kind: str) -> Any:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        for payload in payloads:
            fns = [payload.make_env] * NUM_ENVS
            venv: gym.vector.VectorEnv = (
                gym.vector.SyncVectorEnv(fns) if kind == "sync"
                else gym.vector.AsyncVectorEnv(fns, shared_memory=True))
            try:
                yield payload.name, _time_vector(venv, steps)
            finally:
                venv.close()

    return run_case


def _relay_case(template: str) -> Any:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        import relay

        with relay_server(template) as address:
            for payload in payloads:
                venv = relay.make_vec(address, payload.env_id, num_envs=NUM_ENVS,
                                      **payload.env_kwargs)
                try:
                    yield payload.name, _time_vector(venv, steps)
                finally:
                    venv.close()

    return run_case


bench_case(f"vector x{NUM_ENVS} gymnasium SyncVectorEnv", group="vector")(
    _gymnasium_case("sync"))
bench_case(ASYNC, group="vector")(_gymnasium_case("async"))
bench_case(f"vector x{NUM_ENVS} relay zmq+ipc://", group="vector", baseline=ASYNC)(
    _relay_case("zmq+ipc://{tmp}/relay-vbench.sock"))
bench_case(f"vector x{NUM_ENVS} relay shm://", group="vector", baseline=ASYNC)(
    _relay_case("shm://relay-vbench-{uid}"))
bench_case(f"vector x{NUM_ENVS} relay shm://?spin=0", group="vector", baseline=ASYNC)(
    _relay_case("shm://relay-vbench-{uid}?spin=0"))
