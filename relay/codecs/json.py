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
    Buffer,
    array_from_buffer,
    check_dtype,
    envelope_from_parts,
    envelope_to_parts,
    object_array,
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


def to_json_value(value: Any) -> Any:
    """A JSON-ready tree for a relay value tree (see the module table)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, np.generic):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(float(value))}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return {"$objects": [list(value.shape),
                                 [to_json_value(v) for v in value.reshape(-1)]]}
        dtype = check_dtype(value.dtype.str)
        data = np.ascontiguousarray(value).tobytes()
        return {"$ndarray": [dtype.str, list(value.shape), _b64(data)]}
    if isinstance(value, np.generic):
        check_dtype(value.dtype.str)
        return {"$scalar": [value.dtype.str, _b64(value.tobytes())]}
    if GraphInstance is not None and isinstance(value, GraphInstance):
        return {"$graph": [to_json_value(v) for v in value]}
    if isinstance(value, tuple):
        return {"$tuple": [to_json_value(v) for v in value]}
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: to_json_value(v) for k, v in value.items()}
        return {"$map": [[to_json_value(k), to_json_value(v)] for k, v in value.items()]}
    raise CodecError(f"cannot encode a value of type {type(value).__qualname__} as JSON")


def from_json_value(value: Any) -> Any:
    """The relay value tree for a parsed JSON tree (inverse of :func:`to_json_value`)."""
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key.startswith("$"):
            return _from_tagged(key, inner)
    return {k: from_json_value(v) for k, v in value.items()}


def _from_tagged(key: str, inner: Any) -> Any:
    try:
        if key == "$ndarray":
            dtype, shape, data = inner
            return array_from_buffer(dtype, shape, bytearray(base64.b64decode(data, validate=True)))
        if key == "$scalar":
            dtype, data = inner
            return array_from_buffer(dtype, [], base64.b64decode(data, validate=True))[()]
        if key == "$tuple":
            return tuple(from_json_value(v) for v in inner)
        if key == "$bytes":
            return base64.b64decode(inner, validate=True)
        if key == "$float":
            if inner not in ("inf", "-inf", "nan"):
                raise ValueError(inner)
            return float(inner)
        if key == "$map":
            return {from_json_value(k): from_json_value(v) for k, v in inner}
        if key == "$objects":
            shape, items = inner
            return object_array(shape, [from_json_value(v) for v in items])
        if key == "$graph" and GraphInstance is not None:
            return GraphInstance(*(from_json_value(v) for v in inner))
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
        try:
            tree = json.loads(bytes(frames[0]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CodecError(f"malformed JSON message: {exc}") from exc
        if not isinstance(tree, dict) or set(tree) != {"id", "tag", "body"}:
            raise CodecError('a JSON message is an object with keys "id", "tag" and "body"')
        return envelope_from_parts(tree["id"], tree["tag"], from_json_value(tree["body"]))
