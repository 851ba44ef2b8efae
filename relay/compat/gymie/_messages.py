"""Gymie's message formats: its JSON and text forms of values and observations, and its
space descriptions, both ways (see the package docstring).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import gymnasium.spaces as gs
import numpy as np

from relay.core.errors import CodecError

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
