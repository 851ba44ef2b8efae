"""dm_env specs <-> relay space descriptions <-> Gymnasium spaces, and their values.

The only module besides :mod:`relay.adapters.dm_env` that imports ``dm_env``.

A dm_env spec nest (``Array``, ``BoundedArray``, ``DiscreteArray``,
``StringArray`` leaves inside dicts, ``OrderedDict``s, tuples and lists) is
described as the Gymnasium space that holds the same values (see
:mod:`relay.core.spaces`), plus a ``"dm_env"`` hint on every node so that a
dm_env peer rebuilds the *exact* spec (class, name, dtype, bounds, container
type and key order).  A Gymnasium peer ignores the hints and builds the plain
space; a description with no hints (a Gymnasium env) still maps to specs.

=====================================  ====================================
dm_env spec                            Gymnasium space (description type)
=====================================  ====================================
``Array`` float                        ``Box(-inf, inf)``
``Array`` int / uint                   ``Box(iinfo.min, iinfo.max)``
``Array`` bool                         ``Box(False, True, dtype=bool)``
``BoundedArray``                       ``Box(minimum, maximum)`` (broadcast)
``DiscreteArray(n, dtype)``            ``Discrete(n, dtype=dtype)``
``StringArray(shape, str|bytes)``      :class:`~relay.core.spaces.StringArraySpace`
dict / ``OrderedDict``                 ``Dict`` (the spec's key order is kept in
                                       the description; Gymnasium sorts keys)
tuple / list                           ``Tuple``
=====================================  ====================================

Without hints (a Gymnasium space to dm_env): ``Box`` -> ``BoundedArray``
(``Array`` when every bound is infinite), ``Discrete(n, start=0)`` ->
``DiscreteArray``, other ``Discrete``/``MultiDiscrete``/``MultiBinary`` ->
``BoundedArray``, ``Text`` -> ``StringArray(())``, ``Dict`` -> dict,
``Tuple`` -> tuple.  ``Sequence``, ``Graph``, ``OneOf`` have no dm_env spec.

The spec -> Box rules are those of Shimmy's ``dm_spec2gym_space``
(``shimmy/utils/dm_env.py``, checked against it in the tests) but written
here: Shimmy's import pulls bsuite and dm_control (~0.9 s), drops the
``DiscreteArray`` dtype, and has no tuple, list or ``StringArray``.

Values:

* :func:`to_gym_value` turns a dm_env value (observation or action) into the
  value of the Gymnasium space (lists -> tuples, string arrays -> numpy
  ``U``/``S`` arrays that codecs carry, or a ``str``/``bytes`` for shape
  ``()``, arrays cast to the space dtype);
* :func:`to_dm_value` is the inverse: the value conforming to the spec
  (``spec.validate`` passes), with the spec's container types.

API summary::

    describe_spec(spec_nest) -> description            # lossless, with hints
    spec_from_description(description) -> spec_nest   # exact inverse
    space_from_spec(spec_nest) -> gymnasium space
    spec_from_space(space) -> spec_nest
    to_gym_value(value, description) / to_dm_value(value, description)
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import gymnasium.spaces as gs
import numpy as np
from dm_env import specs as dm_specs

from relay.core import spaces
from relay.core.errors import CodecError
from relay.core.spaces import StringArraySpace, describe_string_space

__all__ = [
    "HINT",
    "default_discount_spec",
    "default_reward_spec",
    "describe_spec",
    "space_from_spec",
    "spec_from_description",
    "spec_from_space",
    "to_dm_value",
    "to_gym_value",
]

Description = dict[str, Any]
HINT = "dm_env"
"""Key of the dm_env hint in a description: ``{"kind": ..., "name": ...}``."""


def default_reward_spec() -> dm_specs.Array:
    """``dm_env.Environment.reward_spec``'s default: a float64 scalar named "reward"."""
    return dm_specs.Array(shape=(), dtype=np.float64, name="reward")


def default_discount_spec() -> dm_specs.BoundedArray:
    """``dm_env.Environment.discount_spec``'s default: float64 in [0, 1] named "discount"."""
    return dm_specs.BoundedArray(shape=(), dtype=np.float64, minimum=0.0, maximum=1.0,
                                 name="discount")


