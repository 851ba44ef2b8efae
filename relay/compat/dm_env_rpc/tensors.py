"""Gymnasium spaces <-> dm_env_rpc ``TensorSpec`` maps, values <-> ``Tensor`` maps.

dm_env_rpc (``dm_env_rpc/v1/dm_env_rpc.proto``, docs/v1/overview.md) carries
observations and actions as flat maps ``uid -> Tensor`` described by flat maps
``uid -> TensorSpec`` with unique names.  A :class:`Layout` is the mapping for
one Gymnasium space:

* a leaf space is one tensor: ``Box`` (its dtype, shape and bounds; a bound
  equal for every element travels as a scalar, an all-infinite float bound is
  left out), ``Discrete`` (a scalar int64 with ``min=start``,
  ``max=start+n-1``), ``MultiDiscrete`` (int64, per-element bounds),
  ``MultiBinary`` (int8 in 0..1), ``Text`` (a scalar string);
* ``Dict`` and ``Tuple`` nest with ``.`` in the names (``"arm.0"``), the
  convention of dm_env_rpc's ``dm_env_flatten_utils`` that ``DmEnvAdaptor``
  unflattens; a space that is a single leaf is named ``default_name``
  (``"observation"`` or ``"action"``);
* numpy dtypes the protocol lacks are widened without loss (int16 -> INT32,
  uint16 -> UINT32, float16 -> FLOAT) and narrowed back on arrival.

:func:`space_from_specs` goes the other way for a client of a stock server.
Large float and byte tensors are written as protobuf wire bytes directly
(packed fields are raw little-endian arrays) instead of element by element.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium.spaces as gs
import numpy as np
from dm_env_rpc.v1 import dm_env_flatten_utils, tensor_spec_utils, tensor_utils
from dm_env_rpc.v1 import dm_env_rpc_pb2 as pb

from relay.core.errors import CodecError

__all__ = [
    "SEPARATOR",
    "Layout",
    "TensorError",
    "pack_settings",
    "space_from_specs",
    "unpack_settings",
]

SEPARATOR = "."
"""Nesting separator in tensor names (dm_env_rpc's ``DEFAULT_KEY_SEPARATOR``)."""

_WIDEN = {np.dtype(np.int16): np.dtype(np.int32), np.dtype(np.uint16): np.dtype(np.uint32),
          np.dtype(np.float16): np.dtype(np.float32)}
_PAYLOAD = {  # numpy dtype -> Tensor payload field
    np.dtype(np.float32): "floats", np.dtype(np.float64): "doubles",
    np.dtype(np.int8): "int8s", np.dtype(np.int32): "int32s", np.dtype(np.int64): "int64s",
    np.dtype(np.uint8): "uint8s", np.dtype(np.uint32): "uint32s",
    np.dtype(np.uint64): "uint64s", np.dtype(np.bool_): "bools",
}
_RAW_PAYLOADS = frozenset({"floats", "doubles", "int8s", "uint8s"})
"""Payloads whose wire form is the raw little-endian array (packed fixed-width or bytes)."""
_TENSOR_FIELDS = {f.name: f.number for f in pb.Tensor.DESCRIPTOR.fields}
_SHAPE_TAG = bytes([(_TENSOR_FIELDS["shape"] << 3) | 2])
_PAYLOAD_TAGS = {name: bytes([(number << 3) | 2]) for name, number in _TENSOR_FIELDS.items()}
_TEXT_CHARSET = string.printable


class TensorError(ValueError):
    """A tensor does not match its spec (uid, dtype, shape or bounds); the message says how."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def shape_bytes(shape: Sequence[int]) -> bytes:
    """The serialized ``shape`` field of a ``Tensor`` (empty for a scalar)."""
    if not shape:
        return b""
    dims = b"".join(_varint(d) for d in shape)
    return _SHAPE_TAG + _varint(len(dims)) + dims


def tensor_bytes(array: np.ndarray, payload: str, shape: bytes | None = None) -> bytes:
    """The serialized ``Tensor`` of ``array`` (a raw payload) with its shape.

    ``array`` must already have the payload's dtype; the bytes are what
    ``tensor_utils.pack_tensor`` would give, without a Python list in between.
    ``shape`` is :func:`shape_bytes` of the array's shape, when known.
    """
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    data = memoryview(np.ascontiguousarray(array)).cast("B")  # type: ignore[arg-type]
    size = data.nbytes
    head = _varint(size)
    return b"".join((  # one copy of the array's bytes
        _PAYLOAD_TAGS[payload], _varint(1 + len(head) + size if size else 0),
        b"\x0a" if size else b"", head if size else b"", data,
        shape_bytes(array.shape) if shape is None else shape))


def flat_payload(tensor: pb.Tensor, payload: str, dtype: np.dtype) -> np.ndarray:
    """The elements of ``tensor``'s payload as a new flat writable array of ``dtype``."""
    if payload in ("int8s", "uint8s"):
        return np.frombuffer(getattr(tensor, payload).array, dtype).copy()
    if payload in ("floats", "doubles"):
        raw = getattr(tensor, payload).SerializeToString()
        if not raw:
            return np.empty(0, dtype)
        length, start = _read_varint(raw, 1)
        return np.frombuffer(raw, dtype.newbyteorder("<"), length // dtype.itemsize,
                             start).astype(dtype)
    return tensor_utils.unpack_proto(tensor).astype(dtype, copy=False)


@dataclass(frozen=True, slots=True)
class _Leaf:
    uid: int
    name: str
    path: tuple[str | int, ...]
    space: gs.Space[Any]
    wire: np.dtype[Any] | None  # None: a string tensor
    payload: str
    shape: tuple[int, ...]
    low: np.ndarray | None
    high: np.ndarray | None
    spec: pb.TensorSpec
    shape_bytes: bytes


def _leaves(space: gs.Space[Any], path: tuple[str | int, ...]) -> Iterable[tuple[Any, ...]]:
    if isinstance(space, gs.Dict):
        for key, sub in space.spaces.items():
            yield from _leaves(sub, (*path, key))
    elif isinstance(space, gs.Tuple):
        for index, sub in enumerate(space.spaces):
            yield from _leaves(sub, (*path, index))
    else:
        yield path, space


def _bound(values: np.ndarray, wire: np.dtype[Any], infinite: float) -> Any:
    """A spec bound: None when every element is the infinite one, a scalar when all equal."""
    values = np.asarray(values, dtype=wire)
    if wire.kind == "f" and np.all(values == infinite):
        return None
    flat = values.ravel()
    if flat.size and np.all(flat == flat[0]):
        return flat[0]
    return values


def _leaf_parts(space: gs.Space[Any], name: str) -> tuple[Any, ...]:
    """``(wire dtype, shape, low, high)`` of a leaf space; low/high None when unbounded."""
    if isinstance(space, gs.Box):
        dtype = np.dtype(space.dtype)
        wire = _WIDEN.get(dtype, dtype)
        if wire not in _PAYLOAD:
            raise CodecError(f"{name!r}: dtype {dtype} has no dm_env_rpc DataType")
        if wire.kind == "b":
            return wire, tuple(space.shape), None, None
        return (wire, tuple(space.shape), _bound(space.low, wire, -math.inf),
                _bound(space.high, wire, math.inf))
    if isinstance(space, gs.Discrete):
        wire = _WIDEN.get(np.dtype(space.dtype), np.dtype(space.dtype))
        first = int(space.start)
        return wire, (), wire.type(first), wire.type(first + int(space.n) - 1)
    if isinstance(space, gs.MultiDiscrete):
        wire = _WIDEN.get(np.dtype(space.dtype), np.dtype(space.dtype))
        starts = np.asarray(space.start, dtype=wire)
        return (wire, tuple(space.shape), _bound(starts, wire, -math.inf),
                _bound(starts + np.asarray(space.nvec, dtype=wire) - 1, wire, math.inf))
    if isinstance(space, gs.MultiBinary):
        wire = np.dtype(np.int8)
        return wire, tuple(space.shape), wire.type(0), wire.type(1)
    if isinstance(space, gs.Text):
        return None, (), None, None
    raise CodecError(
        f"{name!r}: a {type(space).__name__} space has no dm_env_rpc TensorSpec "
        "(supported: Box, Discrete, MultiDiscrete, MultiBinary, Text, nested in Dict/Tuple)"
    )


class Layout:
    """How one Gymnasium space travels as named dm_env_rpc tensors.

    Args:
        space: the observation or action space.
        default_name: the tensor name when ``space`` is a single leaf.
        uids: name -> uid of an existing spec map (a client of a server);
            None numbers the leaves from ``first_uid`` in space order.
        first_uid: the first uid when numbering.

    Raises:
        CodecError: a space that no TensorSpec can describe, or two leaves
            with the same name.
    """

    def __init__(self, space: gs.Space[Any], default_name: str, *,
                 uids: Mapping[str, int] | None = None, first_uid: int = 1) -> None:
        self.space = space
        self.default_name = default_name
        self.leaves: list[_Leaf] = []
        for number, (path, leaf_space) in enumerate(_leaves(space, ()), start=first_uid):
            name = SEPARATOR.join(str(p) for p in path) if path else default_name
            wire, shape, low, high = _leaf_parts(leaf_space, name)
            spec = pb.TensorSpec(name=name, shape=shape,
                                 dtype=tensor_utils.np_type_to_data_type(
                                     np.str_ if wire is None else wire))
            if low is not None or high is not None:
                tensor_spec_utils.set_bounds(spec, low, high)
            uid = number if uids is None else uids[name]
            self.leaves.append(_Leaf(
                uid=uid, name=name, path=path, space=leaf_space, wire=wire,
                payload="strings" if wire is None else _PAYLOAD[wire], shape=shape,
                low=None if low is None else np.asarray(low, dtype=wire),
                high=None if high is None else np.asarray(high, dtype=wire), spec=spec,
                shape_bytes=shape_bytes(shape),
            ))
        names = [leaf.name for leaf in self.leaves]
        if len(set(names)) != len(names):
            raise CodecError(f"tensor names are not unique: {names}")
        self.by_uid = {leaf.uid: leaf for leaf in self.leaves}
        self.specs = {leaf.uid: leaf.spec for leaf in self.leaves}

    # -- values -> tensors -------------------------------------------------------

    def flatten(self, value: Any) -> dict[int, Any]:
        """uid -> leaf value of a value of the space (``dict``/``tuple`` nesting)."""
        out = {}
        for leaf in self.leaves:
            item = value
            for key in leaf.path:
                item = item[key]
            out[leaf.uid] = item
        return out

    def pack_into(self, target: Any, flat: Mapping[int, Any], uids: Iterable[int]) -> None:
        """Write the tensors of ``uids`` into the protobuf map ``target`` (uid -> Tensor)."""
        for uid in uids:
            leaf = self.by_uid[uid]
            item = flat[uid]
            if leaf.wire is None:
                target[uid].CopyFrom(tensor_utils.pack_tensor(str(item), dtype=np.str_))
                continue
            array = np.asarray(item)
            if array.dtype != leaf.wire:
                array = array.astype(leaf.wire)
            if array.shape != leaf.shape:
                raise CodecError(f"{leaf.name!r} has shape {array.shape}, its spec {leaf.shape}")
            if leaf.payload in _RAW_PAYLOADS:
                target[uid].MergeFromString(tensor_bytes(array, leaf.payload, leaf.shape_bytes))
            else:
                target[uid].CopyFrom(tensor_utils.pack_tensor(array, dtype=leaf.wire))

    # -- tensors -> values -------------------------------------------------------

    def unpack_leaf(self, uid: int, tensor: pb.Tensor, *, check: bool) -> Any:
        """The value of one tensor for its leaf space (dtype narrowed back).

        With ``check`` the tensor is validated against the spec as a server
        must (docs/v1/overview.md: dtype, shape with at most one variable
        dimension, broadcasting of a single element, inclusive bounds).

        Raises:
            TensorError: the tensor does not fit the spec.
        """
        leaf = self.by_uid.get(uid)
        if leaf is None:
            raise TensorError(f"unknown uid {uid} (known: {sorted(self.by_uid)})")
        payload = tensor.WhichOneof("payload")
        if payload != leaf.payload:
            raise TensorError(
                f"tensor {leaf.name!r} (uid {uid}) must carry {leaf.payload}, "
                f"got {payload or 'no payload'}"
            )
        shape = tuple(tensor.shape)
        if check:
            if len(shape) != len(leaf.shape):
                raise TensorError(f"tensor {leaf.name!r} (uid {uid}) has shape {list(shape)}, "
                                  f"its spec {list(leaf.shape)}")
            if sum(d < 0 for d in shape) > 1:
                raise TensorError(f"tensor {leaf.name!r} (uid {uid}) has more than one "
                                  f"variable dimension: {list(shape)}")
            if any(d >= 0 and d != s for d, s in zip(shape, leaf.shape, strict=True)):
                raise TensorError(f"tensor {leaf.name!r} (uid {uid}) has shape {list(shape)}, "
                                  f"its spec {list(leaf.shape)}")
        if leaf.wire is None:
            values = tensor_utils.unpack_proto(tensor)
            if values.size != 1:
                raise TensorError(f"tensor {leaf.name!r} must hold one string")
            return str(values[0])
        flat = flat_payload(tensor, payload, leaf.wire)
        count = math.prod(leaf.shape)
        if flat.size == 1 and count != 1:
            array = np.full(leaf.shape, flat[0], dtype=leaf.wire)  # broadcast
        elif flat.size == count:
            array = flat.reshape(leaf.shape)
        else:
            raise TensorError(f"tensor {leaf.name!r} (uid {uid}) has {flat.size} elements, "
                              f"its spec shape {list(leaf.shape)} needs {count}")
        if check:
            if leaf.low is not None and (array < leaf.low).any():
                raise TensorError(f"tensor {leaf.name!r} (uid {uid}) is below its minimum "
                                  f"{leaf.low.tolist()}: {array.tolist()}")
            if leaf.high is not None and (array > leaf.high).any():
                raise TensorError(f"tensor {leaf.name!r} (uid {uid}) is above its maximum "
                                  f"{leaf.high.tolist()}: {array.tolist()}")
        return _to_space(leaf.space, array)

    def assemble(self, values: Mapping[int, Any]) -> Any:
        """The space's value from uid -> leaf value (every leaf present)."""
        return self._build(self.space, (), {leaf.path: values[leaf.uid] for leaf in self.leaves})

    def _build(self, space: gs.Space[Any], path: tuple[str | int, ...],
               values: Mapping[tuple[str | int, ...], Any]) -> Any:
        if isinstance(space, gs.Dict):
            return {k: self._build(s, (*path, k), values) for k, s in space.spaces.items()}
        if isinstance(space, gs.Tuple):
            return tuple(self._build(s, (*path, i), values) for i, s in enumerate(space.spaces))
        return values[path]


def _to_space(space: gs.Space[Any], array: np.ndarray) -> Any:
    dtype = np.dtype(space.dtype) if space.dtype is not None else array.dtype
    if isinstance(space, gs.Discrete):
        return dtype.type(array.item())
    return array.astype(dtype, copy=False)


# -- client side: specs -> spaces ----------------------------------------------------------


def _leaf_space(spec: pb.TensorSpec) -> gs.Space[Any]:
    if spec.dtype == pb.DataType.STRING:
        return gs.Text(max_length=1 << 16, min_length=0, charset=_TEXT_CHARSET)
    if spec.dtype == pb.DataType.PROTO:
        raise CodecError(f"tensor {spec.name!r} carries protobuf messages: no Gymnasium space")
    shape = tuple(spec.shape)
    if any(d < 0 for d in shape):
        raise CodecError(f"tensor {spec.name!r} has a variable dimension {list(shape)}: "
                         "no fixed-shape Gymnasium space")
    dtype = tensor_utils.data_type_to_np_type(spec.dtype)
    if dtype.kind == "b":
        return gs.Box(low=0, high=1, shape=shape, dtype=dtype)
    has_min, has_max = spec.HasField("min"), spec.HasField("max")
    bounds = tensor_spec_utils.bounds(spec)
    low, high = bounds.min, bounds.max
    if dtype.kind == "f":
        low = low if has_min else -np.inf
        high = high if has_max else np.inf
    elif not shape and has_min and has_max and int(high) - int(low) < 1 << 31:
        return gs.Discrete(int(high) - int(low) + 1, start=int(low), dtype=dtype)
    return gs.Box(low=np.broadcast_to(np.asarray(low, dtype=dtype), shape),
                  high=np.broadcast_to(np.asarray(high, dtype=dtype), shape),
                  shape=shape, dtype=dtype)


def space_from_specs(specs: Mapping[int, pb.TensorSpec], default_name: str, *,
                     exclude: Iterable[str] = ()) -> tuple[gs.Space[Any], Layout]:
    """The Gymnasium space of a server's spec map, and its :class:`Layout`.

    One tensor named ``default_name`` is that leaf space itself; otherwise the
    names, split at ``.``, make a (nested) ``Dict``.  A scalar integer tensor
    with both bounds is ``Discrete``; other numeric tensors are ``Box`` (floats
    without a bound get ±inf, integers the dtype's range).

    Raises:
        CodecError: a string/proto payload that cannot be a space, a variable
            dimension, or names that clash when nested.
    """
    excluded = set(exclude)
    chosen = {uid: spec for uid, spec in specs.items() if spec.name not in excluded}
    if not chosen:
        return gs.Dict({}), Layout(gs.Dict({}), default_name, uids={})
    uids = {spec.name: uid for uid, spec in chosen.items()}
    if list(uids) == [default_name]:
        space: gs.Space[Any] = _leaf_space(next(iter(chosen.values())))
    else:
        try:
            nested = dm_env_flatten_utils.unflatten_dict(
                {spec.name: spec for spec in chosen.values()}, SEPARATOR)
        except ValueError as exc:
            raise CodecError(f"tensor names do not nest: {exc}") from exc
        space = _dict_space(nested)
    return space, Layout(space, default_name, uids=uids)


def _dict_space(tree: Mapping[str, Any]) -> gs.Dict:
    return gs.Dict({
        key: _dict_space(value) if isinstance(value, Mapping) else _leaf_space(value)
        for key, value in sorted(tree.items())
    })


# -- world settings ---------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value if value.shape else value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def unpack_settings(settings: Mapping[str, pb.Tensor]) -> dict[str, Any]:
    """``map<string, Tensor>`` settings as Python values, ``a.b`` names nested.

    Scalars become ``int``/``float``/``bool``/``str``; other tensors numpy arrays.

    Raises:
        TensorError: a tensor that cannot be unpacked.
    """
    flat = {}
    for name, tensor in settings.items():
        try:
            flat[name] = _plain(tensor_utils.unpack_tensor(tensor))
        except (TypeError, ValueError) as exc:
            raise TensorError(f"setting {name!r}: {exc}") from exc
    try:
        return dict(dm_env_flatten_utils.unflatten_dict(flat, SEPARATOR))
    except ValueError as exc:
        raise TensorError(f"settings do not nest: {exc}") from exc


def pack_settings(values: Mapping[str, Any]) -> dict[str, pb.Tensor]:
    """Python values (nested dicts flattened with ``.``) as ``map<string, Tensor>``.

    Raises:
        CodecError: a value no Tensor can hold (None, ragged lists, objects).
    """
    flat = dm_env_flatten_utils.flatten_dict(dict(values), SEPARATOR, strict=False)
    out = {}
    for name, value in flat.items():
        if isinstance(value, pb.Tensor):
            out[name] = value
            continue
        if value is None:
            raise CodecError(f"setting {name!r} is None: a dm_env_rpc Tensor cannot hold it")
        try:
            out[name] = tensor_utils.pack_tensor(value)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"setting {name!r}={value!r} cannot be a Tensor: {exc}") from exc
    return out
