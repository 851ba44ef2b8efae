"""Train an agent in Python on a game written in JavaScript (inverted mode).

The game (clients/js/examples/catch.js, Node, no dependency beyond the relay
JavaScript client) connects out to this process, which listens with
``relay.listen_env`` and sees an ordinary ``gymnasium.Env``.  A tabular
Q-learning agent learns to catch the falling ball.

    (cd clients/js && npm install)      # once: the client's only dependency, ws
    python examples/js_game_agent.py [--episodes 300] [--url ws://127.0.0.1:0/env]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np

import relay

GAME = Path(__file__).resolve().parents[1] / "clients" / "js" / "examples" / "catch.js"


def state_of(obs: np.ndarray) -> tuple[int, int, int]:
    """(ball row, ball column, paddle column) of a Catch board."""
    rows, _ = obs.shape
    paddle = int(np.argmax(obs[-1]))
    above = np.argwhere(obs[:-1] > 0)
    ball_row, ball_col = (int(above[0][0]), int(above[0][1])) if len(above) else (rows - 1, paddle)
    return ball_row, ball_col, paddle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:0/env")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    games: list[subprocess.Popen[bytes]] = []

    def start_game(address: relay.URL) -> None:
        print(f"listening on {address}; starting node {GAME.name}")
        games.append(subprocess.Popen(["node", str(GAME), str(address)]))

    env = relay.listen_env(args.url, on_listen=start_game, connect_timeout=30)
    rng = np.random.default_rng(args.seed)
    q = np.zeros((*env.observation_space.shape, env.observation_space.shape[1],
                  int(env.action_space.n)))
    alpha, gamma = 0.5, 0.99
    returns: list[float] = []
    start = time.perf_counter()
    steps = 0
    try:
        for episode in range(args.episodes):
            epsilon = max(0.05, 1.0 - episode / (0.6 * args.episodes))
            obs, _ = env.reset(seed=args.seed + episode)
            state, done, total = state_of(obs), False, 0.0
            while not done:
                if rng.random() < epsilon:
                    action = int(rng.integers(env.action_space.n))
                else:
                    action = int(np.argmax(q[state]))
                obs, reward, terminated, truncated, _ = env.step(action)
                steps += 1
                nxt = state_of(obs)
                target = reward + (0.0 if terminated else gamma * q[nxt].max())
                q[state][action] += alpha * (target - q[state][action])
                state, total, done = nxt, total + float(reward), terminated or truncated
            returns.append(total)
            if (episode + 1) % 50 == 0:
                print(f"episodes {episode - 48:4d}-{episode + 1:4d}: "
                      f"mean return {np.mean(returns[-50:]):+.2f} (epsilon {epsilon:.2f})")
        elapsed = time.perf_counter() - start
        print(f"{steps} steps in {elapsed:.2f} s ({1e6 * elapsed / steps:.0f} µs per step "
              "incl. reset and learning)")
        print("last episode:\n" + env.render())
    finally:
        env.close()
        for game in games:
            game.wait(10)


if __name__ == "__main__":
    main()
