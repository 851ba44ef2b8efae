"""Sync drivers that run a session over a channel: one per side.

:class:`ClientConnection` turns ``call(request)`` into frames on a channel and
waits for the matching answer within the request's deadline.
:func:`serve_channel` answers one client's requests until it goes away.

The handshake (``Hello``/``Welcome``) is always JSON, whatever codec is then
negotiated, so a peer in any language can start a conversation.  Until it is
done a channel receives at most
:data:`~relay.transports.base.HANDSHAKE_LIMIT` bytes per message; both drivers
raise the limit to ``settings.max_message_size`` right after it (the one
place that does).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple, cast

from relay.codecs.base import Buffer, Codec
from relay.codecs.json import JsonCodec
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectionLost,
    MessageTooLarge,
    ProtocolError,
    RelayError,
    RemoteError,
    ServerClosing,
    Timeout,
    remote_error_class,
)
from relay.core.messages import Envelope, Error, Request, Response
from relay.core.plugins import get_codec, get_transport
from relay.core.session import (
    CAPABILITIES,
    FALLBACK_CODEC,
    ClientSession,
    ServerSession,
    State,
    offered_codecs,
)
from relay.core.url import URL
from relay.transports.base import Channel

__all__ = [
    "HANDSHAKE_CODEC",
    "ClientConnection",
    "Pending",
    "answer_hello",
    "hang_up_error",
    "server_codecs",
    "remote_error",
    "serve_channel",
]

HANDSHAKE_CODEC = JsonCodec()
IDLE_POLL = 0.25
"""Seconds between checks of the stop flag while a server channel is idle."""


def hang_up_error(message: Error) -> RelayError:
    """The exception for an ``Error`` with id 0 after the handshake: the server
    hangs up and says why (:class:`ServerClosing` when it is shutting down)."""
    if message.code == ServerClosing.code:
        return ServerClosing(message.message)
    return remote_error(message)


def remote_error(message: Error) -> RemoteError:
    """The exception to raise for an ``Error`` answer (the one place they are unpacked)."""
    cls = remote_error_class(message.code, message.remote_type)
    error = cls(message.message, remote_type=message.remote_type,
                remote_traceback=message.traceback)
    if message.env_index is not None:  # a sub-env of a vector instance
        error.env_index = message.env_index  # type: ignore[attr-defined]
    return error


class ClientConnection:
    """A handshaken connection to a relay server.

    Use :meth:`open`; then :meth:`call` for each request.  After
    ``ConnectionLost`` every call raises ``ConnectionLost`` at once.
    """

    def __init__(self, channel: Channel, codec: Codec, session: ClientSession,
                 settings: Settings) -> None:
        self.channel = channel
        self.codec = codec
        self.session = session
        self.settings = settings
        self._early: dict[int, Response] = {}  # answers that came before their receive()

    @classmethod
    def open(cls, url: URL, settings: Settings, *, role: str = "agent") -> ClientConnection:
        """Connect to ``url`` and run the handshake within ``settings.connect_timeout``.

        A peer protocol codec (``dm_env_rpc``) returns its own connection
        instead, with the same ``call``/``close``/``closed``.

        Raises:
            UnknownScheme, UnknownCodec, ConnectError, Timeout, RemoteProtocolError.
        """
        codec = get_codec(settings.codec)  # an unknown codec fails before connecting
        open_client = getattr(codec, "open_client", None)
        if open_client is not None:  # a peer protocol (dm_env_rpc) owns the connection
            return open_client(url, settings)  # type: ignore[no-any-return]
        transport = get_transport(url.scheme)
        deadline = time.monotonic() + settings.connect_timeout
        channel = transport.connect(url, settings, timeout=settings.connect_timeout)
        return cls.over(channel, settings, role=role, deadline=deadline, peer=url.render())

    @classmethod
    def over(cls, channel: Channel, settings: Settings, *, role: str = "agent",
             deadline: float | None = None, peer: str = "the peer") -> ClientConnection:
        """Run the client handshake on an already open ``channel`` (closed on failure).

        The inverted mode uses it on an accepted channel: the listening agent is
        the client of the session.  ``deadline`` (a ``time.monotonic()`` value)
        defaults to ``settings.connect_timeout`` from now.

        Raises:
            UnknownCodec, Timeout, ConnectionLost, RemoteProtocolError.
        """
        if deadline is None:
            deadline = time.monotonic() + settings.connect_timeout
        try:
            preferred = get_codec(settings.codec)
            session = ClientSession(offered_codecs(preferred.name), token=settings.token,
                                    role=role)
            channel.send(HANDSHAKE_CODEC.encode(session.hello()))
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                frames = channel.recv(remaining)
            except Timeout:
                raise Timeout(
                    f"no handshake answer from {peer} within "
                    f"{settings.connect_timeout} s"
                ) from None
            session.welcome(HANDSHAKE_CODEC.decode(frames))
            codec = preferred if session.codec == preferred.name else get_codec(FALLBACK_CODEC)
            channel.set_receive_limit(settings.max_message_size)
        except BaseException:
            channel.close()
            raise
        return cls(channel, codec, session, settings)

    def call(self, request: Request, timeout: float | None = None) -> Response:
        """Send ``request`` and return its answer: :meth:`receive` of :meth:`submit`.

        Args:
            timeout: seconds to wait for the answer; ``settings.timeout`` if None.

        Raises:
            Timeout: no answer in time (the connection stays usable; a late
                answer is dropped).
            ConnectionLost: the peer is gone.
            RemoteError: the server answered with an error (a subclass by code).
        """
        return self.receive(self.submit(request, timeout))

    def submit(self, request: Request, timeout: float | None = None) -> Pending:
        """Send ``request`` without waiting; :meth:`receive` takes its answer.

        Several requests may be in flight on one connection (a vector env
        overlaps the round trips of its sub-environments this way); the
        server answers them in order.

        Raises:
            ConnectionLost, MessageTooLarge, CodecError (nothing was sent).
        """
        timeout = self.settings.timeout if timeout is None else timeout
        now = time.monotonic()
        envelope = self.session.request(request, now=now, timeout=timeout)
        pending = Pending(envelope.id, type(request).__name__, timeout, now + timeout)
        try:
            self.channel.send(self.codec.encode(envelope))
        except ConnectionLost as exc:
            self.session.lost()
            reason = self._last_words()
            if reason is None:
                raise
            raise reason from exc
        except ProtocolError:
            self.session.lost()
            raise
        except RelayError:
            self.session.cancel(envelope.id)
            raise
        return pending

    def _last_words(self) -> RelayError | None:
        """The error a server that hung up gave as its reason (an ``Error`` with id 0
        among the messages still waiting, e.g. ``server_closing``), or None."""
        for _ in range(64):  # answers that came before it are of no use any more
            try:
                envelope = self.codec.decode(self.channel.recv(0))
            except RelayError:
                return None
            if envelope.id == 0 and isinstance(envelope.message, Error):
                return hang_up_error(envelope.message)
        return None

    def receive(self, pending: Pending) -> Response:
        """Wait for the answer to ``pending`` (until its deadline) and return it.

        Raises:
            Timeout: no answer by the deadline (a late answer is dropped).
            ConnectionLost, RemoteError: as :meth:`call`.
        """
        answer = self._early.pop(pending.id, None)
        try:
            while answer is None:
                # past the deadline, recv(0) still takes an answer that is waiting
                # (read late because other requests' answers were read first)
                remaining = max(pending.deadline - time.monotonic(), 0.0)
                frames = self.channel.recv(remaining)
                decoded = self.codec.decode(frames, zero_copy=self.settings.zero_copy)
                received = self.session.receive(decoded)
                if received is None:
                    continue
                if received[0] == 0:  # the server hangs up, telling why
                    raise hang_up_error(cast(Error, received[1]))
                if received[0] == pending.id:
                    answer = received[1]
                elif self.settings.zero_copy:  # another request's: kept for its receive,
                    # and copied, since its arrays may view buffers the next recv reuses
                    self._early[received[0]] = copy.deepcopy(received[1])
                else:
                    self._early[received[0]] = received[1]
        except Timeout:
            self.session.cancel(pending.id)
            raise Timeout(
                f"{pending.request} got no answer within {pending.timeout} s"
            ) from None
        except (ConnectionLost, CodecError, ProtocolError):
            self.session.lost()
            raise
        if isinstance(answer, Error):
            raise remote_error(answer)
        return answer

    @property
    def closed(self) -> bool:
        return self.session.state is State.CLOSED

    def close(self) -> None:
        """Close the channel; idempotent."""
        self.session.lost()
        self.channel.close()


class Pending(NamedTuple):
    """A request sent by :meth:`ClientConnection.submit`, awaiting its ``receive``."""

    id: int
    request: str
    """The request's type name (for error messages)."""
    timeout: float
    """Seconds it was given."""
    deadline: float
    """``time.monotonic()`` value after which its answer is dropped."""


