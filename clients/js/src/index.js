// relay-rl-client: relay/1 over WebSocket for JavaScript (Node and browsers).
// The wire format is docs/protocol.md of the relay repository.

export { Connection, RemoteEnv, make } from "./agent.js";
export { connectEnv } from "./env.js";
export {
  ConnectError, ConnectionLost, InvalidAction, NotReset, ProtocolError, RelayError,
  RemoteEnvError, RemoteError, ServerClosing, Timeout,
} from "./errors.js";
export { decodeMessage, encodeMessage } from "./framing.js";
export { PROTOCOL } from "./messages.js";
export * as spaces from "./spaces.js";
export { NDArray, Scalar, Tuple, fromJsonValue, toJsonValue } from "./values.js";
