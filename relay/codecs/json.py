"""The ``json`` codec: one UTF-8 JSON text frame per message, for debugging and
for peers in any language (the JavaScript client speaks it).

A message is ``{"id": int, "tag": str, "body": {field: value}}``.  Plain JSON
values stand for themselves (a JSON array is a Python ``list``, an object with
string keys a ``dict``); everything else is an object with one ``$`` key:

=========================================  ====================================
``{"$ndarray": [dtype, shape, base64]}``   ``numpy.ndarray`` (C-order raw bytes)
``{"$scalar": [dtype, base64]}``           numpy scalar (raw bytes)
``{"$tuple": [...]}``                      ``tuple``
``{"$bytes": base64}``                     ``bytes``
``{"$float": "inf" | "-inf" | "nan"}``     a non-finite ``float``
``{"$map": [[key, value], ...]}``          a ``dict`` with non-string keys or
                                           keys starting with ``$``
``{"$graph": [nodes, edges, links]}``      Gymnasium ``GraphInstance``
``{"$objects": [shape, [item, ...]]}``     ``numpy.ndarray`` of dtype ``object``
                                           (items in C order)
=========================================  ====================================

``dtype`` is numpy's ``dtype.str`` (``"<f4"``, ``"|u1"``).  Non-finite floats
are never written as ``Infinity``/``NaN``: JavaScript's ``JSON.parse`` rejects them.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from relay.codecs.base import (
    NESTING_LIMIT,
    Buffer,
    array_from_buffer,
    check_dtype,
    envelope_from_parts,
    envelope_to_parts,
    object_array,
    too_deep,
)
from relay.core.errors import CodecError
from relay.core.messages import Envelope

__all__ = ["JsonCodec", "from_json_value", "to_json_value"]

try:
    from gymnasium.spaces.graph import GraphInstance
except ImportError:  # pragma: no cover
    GraphInstance = None  # type: ignore[assignment,misc]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_json_value(value: Any, depth: int = 0) -> Any:
    """A JSON-ready tree for a relay value tree (see the module table).

    ``depth`` is the number of containers around ``value``.

    Raises:
        CodecError: a type with no JSON form, a refused dtype, or containers
            nested deeper than :data:`~relay.codecs.base.NESTING_LIMIT`.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):  # before int and float: np.float64 is a float
        check_dtype(value.dtype.str)
        return {"$scalar": [value.dtype.str, _b64(value.tobytes())]}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(float(value))}
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        dtype = check_dtype(value.dtype.str)
        data = np.ascontiguousarray(value).tobytes()
        return {"$ndarray": [dtype.str, list(value.shape), _b64(data)]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    if not isinstance(value, (tuple, list, dict, np.ndarray)):
        raise CodecError(f"cannot encode a value of type {type(value).__qualname__} as JSON")
    depth += 1
    if depth > NESTING_LIMIT:
        raise too_deep()
    if isinstance(value, np.ndarray):  # of dtype object: a container
        return {"$objects": [list(value.shape),
                             [to_json_value(v, depth) for v in value.reshape(-1)]]}
    if GraphInstance is not None and isinstance(value, GraphInstance):
        return {"$graph": [to_json_value(v, depth) for v in value]}
    if isinstance(value, tuple):
        return {"$tuple": [to_json_value(v, depth) for v in value]}
    if isinstance(value, list):
        return [to_json_value(v, depth) for v in value]
    if all(isinstance(k, str) and not k.startswith("$") for k in value):
        return {k: to_json_value(v, depth) for k, v in value.items()}
    return {"$map": [[to_json_value(k, depth), to_json_value(v, depth)]
                     for k, v in value.items()]}


def from_json_value(value: Any, depth: int = 0) -> Any:
    """The relay value tree for a parsed JSON tree (inverse of :func:`to_json_value`).

    Raises:
        CodecError: a malformed or unknown ``$`` form, or containers nested
            deeper than :data:`~relay.codecs.base.NESTING_LIMIT`.
    """
    if not isinstance(value, (list, dict)):
        return value
    depth += 1
    if depth > NESTING_LIMIT:
        raise too_deep()
    if isinstance(value, list):
        return [from_json_value(v, depth) for v in value]
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key.startswith("$"):
            return _from_tagged(key, inner, depth)
    return {k: from_json_value(v, depth) for k, v in value.items()}


def _from_tagged(key: str, inner: Any, depth: int) -> Any:
    # depth: the level of the container this form stands for, counted already
    # (a $ndarray or $scalar leaf too, which cannot nest further)
    try:
        if key == "$ndarray":
            dtype, shape, data = inner
            return array_from_buffer(dtype, shape, bytearray(base64.b64decode(data, validate=True)))
        if key == "$scalar":
            dtype, data = inner
            return array_from_buffer(dtype, [], base64.b64decode(data, validate=True))[()]
        if key == "$tuple":
            return tuple(from_json_value(v, depth) for v in inner)
        if key == "$bytes":
            return base64.b64decode(inner, validate=True)
        if key == "$float":
            if inner not in ("inf", "-inf", "nan"):
                raise ValueError(inner)
            return float(inner)
        if key == "$map":
            return {from_json_value(k, depth): from_json_value(v, depth) for k, v in inner}
        if key == "$objects":
            shape, items = inner
            return object_array(shape, [from_json_value(v, depth) for v in items])
        if key == "$graph" and GraphInstance is not None:
            return GraphInstance(*(from_json_value(v, depth) for v in inner))
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed {key} value: {exc}") from exc
    raise CodecError(f"unknown JSON tag {key!r}")


class JsonCodec:
    """JSON codec (``name = "json"``); stateless and thread-safe."""

    name = "json"
    content_type = "application/json"

    def encode(self, envelope: Envelope) -> list[Buffer]:
        request_id, tag, body = envelope_to_parts(envelope)
        tree = {"id": request_id, "tag": tag, "body": to_json_value(body)}
        return [json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()]

    def decode(self, frames: Sequence[Buffer], *, zero_copy: bool = False) -> Envelope:
        if len(frames) != 1:
            raise CodecError(f"a JSON message is one frame, got {len(frames)}")
        frame = frames[0]
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise CodecError(f"a frame is bytes-like, got {type(frame).__name__}")
        try:
            tree = json.loads(bytes(frame))
        except RecursionError:  # the parser's own limit, far above NESTING_LIMIT
            raise too_deep() from None
        except ValueError as exc:  # bad UTF-8 or JSON, an integer over Python's digit limit
            raise CodecError(f"malformed JSON message: {exc}") from exc
        if not isinstance(tree, dict) or set(tree) != {"id", "tag", "body"}:
            raise CodecError('a JSON message is an object with keys "id", "tag" and "body"')
        return envelope_from_parts(tree["id"], tree["tag"], from_json_value(tree["body"]))
