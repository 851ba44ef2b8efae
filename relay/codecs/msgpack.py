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
========  ===================  ==================================================

Large arrays are never copied into frame 0: their memory is handed to the
transport as a frame of its own.  Nothing is unpickled; dtypes are checked
against a whitelist and shapes against the byte length before allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from relay.codecs.base import (
    Buffer,
    array_from_buffer,
    check_dtype,
    envelope_from_parts,
    envelope_to_parts,
)
from relay.core.errors import CodecError
from relay.core.messages import Envelope

__all__ = ["MsgpackCodec"]

EXT_NDARRAY = 1
EXT_SCALAR = 2
EXT_TUPLE = 3
EXT_GRAPH = 4

OUT_OF_BAND_BYTES = 1024
"""Arrays of at least this many bytes travel as a frame of their own."""

try:  # gymnasium is a dependency, but keep the codec importable without it
    from gymnasium.spaces.graph import GraphInstance
except ImportError:  # pragma: no cover
    GraphInstance = None  # type: ignore[assignment,misc]


class MsgpackCodec:
    """MessagePack codec (``name = "msgpack"``); stateless and thread-safe."""

    name = "msgpack"
    content_type = "application/x-msgpack"

    def encode(self, envelope: Envelope) -> list[Buffer]:
        frames: list[Buffer] = [b""]

        def default(obj: Any) -> Any:
            if isinstance(obj, np.ndarray):
                return _pack_array(obj, frames, packer_default=default)
            if isinstance(obj, np.generic):
                check_dtype(obj.dtype.str)
                return msgpack.ExtType(EXT_SCALAR, msgpack.packb([obj.dtype.str, obj.tobytes()]))
            if GraphInstance is not None and isinstance(obj, GraphInstance):
                return msgpack.ExtType(
                    EXT_GRAPH, _packb([obj.nodes, obj.edges, obj.edge_links], default)
                )
            if isinstance(obj, tuple):
                return msgpack.ExtType(EXT_TUPLE, _packb(list(obj), default))
            if isinstance(obj, (bytearray, memoryview)):
                return bytes(obj)
            if isinstance(obj, dict):
                return dict(obj)
            if isinstance(obj, list):
                return list(obj)
            raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")

        request_id, tag, body = envelope_to_parts(envelope)
        try:
            frames[0] = _packb([request_id, tag, body], default)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode {tag!r}: {exc}") from exc
        return frames

    def decode(self, frames: Sequence[Buffer], *, zero_copy: bool = False) -> Envelope:
        if not frames:
            raise CodecError("empty message: no frames")
        used: set[int] = set()

        def ext_hook(code: int, data: bytes) -> Any:
            if code == EXT_NDARRAY:
                dtype, shape, payload = _unpackb(data, ext_hook)
                if type(payload) is int:
                    if not 1 <= payload < len(frames) or payload in used:
                        raise CodecError(f"array refers to frame {payload} of {len(frames)}")
                    used.add(payload)
                    return array_from_buffer(dtype, shape, frames[payload], zero_copy=zero_copy)
                if not isinstance(payload, bytes):
                    raise CodecError("array data must be bytes or a frame index")
                return array_from_buffer(dtype, shape, payload)
            if code == EXT_SCALAR:
                dtype, raw = _unpackb(data, ext_hook)
                if not isinstance(raw, bytes):
                    raise CodecError("scalar data must be bytes")
                return array_from_buffer(dtype, [], raw)[()]
            if code == EXT_TUPLE:
                items = _unpackb(data, ext_hook)
                if not isinstance(items, list):
                    raise CodecError("tuple payload must be an array")
                return tuple(items)
            if code == EXT_GRAPH and GraphInstance is not None:
                nodes, edges, links = _unpackb(data, ext_hook)
                return GraphInstance(nodes, edges, links)
            raise CodecError(f"unknown MessagePack extension type {code}")

        try:
            parts = _unpackb(frames[0], ext_hook)
            request_id, tag, body = parts
        except CodecError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CodecError(f"malformed MessagePack message: {exc}") from exc
        if len(used) != len(frames) - 1:
            raise CodecError(f"{len(frames) - 1 - len(used)} frame(s) not referred to")
        return envelope_from_parts(request_id, tag, body)


def _packb(obj: Any, default: Any) -> bytes:
    return msgpack.packb(obj, default=default, strict_types=True, use_bin_type=True)


def _unpackb(data: Buffer, ext_hook: Any) -> Any:
    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)


def _pack_array(array: np.ndarray, frames: list[Buffer], packer_default: Any) -> msgpack.ExtType:
    dtype = check_dtype(array.dtype.str)
    shape = list(array.shape)
    if array.nbytes >= OUT_OF_BAND_BYTES:
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        frames.append(flat.data)
        payload: Any = len(frames) - 1
    else:
        payload = np.ascontiguousarray(array).tobytes()
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([dtype.str, shape, payload]))
