"""The typed messages of protocol ``relay/1``.

Every message is a slotted, keyword-only dataclass with a stable wire
``tag``; together they form the closed union :data:`Message`.  A message
travels inside an :class:`Envelope` that carries the request id: a request and
its one answer share the id, so a late answer is never taken for the next
request's.  The handshake (``Hello``/``Welcome``) uses id 0.

Values inside messages (observations, actions, infos) are *value trees*:
``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``,
``tuple``, ``dict``, ``numpy.ndarray`` and numpy scalars, nested.  Codecs
round-trip each of these with its exact Python type, dtype and shape.
Spaces travel as the plain descriptions of :mod:`relay.core.spaces`.

The wire layout per codec is in ``docs/protocol.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "PROTOCOL",
    "Close",
    "Closed",
    "Call",
    "Envelope",
    "Error",
    "Frame",
    "Hello",
    "Made",
    "MadeBatch",
    "Make",
    "MakeBatch",
    "Message",
    "Observation",
    "ObservationBatch",
    "Render",
    "Request",
    "Reset",
    "ResetBatch",
    "Response",
    "Returned",
    "Step",
    "StepBatch",
    "Transition",
    "TransitionBatch",
    "Welcome",
    "MESSAGE_TYPES",
]

PROTOCOL = "relay/1"
"""Protocol name and major version spoken by this package."""

# Messages are values: nothing in relay mutates one after it is built.  They are
# not ``frozen=True`` because a frozen dataclass's ``__init__`` sets each field
# through ``object.__setattr__``: twice the cost (2.1 against 1.0 µs for a
# Transition, measured here), paid four times per step on each side.


@dataclass(slots=True, kw_only=True)
class Hello:
    """Client → server, first message: protocol, codecs in preference order, role."""

    tag: ClassVar[str] = "hello"
    protocol: str = PROTOCOL
    codecs: tuple[str, ...] = ("msgpack",)
    role: str = "agent"
    token: str | None = None


@dataclass(slots=True, kw_only=True)
class Welcome:
    """Server → client: the codec chosen for the rest of the connection."""

    tag: ClassVar[str] = "welcome"
    protocol: str = PROTOCOL
    codec: str = "msgpack"
    server: str = ""
    capabilities: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class Make:
    """Create an environment instance (``env_id`` may be None when the server serves one)."""

    tag: ClassVar[str] = "make"
    env_id: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: list[dict[str, Any]] = field(default_factory=list)
    """Gymnasium wrappers for the server to apply, innermost first: each
    ``{"name", "entry_point", "kwargs"}`` (a ``WrapperSpec``); the server
    applies only those it allows."""


@dataclass(slots=True, kw_only=True)
class Made:
    """Answer to ``Make``: the instance id and what the client needs to mirror the env.

    ``spec`` is the Gymnasium ``EnvSpec.to_json()`` string, or None.
    """

    tag: ClassVar[str] = "made"
    instance: int
    observation_space: Any
    action_space: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    render_mode: str | None = None
    spec: str | None = None


@dataclass(slots=True, kw_only=True)
class Reset:
    tag: ClassVar[str] = "reset"
    instance: int
    seed: int | None = None
    options: dict[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class Observation:
    """Answer to ``Reset``: ``(obs, info)``."""

    tag: ClassVar[str] = "observation"
    obs: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Step:
    tag: ClassVar[str] = "step"
    instance: int
    action: Any


@dataclass(slots=True, kw_only=True)
class Transition:
    """Answer to ``Step``: Gymnasium's 5-tuple, each value with the env's own type."""

    tag: ClassVar[str] = "transition"
    obs: Any
    reward: Any
    terminated: Any
    truncated: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class MakeBatch:
    """Create a *vector instance*: ``num_envs`` environments stepped by one message.

    ``num_envs`` None takes the server's size; ``autoreset_mode`` (an
    ``AutoresetMode`` value, or None for the env's own) must be the served
    vector env's, or the server answers ``Error`` ``config``.
    """

    tag: ClassVar[str] = "make_batch"
    env_id: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_envs: int | None = None
    autoreset_mode: str | None = None


@dataclass(slots=True, kw_only=True)
class MadeBatch:
    """Answer to ``MakeBatch``: the vector instance, its size and its *single* spaces.

    ``metadata`` holds the served vector env's ``autoreset_mode`` as its value
    (``"NextStep"``, ``"SameStep"``, ``"Disabled"``).
    """

    tag: ClassVar[str] = "made_batch"
    instance: int
    num_envs: int
    observation_space: Any
    action_space: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    render_mode: str | None = None
    spec: str | None = None


@dataclass(slots=True, kw_only=True)
class ResetBatch:
    """Reset a vector instance: ``seed`` None, an int, or one int/None per sub-env;
    ``options`` may hold ``reset_mask``, a bool array of shape ``(num_envs,)``."""

    tag: ClassVar[str] = "reset_batch"
    instance: int
    seed: Any = None
    options: dict[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class ObservationBatch:
    """Answer to ``ResetBatch``: the stacked observations and the vector infos."""

    tag: ClassVar[str] = "observation_batch"
    obs: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class StepBatch:
    """Step every sub-env of a vector instance: ``actions`` is the ``(num_envs, ...)`` batch."""

    tag: ClassVar[str] = "step_batch"
    instance: int
    actions: Any


@dataclass(slots=True, kw_only=True)
class TransitionBatch:
    """Answer to ``StepBatch``: the vector env's 5-tuple, each an array over the sub-envs
    (``obs`` ``(num_envs, ...)``, ``rewards``/``terminations``/``truncations``
    ``(num_envs,)``) and the vector infos (arrays with ``_key`` masks)."""

    tag: ClassVar[str] = "transition_batch"
    obs: Any
    rewards: Any
    terminations: Any
    truncations: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Render:
    tag: ClassVar[str] = "render"
    instance: int


@dataclass(slots=True, kw_only=True)
class Frame:
    """Answer to ``Render``: an ``(H, W, 3)`` uint8 array, ansi text, a list of them, or None."""

    tag: ClassVar[str] = "frame"
    frame: Any


@dataclass(slots=True, kw_only=True)
class Call:
    """Reach the env's own methods and attributes (only names the server allows).

    ``kind``: ``"call"`` calls the method ``name`` with ``args``/``kwargs``
    (an attribute that is not callable is returned as is, as Gymnasium's
    ``SyncVectorEnv.call`` does); ``"get"`` reads the attribute (a method is
    answered ``callable=True``, no value); ``"set"`` writes ``args[0]``.
    ``index`` names a sub-environment of a vector instance (None: the instance).
    """

    tag: ClassVar[str] = "call"
    instance: int
    name: str
    kind: str = "call"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    index: int | None = None


@dataclass(slots=True, kw_only=True)
class Returned:
    """Answer to ``Call``: the value (None for ``set``), or ``callable`` for a method read."""

    tag: ClassVar[str] = "returned"
    value: Any = None
    callable: bool = False


@dataclass(slots=True, kw_only=True)
class Close:
    tag: ClassVar[str] = "close"
    instance: int


@dataclass(slots=True, kw_only=True)
class Closed:
    tag: ClassVar[str] = "closed"


@dataclass(slots=True, kw_only=True)
class Error:
    """Answer to any request that failed; ``code`` picks the client's exception class."""

    tag: ClassVar[str] = "error"
    code: str
    message: str
    remote_type: str = ""
    traceback: str = ""
    env_index: int | None = None
    """The sub-environment of a vector instance that failed, when known."""


Request = Make | Reset | Step | MakeBatch | ResetBatch | StepBatch | Render | Call | Close
Response = (Made | Observation | Transition | MadeBatch | ObservationBatch | TransitionBatch
            | Frame | Returned | Closed | Error)
Message = Hello | Welcome | Request | Response

MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.tag: cls
    for cls in (
        Hello, Welcome, Make, Made, Reset, Observation, Step, Transition,
        MakeBatch, MadeBatch, ResetBatch, ObservationBatch, StepBatch, TransitionBatch,
        Render, Frame, Call, Returned, Close, Closed, Error,
    )
}
"""Wire tag -> message class."""


@dataclass(slots=True)
class Envelope:
    """A message with its request id (0 for the handshake)."""

    id: int
    message: Message
