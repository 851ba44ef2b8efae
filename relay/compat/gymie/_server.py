"""Gymie's JSON-over-WebSocket protocol (``ws://HOST:PORT/gym?codec=gymie``), both ways.

Gymie (``pip install gymie==0.5.4``, github.com/jscriptcoder/Gymie-Server,
files ``gymie/server.py`` and ``gymie/api.py``) serves gym environments over
one WebSocket path, ``/gym``.  A client sends one text message per call::

    {"method": "make", "params": {"env_id": "CartPole-v1", "seed": 3}}

and gets one text message back.  Methods, parameters and answers (exact text):

=====================  ================================  ==========================================
method                 params                            answer
=====================  ================================  ==========================================
``make``               ``env_id``, ``seed`` (optional;   the bare instance id, 32 hex digits
                       only a truthy seed seeds)         (``uuid4().hex``), not JSON-quoted
``reset``              ``instance_id``                   ``str(obs.tolist())``: Python's list text
``step``               ``instance_id``, ``action``,      ``json.dumps([obs, reward, done, info])``
                       ``render`` (optional)
``close``              ``instance_id``                   ``true``
``observation_space``  ``instance_id``                   ``json.dumps(space_info)``, see below
``action_space``       ``instance_id``                   same
``action_sample``      ``instance_id``                   ``str(sample.tolist())``
=====================  ================================  ==========================================

A space is ``{"name": "Discrete", "n": 2}``, ``{"name": "Box", "shape": [4],
"low": [...], "high": [...]}`` (bounds as float64 numbers), ``{"name":
"MultiBinary", "n": 5, "shape": [5]}``, or only ``{"name": ...}`` for any other
class.  ``done`` is gym 0.17's: a time-limit end adds ``"TimeLimit.truncated":
true`` to ``info``.  Any error closes the socket with a code and a reason:
1003 ``Message `TEXT` is invalid`` (not JSON), 1003 ``Message keys [...] are
missing or invalid`` (no ``method``/``params``), 1007 ``Method `M` not found``,
``Parameters `P` are wrong``, ``Instance `I` not found``, ``Environment `E` not
found``, ``Environment `E` is malformed``, ``Action `A` is wrong`` (any failure
of ``step``), ``Unknonwn error: ...`` (sic).  Instances outlive nothing but
their ``close``.

**Server** (:class:`GymieSession`, :class:`GymieServer`):
``relay.serve("CartPole-v1", "ws://127.0.0.1:5000/gym?codec=gymie")`` answers
these messages with the same bytes as Gymie for the same environment outputs,
hosting environments with :class:`relay.server.EnvHost` (one per connection).
Where Gymie itself breaks, relay answers sensibly instead, and says so here:

* infinite Box bounds are sent as +/- the float32 maximum
  (``3.4028234663852886e+38``, what gym 0.17's CartPole declares), because
  Gymie's ``Infinity`` is rejected by JavaScript's ``JSON.parse``;
* a JSON message that is not an object is closed with 1003 ``Message `TEXT` is
  invalid`` (Gymie's handler crashes and the client reads garbage);
* a close reason is cut to the 123 bytes a WebSocket close frame can carry
  (Gymie sends an oversized, invalid frame);
* numpy values in ``info`` and ``reward`` are sent as plain numbers (Gymie's
  ``json.dumps`` fails on them); ``reward`` is always a float (``1.0``);
* instances belong to the connection that made them and are closed when it
  ends (Gymie keeps them in one process-wide table until ``close``).

**Client** (:class:`GymieClientConnection`): ``relay.make("ws://HOST:PORT/gym?
codec=gymie", env_id="CartPole-v1")`` drives a real Gymie server through the
Gymnasium API.  Gymie cannot seed at reset, so ``reset(seed=s)`` closes the
instance and makes a new one with ``seed=s`` (Gymie ignores seed 0: relay warns);
spaces come from ``observation_space``/``action_space`` (Box as float32: Gymie
sends no dtype); an error answer closes the connection (Gymie's way), later
calls raise ``ConnectionLost``.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import itertools
import json
import logging
import math
import re
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import gymnasium.spaces as gs
import numpy as np

from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidAction,
    NotReset,
    RemoteEnvError,
    RemoteError,
    Timeout,
    TransportError,
)
from relay.core.messages import (
    Close,
    Closed,
    Envelope,
    Error,
    Frame,
    Made,
    Make,
    Observation,
    Render,
    Request,
    Reset,
    Response,
    Step,
    Transition,
)
from relay.core.url import URL
from relay.server import ThreadedServer
from relay.transports.base import readable, spin_ns, spin_until
from relay.transports.ws import server_ssl_context, token_safe_logger

__all__ = [
    "FLOAT32_MAX",
    "GymieClientConnection",
    "GymieClose",
    "GymieProtocol",
    "GymieServer",
    "GymieSession",
    "array_text",
    "space_from_info",
    "space_info",
]

log = logging.getLogger("relay.compat.gymie")

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""3.4028234663852886e+38: what an infinite Box bound is sent as."""

