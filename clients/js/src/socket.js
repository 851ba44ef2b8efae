// A WebSocket with awaitable, timed receive of whole relay messages.
// Node: the `ws` package (custom headers, no compression); browsers: the native WebSocket.

import { ConnectError, ConnectionLost, ProtocolError, Timeout } from "./errors.js";
import { decodeMessage, encodeMessage } from "./framing.js";

async function webSocketClass() {
  if (typeof process !== "undefined" && process.versions?.node) {
    const { default: WebSocket } = await import("ws");
    return { WebSocket, node: true };
  }
  if (typeof globalThis.WebSocket === "function") return { WebSocket: globalThis.WebSocket, node: false };
  throw new ConnectError("no WebSocket implementation: install the 'ws' package");
}

/** The subprotocol carrying a token ("relay.token." + unpadded base64url), for browsers. */
export function tokenSubprotocol(token) {
  const bytes = new TextEncoder().encode(token);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return "relay.token." + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export class Channel {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.lost = null;
    ws.binaryType = "arraybuffer";
    const onMessage = (data, isBinary) => {
      // ws passes (data, isBinary); the browser passes an event
      if (data && data.data !== undefined && isBinary === undefined) {
        isBinary = typeof data.data !== "string";
        data = data.data;
      }
      if (!isBinary) {
        this.fail(new ProtocolError("text message on a relay channel"));
        this.close(1003, "relay/1 over WebSocket uses binary messages");
        return;
      }
      this.push({ data });
    };
    const onClose = (code, reason) => {
      if (code && code.code !== undefined) ({ code, reason } = code);  // browser event
      reason = reason ? reason.toString() : "";
      this.fail(new ConnectionLost(`WebSocket closed: code ${code}${reason ? `, reason ${JSON.stringify(reason)}` : ""}`,
        { code, reason }));
    };
    if (typeof ws.on === "function") {
      ws.on("message", onMessage);
      ws.on("close", onClose);
      ws.on("error", (err) => this.fail(new ConnectionLost(`WebSocket failed: ${err.message}`)));
    } else {
      ws.onmessage = (event) => onMessage(event);
      ws.onclose = (event) => onClose(event);
    }
  }

  /** Open a WebSocket to `url` within `timeoutMs`.  Rejects with ConnectError. */
  static async open(url, { token = null, timeoutMs = 10000, maxMessageSize = 256 * 2 ** 20 } = {}) {
    const { WebSocket, node } = await webSocketClass();
    return new Promise((resolve, reject) => {
      let ws;
      if (node) {
        const headers = token == null ? {} : { Authorization: `Bearer ${token}` };
        ws = new WebSocket(url, { headers, perMessageDeflate: false, maxPayload: maxMessageSize + 65536,
          handshakeTimeout: timeoutMs });
      } else {
        // browsers cannot set headers: the token travels as a subprotocol instead
        ws = token == null ? new WebSocket(url) : new WebSocket(url, [tokenSubprotocol(token)]);
      }
      const timer = setTimeout(() => {
        reject(new ConnectError(`no WebSocket connection to ${url} within ${timeoutMs} ms`));
        try { ws.terminate ? ws.terminate() : ws.close(); } catch { /* already gone */ }
      }, timeoutMs);
      const fail = (message) => { clearTimeout(timer); reject(new ConnectError(message)); };
      if (node) {
        ws.once("unexpected-response", (req, res) => {
          let body = "";
          res.on("data", (chunk) => { body += chunk; });
          res.on("end", () => fail(`${url} refused the WebSocket: HTTP ${res.statusCode} ` +
            `${res.statusMessage}${body.trim() ? ` (${body.trim()})` : ""}`));
          req.destroy?.();
        });
        ws.once("error", (err) => fail(`cannot connect to ${url}: ${err.message}`));
        ws.once("open", () => { clearTimeout(timer); ws.removeAllListeners("error"); resolve(new Channel(ws)); });
      } else {
        ws.onerror = () => fail(`cannot connect to ${url}`);
        ws.onopen = () => { clearTimeout(timer); ws.onerror = null; resolve(new Channel(ws)); };
      }
    });
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(item.data);
    else this.queue.push(item);
  }

  fail(error) {
    if (this.lost) return;
    this.lost = error;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  /** The frames of the next relay message, within `timeoutMs` (null: forever). */
  async recv(timeoutMs = null) {
    return decodeMessage(await this.recvRaw(timeoutMs));
  }

  /** The next whole WebSocket message (an ArrayBuffer), within `timeoutMs`. */
  recvRaw(timeoutMs = null) {
    const item = this.queue.shift();
    if (item) return Promise.resolve(item.data);
    if (this.lost) return Promise.reject(this.lost);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      if (timeoutMs != null) {
        const timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Timeout(`no message within ${timeoutMs} ms`));
        }, timeoutMs);
        waiter.resolve = (data) => { clearTimeout(timer); resolve(data); };
        waiter.reject = (err) => { clearTimeout(timer); reject(err); };
      }
      this.waiters.push(waiter);
    });
  }

  /** Send one relay message made of these frames (Uint8Arrays). */
  send(frames) {
    if (this.lost) throw this.lost;
    this.ws.send(encodeMessage(frames));
  }

  close(code = 1000, reason = "") {
    try { this.ws.close(code, reason); } catch { /* already closed */ }
    this.fail(new ConnectionLost("the channel is closed", { code, reason }));
  }
}
