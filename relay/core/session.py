"""The sans-I/O protocol state machine of relay/1, for both ends.

A session is fed decoded :class:`~relay.core.messages.Envelope` objects and
returns envelopes to send or answers to hand up; it owns no socket, starts no
thread and reads no clock (``now`` is passed in, in seconds of any monotonic
clock).  The sync driver around it is :mod:`relay.connection`.

Legal moves (the one statement of them is :data:`CLIENT_TRANSITIONS`)::

    client:  IDLE --hello()--> HANDSHAKING --welcome(Welcome)--> READY
             READY --request()/receive()--> READY
             any --close() or lost()--> CLOSED
    server:  HANDSHAKING --receive(Hello)--> READY --receive(request)--> READY

Each request gets a fresh id; its answer must carry the same id and be of the
type that answers it (``Made`` for ``Make``...) or ``Error``.  An answer to a
request the driver gave up on (:meth:`ClientSession.cancel`, or
:meth:`ClientSession.expire` once its deadline passed) is dropped, never taken
for the answer of a later request.  The session does not give up by itself: an
answer that arrived in time but is read late (several requests in flight) is
still its request's.
"""

from __future__ import annotations

import enum
import hmac
import itertools
import reprlib
from collections.abc import Collection
from typing import Any, assert_never

from relay.core.errors import (
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
)
from relay.core.messages import (
    PROTOCOL,
    Call,
    Close,
    Closed,
    Envelope,
    Error,
    Frame,
    Hello,
    Made,
    MadeBatch,
    Make,
    MakeBatch,
    Observation,
    ObservationBatch,
    Render,
    Request,
    Reset,
    ResetBatch,
    Response,
    Returned,
    Step,
    StepBatch,
    Transition,
    TransitionBatch,
    Welcome,
)

__all__ = ["ANSWERS", "CAPABILITIES", "CLIENT_TRANSITIONS", "ClientSession", "ServerSession",
           "State"]


class State(enum.Enum):
    IDLE = "idle"
    HANDSHAKING = "handshaking"
    READY = "ready"
    CLOSED = "closed"


CLIENT_TRANSITIONS: dict[tuple[State, str], State] = {
    (State.IDLE, "hello"): State.HANDSHAKING,
    (State.HANDSHAKING, "welcome"): State.READY,
    (State.READY, "request"): State.READY,
    (State.READY, "receive"): State.READY,
}
"""(state, move) -> next state for a client; any other move is illegal."""

ANSWERS: dict[type, type] = {Make: Made, Reset: Observation, Step: Transition,
                             MakeBatch: MadeBatch, ResetBatch: ObservationBatch,
                             StepBatch: TransitionBatch, Render: Frame, Call: Returned,
                             Close: Closed}
"""Request type -> the response type that answers it (besides ``Error``)."""

CAPABILITIES = ("render", "call", "wrappers")
"""What every relay server offers beyond the core requests (``Welcome.capabilities``):
``call``: the ``Call`` request; ``wrappers``: ``Make.wrappers``.  A server that
hosts vector instances adds ``batch``."""


FALLBACK_CODEC = "json"
"""The codec every relay/1 peer speaks (the handshake's own; JavaScript clients use it)."""


def offered_codecs(codec: str) -> tuple[str, ...]:
    """The codecs a side whose ``codec`` setting is ``codec`` speaks, preferred first:
    its own, then :data:`FALLBACK_CODEC`.

    Both roles offer this: the client sends it in ``Hello.codecs``, the server
    accepts only these, and the codec used is the first of the client's that
    the server accepts.  So a server set to ``json`` refuses a client that
    speaks only ``msgpack``, and a client set to ``json`` gets ``json``.
    """
    return (codec,) if codec == FALLBACK_CODEC else (codec, FALLBACK_CODEC)


def _major(protocol: str) -> str:
    return protocol.split(".", 1)[0]


