"""The fast path on grpcio internals: reads and sends run in the caller's thread.

Every use of grpcio's private modules (``grpc._channel``, ``grpc._server``,
``grpc._cython.cygrpc``) is in this module, so a grpcio upgrade touches one
file; when they are missing or changed, ``_INTERNALS`` is False and the
transport uses :mod:`._portable` instead."""

from __future__ import annotations

import collections
from typing import Any

from relay.core.errors import (
    ConnectionLost,
    Timeout,
)
from relay.transports.grpc._portable import _spin

try:  # grpcio internals behind the in-thread timed reads (_CallReader, _RequestReader)
    from grpc import _channel as _grpc_channel
    from grpc import _server as _grpc_server
    from grpc._cython import cygrpc as _cygrpc

    _RECEIVE = _cygrpc.OperationType.receive_message
    _SEND = _cygrpc.OperationType.send_message
    _REQUEST_TOKEN = _grpc_server._RECEIVE_MESSAGE_TOKEN
    _SEND_TOKEN = _grpc_server._SEND_MESSAGE_TOKEN
    _INTERNALS = callable(getattr(_grpc_channel, "_event_handler", None))
except (ImportError, AttributeError):  # another grpcio: the threaded fallback
    _INTERNALS = False


class _CallReader:
    """Timed reads of a client call's responses in the calling thread.

    Does what grpcio's ``_MultiThreadedRendezvous.__next__`` does (start one
    receive operation, wait on the call's condition until the channel's spin
    thread delivers the message) but with a deadline, so no thread of ours
    sits between gRPC and ``recv``.  A receive that timed out stays pending
    and is the one the next call waits for.
    """

    def __init__(self, call: Any, spin: int) -> None:
        self._state = call._state
        self._core = call._call
        self._handler = _grpc_channel._event_handler(call._state, None)
        self._spin = spin
        self.closed = False

    def _arrived(self) -> bool:
        return self._state.response is not None or _RECEIVE not in self._state.due

    @staticmethod
    def usable(call: Any) -> bool:
        state = getattr(call, "_state", None)
        return (_INTERNALS and hasattr(call, "_call") and hasattr(state, "condition")
                and hasattr(state, "due") and hasattr(state, "response"))

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout."""
        state = self._state
        with state.condition:
            if state.response is None and _RECEIVE not in state.due:
                if state.code is not None:
                    return None
                state.due.add(_RECEIVE)
                if not self._core.operate((_cygrpc.ReceiveMessageOperation(0),), self._handler):
                    state.due.discard(_RECEIVE)
                    return None
        left = _spin(self._arrived, self._spin, timeout)
        with state.condition:
            if not state.condition.wait_for(
                lambda: state.response is not None or _RECEIVE not in state.due or self.closed,
                left,
            ):
                raise Timeout(f"no message within {timeout} s")
            response, state.response = state.response, None
            return response  # type: ignore[no-any-return]

    def wake(self) -> None:
        self.closed = True
        with self._state.condition:
            self._state.condition.notify_all()

    def status(self) -> str:
        """The call's final status as ``" (CODE: details)"``, once known (within 0.5 s)."""
        state = self._state
        with state.condition:
            state.condition.wait_for(lambda: state.code is not None, 0.5)
            if state.code is None:
                return ""
            return f" ({state.code.name}: {state.details})"


class _RequestSender:
    """A client call's sends started in the calling thread, never waiting.

    grpcio's own way (a request iterator drained by a thread per call) costs a
    thread wake-up before each message leaves.  This starts the send operation
    at once.  gRPC allows one send in flight per call: a message sent while the
    previous one is still being written (a peer not reading) waits in a queue,
    and the completion of each send, on grpcio's channel thread, starts the
    next.  The request iterator grpcio drains then only ends the stream.
    """

    def __init__(self, call: Any) -> None:
        self._state = call._state
        self._core = call._call
        self._grpc_handler = _grpc_channel._event_handler(call._state, None)
        self._queue: collections.deque[bytes] = collections.deque()

    def _start(self, data: bytes) -> bool:  # under the call's condition
        state = self._state
        state.due.add(_SEND)
        if self._core.operate((_cygrpc.SendMessageOperation(data, 0),), self._handle):
            return True
        state.due.discard(_SEND)
        return False

    def _handle(self, event: Any) -> bool:
        """grpcio's event handler, then the next queued send (grpcio's channel thread)."""
        done = self._grpc_handler(event)
        state = self._state
        with state.condition:
            if (self._queue and _SEND not in state.due and state.code is None
                    and not state.cancelled and self._start(self._queue.popleft())):
                return False  # the call has an operation due again
        return done  # type: ignore[no-any-return]

    def send(self, data: bytes) -> None:
        state = self._state
        with state.condition:
            if state.code is None and not state.cancelled:
                if _SEND in state.due or self._queue:
                    self._queue.append(data)
                    return
                if self._start(data):
                    return
        raise ConnectionLost(f"the gRPC call has ended ({state.code})")


