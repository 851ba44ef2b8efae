"""env-steps/s of CartPole on Ray actors: relay's make_vec vs per-step Ray actor calls.

    python plugins/relay-ray/bench.py [--actors 1,2,4] [--envs-per-actor 1]
                                      [--seconds 3] [--rounds 2]

Starts a one-node Ray (or joins ``RAY_ADDRESS``) and, for each number of
actors (``--envs-per-actor`` CartPole-v1 each), times these rows round after
round (rounds interleave the rows, so a noisy neighbour hurts them alike):

* ``relay shm``: ``ActorPool(...).make_vec()`` over ``shm://`` (the actors
  are on the learner's node; more than one env per actor: batched actors,
  one message per actor and step);
* ``relay tcp``: the same pool with ``transport="tcp"``;
* ``ray native``: the same envs in plain Ray actors, stepped with
  ``actor.step.remote(env, action)`` (one call per env and step, every call
  of a step in flight together, then one ``ray.get``), autoresetting in the
  actor.

Each row is a random-action loop of vector steps; the table gives the best
round's env-steps/s (vector steps x envs / seconds) and relay's ratio to
the Ray-native calls.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
import relay_ray  # noqa: E402

ENV_ID = "CartPole-v1"


class NativeEnvs:
    """CartPoles in a Ray actor, one Ray call per env step (autoresets an ended episode)."""

    def __init__(self, seed: int, num_envs: int) -> None:
        self.envs = [gym.make(ENV_ID) for _ in range(num_envs)]
        for k, env in enumerate(self.envs):
            env.reset(seed=seed + k)

    def step(self, k: int, action: int) -> tuple[Any, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.envs[k].step(action)
        if terminated or truncated:
            obs, _ = self.envs[k].reset()
        return obs, float(reward), terminated, truncated


def time_loop(step: Any, num_envs: int, seconds: float) -> float:
    """env-steps/s of calling ``step(actions)`` for ``seconds`` (after 50 warm-up steps)."""
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(1024, num_envs))
    for i in range(50):
        step(actions[i % 1024])
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            step(actions[count % 1024])
            count += 1
    return count * num_envs / elapsed


def relay_row(num_actors: int, per_actor: int, transport: str, seconds: float) -> float:
    with relay_ray.ActorPool(ENV_ID, num_actors, per_actor, num_cpus=0,
                             transport=transport) as pool:
        envs = pool.make_vec()
        try:
            envs.reset(seed=0)
            return time_loop(envs.step, num_actors * per_actor, seconds)
        finally:
            envs.close()


def native_row(num_actors: int, per_actor: int, seconds: float) -> float:
    remote = ray.remote(num_cpus=0)(NativeEnvs)
    actors = [remote.remote(seed * per_actor, per_actor) for seed in range(num_actors)]
    calls = [(actor, k) for actor in actors for k in range(per_actor)]
    try:
        ray.get([actor.step.remote(k, 0) for actor, k in calls], timeout=60)

        def step(actions: np.ndarray) -> None:
            ray.get([actor.step.remote(k, int(a)) for (actor, k), a in zip(calls, actions,
                                                                            strict=True)],
                    timeout=60)

        return time_loop(step, len(calls), seconds)
    finally:
        for actor in actors:
            ray.kill(actor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", default="1,2,4", help="comma-separated actor counts")
    parser.add_argument("--envs-per-actor", type=int, default=1, help="CartPoles per actor")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    args = parser.parse_args()
    counts = [int(n) for n in args.actors.split(",")]
    m = args.envs_per_actor
    ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get(
        "RAY_ADDRESS") else max(counts) + 1, log_to_driver=False)
    rows = ("relay shm", "relay tcp", "ray native")
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for n in counts:
            for row, measure in zip(rows, (lambda n=n: relay_row(n, m, "shm", args.seconds),
                                           lambda n=n: relay_row(n, m, "tcp", args.seconds),
                                           lambda n=n: native_row(n, m, args.seconds)),
                                    strict=True):
                best[row, n] = max(best.get((row, n), 0.0), measure())
    ray.shutdown()
    print(f"\nCartPole-v1 env-steps/s, {m} env(s) per actor (best of {args.rounds} rounds "
          f"of {args.seconds:g} s; {os.cpu_count()} cores)\n")
    print("| actors | relay shm | relay tcp | ray native | shm / native | tcp / native |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        shm, tcp, native = (best[row, n] for row in rows)
        print(f"| {n} | {shm:,.0f} | {tcp:,.0f} | {native:,.0f} | {shm / native:.1f}x "
              f"| {tcp / native:.1f}x |")


if __name__ == "__main__":
    main()
