// The agent side: connect to a relay server and drive its environments.

import { Channel } from "./socket.js";
import { ConnectionLost, ProtocolError, ServerClosing, Timeout, remoteError } from "./errors.js";
import { ANSWERS, PROTOCOL, decodeEnvelope, major } from "./messages.js";
import { encodeJson } from "./framing.js";
import { Tuple, toJsonValue } from "./values.js";

/** A handshaken relay/1 connection (json codec).  Use Connection.open(). */
export class Connection {
  constructor(channel, welcome, { timeoutMs }) {
    this.channel = channel;
    this.welcome = welcome;
    this.timeoutMs = timeoutMs;
    this.nextId = 1;
    this.busy = Promise.resolve();
  }

  /**
   * Connect to `url` (ws:// or wss://) and handshake within `connectTimeoutMs`.
   * Rejects with ConnectError, Timeout, or ProtocolError (the server refused: token, protocol).
   */
  static async open(url, { token = null, timeoutMs = 30000, connectTimeoutMs = 10000, role = "agent",
    maxMessageSize } = {}) {
    const deadline = Date.now() + connectTimeoutMs;
    const channel = await Channel.open(url, { token, timeoutMs: connectTimeoutMs, maxMessageSize });
    try {
      channel.ws.send(encodeJson({ id: 0, tag: "hello", body: toJsonValue({
        protocol: PROTOCOL, codecs: Tuple.of("json"), role, token }) }));
      let answer;
      try {
        answer = decodeEnvelope(await channel.recvRaw(Math.max(deadline - Date.now(), 1)));
      } catch (err) {
        if (err instanceof Timeout) throw new Timeout(`no handshake answer from ${url} within ${connectTimeoutMs} ms`);
        throw err;
      }
      if (answer.tag === "error") throw new ProtocolError(`server refused the connection: ${answer.body.message}`);
      if (answer.tag !== "welcome" || answer.id !== 0) throw new ProtocolError(`expected welcome, got ${answer.tag}`);
      if (major(answer.body.protocol) !== major(PROTOCOL)) {
        throw new ProtocolError(`server speaks ${answer.body.protocol}, not ${PROTOCOL}`);
      }
      if (answer.body.codec !== "json") throw new ProtocolError(`server chose codec ${answer.body.codec}, not json`);
      return new Connection(channel, answer.body, { timeoutMs });
    } catch (err) {
      channel.close();
      throw err;
    }
  }

  /**
   * Send one request and resolve with the body of its answer.  Requests are
   * sent one at a time, in call order.  Rejects with RemoteError (a subclass
   * by code), Timeout (a late answer is dropped), ConnectionLost.
   */
  call(tag, body, timeoutMs = this.timeoutMs) {
    const run = this.busy.then(() => this.#call(tag, body, timeoutMs));
    this.busy = run.catch(() => {});
    return run;
  }

  async #call(tag, body, timeoutMs) {
    const id = this.nextId++;
    const deadline = Date.now() + timeoutMs;
    this.channel.ws.send(encodeJson({ id, tag, body: toJsonValue(body) }));
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Timeout(`${tag} got no answer within ${timeoutMs} ms`);
      let answer;
      try {
        answer = decodeEnvelope(await this.channel.recvRaw(remaining));
      } catch (err) {
        if (err instanceof Timeout) throw new Timeout(`${tag} got no answer within ${timeoutMs} ms`);
        throw err;
      }
      if (answer.id === 0 && answer.tag === "error") {  // the server hangs up, saying why
        this.close();
        if (answer.body.code === "server_closing") throw new ServerClosing(answer.body.message);
        throw remoteError(answer.body);
      }
      if (answer.id !== id) continue;  // the late answer of a request that timed out
      if (answer.tag === "error") throw remoteError(answer.body);
      if (answer.tag !== ANSWERS[tag]) {
        this.close();
        throw new ProtocolError(`${tag} answered with ${answer.tag}`);
      }
      return answer.body;
    }
  }

  close() {
    this.channel.close();
  }
}

/** A remote environment with Gymnasium's methods (all async). */
export class RemoteEnv {
  constructor(connection, made) {
    this.connection = connection;
    this.instance = made.instance;
    /** Space descriptions (docs/protocol.md, "Spaces"). */
    this.observationSpace = made.observation_space;
    this.actionSpace = made.action_space;
    this.metadata = made.metadata;
    this.renderMode = made.render_mode;
    this.spec = made.spec ? JSON.parse(made.spec) : null;
  }

  /** Resolve with [obs, info]. */
  async reset({ seed = null, options = null } = {}) {
    const body = await this.connection.call("reset", { instance: this.instance, seed, options });
    return [body.obs, body.info];
  }

  /** Resolve with [obs, reward, terminated, truncated, info]. */
  async step(action) {
    const body = await this.connection.call("step", { instance: this.instance, action });
    return [body.obs, body.reward, body.terminated, body.truncated, body.info];
  }

  async render() {
    return (await this.connection.call("render", { instance: this.instance })).frame;
  }

  /** Close the remote environment and the connection; safe to call twice. */
  async close() {
    if (this.instance === null) return;
    const instance = this.instance;
    this.instance = null;
    try {
      await this.connection.call("close", { instance }, 5000);
    } catch (err) {
      if (!(err instanceof ConnectionLost) && !(err instanceof Timeout)) throw err;
    } finally {
      this.connection.close();
    }
  }
}

/**
 * Connect to a relay server and make an environment there.
 *
 *   const env = await make("ws://127.0.0.1:5555/relay", { envId: "CartPole-v1" });
 *
 * Options: envId, token, timeoutMs, connectTimeoutMs, kwargs (the remote
 * gymnasium.make keyword arguments).
 */
export async function make(url, { envId = null, kwargs = {}, ...options } = {}) {
  const connection = await Connection.open(url, options);
  try {
    const made = await connection.call("make", { env_id: envId, kwargs }, Math.max(connection.timeoutMs, 60000));
    return new RemoteEnv(connection, made);
  } catch (err) {
    connection.close();
    throw err;
  }
}