GYMIE_PATH = "/gym"
IDLE_POLL = 0.25
_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame carries 125 bytes, 2 of them the code
# gym 0.17.3's env id pattern (gym/envs/registration.py): what Gymie calls "malformed".
_GYM_ENV_ID = re.compile(r"^(?:[\w:-]+\/)?([\w:.-]+)-v(\d+)$")
_LOOKUP_ERRORS = frozenset(
    f"gymnasium.error.{name}"
    for name in ("UnregisteredEnv", "NameNotFound", "VersionNotFound", "NamespaceNotFound",
                 "DeprecatedEnv")
)


# ---------------------------------------------------------------------------
# Gymie's value formats


def _tolist(value: Any) -> Any:
    """What Gymie does to an observation or a sampled action: ``tolist()`` if it has one."""
    return value.tolist() if hasattr(value, "tolist") else value


def _plain(value: Any) -> Any:
    """``json.dumps`` fallback for values Gymie's encoder would choke on."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


# Gymie writes an observation as ``json.dumps(obs.tolist())`` (step) or
# ``str(obs.tolist())`` (reset).  For an 84x84x4 uint8 frame that costs ~4 ms;
# for integer and bool arrays the same text is made here with numpy from a
# table of each value's digits (~1 ms), byte for byte.
_TABLES: dict[tuple[str, bool], tuple[np.ndarray, int]] = {}
_SEPARATORS: dict[tuple[int, ...], np.ndarray] = {}
_FAST_MIN_SIZE = 64


def _text_table(dtype: np.dtype[Any], json_style: bool) -> tuple[np.ndarray, int]:
    """(table, offset): row ``v - offset`` holds the ASCII text of value ``v``, NUL-padded."""
    key = (dtype.str, json_style)
    cached = _TABLES.get(key)
    if cached is not None:
        return cached
    if dtype.kind == "b":
        texts = [b"false", b"true"] if json_style else [b"False", b"True"]
        offset = 0
    else:
        info = np.iinfo(dtype)
        texts = [str(v).encode() for v in range(int(info.min), int(info.max) + 1)]
        offset = int(info.min)
    table = np.zeros((len(texts), max(map(len, texts))), np.uint8)
    for row, text in enumerate(texts):
        table[row, :len(text)] = np.frombuffer(text, np.uint8)
    _TABLES[key] = (table, offset)
    return table, offset


def _separators(shape: tuple[int, ...]) -> np.ndarray:
    """Per element, the NUL-padded text after it: ``, `` or ``], [`` ... (last: ``, ``)."""
    cached = _SEPARATORS.get(shape)
    if cached is not None:
        return cached
    count = int(np.prod(shape))
    closes = np.zeros(count, np.intp)  # how many lists end after each element
    stride = 1
    for dim in reversed(shape):
        stride *= dim
        closes[stride - 1::stride] += 1
    closes[-1] = 0
    texts = [b"]" * k + b", " + b"[" * k for k in range(len(shape))]
    table = np.zeros((len(texts), max(map(len, texts))), np.uint8)
    for row, text in enumerate(texts):
        table[row, :len(text)] = np.frombuffer(text, np.uint8)
    if len(_SEPARATORS) >= 8:
        _SEPARATORS.clear()
    block = _SEPARATORS[shape] = table[closes]
    return block


def array_text(array: Any, *, json_style: bool) -> str | None:
    """``json.dumps(array.tolist())`` (``json_style``) or ``str(array.tolist())``, fast.

    None when there is no fast path (not a numpy bool/int array of at most 16
    bits, fewer than 64 elements, or an empty axis): use the slow way then.
    """
    if (not isinstance(array, np.ndarray) or array.size < _FAST_MIN_SIZE
            or array.dtype.kind not in "biu" or array.dtype.itemsize > 2 or 0 in array.shape):
        return None
    table, offset = _text_table(array.dtype, json_style)
    flat = array.reshape(-1)
    if array.dtype.kind == "b":
        index: np.ndarray = flat.view(np.uint8)
    elif offset:
        index = flat.astype(np.intp) - offset
    else:
        index = flat
    separators = _separators(array.shape)
    width = table.shape[1]
    buffer = np.empty((flat.size, width + separators.shape[1]), np.uint8)
    buffer[:, :width] = table[index]
    buffer[:, width:] = separators
    body = buffer[buffer != 0].tobytes()
    return "[" * array.ndim + body[:-2].decode("ascii") + "]" * array.ndim


_PLAIN_ENCODER = json.JSONEncoder(default=_plain)


def _json(value: Any) -> str:
    """``json.dumps(value)``; numpy values as plain numbers instead of a TypeError."""
    if type(value) is float and math.isfinite(value):
        return repr(value)  # what json.dumps writes for a finite float
    try:
        return json.dumps(value)  # the cached default encoder: the fast path
    except TypeError:
        return _PLAIN_ENCODER.encode(value)


def _bounds(array: np.ndarray) -> list[Any]:
    values = np.asarray(array, dtype=np.float64)
    if np.isinf(values).any():
        values = np.where(np.isinf(values), np.copysign(FLOAT32_MAX, values), values)
    return values.tolist()


def space_info(space: gs.Space[Any]) -> dict[str, Any]:
    """Gymie's description of a space (``gymie/api.py::space_info``), bounds made finite.

    ``{"name": class name}`` plus ``n`` for Discrete; ``shape``, ``low``,
    ``high`` (float64 numbers, infinities as +/- :data:`FLOAT32_MAX`) for Box;
    ``n`` and ``shape`` for MultiBinary; nothing more for other classes.
    """
    name = type(space).__name__
    info: dict[str, Any] = {"name": name}
    if name in "Discrete":  # sic: Gymie tests substring membership
        info["n"] = int(space.n)  # type: ignore[attr-defined]
    elif name == "Box":
        assert isinstance(space, gs.Box)
        info["shape"] = list(space.shape)
        info["low"] = _bounds(space.low)
        info["high"] = _bounds(space.high)
    elif name == "MultiBinary":
        assert isinstance(space, gs.MultiBinary)
        n = space.n
        info["n"] = [int(x) for x in n] if isinstance(n, (tuple, list, np.ndarray)) else int(n)
        info["shape"] = list(space.shape)
    return info


def space_from_info(info: Any) -> gs.Space[Any]:
    """The Gymnasium space of a Gymie space description (inverse of :func:`space_info`).

    Box spaces are float32 (Gymie sends no dtype; gym's default).  Bounds at
    +/- the float32 maximum or infinite stay as they are (float32 max rounds to
    itself).

    Raises:
        CodecError: malformed, or a class Gymie does not describe (MultiDiscrete...).
    """
    try:
        name = info["name"]
        if name == "Discrete":
            return gs.Discrete(int(info["n"]))
        if name == "Box":
            shape = tuple(int(d) for d in info["shape"])
            low = np.asarray(info["low"], dtype=np.float32).reshape(shape)
            high = np.asarray(info["high"], dtype=np.float32).reshape(shape)
            return gs.Box(low=low, high=high, shape=shape, dtype=np.float32)
        if name == "MultiBinary":
            n = info["n"]
            return gs.MultiBinary([int(x) for x in n] if isinstance(n, list) else int(n))
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"malformed Gymie space description {info!r}: {exc}") from exc
    raise CodecError(f"Gymie does not describe {info.get('name')!r} spaces: {info!r}")


def _to_space_value(value: Any, space: gs.Space[Any]) -> Any:
    """A decoded Gymie observation or action as a value of ``space``."""
    if isinstance(space, gs.Box):
        return np.asarray(value, dtype=space.dtype).reshape(space.shape)
    if isinstance(space, (gs.MultiBinary, gs.MultiDiscrete)):
        return np.asarray(value, dtype=space.dtype).reshape(space.shape)
    if isinstance(space, gs.Discrete) and type(value) is int:
        return np.int64(value)
    return value


# ---------------------------------------------------------------------------
# Server side: one connection's conversation, no I/O


@dataclass(frozen=True, slots=True)
class GymieClose:
    """Close the WebSocket with ``code`` and ``reason`` (Gymie's only error answer)."""

    code: int
    reason: str


class _Fail(Exception):
    def __init__(self, reason: str, code: int = 1007) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _ParamsWrong(Exception):
    pass


@dataclass(slots=True)
class _Instance:
    relay_id: int
    observation_space: gs.Space[Any]
    action_space: gs.Space[Any]
    seed: int | None = None  # Gymie seeds at make; relay passes it to the first reset


class GymieSession:
    """Gymie's methods for one WebSocket connection, answered by a relay handler.

    Feed every received message to :meth:`receive`; send the text it returns,
    or close the socket as the :class:`GymieClose` it returns says.  Never raises.

    Args:
        handler: answers relay/1 requests (``EnvHost(factory).handle``).
        new_id: makes instance ids (``uuid4().hex`` as Gymie does).
    """

    def __init__(
        self, handler: Callable[[Request], Response], *, new_id: Callable[[], str] | None = None
    ) -> None:
        self._handler = handler
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._instances: dict[str, _Instance] = {}
        self._methods: dict[str, Callable[..., str]] = {
            "make": self._make,
            "step": self._step,
            "reset": self._reset,
            "close": self._close,
            "observation_space": self._observation_space,
            "action_space": self._action_space,
            "action_sample": self._action_sample,
        }
        # (required, allowed) parameter names, as Python would bind them
        self._params = {
            name: (frozenset(p.name for p in sig.parameters.values()
                             if p.default is inspect.Parameter.empty),
                   frozenset(sig.parameters))
            for name, sig in ((n, inspect.signature(f)) for n, f in self._methods.items())
        }

    def receive(self, message: str | bytes) -> str | GymieClose:
        """The answer to one message (text or binary, as Gymie accepts both)."""
        shown = message if isinstance(message, str) else repr(message)  # Gymie shows b'...'
        try:
            data = json.loads(message)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return GymieClose(1003, f"Message `{shown}` is invalid")
        if not isinstance(data, dict):
            return GymieClose(1003, f"Message `{shown}` is invalid")
        if "method" not in data or "params" not in data:
            return GymieClose(1003, f"Message keys {list(data.keys())} are missing or invalid")
        method, params = data["method"], data["params"]
        try:
            function = self._methods[method]
        except KeyError:
            return GymieClose(1007, f"Method `{method}` not found")
        except TypeError:  # an unhashable method name
            return GymieClose(1007, f"Parameters `{params}` are wrong")
        try:
            if not isinstance(params, dict):
                raise _ParamsWrong
            required, allowed = self._params[method]
            if not required <= params.keys() <= allowed:
                raise _ParamsWrong
            return function(**params)
        except _ParamsWrong:
            return GymieClose(1007, f"Parameters `{params}` are wrong")
        except _Fail as fail:
            return GymieClose(fail.code, fail.reason)
        except Exception as exc:  # a bug here must not take the server down
            return GymieClose(1007, f"Unknonwn error: {exc}")

    def close(self) -> None:
        """Forget every instance (their envs are closed by the handler's owner)."""
        self._instances.clear()

    # -- methods, with Gymie's signatures (gymie/api.py) --

    def _lookup(self, instance_id: Any) -> _Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise _Fail(f"Instance `{instance_id}` not found") from None
        except TypeError:  # unhashable id
            raise _ParamsWrong from None

    def _make(self, env_id: Any, seed: Any = None) -> str:
        if not isinstance(env_id, str):
            raise _ParamsWrong
        if seed:
            if not isinstance(seed, int) or seed < 0:
                raise _Fail(f"Unknonwn error: Seed must be a non-negative integer or omitted, "
                            f"not {seed}")
            seed = int(seed)
        answer = self._handler(Make(env_id=env_id, kwargs={}))
        if isinstance(answer, Error):
            if _GYM_ENV_ID.match(env_id) is None:
                raise _Fail(f"Environment `{env_id}` is malformed")
            if answer.code == "config" or answer.remote_type in _LOOKUP_ERRORS:
                raise _Fail(f"Environment `{env_id}` not found")
            raise _Fail(f"Unknonwn error: {answer.message}")
        assert isinstance(answer, Made)
        instance_id = self._new_id()
        self._instances[instance_id] = _Instance(
            relay_id=answer.instance,
            observation_space=spaces.build(answer.observation_space),
            action_space=spaces.build(answer.action_space),
            seed=seed or None,
        )
        return instance_id

    def _reset(self, instance_id: Any) -> str:
        instance = self._lookup(instance_id)
        seed, instance.seed = instance.seed, None
        answer = self._handler(Reset(instance=instance.relay_id, seed=seed))
        if isinstance(answer, Error):
            raise _Fail(f"Unknonwn error: {answer.message}")
        assert isinstance(answer, Observation)
        text = array_text(answer.obs, json_style=False)
        return str(_tolist(answer.obs)) if text is None else text

    def _step(self, instance_id: Any, action: Any, render: Any = False) -> str:
        instance = self._lookup(instance_id)
        if render:
            self._handler(Render(instance=instance.relay_id))
        try:
            value = _to_space_value(action, instance.action_space)
        except (TypeError, ValueError, OverflowError):
            raise _Fail(f"Action `{action}` is wrong") from None
        answer = self._handler(Step(instance=instance.relay_id, action=value))
        if isinstance(answer, Error):
            raise _Fail(f"Action `{action}` is wrong")
        assert isinstance(answer, Transition)
        info = answer.info
        if answer.truncated:  # gym 0.17's TimeLimit, which Gymie's clients know
            info = {**info, "TimeLimit.truncated": not answer.terminated}
        done = bool(answer.terminated or answer.truncated)
        obs = array_text(answer.obs, json_style=True)
        if obs is None:
            obs = _json(_tolist(answer.obs))
        # the text of json.dumps([obs, reward, done, info]), obs made above
        return (f"[{obs}, {_json(answer.reward)}, {'true' if done else 'false'}, "
                f"{_json(info) if info else '{}'}]")

    def _close(self, instance_id: Any) -> str:
        instance = self._lookup(instance_id)
        answer = self._handler(Close(instance=instance.relay_id))
        if isinstance(answer, Error):
            raise _Fail(f"Unknonwn error: {answer.message}")
        del self._instances[instance_id]
        return "true"

    def _observation_space(self, instance_id: Any) -> str:
        return json.dumps(space_info(self._lookup(instance_id).observation_space))

    def _action_space(self, instance_id: Any) -> str:
        return json.dumps(space_info(self._lookup(instance_id).action_space))

    def _action_sample(self, instance_id: Any) -> str:
        return str(_tolist(self._lookup(instance_id).action_space.sample()))


# ---------------------------------------------------------------------------
# Server side: the WebSocket listener and the per-connection loop


def _cut(reason: str) -> str:
    data = reason.encode("utf-8")
    if len(data) <= _CLOSE_REASON_BYTES:
        return reason
    return data[:_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class GymieServer(ThreadedServer):
    """A WebSocket server speaking Gymie's protocol on one path (``/gym`` by default).

    One thread per client drives websockets' sans-I/O ``ServerProtocol`` on
    the socket itself: the thread that reads a request answers it, with no
    hand-off to another thread (websockets' threaded server costs ~30% more
    per round trip here).  Each client gets its own
    :class:`~relay.server.EnvHost` and :class:`GymieSession`; its envs are
    closed when it leaves.  Same ``address``/``close``/``serve_forever`` as
    :class:`relay.server.Server`.

    HTTP: the WebSocket upgrade on the path -> 101; another path -> 404; a
    request that is not an upgrade -> websockets' 426/400; a wrong or
    missing ``Authorization: Bearer <token>`` when ``settings.token`` is set
    -> 401.  No compression is negotiated (per-message deflate is what makes
    the real Gymie slow on frames) and no pings are sent (Gymie sends none).
    A message over ``settings.max_message_size`` closes the socket with 1009.
    ``wss://`` needs ``?certfile=PEM[&keyfile=PEM]``, as the ws transport.

    Raises:
        ConfigError: not a ``ws``/``wss`` URL, or a bad certificate.
        TransportError: cannot bind.
    """

    def __init__(self, factory: Callable[..., Any], url: URL, settings: Settings) -> None:
        if url.scheme not in ("ws", "wss"):
            raise ConfigError(f"the gymie protocol runs over ws:// or wss://, not {url.scheme}://")
        super().__init__()
        self._factory = factory
        self.settings = settings
        self.shutdown_grace = settings.shutdown_grace
        self._path = url.path or GYMIE_PATH
        self._spin = spin_ns(url)
        self._tls = server_ssl_context(url) if url.scheme == "wss" else None
        host = url.host or "127.0.0.1"
        try:
            self._socket = socket.create_server((host, url.port or 0),
                                                family=socket.AF_INET6 if ":" in host
                                                else socket.AF_INET)
        except OSError as exc:
            raise TransportError(f"cannot listen on {url.render()}: {exc}") from exc
        self._socket.settimeout(IDLE_POLL)
        port = self._socket.getsockname()[1]
        netloc = f"[{host}]" if ":" in host else host
        query = {k: v for k, v in url.query.items() if k not in ("certfile", "keyfile")}
        self.address: URL = url.set(address=f"{netloc}:{port}{self._path}", query=query)
        self.start()

    def _accept(self, timeout: float) -> Callable[[], None] | None:
        try:
            sock, _ = self._socket.accept()  # the socket's own timeout is IDLE_POLL
        except TimeoutError:
            return None
        except OSError:
            if self._stop.is_set():
                return None
            log.exception("accept failed")
            return None
        return lambda: self._serve_socket(sock)

    def _close_endpoint(self) -> None:
        self._socket.close()

    def _serve_socket(self, sock: socket.socket) -> None:
        from websockets.server import ServerProtocol

        from relay.server import EnvHost

        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.settings.connect_timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            protocol = ServerProtocol(max_size=self.settings.max_message_size,
                                      logger=token_safe_logger(log))
            if self._handshake(sock, protocol):
                host = EnvHost(self._factory, tracebacks=self.settings.tracebacks)
                session = GymieSession(host.handle)
                try:
                    self._converse(sock, protocol, session)
                finally:
                    session.close()
                    host.close()
        except (OSError, TimeoutError):  # the client vanished or spoke no TLS/HTTP
            pass
        except Exception:
            log.exception("Gymie connection failed")
        finally:
            sock.close()

    def _handshake(self, sock: socket.socket, protocol: Any) -> bool:
        """Read the upgrade request and answer it; True if the WebSocket is open."""
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            events = protocol.events_received()
            _flush(sock, protocol)
            if events:
                request = events[0]
                break
            if protocol.handshake_exc is not None or time.monotonic() > deadline:
                return False
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(65536)
            if not data:
                return False
            protocol.receive_data(data)
        token = self.settings.token
        if urlsplit(request.path).path != self._path:
            response = protocol.reject(HTTPStatus.NOT_FOUND,
                                       f"Gymie's WebSocket path here is {self._path}\n")
        elif token is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(),
                f"Bearer {token}".encode()):
            response = protocol.reject(HTTPStatus.UNAUTHORIZED,
                                       "missing or wrong token in the Authorization header\n")
        elif self._stop.is_set():
            response = protocol.reject(HTTPStatus.SERVICE_UNAVAILABLE, "server closing\n")
        else:
            response = protocol.accept(request)
        protocol.send_response(response)
        _flush(sock, protocol)
        return response.status_code == HTTPStatus.SWITCHING_PROTOCOLS

    def _converse(self, sock: socket.socket, protocol: Any, session: GymieSession) -> None:
        from websockets.frames import Opcode
        from websockets.protocol import State

        sock.settimeout(IDLE_POLL)
        arrived = readable(sock)
        parts: list[bytes] = []
        text = True
        while True:
            if self._stop.is_set():
                self._close(sock, protocol, 1001, "server closing")
                return
            try:
                # the next request usually comes within the agent's turn: poll for it
                # before sleeping (see relay.transports.base.spin_until)
                spin_until(lambda: arrived(0), self._spin)
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                continue
            if not data:
                protocol.receive_eof()
                _flush(sock, protocol)
                return
            protocol.receive_data(data)
            for frame in protocol.events_received():
                if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
                    text, parts = frame.opcode is Opcode.TEXT, [frame.data]
                elif frame.opcode is Opcode.CONT:
                    parts.append(frame.data)
                else:  # ping, pong, close: the protocol answers them itself
                    continue
                if not frame.fin:
                    continue
                payload = parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                if text:
                    try:
                        message: str | bytes = bytes(payload).decode("utf-8")
                    except UnicodeDecodeError:
                        self._close(sock, protocol, 1007, "invalid UTF-8 in a text message")
                        return
                else:
                    message = bytes(payload)
                answer = session.receive(message)
                if isinstance(answer, GymieClose):
                    self._close(sock, protocol, answer.code, answer.reason)
                    return
                protocol.send_text(answer.encode("utf-8"))
            # a client slow to read gets settings.timeout seconds, not the idle poll
            sock.settimeout(self.settings.timeout)
            _flush(sock, protocol)
            sock.settimeout(IDLE_POLL)
            if protocol.state is not State.OPEN:  # the client closed, or broke the protocol
                self._drain(sock, protocol)
                return

    @staticmethod
    def _close(sock: socket.socket, protocol: Any, code: int, reason: str) -> None:
        """Send a close frame, wait up to 1 s for the client's, then let the socket go."""
        from websockets.protocol import State

        if protocol.state is State.OPEN:
            protocol.send_close(code, _cut(reason))
        _flush(sock, protocol)
        GymieServer._drain(sock, protocol)

    @staticmethod
    def _drain(sock: socket.socket, protocol: Any) -> None:
        """Read (and drop) until the closing handshake ends, for at most 1 s."""
        from websockets.protocol import State

        deadline = time.monotonic() + _CLOSE_WAIT
        while protocol.state is not State.CLOSED and time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = sock.recv(_RECV_SIZE)
            except (TimeoutError, OSError):
                return
            if not data:
                return
            protocol.receive_data(data)
            protocol.events_received()
            _flush(sock, protocol)


_RECV_SIZE = 1 << 18
_CLOSE_WAIT = 1.0


def _flush(sock: socket.socket, protocol: Any) -> None:
    """Write what the protocol wants sent; an empty chunk means: end the write side."""
    chunks = protocol.data_to_send()
    if not chunks:
        return
    data = [c for c in chunks if c]
    if data:
        sock.sendall(data[0] if len(data) == 1 else b"".join(data))
    if len(data) < len(chunks):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------------------
# Client side: relay's requests as Gymie calls


@dataclass(slots=True)
class _Remote:
    instance_id: str
    env_id: str
    observation_space: gs.Space[Any]
    action_space: gs.Space[Any]
    options: dict[str, Any] = field(default_factory=dict)


_CLIENT_ERRORS: list[tuple[str, type[RemoteError]]] = [
    ("Action `", InvalidAction),
    ("Instance `", NotReset),
    ("Environment `", RemoteError),
    ("Unknonwn error", RemoteEnvError),
]


class GymieClientConnection:
    """A connection to a Gymie server that answers relay/1 requests (``call``).

    Made by :meth:`open`; used by :class:`relay.adapters.gymnasium.RemoteEnv`
    like a :class:`relay.connection.ClientConnection`.  Gymie has no request
    ids, so a call that times out leaves an answer in flight: the connection
    is closed then (``Timeout``, later calls ``ConnectionLost``).
    """

    def __init__(self, websocket: Any, url: URL, settings: Settings) -> None:
        self._ws = websocket
        self.url = url
        self.settings = settings
        self._remotes: dict[int, _Remote] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None

    @classmethod
    def open(cls, url: URL, settings: Settings) -> GymieClientConnection:
        """Connect to ``url`` (``ws://`` or ``wss://``; path ``/gym`` if none) within
        ``settings.connect_timeout``, with websockets' sync client.

        No keepalive pings (Gymie's eventlet server cannot answer them while an
        env step runs) and no compression.  ``wss://`` trusts the system's CAs
        or ``?cafile=PEM``; ``settings.token`` goes in ``Authorization: Bearer``.

        Raises:
            ConfigError: another scheme.  ConnectError: nobody listens, TLS
                failed, or not a WebSocket server at this path (HTTP status).
        """
        if url.scheme not in ("ws", "wss"):
            raise ConfigError(f"the gymie protocol runs over ws:// or wss://, not {url.scheme}://")
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        address = url.address if url.path else url.address + GYMIE_PATH
        target = f"{url.scheme}://{address}"
        options: dict[str, Any] = {}
        if "legacy" in inspect.signature(connect).parameters:  # websockets >= 17.1
            options["legacy"] = True
        if url.scheme == "wss":
            try:
                options["ssl"] = ssl.create_default_context(cafile=url.query.get("cafile"))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the CA file: {exc}") from exc
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token}"
        try:
            websocket = connect(target, compression=None, max_size=settings.max_message_size,
                                open_timeout=settings.connect_timeout, ping_interval=None,
                                close_timeout=1, additional_headers=headers, proxy=None,
                                logger=token_safe_logger(log), **options)
        except InvalidStatus as exc:
            raise ConnectError(f"{target} refused the WebSocket: HTTP "
                               f"{exc.response.status_code}") from exc
        except InvalidURI as exc:
            raise ConfigError(f"invalid Gymie URL {target}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectError(f"cannot open a Gymie connection to {target}: {exc}") from exc
        return cls(websocket, url, settings)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def close(self) -> None:
        """Close the WebSocket; idempotent."""
        if self._lost is None:
            self._lost = "the connection was closed"
        with contextlib.suppress(Exception):
            self._ws.close()

    def _exchange(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        """Send one Gymie call, return its decoded answer (``str`` for ``make``)."""
        if self._lost is not None:
            raise ConnectionLost(f"Gymie connection to {self.url.render()}: {self._lost}")
        from websockets.exceptions import ConnectionClosed

        text = _json({"method": method, "params": params})
        try:
            self._ws.send(text)
            answer = self._ws.recv(timeout)
        except TimeoutError:
            self._lost = f"{method} got no answer within {timeout} s"
            with contextlib.suppress(Exception):
                self._ws.close()
            raise Timeout(f"Gymie {method} got no answer within {timeout} s") from None
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is not None and received.code in (1003, 1007):
                self._lost = f"the server closed it after an error: {received.reason}"
                raise self._error(received.code, received.reason) from None
            self._lost = f"the server went away ({exc})"
            raise ConnectionLost(f"Gymie server {self.url.render()} went away: {exc}") from exc
        except OSError as exc:
            self._lost = f"the socket failed ({exc})"
            raise ConnectionLost(f"Gymie connection failed: {exc}") from exc
        if method == "make":
            return answer if isinstance(answer, str) else answer.decode()
        return _decode_answer(answer)

    @staticmethod
    def _error(code: int, reason: str) -> RemoteError:
        for prefix, cls in _CLIENT_ERRORS:
            if reason.startswith(prefix):
                return cls(reason, remote_type=f"gymie {code}")
        return RemoteError(reason, remote_type=f"gymie {code}")

    def call(self, request: Request, timeout: float | None = None) -> Response:
        """Answer a relay/1 request with Gymie calls (see the module docstring).

        Raises:
            ConfigError: something Gymie cannot express (env kwargs, reset options).
            RemoteError (InvalidAction, NotReset, RemoteEnvError): Gymie closed
                the connection with this reason.  Timeout, ConnectionLost, CodecError.
        """
        timeout = self.settings.timeout if timeout is None else timeout
        match request:
            case Make(env_id=env_id, kwargs=kwargs):
                if env_id is None:
                    raise ConfigError("a Gymie server needs an env_id to make an environment")
                if any(value is not None for value in kwargs.values()):
                    raise ConfigError(f"Gymie's make takes no environment kwargs, got {kwargs}")
                remote = self._make(env_id, None, timeout)
                instance = next(self._ids)
                self._remotes[instance] = remote
                return Made(instance=instance,
                            observation_space=spaces.describe(remote.observation_space),
                            action_space=spaces.describe(remote.action_space),
                            metadata={"render_modes": []}, render_mode=None, spec=None)
            case Reset(instance=i, seed=seed, options=options):
                remote = self._remote(i)
                if options:
                    raise ConfigError(f"Gymie's reset takes no options, got {options}")
                if seed is not None:
                    remote = self._reseed(i, remote, seed, timeout)
                obs = self._exchange("reset", {"instance_id": remote.instance_id}, timeout)
                return Observation(obs=self._obs(obs, remote), info={})
            case Step(instance=i, action=action):
                remote = self._remote(i)
                answer = self._exchange(
                    "step", {"instance_id": remote.instance_id, "action": _tolist(action)},
                    timeout)
                try:
                    obs, reward, done, info = answer
                except (TypeError, ValueError) as exc:
                    raise CodecError(f"a Gymie step answer is [obs, reward, done, info], "
                                     f"got {str(answer)[:200]}") from exc
                info = info if isinstance(info, dict) else {}
                truncated = bool(done) and bool(info.get("TimeLimit.truncated", False))
                return Transition(obs=self._obs(obs, remote), reward=float(reward),
                                  terminated=bool(done) and not truncated, truncated=truncated,
                                  info=info)
            case Render():
                return Frame(frame=None)  # Gymie renders on its own screen only
            case Close(instance=i):
                if i in self._remotes:
                    remote = self._remotes.pop(i)
                    self._exchange("close", {"instance_id": remote.instance_id}, timeout)
                return Closed()
        raise ConfigError(f"Gymie cannot answer {type(request).__name__}")

    def _remote(self, instance: int) -> _Remote:
        remote = self._remotes.get(instance)
        if remote is None:
            raise NotReset(f"no environment instance {instance} on this Gymie connection")
        return remote

    def _make(self, env_id: str, seed: int | None, timeout: float) -> _Remote:
        params: dict[str, Any] = {"env_id": env_id}
        if seed is not None:
            params["seed"] = seed
        instance_id = self._exchange("make", params, timeout)
        where = {"instance_id": instance_id}
        return _Remote(
            instance_id=instance_id, env_id=env_id,
            observation_space=space_from_info(self._exchange("observation_space", where,
                                                             timeout)),
            action_space=space_from_info(self._exchange("action_space", where, timeout)),
        )

    def _reseed(self, instance: int, remote: _Remote, seed: int, timeout: float) -> _Remote:
        """Gymie seeds only in ``make``: replace the instance by a seeded one."""
        if seed == 0:
            warnings.warn("Gymie ignores seed 0 (it seeds only when the seed is truthy): "
                          "this reset is not seeded", RuntimeWarning, stacklevel=4)
        self._exchange("close", {"instance_id": remote.instance_id}, timeout)
        params: dict[str, Any] = {"env_id": remote.env_id, "seed": seed}
        instance_id = self._exchange("make", params, timeout)
        fresh = _Remote(instance_id=instance_id, env_id=remote.env_id,
                        observation_space=remote.observation_space,
                        action_space=remote.action_space)
        self._remotes[instance] = fresh
        return fresh

    @staticmethod
    def _obs(value: Any, remote: _Remote) -> Any:
        try:
            return _to_space_value(value, remote.observation_space)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"Gymie observation does not fit "
                             f"{remote.observation_space}: {exc}") from exc


def _decode_answer(answer: str | bytes) -> Any:
    """A Gymie answer: JSON, or Python's list text (``reset``, ``action_sample``)."""
    try:
        return json.loads(answer)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    import ast

    try:  # str() of a list holding True/False/None, which JSON spells otherwise
        return ast.literal_eval(answer if isinstance(answer, str) else answer.decode())
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise CodecError(f"cannot decode a Gymie answer: {str(answer)[:200]!r}") from exc


# ---------------------------------------------------------------------------
# The registered "codec"


class GymieProtocol:
    """``codec=gymie``: Gymie's wire protocol, which replaces relay/1 on a ``ws://`` URL.

    Not a relay/1 codec (``encode``/``decode`` raise): a *peer protocol* with
    its own server (``serve``, used by :func:`relay.serve`) and client
    connection (``open_client``, used by ``ClientConnection.open``).
    """

    name = "gymie"
    content_type = "application/json"

    def encode(self, envelope: Envelope) -> list[Any]:
        raise CodecError("gymie is a peer protocol, not a relay/1 codec")

    def decode(self, frames: Sequence[Any], *, zero_copy: bool = False) -> Envelope:
        raise CodecError("gymie is a peer protocol, not a relay/1 codec")

    def serve(self, factory: Callable[..., Any], url: URL, settings: Settings) -> GymieServer:
        """The hook of :func:`relay.serve`: a running :class:`GymieServer`."""
        return GymieServer(factory, url, settings)

    def open_client(self, url: URL, settings: Settings) -> GymieClientConnection:
        """The hook of :meth:`relay.connection.ClientConnection.open`."""
        return GymieClientConnection.open(url, settings)