# -- specs -> descriptions ---------------------------------------------------------

def describe_spec(spec: Any) -> Description:
    """The description of a dm_env spec nest, with hints for an exact rebuild.

    Raises:
        CodecError: a leaf is not a dm_env spec, or an ``Array`` has a dtype no
            Gymnasium space holds.
    """
    if isinstance(spec, Mapping):
        kind = "OrderedDict" if isinstance(spec, collections.OrderedDict) else "dict"
        return {"type": "Dict", "spaces": {str(k): describe_spec(v) for k, v in spec.items()},
                HINT: {"kind": kind}}
    if isinstance(spec, (tuple, list)) and not isinstance(spec, dm_specs.Array):
        return {"type": "Tuple", "spaces": [describe_spec(v) for v in spec],
                HINT: {"kind": "list" if isinstance(spec, list) else "tuple"}}
    if not isinstance(spec, dm_specs.Array):
        raise CodecError(f"not a dm_env spec: {spec!r}")
    hint = {"kind": type(spec).__name__, "name": spec.name}
    if isinstance(spec, dm_specs.StringArray):
        hint["kind"] = "StringArray"
        return {**describe_string_space(StringArraySpace(spec.shape, spec.string_type)),
                "type": "dm_env.StringArray", HINT: hint}
    if isinstance(spec, dm_specs.DiscreteArray):
        hint["kind"] = "DiscreteArray"
        return {**spaces.describe(gs.Discrete(spec.num_values, dtype=spec.dtype)), HINT: hint}
    if isinstance(spec, dm_specs.BoundedArray):
        hint["kind"] = "BoundedArray"
        box = gs.Box(low=np.broadcast_to(spec.minimum, spec.shape),
                     high=np.broadcast_to(spec.maximum, spec.shape),
                     shape=spec.shape, dtype=spec.dtype)
        return {**spaces.describe(box), HINT: hint}
    hint["kind"] = "Array"
    dtype = np.dtype(spec.dtype)
    low: float
    high: float
    if dtype.kind in "iu":
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    elif dtype.kind == "f":
        low, high = -np.inf, np.inf
    elif dtype.kind == "b":
        low, high = 0, 1  # Box takes no Python bool bound (as Shimmy does)
    else:
        raise CodecError(f"an Array spec of dtype {dtype} has no Gymnasium space ({spec!r})")
    box = gs.Box(low=low, high=high, shape=spec.shape, dtype=dtype)
    return {**spaces.describe(box), HINT: hint}


def space_from_spec(spec: Any) -> gs.Space[Any]:
    """The Gymnasium space holding the values of a dm_env spec nest."""
    return spaces.build(describe_spec(spec))


# -- descriptions -> specs ---------------------------------------------------------

def spec_from_description(description: Description, name: str | None = None) -> Any:
    """The dm_env spec nest of a description (exact when it carries hints).

    Args:
        name: the spec name for leaves without a hint (dict entries take their key).

    Raises:
        CodecError: a space with no dm_env equivalent (Sequence, Graph, OneOf,
            an unregistered type) or a malformed description.
    """
    try:
        return _spec(description, name)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"cannot make a dm_env spec of {description!r}: {exc!r}") from exc


