// Drives a real relay server (Python, started here) with the JS client.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  ConnectError, InvalidAction, NDArray, NotReset, ServerClosing, make,
} from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const venvPython = resolve(here, "../../../.venv/bin/python");
const PYTHON = process.env.RELAY_PYTHON ?? (existsSync(venvPython) ? venvPython : "python3");
// per test, not `node --test --test-timeout` (Node >= 20.11): package.json allows Node 18
const LIMIT = { timeout: 60_000 };

/** Start `relay serve`; resolve with {url, process} once it prints its address. */
function serve(args) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(PYTHON, ["-m", "relay", "serve", ...args], {
      cwd: resolve(here, "../../.."), stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    let text = "";
    const timer = setTimeout(() => reject(new Error(`relay serve did not start: ${text}`)), 30000);
    child.stderr.on("data", (chunk) => {
      text += chunk;
      const match = /serving .* on (\S+)/.exec(text);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ url: match[1], process: child });
      }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`relay serve exited ${code}: ${text}`)); });
  });
}

let server;
let secured;

before(async () => {
  [server, secured] = await Promise.all([
    serve(["CartPole-v1", "--url", "ws://127.0.0.1:0/relay"]),
    serve(["CartPole-v1", "--url", "ws://127.0.0.1:0/relay", "--token", "s3cret"]),
  ]);
}, LIMIT);

after(() => {
  for (const s of [server, secured]) if (s) s.process.kill("SIGINT");
});

test("a full CartPole episode", LIMIT, async () => {
  const env = await make(server.url, { envId: "CartPole-v1" });
  try {
    assert.equal(env.actionSpace.type, "Discrete");
    assert.equal(env.actionSpace.n, 2);
    assert.equal(env.observationSpace.type, "Box");
    assert.deepEqual(Array.from(env.observationSpace.shape), [4]);
    assert.equal(env.spec.id, "CartPole-v1");
    let [obs] = await env.reset({ seed: 42 });
    assert.ok(obs instanceof NDArray);
    assert.equal(obs.dtype, "<f4");
    assert.deepEqual(obs.shape, [4]);
    let total = 0;
    let steps = 0;
    for (;;) {
      // a simple controller: push the cart the way the pole leans
      const action = obs.data[2] + obs.data[3] > 0 ? 1 : 0;
      const [next, reward, terminated, truncated] = await env.step(action);
      total += reward;
      steps += 1;
      obs = next;
      if (terminated || truncated) break;
    }
    assert.equal(total, steps);
    assert.ok(steps > 20, `episode of ${steps} steps`);
    // the same seed gives the same first observation
    const [again] = await env.reset({ seed: 42 });
    const [first] = await env.reset({ seed: 42 });
    assert.deepEqual(Array.from(again.data), Array.from(first.data));
  } finally {
    await env.close();
  }
});

test("remote errors arrive as typed exceptions", LIMIT, async () => {
  const env = await make(server.url);
  try {
    await assert.rejects(env.step(0), NotReset);
    await env.reset({ seed: 0 });
    await assert.rejects(env.step(7), (err) => err instanceof InvalidAction && err.code === "invalid_action");
    const [, reward] = await env.step(1);
    assert.equal(reward, 1);
  } finally {
    await env.close();
  }
});

test("the token travels in the Authorization header", LIMIT, async () => {
  await assert.rejects(make(secured.url), (err) => err instanceof ConnectError && /401/.test(err.message));
  const env = await make(secured.url, { token: "s3cret" });
  await env.reset({ seed: 0 });
  await env.close();
});

test("a server stopped by SIGTERM says so: ServerClosing", LIMIT, async () => {
  const stopping = await serve(["CartPole-v1", "--url", "ws://127.0.0.1:0/relay"]);
  const exited = new Promise((done) => stopping.process.on("exit", (code) => done(code)));
  const env = await make(stopping.url, { envId: "CartPole-v1" });
  try {
    await env.reset({ seed: 1 });
    stopping.process.kill("SIGTERM");
    await assert.rejects(async () => {
      for (const end = Date.now() + 5000; Date.now() < end;) {
        await env.step(0);
        await new Promise((done) => setTimeout(done, 50));
      }
    }, ServerClosing);
    assert.equal(await exited, 0);
  } finally {
    env.close();
  }
});
