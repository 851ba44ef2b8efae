#!/usr/bin/env node
// Catch, a tiny game written in JavaScript, served to a Python agent in
// inverted mode: this process connects out to the agent's relay.listen_env.
//
//   node examples/catch.js ws://127.0.0.1:8765/env [--token T]
//
// A ball falls from a random column of a ROWS x COLS board; the paddle on the
// bottom row moves left (0), stays (1) or moves right (2).  Reward +1 when the
// ball lands on the paddle, -1 otherwise; the episode ends when it lands.
// Observation: the board as float32 (ROWS, COLS), 1 where the ball or paddle is.

import { NDArray, connectEnv, spaces } from "../src/index.js";

export const ROWS = 10;
export const COLS = 5;

/** A seeded PRNG (mulberry32): the same seed gives the same episode. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Catch {
  constructor() {
    this.observationSpace = spaces.Box(0, 1, [ROWS, COLS], "float32");
    this.actionSpace = spaces.Discrete(3);
    this.metadata = { render_modes: ["ansi"], render_fps: 10 };
    this.renderMode = "ansi";
    this.random = mulberry32((Math.random() * 2 ** 32) >>> 0);
    this.ball = null;
  }

  observation() {
    const board = new NDArray("<f4", [ROWS, COLS]);
    board.data[this.ball.row * COLS + this.ball.col] = 1;
    board.data[(ROWS - 1) * COLS + this.paddle] = 1;
    return board;
  }

  reset({ seed = null } = {}) {
    if (seed !== null) this.random = mulberry32(Number(seed));
    this.ball = { row: 0, col: Math.floor(this.random() * COLS) };
    this.paddle = Math.floor(COLS / 2);
    return [this.observation(), {}];
  }

  step(action) {
    this.paddle = Math.min(COLS - 1, Math.max(0, this.paddle + action - 1));
    this.ball.row += 1;
    const landed = this.ball.row === ROWS - 1;
    const reward = landed ? (this.ball.col === this.paddle ? 1 : -1) : 0;
    return [this.observation(), reward, landed, false, { ball_column: this.ball.col }];
  }

  render() {
    const lines = [];
    for (let r = 0; r < ROWS; r++) {
      let line = "";
      for (let c = 0; c < COLS; c++) {
        line += r === this.ball.row && c === this.ball.col ? "o"
          : r === ROWS - 1 && c === this.paddle ? "=" : ".";
      }
      lines.push(line);
    }
    return lines.join("\n") + "\n";
  }
}

async function main() {
  const [url, ...rest] = process.argv.slice(2);
  if (!url) {
    console.error("usage: node examples/catch.js ws://HOST:PORT/PATH [--token T]");
    process.exit(2);
  }
  const tokenAt = rest.indexOf("--token");
  const token = tokenAt >= 0 ? rest[tokenAt + 1] : null;
  // re-attach after a lost connection until the agent closes the env
  for (;;) {
    try {
      await connectEnv(url, new Catch(), { token });
      console.error("catch.js: the agent closed the environment");
      return;
    } catch (err) {
      if (err.name !== "ConnectionLost") throw err;
      console.error(`catch.js: ${err.message}; connecting again`);
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(`catch.js: ${err.name}: ${err.message}`);
    process.exit(1);
  });
}