def _spec(d: Description, name: str | None) -> Any:
    if not isinstance(d, dict) or "type" not in d:
        raise CodecError(f"a space description is a map with a 'type', got {d!r}")
    kind = d["type"]
    hint = d.get(HINT) or {}
    if kind == "Dict":
        items = [(k, _spec(v, k)) for k, v in d["spaces"].items()]
        return collections.OrderedDict(items) if hint.get("kind") == "OrderedDict" else dict(items)
    if kind == "Tuple":
        items = [_spec(v, name) for v in d["spaces"]]
        return items if hint.get("kind") == "list" else tuple(items)
    name = hint.get("name", name)
    if kind == "dm_env.StringArray":
        return dm_specs.StringArray(tuple(d["shape"]),
                                    bytes if d["string_type"] == "bytes" else str, name=name)
    if kind == "Text":
        return dm_specs.StringArray((), str, name=name)
    space = spaces.build(d)
    if isinstance(space, gs.Box):
        low, high = space.low, space.high
        if hint.get("kind") == "Array" or (not hint and np.isinf(low).all()
                                           and np.isinf(high).all() and (low < 0).all()
                                           and (high > 0).all()):
            return dm_specs.Array(space.shape, space.dtype, name=name)
        return dm_specs.BoundedArray(space.shape, space.dtype, _scalar_if_uniform(low),
                                     _scalar_if_uniform(high), name=name)
    if isinstance(space, gs.Discrete):
        if int(space.start) == 0:
            return dm_specs.DiscreteArray(int(space.n), dtype=space.dtype, name=name)
        return dm_specs.BoundedArray((), space.dtype, int(space.start),
                                     int(space.start + space.n - 1), name=name)
    if isinstance(space, gs.MultiDiscrete):
        return dm_specs.BoundedArray(space.shape, space.dtype, space.start,
                                     space.start + space.nvec - 1, name=name)
    if isinstance(space, gs.MultiBinary):
        return dm_specs.BoundedArray(space.shape, space.dtype, 0, 1, name=name)
    raise CodecError(f"a {kind} space has no dm_env spec")


def _scalar_if_uniform(bound: np.ndarray) -> Any:
    if bound.size and (bound == bound.flat[0]).all():
        return bound.flat[0]
    return bound


def spec_from_space(space: gs.Space[Any], name: str | None = None) -> Any:
    """The dm_env spec nest of a Gymnasium space (see the table in the module docstring)."""
    return spec_from_description(spaces.describe(space), name)


# -- values ------------------------------------------------------------------------

def to_gym_value(value: Any, description: Description) -> Any:
    """A dm_env value as a value of the description's Gymnasium space.

    Dicts keep their keys, tuples/lists become tuples, string arrays become
    numpy ``U``/``S`` arrays, arrays are cast to the space's dtype (not copied
    when already right).

    Raises:
        CodecError: the value's structure does not match the description.
    """
    kind = description["type"]
    try:
        if kind == "Dict":
            return {k: to_gym_value(value[k], d) for k, d in description["spaces"].items()}
        if kind == "Tuple":
            subs = description["spaces"]
            if len(value) != len(subs):
                raise CodecError(f"expected {len(subs)} items, got {len(value)}")
            return tuple(to_gym_value(v, d) for v, d in zip(value, subs, strict=True))
        if kind == "dm_env.StringArray":
            array = np.asarray(value, dtype="S" if description["string_type"] == "bytes"
                               else "U")
            return array.item() if array.shape == () else array
        if kind == "Text":
            return str(value.item() if isinstance(value, np.ndarray) else value)
        if kind == "Discrete":
            return np.dtype(description["dtype"]).type(np.asarray(value).item())
        if "dtype" in description:
            return np.asarray(value, dtype=np.dtype(description["dtype"]))
        if kind == "MultiBinary":
            return np.asarray(value, dtype=np.int8)
        return value
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CodecError(f"value {value!r} does not fit the {kind} space: {exc!r}") from exc


def to_dm_value(value: Any, description: Description) -> Any:
    """A value of the description's space as a value conforming to its dm_env spec.

    Raises:
        CodecError: the value's structure does not match the description.
    """
    kind = description["type"]
    hint = description.get(HINT) or {}
    try:
        if kind == "Dict":
            items = [(k, to_dm_value(value[k], d)) for k, d in description["spaces"].items()]
            if hint.get("kind") == "OrderedDict":
                return collections.OrderedDict(items)
            return dict(items)
        if kind == "Tuple":
            subs = description["spaces"]
            if len(value) != len(subs):
                raise CodecError(f"expected {len(subs)} items, got {len(value)}")
            items = [to_dm_value(v, d) for v, d in zip(value, subs, strict=True)]
            return items if hint.get("kind") == "list" else tuple(items)
        if kind in ("dm_env.StringArray", "Text"):
            array = np.asarray(value)
            if array.dtype.kind in "US":
                return array.astype(object)
            return np.asarray(value, dtype=object)
        if "dtype" in description:
            return np.asarray(value, dtype=np.dtype(description["dtype"]))
        if kind == "MultiBinary":
            return np.asarray(value, dtype=np.int8)
        return value
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CodecError(f"value {value!r} does not fit the {kind} space: {exc!r}") from exc