def _field_problem(message: Hello | Welcome, strings: tuple[str, ...],
                   string_lists: tuple[str, ...], optional: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the types of a handshake message's fields, or None.

    A peer may send any value in any field (the codecs check only the names),
    so the handshake checks types before it uses one.
    """
    kind = type(message).__name__
    for name in strings + optional:
        value = getattr(message, name)
        if not isinstance(value, str) and not (name in optional and value is None):
            wanted = "a string or null" if name in optional else "a string"
            shown = "" if name == "token" else f", got {reprlib.repr(value)}"
            return f"{kind}.{name} must be {wanted}{shown}"
    for name in string_lists:
        value = getattr(message, name)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"{kind}.{name} must be a list of strings, got {reprlib.repr(value)}"
    return None


def same_token(given: Any, expected: str) -> bool:
    """Whether a client's token is the server's, compared in constant time."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


class ClientSession:
    """The agent's side: handshake, request ids, deadlines, answer matching."""

    def __init__(self, codecs: Collection[str] = ("msgpack",), *, token: str | None = None,
                 role: str = "agent") -> None:
        self.state = State.IDLE
        self.codecs = tuple(codecs)
        self.codec: str | None = None
        self.server: str = ""
        self.capabilities: tuple[str, ...] = ()
        """The server's optional features from its ``Welcome`` (:data:`CAPABILITIES`)."""
        self._token = token
        self._role = role
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[type, float]] = {}
        self.dropped = 0  # late or unknown answers dropped

    def _move(self, move: str) -> None:
        if self.state is State.CLOSED:
            raise ConnectionLost("the connection is closed")
        next_state = CLIENT_TRANSITIONS.get((self.state, move))
        if next_state is None:
            raise LocalProtocolError(f"cannot {move} in state {self.state.value}")
        self.state = next_state

    def hello(self) -> Envelope:
        """The ``Hello`` to send first."""
        self._move("hello")
        return Envelope(0, Hello(codecs=self.codecs, token=self._token, role=self._role))

    def welcome(self, envelope: Envelope) -> Welcome:
        """Take the server's answer to ``Hello``.

        Raises:
            RemoteProtocolError: not a ``Welcome``, another protocol, or a codec not offered.
            The RemoteError of an ``Error`` answer is for the driver to raise.
        """
        message = envelope.message
        if isinstance(message, Error):
            self.state = State.CLOSED
            raise RemoteProtocolError(f"server refused the connection: {message.message}")
        if not isinstance(message, Welcome) or envelope.id != 0:
            self.state = State.CLOSED
            raise RemoteProtocolError(f"expected Welcome, got {type(message).__name__}")
        problem = _field_problem(message, ("protocol", "codec", "server"), ("capabilities",))
        if problem is not None:
            self.state = State.CLOSED
            raise RemoteProtocolError(f"malformed Welcome: {problem}")
        if _major(message.protocol) != _major(PROTOCOL):
            self.state = State.CLOSED
            raise RemoteProtocolError(f"server speaks {message.protocol!r}, not {PROTOCOL!r}")
        if message.codec not in self.codecs:
            self.state = State.CLOSED
            raise RemoteProtocolError(f"server chose codec {message.codec!r}, not offered")
        self._move("welcome")
        self.codec = message.codec
        self.server = message.server
        self.capabilities = tuple(message.capabilities)
        return message

    def request(self, message: Request, *, now: float, timeout: float) -> Envelope:
        """The envelope for a new request, due ``timeout`` seconds after ``now``."""
        if self.state is not State.READY:  # READY -> READY is the one legal move
            self._move("request")
        request_id = next(self._ids)
        self._pending[request_id] = (type(message), now + timeout)
        return Envelope(request_id, message)

    def receive(self, envelope: Envelope) -> tuple[int, Response] | None:
        """Match an answer to its request; None if it answers nothing pending (dropped).

        An ``Error`` with id 0 answers no request: the server hangs up and says
        why (e.g. ``server_closing``).  It is returned as ``(0, error)`` and the
        session is closed.

        Raises:
            RemoteProtocolError: the answer is of the wrong type for its request.
        """
        if self.state is not State.READY:
            self._move("receive")
        if envelope.id == 0 and isinstance(envelope.message, Error):
            self.lost()
            return 0, envelope.message
        pending = self._pending.pop(envelope.id, None)
        if pending is None:  # unknown, or given up on (cancelled or expired)
            self.dropped += 1
            return None
        message = envelope.message
        if not isinstance(message, (ANSWERS[pending[0]], Error)):
            self.state = State.CLOSED
            raise RemoteProtocolError(
                f"{pending[0].__name__} answered with {type(message).__name__}"
            )
        return envelope.id, message  # type: ignore[return-value]

    def expire(self, now: float) -> list[int]:
        """Forget requests whose deadline is past; their ids, so a caller can report them."""
        late = [rid for rid, (_, deadline) in self._pending.items() if deadline <= now]
        for rid in late:
            del self._pending[rid]
        return late

    def cancel(self, request_id: int) -> None:
        """Give up on a request (its answer will be dropped)."""
        self._pending.pop(request_id, None)

    def lost(self) -> None:
        """The transport reported the peer gone; every later move raises ConnectionLost."""
        self.state = State.CLOSED
        self._pending.clear()


