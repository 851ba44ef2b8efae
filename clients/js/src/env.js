// The environment side (inverted mode): connect out to a listening agent
// (Python's relay.listen_env) and answer its requests with a JavaScript env.
//
// An env is an object with
//   observationSpace, actionSpace   space descriptions (see spaces.js)
//   metadata?, renderMode?          plain values
//   reset({seed, options})          -> [obs, info]                (may return a Promise)
//   step(action)                    -> [obs, reward, terminated, truncated, info]
//   render?()                       -> a frame (NDArray), text, or null
//   close?()
// or a factory (envId, kwargs) -> env (may return a Promise), called on each make.

import { Channel } from "./socket.js";
import { ConnectError, ConnectionLost, ProtocolError, Timeout } from "./errors.js";
import { ANSWERS, PROTOCOL, decodeEnvelope, encodeEnvelope, major } from "./messages.js";
import { contains } from "./spaces.js";
import { Tuple } from "./values.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function errorBody(code, err) {
  return {
    code,
    message: err?.message ?? String(err),
    remote_type: err?.name ? `js.${err.name}` : "js.Error",
    traceback: err?.stack ?? "",
  };
}

class EnvHost {
  constructor(envOrFactory) {
    this.factory = typeof envOrFactory === "function" ? envOrFactory : () => envOrFactory;
    this.borrowed = typeof envOrFactory !== "function";
    this.envs = new Map();
    this.needsReset = new Set();
    this.nextInstance = 1;
  }

  /** [tag, body] answering one request; never throws. */
  async handle(tag, body) {
    try {
      switch (tag) {
        case "make": {
          const env = await this.factory(body.env_id, body.kwargs ?? {});
          const instance = this.nextInstance++;
          this.envs.set(instance, env);
          this.needsReset.add(instance);
          return ["made", {
            instance,
            observation_space: env.observationSpace,
            action_space: env.actionSpace,
            metadata: env.metadata ?? { render_modes: [] },
            render_mode: env.renderMode ?? null,
            spec: null,
          }];
        }
        case "reset": {
          const env = this.env(body.instance);
          const [obs, info] = await env.reset({ seed: body.seed ?? null, options: body.options ?? null });
          this.needsReset.delete(body.instance);
          return ["observation", { obs, info: info ?? {} }];
        }
        case "step": {
          const env = this.env(body.instance);
          if (this.needsReset.has(body.instance)) {
            return ["error", { code: "not_reset", message: "step called before reset; call reset first" }];
          }
          if (!contains(env.actionSpace, body.action)) {
            return ["error", { code: "invalid_action",
              message: `action ${JSON.stringify(body.action)} is not in the action space` }];
          }
          const [obs, reward, terminated, truncated, info] = await env.step(body.action);
          return ["transition", { obs, reward, terminated: Boolean(terminated),
            truncated: Boolean(truncated), info: info ?? {} }];
        }
        case "render": {
          const env = this.env(body.instance);
          return ["frame", { frame: env.render ? await env.render() : null }];
        }
        case "close": {
          const env = this.envs.get(body.instance);
          this.envs.delete(body.instance);
          this.needsReset.delete(body.instance);
          if (env && !this.borrowed && env.close) await env.close();
          return ["closed", {}];
        }
        default:
          return ["error", { code: "protocol", message: `${tag} is not a request` }];
      }
    } catch (err) {
      if (err instanceof UnknownInstance) return ["error", { code: "not_reset", message: err.message }];
      return ["error", errorBody("env", err)];
    }
  }

  env(instance) {
    const env = this.envs.get(instance);
    if (!env) throw new UnknownInstance(`no environment instance ${instance} on this connection`);
    return env;
  }

  async closeAll() {
    if (this.borrowed) return;
    for (const env of this.envs.values()) {
      try { if (env.close) await env.close(); } catch { /* the agent left anyway */ }
    }
    this.envs.clear();
  }
}

class UnknownInstance extends Error {}

async function connectRetrying(url, { token, connectTimeoutMs, maxMessageSize }) {
  const deadline = Date.now() + connectTimeoutMs;
  let delay = 50;
  for (;;) {
    try {
      return await Channel.open(url, { token, timeoutMs: Math.max(deadline - Date.now(), 50), maxMessageSize });
    } catch (err) {
      const remaining = deadline - Date.now();
      if (remaining <= 0 || !(err instanceof ConnectError) || /HTTP 4\d\d/.test(err.message)) {
        throw new ConnectError(`no agent listens on ${url} (waited ${connectTimeoutMs} ms): ${err.message}`);
      }
      await sleep(Math.min(delay, remaining));
      delay = Math.min(delay * 2, 1000);
    }
  }
}

/**
 * Connect out to an agent listening on `url` (Python: relay.listen_env) and
 * serve `env` (an env object or a factory) until the agent closes it.
 *
 * Resolves when the agent has sent close and hung up.  Rejects with
 * ConnectError (no agent within connectTimeoutMs, HTTP 401 for a wrong token),
 * ProtocolError (a bad handshake), or ConnectionLost (the agent went away
 * without closing: call again to re-attach).
 */
export async function connectEnv(url, env, { token = null, connectTimeoutMs = 10000,
  maxMessageSize = 256 * 2 ** 20, server = "relay-js" } = {}) {
  const channel = await connectRetrying(url, { token, connectTimeoutMs, maxMessageSize });
  const host = new EnvHost(env);
  let closedByAgent = false;
  try {
    // handshake: the agent sends hello, we answer welcome (or error and hang up)
    let hello;
    try {
      hello = decodeEnvelope(await channel.recvRaw(connectTimeoutMs));
    } catch (err) {
      if (err instanceof Timeout) throw new Timeout(`the agent sent no hello within ${connectTimeoutMs} ms`);
      throw err;
    }
    let refusal = null;
    if (hello.tag !== "hello" || hello.id !== 0) refusal = `expected hello, got ${hello.tag}`;
    else if (major(hello.body.protocol) !== major(PROTOCOL)) refusal = `protocol ${hello.body.protocol} is not supported`;
    else if (token != null && hello.body.token !== token) refusal = "missing or wrong token";
    else if (!Array.from(hello.body.codecs ?? []).includes("json")) refusal = "this environment speaks the json codec only";
    if (refusal) {
      channel.ws.send(encodeEnvelope(0, "error", { code: "protocol", message: refusal }));
      throw new ProtocolError(`refused the agent: ${refusal}`);
    }
    channel.ws.send(encodeEnvelope(0, "welcome", { protocol: PROTOCOL, codec: "json", server,
      capabilities: Tuple.of("render") }));
    let lastId = 0;
    for (;;) {
      let request;
      try {
        request = decodeEnvelope(await channel.recvRaw());
      } catch (err) {
        if (err instanceof ConnectionLost && closedByAgent) return;
        throw err;
      }
      if (!(request.tag in ANSWERS) || request.id <= lastId) {
        channel.ws.send(encodeEnvelope(0, "error", { code: "protocol",
          message: request.tag in ANSWERS ? `request id ${request.id} is not increasing` : `${request.tag} is not a request` }));
        throw new ProtocolError(`the agent sent an invalid ${request.tag}`);
      }
      lastId = request.id;
      const [tag, body] = await host.handle(request.tag, request.body);
      let message;
      try {
        message = encodeEnvelope(request.id, tag, body);
      } catch (err) {
        message = encodeEnvelope(request.id, "error", errorBody("env", err));
      }
      channel.ws.send(message);
      if (request.tag === "close") closedByAgent = true;
    }
  } finally {
    await host.closeAll();
    channel.close();
  }
}