class _RequestReader:
    """Timed reads of a server call's requests in the calling thread.

    What grpcio's ``_RequestIterator.__next__`` does, with a deadline (see
    :class:`_CallReader`).
    """

    def __init__(self, requests: Any, spin: int) -> None:
        self._requests = requests
        self._state = requests._state
        self._spin = spin
        self.closed = False

    def _arrived(self) -> bool:
        state = self._state
        return (state.request is not None or _REQUEST_TOKEN not in state.due
                or state.client == "cancelled")

    @staticmethod
    def usable(requests: Any) -> bool:
        state = getattr(requests, "_state", None)
        return (_INTERNALS and hasattr(requests, "_raise_or_start_receive_message")
                and hasattr(requests, "_look_for_request") and hasattr(state, "condition")
                and hasattr(state, "due") and hasattr(state, "request")
                and hasattr(state, "client"))

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout, grpc.RpcError."""
        state = self._state
        requests = self._requests
        with state.condition:
            try:
                if state.request is None and _REQUEST_TOKEN not in state.due:
                    requests._raise_or_start_receive_message()
            except StopIteration:
                return None
        left = _spin(self._arrived, self._spin, timeout)
        with state.condition:
            try:
                if not state.condition.wait_for(
                    lambda: (state.request is not None or _REQUEST_TOKEN not in state.due
                             or state.client == "cancelled" or self.closed),
                    left,
                ):
                    raise Timeout(f"no message within {timeout} s")
                return requests._look_for_request()  # type: ignore[no-any-return]
            except StopIteration:
                return None

    def wake(self) -> None:
        self.closed = True
        with self._state.condition:
            self._state.condition.notify_all()


class _ResponseSender:
    """A server call's sends that never wait for gRPC to finish writing.

    grpcio's own ``send_response`` blocks until the message is written, a
    thread wake-up (~100-200 µs here) on the serving thread between a reply
    and the next ``recv``.  This starts the same send operation and returns.
    gRPC allows one send in flight per call: a message sent meanwhile (a peer
    not reading) waits in a queue, and the completion of each send, on
    grpcio's server thread, starts the next one, then the final status once
    the channel is closed.
    """

    def __init__(self, context: Any, send_response: Any) -> None:
        self._state = context._state
        self._call = context._rpc_event.call
        self._grpc_done = _grpc_server._send_message(self._state, _SEND_TOKEN)
        self._send_response = send_response
        self._queue: collections.deque[bytes] = collections.deque()
        self._closing = False

    @staticmethod
    def usable(context: Any) -> bool:
        state = getattr(context, "_state", None)
        return (_INTERNALS and hasattr(getattr(context, "_rpc_event", None), "call")
                and hasattr(state, "condition") and hasattr(state, "due")
                and hasattr(state, "statused") and hasattr(state, "client"))

    def _ended(self) -> bool:
        return self._state.client == "cancelled" or self._state.statused  # type: ignore[no-any-return]

    def _start(self, data: bytes) -> None:  # under the call's condition
        self._call.start_server_batch((_cygrpc.SendMessageOperation(data, 0),), self._sent)
        self._state.due.add(_SEND_TOKEN)

    def _sent(self, event: Any) -> Any:
        """grpcio's completion of a send, then the next queued one (grpcio's server thread)."""
        state = self._state
        with state.condition:
            result = self._grpc_done(event)
            if not self._ended():
                if self._queue:
                    self._start(self._queue.popleft())
                elif self._closing:
                    self._send_response(None)  # status OK: the end of the stream
            return result

    def send(self, data: bytes) -> None:
        state = self._state
        with state.condition:
            if self._ended() or self._closing:
                raise ConnectionLost("the gRPC call has ended")
            if _SEND_TOKEN in state.due or self._queue:
                self._queue.append(data)
            else:
                self._start(data)

    def close(self) -> None:
        """The final status once every queued message is written (at once if none is)."""
        state = self._state
        with state.condition:
            self._closing = True
            if self._ended() or _SEND_TOKEN in state.due or self._queue:
                return
        self._send_response(None)
