// The error classes of relay's JavaScript client (mirrors relay/core/errors.py).

export class RelayError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** Nobody listens at the address, the WebSocket upgrade was refused (HTTP 401, 404...). */
export class ConnectError extends RelayError {}

/** The peer closed the connection or it broke; `code` and `reason` are the WebSocket close's. */
export class ConnectionLost extends RelayError {
  constructor(message, { code = null, reason = "" } = {}) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

/** The server is shutting down and said so before hanging up: not a crash. */
export class ServerClosing extends ConnectionLost {}

/** A deadline passed. */
export class Timeout extends RelayError {}

/** A message arrived that relay/1 does not allow now, or could not be decoded. */
export class ProtocolError extends RelayError {}

/** The peer answered with an Error message. `code` is its relay/1 error code. */
export class RemoteError extends RelayError {
  constructor(message, { code = "remote", remoteType = "", traceback = "" } = {}) {
    super(remoteType ? `${remoteType}: ${message}` : message);
    this.code = code;
    this.remoteType = remoteType;
    this.remoteMessage = message;
    this.remoteTraceback = traceback;
  }
}

export class RemoteEnvError extends RemoteError {}
export class InvalidAction extends RemoteError {}
export class NotReset extends RemoteError {}

const REMOTE_ERRORS = { env: RemoteEnvError, invalid_action: InvalidAction, not_reset: NotReset };

/** The exception for an `error` message body (the one place they are unpacked). */
export function remoteError(body) {
  const cls = REMOTE_ERRORS[body.code] ?? RemoteError;
  return new cls(body.message ?? "", {
    code: body.code ?? "remote",
    remoteType: body.remote_type ?? "",
    traceback: body.traceback ?? "",
  });
}