Handler = Callable[[Request], Response]


def server_codecs(settings: Settings) -> tuple[str, ...]:
    """The codecs a relay/1 server with ``settings`` accepts (:func:`offered_codecs`).

    Raises:
        UnknownCodec: ``settings.codec`` is not registered or cannot be loaded.
        ConfigError: ``settings.codec`` names a peer protocol (it runs its own server).
    """
    codec = get_codec(settings.codec)
    if getattr(codec, "serve", None) is not None:
        raise ConfigError(f"{settings.codec!r} is a peer protocol, not a relay/1 codec")
    return offered_codecs(codec.name)


def _unsendable(request_id: int, exc: RelayError) -> Envelope:
    """The ``Error`` answer for an answer that could not be encoded or sent."""
    return Envelope(request_id, Error(
        code="env", message=f"cannot send the answer: {exc}",
        remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}"))


def answer_hello(session: ServerSession, frames: Sequence[Buffer]) -> Envelope:
    """A server's answer to a client's first message: ``Welcome``, or ``Error`` for
    undecodable frames and a malformed or refused ``Hello``.  Never raises; the
    session is READY only after a ``Welcome``."""
    try:
        return session.hello(HANDSHAKE_CODEC.decode(frames))
    except CodecError as exc:
        return Envelope(0, Error(code="protocol", message=f"bad Hello: {exc}"))


def serve_channel(
    channel: Channel,
    handler: Handler,
    settings: Settings,
    *,
    stop: threading.Event,
    on_close: Callable[[], None] | None = None,
    capabilities: Collection[str] = CAPABILITIES,
) -> None:
    """Answer one client's requests with ``handler`` until it leaves or ``stop`` is set
    (then the request being answered is finished and the client is told
    ``server_closing``, its :class:`~relay.core.errors.ServerClosing`).

    ``capabilities`` are announced in the ``Welcome`` (``"batch"``: the server
    hosts vector instances).

    ``handler`` never raises for a bad request: it returns an ``Error``.  A
    client that breaks the protocol or sends undecodable frames gets an
    ``Error`` (when possible) and is hung up on; nothing escapes to the caller.
    """
    session = ServerSession(server_codecs(settings), token=settings.token, server="relay",
                            capabilities=capabilities)
    try:
        frames = channel.recv(settings.connect_timeout)
        channel.send(HANDSHAKE_CODEC.encode(answer_hello(session, frames)))
        if session.state is not State.READY:
            return
        channel.set_receive_limit(settings.max_message_size)
        codec = get_codec(session.codec or "msgpack")
        while not stop.is_set():
            try:
                frames = channel.recv(IDLE_POLL)
            except Timeout:
                continue
            try:
                envelope = codec.decode(frames)
                request = session.request(envelope)
            except (CodecError, ProtocolError) as exc:
                channel.send(codec.encode(
                    Envelope(0, Error(code="protocol", message=str(exc),
                                      remote_type=type(exc).__name__))))
                return
            try:
                reply = codec.encode(session.answer(envelope.id, handler(request)))
            except CodecError as exc:  # the env produced something that cannot travel
                reply = codec.encode(_unsendable(envelope.id, exc))
            try:
                channel.send(reply)
            except MessageTooLarge as exc:  # tell the client why instead of hanging up
                channel.send(codec.encode(_unsendable(envelope.id, exc)))
        # stopped: the server shuts down; the client learns it is not a crash
        channel.send(codec.encode(Envelope(0, Error(
            code=ServerClosing.code, message="the server is shutting down"))))
    except (ConnectionLost, Timeout, CodecError):
        return
    finally:
        try:
            if on_close is not None:
                on_close()
        finally:
            channel.close()
