"""The default codec: MessagePack with relay's own array encoding.

Frame 0 is a MessagePack array ``[id, tag, {field: value}]``.  Values that
MessagePack has no type for travel as extension types (see docs/protocol.md):

========  ===================  ==================================================
ext code  Python value         payload (MessagePack)
========  ===================  ==================================================
1         ``numpy.ndarray``    ``[dtype.str, shape, data]``; ``data`` is the raw
                               C-order bytes, or an int: the index of the frame
                               holding them (arrays of 1 KiB or more)
2         numpy scalar         ``[dtype.str, raw bytes]``
3         ``tuple``            array of the items
4         ``GraphInstance``    ``[nodes, edges, edge_links]``
5         object array         ``[shape, [item, ...]]``: a numpy array of dtype
                               ``object`` (a vector env's infos), items in
                               C order, each a value
========  ===================  ==================================================

Large arrays are never copied into frame 0: their memory is handed to the
transport as a frame of its own.  Nothing is unpickled; dtypes are checked
against a whitelist and shapes against the byte length before allocation.
Each extension payload is unpacked by a nested ``msgpack.unpackb``, whose
unpacking stack (about 40 KiB) lives on the C stack: decoding counts those
nested calls and stops at :data:`~relay.codecs.base.NESTING_LIMIT`, so a
crafted frame cannot overflow the C stack.  The exact nesting of a message is
walked (:func:`~relay.codecs.base.check_nesting`) only when frame 0 has more
bytes that could be container headers than the limit allows levels: each
level of a value needs a header of its own in frame 0, and most messages
have a handful.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from relay.codecs.base import (
    NESTING_LIMIT,
    Buffer,
    array_from_buffer,
    check_dtype,
    check_nesting,
    envelope_from_parts,
    envelope_to_parts,
    object_array,
    too_deep,
)
from relay.core.errors import CodecError
from relay.core.messages import Envelope

__all__ = ["MsgpackCodec"]

EXT_NDARRAY = 1
EXT_SCALAR = 2
EXT_TUPLE = 3
EXT_GRAPH = 4
EXT_OBJECTS = 5

OUT_OF_BAND_BYTES = 1024
"""Arrays of at least this many bytes travel as a frame of their own."""

_NOT_HEADERS = bytes(b for b in range(256) if not (
    0x80 <= b <= 0x9F  # fixmap, fixarray
    or 0xC7 <= b <= 0xC9 or 0xD4 <= b <= 0xD8  # ext 8/16/32, fixext
    or 0xDC <= b <= 0xDF))  # array 16/32, map 16/32
"""Every byte that cannot start a MessagePack container (deleted to count the others)."""


def _check_nesting(frame: Buffer, body: Any) -> None:
    """:func:`check_nesting` of ``body``, skipped when ``frame`` (frame 0, with the
    ``[id, tag, body]`` array header) cannot hold NESTING_LIMIT + 1 nested headers."""
    if len(frame) > NESTING_LIMIT:
        data = frame if type(frame) is not memoryview else bytes(frame)
        if len(data.translate(None, _NOT_HEADERS)) > NESTING_LIMIT:  # type: ignore[union-attr]
            check_nesting(body)

try:  # gymnasium is a dependency, but keep the codec importable without it
    from gymnasium.spaces.graph import GraphInstance
except ImportError:  # pragma: no cover
    GraphInstance = None  # type: ignore[assignment,misc]


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # msgpack.ExtType.__new__ re-checks its arguments in Python (~0.8 µs per array
    # here); ours are right by construction, and the packer reads only the two fields
    return tuple.__new__(msgpack.ExtType, (code, data))  # type: ignore[type-var]


class _Encoder(threading.local):
    """Per-thread packers (a ``msgpack.Packer`` is reused: building one per call costs
    more than packing a small message) and the frames of the message being encoded."""

    def __init__(self) -> None:
        self.frames: list[Buffer] = []
        self.outer = msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True)
        self.inner = msgpack.Packer(use_bin_type=True)  # array/scalar headers: no recursion

    def default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                return _ext(EXT_OBJECTS, self.nested([list(obj.shape), list(obj.reshape(-1))]))
            text = obj.dtype.str
            check_dtype(text)
            if not obj.flags.c_contiguous:
                obj = np.ascontiguousarray(obj)
            if obj.nbytes >= OUT_OF_BAND_BYTES:
                self.frames.append(obj.reshape(-1).view(np.uint8).data)
                payload: Any = len(self.frames) - 1
            else:
                payload = obj.tobytes()
            return _ext(EXT_NDARRAY, self.inner.pack([text, list(obj.shape), payload]))
        if isinstance(obj, np.generic):
            check_dtype(obj.dtype.str)
            return _ext(EXT_SCALAR, self.inner.pack([obj.dtype.str, obj.tobytes()]))
        if GraphInstance is not None and isinstance(obj, GraphInstance):
            return _ext(EXT_GRAPH, self.nested([obj.nodes, obj.edges, obj.edge_links]))
        if isinstance(obj, tuple):
            return _ext(EXT_TUPLE, self.nested(list(obj)))
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")

    def nested(self, obj: Any) -> bytes:
        # a fresh packer: the outer one is in the middle of a message
        return msgpack.packb(obj, default=self.default, strict_types=True, use_bin_type=True)


class MsgpackCodec:
    """MessagePack codec (``name = "msgpack"``); thread-safe."""

    name = "msgpack"
    content_type = "application/x-msgpack"

    def __init__(self) -> None:
        self._encoder = _Encoder()

    def encode(self, envelope: Envelope) -> list[Buffer]:
        encoder = self._encoder
        frames: list[Buffer] = [b""]
        encoder.frames = frames
        request_id, tag, body = envelope_to_parts(envelope)
        try:
            frames[0] = encoder.outer.pack([request_id, tag, body])
        except RecursionError:  # deep tuples recurse through default()
            encoder.outer.reset()
            raise too_deep() from None
        except (TypeError, ValueError, OverflowError) as exc:  # or msgpack's own depth limit
            encoder.outer.reset()
            check_nesting(body)
            raise CodecError(f"cannot encode {tag!r}: {exc}") from exc
        finally:
            encoder.frames = []
        _check_nesting(frames[0], body)
        return frames

    def decode(self, frames: Sequence[Buffer], *, zero_copy: bool = False) -> Envelope:
        if not frames:
            raise CodecError("empty message: no frames")
        used: set[int] = set()
        depth = 0  # extension payloads being unpacked, one inside the other

        def ext_hook(code: int, data: bytes) -> Any:
            nonlocal depth
            if code == EXT_NDARRAY:
                dtype, shape, payload = _unpackb(data, None)
                if type(payload) is int:
                    if not 1 <= payload < len(frames) or payload in used:
                        raise CodecError(f"array refers to frame {payload} of {len(frames)}")
                    used.add(payload)
                    return array_from_buffer(dtype, shape, frames[payload], zero_copy=zero_copy)
                if not isinstance(payload, bytes):
                    raise CodecError("array data must be bytes or a frame index")
                return array_from_buffer(dtype, shape, payload)
            if code == EXT_SCALAR:
                dtype_text, raw = _unpackb(data, None)
                dtype = check_dtype(dtype_text) if isinstance(dtype_text, str) else None
                if dtype is None or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
                    raise CodecError(f"malformed scalar of dtype {dtype_text!r}")
                return np.frombuffer(raw, dtype=dtype, count=1)[0]
            if code not in (EXT_TUPLE, EXT_OBJECTS, EXT_GRAPH) or (
                    code == EXT_GRAPH and GraphInstance is None):
                raise CodecError(f"unknown MessagePack extension type {code}")
            if depth >= NESTING_LIMIT:
                raise too_deep()
            depth += 1
            try:
                items = _unpackb(data, ext_hook)
            finally:
                depth -= 1
            if code == EXT_TUPLE:
                if not isinstance(items, list):
                    raise CodecError("tuple payload must be an array")
                return tuple(items)
            if code == EXT_OBJECTS:
                shape, items = items
                return object_array(shape, items)
            nodes, edges, links = items
            return GraphInstance(nodes, edges, links)

        try:
            request_id, tag, body = _unpackb(frames[0], ext_hook)
        except CodecError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CodecError(f"malformed MessagePack message: {exc}") from exc
        finally:
            # ext_hook refers to itself (nested tuples): break that cycle so the
            # frames are freed with the message, not at the next gc run
            ext_hook = None  # type: ignore[assignment]
        if len(used) != len(frames) - 1:
            raise CodecError(f"{len(frames) - 1 - len(used)} frame(s) not referred to")
        _check_nesting(frames[0], body)
        return envelope_from_parts(request_id, tag, body)


def _unpackb(data: Buffer, ext_hook: Any) -> Any:
    if ext_hook is None:
        return msgpack.unpackb(data, raw=False)
    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
