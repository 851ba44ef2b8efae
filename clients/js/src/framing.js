// relay's WebSocket framing (docs/protocol.md, "ws:// and wss://"; relay/transports/ws.py):
// one binary WebSocket message per relay message =
//   u32 n (little-endian) | n x u64 frame length (little-endian) | the frames' bytes.

import { ProtocolError } from "./errors.js";

/** One WebSocket message (a Uint8Array) holding these frames (Uint8Arrays). */
export function encodeMessage(frames) {
  const header = 4 + 8 * frames.length;
  const total = frames.reduce((sum, f) => sum + f.byteLength, header);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  view.setUint32(0, frames.length, true);
  let offset = header;
  frames.forEach((frame, i) => {
    view.setBigUint64(4 + 8 * i, BigInt(frame.byteLength), true);
    out.set(frame, offset);
    offset += frame.byteLength;
  });
  return out;
}

/** The frames (Uint8Array views) of one received WebSocket message. */
export function decodeMessage(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.byteLength < 4) throw new ProtocolError("message shorter than the relay header");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  let offset = 4 + 8 * count;
  if (offset > bytes.byteLength) throw new ProtocolError(`header announces ${count} frames`);
  const frames = [];
  for (let i = 0; i < count; i++) {
    const length = Number(view.getBigUint64(4 + 8 * i, true));
    if (offset + length > bytes.byteLength) throw new ProtocolError("frame lengths exceed the message");
    frames.push(bytes.subarray(offset, offset + length));
    offset += length;
  }
  if (offset !== bytes.byteLength) throw new ProtocolError("frame lengths do not add up");
  return frames;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The one-frame WebSocket message of a relay/1 JSON message {id, tag, body}. */
export function encodeJson(message) {
  return encodeMessage([encoder.encode(JSON.stringify(message))]);
}

/** The {id, tag, body} of a one-frame JSON relay message. */
export function decodeJson(data) {
  const frames = decodeMessage(data);
  if (frames.length !== 1) throw new ProtocolError(`a JSON message is one frame, got ${frames.length}`);
  let tree;
  try {
    tree = JSON.parse(decoder.decode(frames[0]));
  } catch (err) {
    throw new ProtocolError(`malformed JSON message: ${err.message}`);
  }
  if (tree === null || typeof tree !== "object" || !Number.isInteger(tree.id) ||
      typeof tree.tag !== "string" || tree.body === null || typeof tree.body !== "object") {
    throw new ProtocolError('a JSON message is an object {"id": int, "tag": str, "body": {...}}');
  }
  return tree;
}
