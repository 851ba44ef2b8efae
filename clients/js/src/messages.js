// relay/1 messages in the json codec: {"id": int, "tag": str, "body": {field: value}}.

import { ProtocolError } from "./errors.js";
import { decodeJson, encodeJson } from "./framing.js";
import { fromJsonValue, toJsonValue } from "./values.js";

export const PROTOCOL = "relay/1";

/** Request tag -> the tag of the response that answers it (besides "error"). */
export const ANSWERS = { make: "made", reset: "observation", step: "transition", render: "frame", close: "closed" };

/** The WebSocket message (a Uint8Array) of one relay/1 message. */
export function encodeEnvelope(id, tag, body) {
  return encodeJson({ id, tag, body: toJsonValue(body) });
}

/** {id, tag, body} of one received WebSocket message, values decoded. */
export function decodeEnvelope(data) {
  const tree = decodeJson(data);
  return { id: tree.id, tag: tree.tag, body: fromJsonValue(tree.body) };
}

export function major(protocol) {
  if (typeof protocol !== "string") throw new ProtocolError("protocol must be a string");
  return protocol.split(".")[0];
}
