"""GrpcChannel: one relay channel over one bidirectional gRPC stream."""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import grpc

from relay.codecs.base import Buffer
from relay.core.errors import (
    ConnectionLost,
    MessageTooLarge,
    Timeout,
)
from relay.transports.base import (
    HANDSHAKE_LIMIT,
    message_size,
    over_limit,
)
from relay.transports.framing import pack, unpack
from relay.transports.grpc._config import _rpc_error_text

_END = object()


class GrpcChannel:
    """One relay channel over one gRPC bidirectional stream (either side).

    ``recv`` waits for gRPC's own delivery of the next message in the calling
    thread (``_CallReader``/``_RequestReader``, or a ``_ThreadReader``) and
    ``send`` starts the send there (``_RequestSender``/``_ResponseSender``, or
    grpcio's request thread, send callback or a response generator fed by a
    queue).
    """

    def __init__(self, limit: int, side: str) -> None:
        self._limit = limit
        self._receive_limit = HANDSHAKE_LIMIT
        self._side = side
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._send: Callable[[bytes], Any] = self._outbox.put
        self._reader: Any = None
        self._closed = False
        self._lost: BaseException | None = None
        self._on_close: list[Any] = []
        self._close_lock = threading.Lock()
        self._stream_closed = False

    # -- driven by gRPC -------------------------------------------------------
    def _outgoing(self) -> Iterator[bytes]:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item

    @property
    def _peer(self) -> str:
        return "server" if self._side == "client" else "client"

    # -- Channel --------------------------------------------------------------
    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one message.  Raises ConnectionLost, MessageTooLarge."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        size = message_size(frames)
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        try:
            self._send(pack(frames))
        except ConnectionLost:  # the call has ended; recv still returns what arrived before
            raise
        except Exception as exc:  # grpc raises plain exceptions on a torn-down call
            raise ConnectionLost(f"gRPC stream to the {self._peer} failed: {exc!r}") from exc

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """The next message, within ``timeout`` seconds.  Raises Timeout, ConnectionLost."""
        if self._closed:
            raise ConnectionLost("grpc channel is closed")
        if self._lost is not None:
            raise ConnectionLost(str(self._lost)) from self._lost.__cause__
        try:
            data = self._reader.next(timeout)
        except Timeout:
            raise
        except grpc.RpcError as exc:
            self._fail(ConnectionLost(
                f"gRPC stream to the {self._peer} failed: {_rpc_error_text(exc)}"), exc)
        except Exception as exc:  # grpc raises plain exceptions on a torn-down call
            self._fail(ConnectionLost(f"gRPC stream to the {self._peer} failed: {exc!r}"), exc)
        if data is None:
            if self._closed:
                raise ConnectionLost("grpc channel is closed")
            status = getattr(self._reader, "status", lambda: "")()
            self._fail(ConnectionLost(f"the {self._peer} ended the stream{status}"), None)
        try:
            frames = unpack(data)
        except (ValueError, struct.error) as exc:
            self._fail(ConnectionLost(f"malformed relay message from the {self._peer}: {exc}"),
                       exc)
        size = message_size(frames)
        if size > self._receive_limit:
            self._fail(ConnectionLost(
                f"the {self._peer} sent {over_limit(size, self._receive_limit, self._limit)}; "
                "connection dropped"), None)
        return frames  # type: ignore[return-value]

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then; gRPC itself receives up to ``max_message_size``, as it
        arrives, before this check)."""
        self._receive_limit = nbytes

    def _fail(self, lost: ConnectionLost, cause: BaseException | None) -> NoReturn:
        lost.__cause__ = cause
        self._lost = lost
        self._close_stream()
        raise lost

    def close(self) -> None:
        """End the stream (the peer sees ConnectionLost); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        with self._close_lock:
            if self._stream_closed:
                return
            self._stream_closed = True
            callbacks, self._on_close = self._on_close, []
        self._outbox.put(_END)
        if self._reader is not None:
            self._reader.wake()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # closing a torn-down gRPC object
                pass