class ServerSession:
    """The environment host's side: handshake, then one answer per request id."""

    def __init__(self, codecs: Collection[str], *, token: str | None = None,
                 server: str = "relay", capabilities: Collection[str] = CAPABILITIES) -> None:
        self.state = State.HANDSHAKING
        self.codecs = tuple(codecs)
        self.codec: str | None = None
        self._token = token
        self._server = server
        self._capabilities = tuple(capabilities)
        self._last_id = 0

    def hello(self, envelope: Envelope) -> Envelope:
        """Answer the client's first message with ``Welcome`` or ``Error``.

        Any message gets one of the two (fields of the wrong type included);
        after an ``Error`` answer the session is CLOSED and the driver hangs up.
        The token is compared in constant time.
        """
        message = envelope.message
        if self.state is not State.HANDSHAKING:
            raise LocalProtocolError("handshake already done")
        error: str | None = None
        if not isinstance(message, Hello):
            error = f"expected Hello, got {type(message).__name__}"
        elif (problem := _field_problem(message, ("protocol", "role"), ("codecs",),
                                        optional=("token",))) is not None:
            error = f"malformed Hello: {problem}"
        elif _major(message.protocol) != _major(PROTOCOL):
            error = (f"protocol {reprlib.repr(message.protocol)} is not supported "
                     f"(server speaks {PROTOCOL})")
        elif self._token is not None and not same_token(message.token, self._token):
            error = "missing or wrong token"
        else:
            chosen = next((c for c in message.codecs if c in self.codecs), None)
            if chosen is None:
                error = (f"none of the codecs {reprlib.repr(list(message.codecs))} is accepted "
                         f"(this server speaks {list(self.codecs)})")
            else:
                self.codec = chosen
                self.state = State.READY
                return Envelope(0, Welcome(codec=chosen, server=self._server,
                                           capabilities=self._capabilities))
        self.state = State.CLOSED
        return Envelope(0, Error(code="protocol", message=error))

    def request(self, envelope: Envelope) -> Request:
        """Validate an incoming request; the driver answers it with :meth:`answer`.

        Raises:
            RemoteProtocolError: not a request, before the handshake, or a reused id.
        """
        if self.state is not State.READY:
            raise RemoteProtocolError("request before the handshake")
        message = envelope.message
        match message:
            case Make() | Reset() | Step() | MakeBatch() | ResetBatch() | StepBatch() | \
                    Render() | Call() | Close():
                pass
            case Hello() | Welcome() | Made() | Observation() | Transition() | MadeBatch() | \
                    ObservationBatch() | TransitionBatch() | Frame() | Returned() | Closed() | \
                    Error():
                raise RemoteProtocolError(f"{type(message).__name__} is not a request")
            case _:
                assert_never(message)
        if envelope.id <= self._last_id:
            raise RemoteProtocolError(f"request id {envelope.id} is not increasing")
        self._last_id = envelope.id
        return message

    def answer(self, request_id: int, message: Response) -> Envelope:
        """The envelope answering request ``request_id``."""
        return Envelope(request_id, message)
