"""What every codec is, and the array rules all of relay's codecs share."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from relay.core.errors import CodecError
from relay.core.messages import MESSAGE_TYPES, Envelope

__all__ = [
    "ALLOWED_DTYPE_KINDS",
    "NESTING_LIMIT",
    "Buffer",
    "Codec",
    "array_from_buffer",
    "check_dtype",
    "check_nesting",
    "envelope_from_parts",
    "envelope_to_parts",
    "object_array",
    "too_deep",
]

Buffer = bytes | bytearray | memoryview
"""A frame: any object with the buffer protocol, sent without a copy where possible."""


@runtime_checkable
class Codec(Protocol):
    """A codec is a name, a content type and two functions.

    ``encode`` returns frames that may view the arrays inside the message (no
    copy), so the caller must send them before mutating those arrays.
    ``decode`` raises :class:`~relay.core.errors.CodecError` for anything
    malformed (and nothing else, whatever the frames hold) and never executes
    code from the wire (no pickle).  Both directions refuse a value tree
    nested deeper than :data:`NESTING_LIMIT` (:func:`check_nesting`).
    """

    name: str
    content_type: str

    def encode(self, envelope: Envelope) -> list[Buffer]: ...

    def decode(self, frames: Sequence[Buffer], *, zero_copy: bool = False) -> Envelope: ...


ALLOWED_DTYPE_KINDS = frozenset("biufcUS")
"""numpy dtype kinds that may travel: bool, ints, floats, complex, fixed strings.
Object (``O``), void/structured (``V``), datetime (``M``/``m``) are refused."""


@functools.lru_cache(maxsize=256)
def check_dtype(text: str) -> np.dtype[Any]:
    """The numpy dtype named ``text`` (e.g. ``"<f4"``) if it is allowed on the wire.

    Raises:
        CodecError: unknown dtype, or a kind outside :data:`ALLOWED_DTYPE_KINDS`.
    """
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"unknown dtype {text!r}") from exc
    if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
        raise CodecError(f"dtype {text!r} is not allowed on the wire (kind {dtype.kind!r})")
    return dtype


def array_from_buffer(
    dtype_text: str, shape: Sequence[int], buffer: Buffer, *, zero_copy: bool = False
) -> np.ndarray:
    """An array of ``dtype``/``shape`` over ``buffer``, checked before any allocation.

    The byte length must equal ``prod(shape) * itemsize`` exactly.  The array
    views ``buffer`` when it is writable (or ``zero_copy`` is asked), otherwise
    it is a writable copy.

    Raises:
        CodecError: bad dtype, negative or non-integer shape, or a length mismatch.
    """
    if type(dtype_text) is not str:
        raise CodecError(f"dtype must be a string, got {dtype_text!r}")
    dtype = check_dtype(dtype_text)
    if type(shape) is not list and type(shape) is not tuple:
        raise CodecError(f"array shape {shape!r} is not a list of non-negative ints")
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise CodecError(f"array shape {shape!r} is not a list of non-negative ints")
        count *= d
    kind = type(buffer)
    nbytes = len(buffer) if kind is bytes or kind is bytearray else memoryview(buffer).nbytes
    if nbytes != count * dtype.itemsize:
        raise CodecError(
            f"array of shape {tuple(shape)} and dtype {dtype.str} needs "
            f"{count * dtype.itemsize} bytes, frame has {nbytes}"
        )
    if kind is bytes and not zero_copy:
        buffer = bytearray(buffer)  # bytes are read-only: the array gets its own copy
    elif kind is memoryview and (buffer.ndim != 1 or buffer.format != "B"):  # type: ignore[union-attr]
        buffer = buffer.cast("B")  # type: ignore[union-attr]
    # np.ndarray(shape, dtype, buffer) is ~3x cheaper than frombuffer + reshape
    array = np.ndarray(shape, dtype, buffer)
    if not zero_copy and not array.flags.writeable:
        array = array.copy()
    return array


def object_array(shape: Any, items: Any) -> np.ndarray:
    """A numpy array of dtype ``object`` and ``shape`` holding ``items`` (C order).

    Each item is stored as it is (an array item stays one element), as a
    vector env's infos hold them (``infos["final_obs"]``).

    Raises:
        CodecError: a bad shape, or not ``prod(shape)`` items.
    """
    if type(shape) is not list or type(items) is not list or any(
            type(d) is not int or d < 0 for d in shape):
        raise CodecError(f"object array needs a shape and a list of items, got {shape!r}")
    if int(np.prod(shape)) != len(items):
        raise CodecError(f"object array of shape {tuple(shape)} needs {int(np.prod(shape))} "
                         f"items, got {len(items)}")
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array.reshape(shape)


NESTING_LIMIT = 64
"""Deepest nesting of containers (lists, tuples, maps, object arrays, graph instances) in a
message, the message body (the map of its fields) being level 1.  Arrays,
scalars, strings and bytes are leaves.  Every codec refuses deeper values in
both directions, and bounds its own recursion by it while decoding, so a
crafted frame cannot exhaust the stack."""

_CONTAINERS = (dict, list, tuple)  # GraphInstance is a tuple; object arrays below


def too_deep() -> CodecError:
    """The error for a value nested deeper than :data:`NESTING_LIMIT`."""
    return CodecError(f"value nested deeper than the nesting limit of {NESTING_LIMIT} levels")


def check_nesting(tree: Any) -> None:
    """Check that containers nest at most :data:`NESTING_LIMIT` deep in ``tree``.

    Iterative (one pass per level), so any depth is checked without recursion;
    about 1 µs for a small message, so a codec may skip it when it can tell
    more cheaply that a message is shallow.  Map keys are not walked: a codec
    bounds a tuple key's depth itself.

    Raises:
        CodecError: the tree is nested deeper (:func:`too_deep`).
    """
    nests = isinstance(tree, _CONTAINERS) or (type(tree) is np.ndarray and tree.dtype.hasobject)
    level = [tree] if nests else []
    for _ in range(NESTING_LIMIT):
        if not level:
            return
        level = [
            child
            for value in level
            for child in (value.values() if isinstance(value, dict) else
                          value.reshape(-1) if isinstance(value, np.ndarray) else value)
            if isinstance(child, _CONTAINERS)
            or (type(child) is np.ndarray and child.dtype.hasobject)
        ]
    if level:
        raise too_deep()


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in MESSAGE_TYPES.values()
}


def envelope_to_parts(envelope: Envelope) -> tuple[int, str, dict[str, Any]]:
    """``(id, tag, fields)`` of an envelope, ready for a codec to serialize.

    The codec checks the nesting of ``fields`` (:data:`NESTING_LIMIT`).
    """
    message = envelope.message
    body = {name: getattr(message, name) for name in _FIELD_NAMES[type(message)]}
    return envelope.id, message.tag, body


def envelope_from_parts(request_id: Any, tag: Any, body: Any) -> Envelope:
    """Rebuild an envelope from ``(id, tag, fields)`` decoded off the wire.

    The codec has checked the nesting of ``body`` (:data:`NESTING_LIMIT`).

    Raises:
        CodecError: unknown tag, bad id, missing or unexpected fields.
    """
    if type(request_id) is not int or request_id < 0:
        raise CodecError(f"request id must be a non-negative int, got {request_id!r}")
    cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise CodecError(f"unknown message tag {tag!r}")
    if not isinstance(body, dict):
        raise CodecError(f"body of {tag!r} must be a map")
    try:
        return Envelope(request_id, cls(**body))
    except TypeError as exc:
        raise CodecError(f"bad fields for {tag!r}: {exc}") from exc
