"""Neutral descriptions of observation and action spaces.

A description is a plain value tree (dicts, lists, tuples, ints, strings,
numpy arrays) that every codec can carry, with a ``"type"`` key naming the
space.  :func:`describe` and :func:`build` convert Gymnasium spaces to and from
descriptions without loss: the rebuilt space compares equal to the original
(``==``) and samples the same values from the same seed.

Supported: Box (any dtype, infinite bounds), Discrete (with ``start``),
MultiDiscrete (with ``start``), MultiBinary, Text (with its character order),
Dict (key order kept), Tuple, Sequence (``stack``), Graph, OneOf, and
registered extensions (MiniGrid's ``MissionSpace`` and :class:`StringArraySpace`,
the space of dm_env's ``StringArray`` specs, are built in).  Third-party
space classes are added with :func:`register_space`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium.spaces as gs
import numpy as np

from relay.core.errors import CodecError, ConfigError

__all__ = ["StringArraySpace", "build", "describe", "describe_string_space", "register_space"]

Description = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _SpaceType:
    name: str
    cls_path: str  # "module:Class", imported only when a space of it is described/built
    describe: Callable[[Any], Description]
    build: Callable[[Description], Any]


_extensions: dict[str, _SpaceType] = {}


def register_space(
    name: str,
    cls_path: str,
    describe: Callable[[Any], Description],
    build: Callable[[Description], Any],
) -> None:
    """Teach relay a space class it does not know.

    Args:
        name: the wire name (the ``"type"`` of the description), e.g.
            ``"minigrid.MissionSpace"``.
        cls_path: ``"module:Class"`` of the space; matched by exact class name
            so the module is imported only when such a space is sent.
        describe: space -> description fields (without ``"type"``).
        build: description -> space; may raise ImportError when the module
            is missing on the receiving side.
    """
    if name in _BUILTIN_BUILDERS or name in _extensions:
        raise ConfigError(f"space type {name!r} is already registered")
    _extensions[name] = _SpaceType(name, cls_path, describe, build)


def describe(space: gs.Space[Any]) -> Description:
    """The description of a Gymnasium space.

    Raises:
        CodecError: the space class is neither built in nor registered.
    """
    cls = type(space)
    for ext in _extensions.values():
        module, _, qualname = ext.cls_path.partition(":")
        if cls.__module__ == module and cls.__qualname__ == qualname:
            return {"type": ext.name, **ext.describe(space)}
    describer = _BUILTIN_DESCRIBERS.get(cls)
    if describer is None:
        raise CodecError(
            f"cannot describe space {cls.__module__}.{cls.__qualname__}; "
            "register it with relay.core.spaces.register_space"
        )
    return {"type": cls.__name__, **describer(space)}


def build(description: Description) -> gs.Space[Any]:
    """The Gymnasium space of a description (inverse of :func:`describe`).

    Raises:
        CodecError: unknown ``"type"`` or malformed fields.
    """
    if not isinstance(description, dict) or "type" not in description:
        raise CodecError(f"a space description is a map with a 'type', got {description!r}")
    name = description["type"]
    builder = _BUILTIN_BUILDERS.get(name)
    if builder is None and name in _extensions:
        builder = _extensions[name].build
    if builder is None:
        raise CodecError(f"unknown space type {name!r}")
    try:
        return builder(description)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise CodecError(f"malformed {name} space description: {exc!r}") from exc


def _box(s: gs.Box) -> Description:
    return {"low": _bound(s.low), "high": _bound(s.high), "shape": tuple(s.shape),
            "dtype": s.dtype.str}


def _bound(bound: np.ndarray) -> Any:
    """A uniform bound as one numpy scalar (a (8192, 8192) Box must not cost 128 MB)."""
    if bound.size > 1 and bound.dtype.kind != "b" and (bound == bound.flat[0]).all():
        return bound.flat[0]  # (gymnasium's Box takes no numpy bool scalar as a bound)
    return bound


def _discrete(s: gs.Discrete) -> Description:
    return {"n": int(s.n), "start": int(s.start), "dtype": s.dtype.str}


def _multi_discrete(s: gs.MultiDiscrete) -> Description:
    return {"nvec": s.nvec, "start": s.start, "dtype": s.dtype.str}


def _multi_binary(s: gs.MultiBinary) -> Description:
    n = s.n
    return {"n": tuple(int(x) for x in n) if isinstance(n, (tuple, list, np.ndarray)) else int(n)}


def _text(s: gs.Text) -> Description:
    return {"min_length": s.min_length, "max_length": s.max_length,
            "charset": "".join(s.character_list)}


_BUILTIN_DESCRIBERS: dict[type, Callable[[Any], Description]] = {
    gs.Box: _box,
    gs.Discrete: _discrete,
    gs.MultiDiscrete: _multi_discrete,
    gs.MultiBinary: _multi_binary,
    gs.Text: _text,
    gs.Dict: lambda s: {"spaces": {k: describe(v) for k, v in s.spaces.items()}},
    gs.Tuple: lambda s: {"spaces": [describe(v) for v in s.spaces]},
    gs.Sequence: lambda s: {"feature_space": describe(s.feature_space), "stack": s.stack},
    gs.Graph: lambda s: {
        "node_space": describe(s.node_space),
        "edge_space": None if s.edge_space is None else describe(s.edge_space),
    },
    gs.OneOf: lambda s: {"spaces": [describe(v) for v in s.spaces]},
}

_BUILTIN_BUILDERS: dict[str, Callable[[Description], Any]] = {
    "Box": lambda d: gs.Box(low=d["low"], high=d["high"], shape=tuple(d["shape"]),
                            dtype=np.dtype(d["dtype"])),
    "Discrete": lambda d: gs.Discrete(d["n"], start=d["start"], dtype=np.dtype(d["dtype"])),
    "MultiDiscrete": lambda d: gs.MultiDiscrete(d["nvec"], dtype=np.dtype(d["dtype"]),
                                                start=d["start"]),
    "MultiBinary": lambda d: gs.MultiBinary(list(d["n"]) if isinstance(d["n"], (list, tuple))
                                            else d["n"]),
    "Text": lambda d: gs.Text(d["max_length"], min_length=d["min_length"], charset=d["charset"]),
    # a list of pairs keeps the key order (a dict would be sorted by gymnasium)
    "Dict": lambda d: gs.Dict([(k, build(v)) for k, v in d["spaces"].items()]),
    "Tuple": lambda d: gs.Tuple(tuple(build(v) for v in d["spaces"])),
    "Sequence": lambda d: gs.Sequence(build(d["feature_space"]), stack=d["stack"]),
    "Graph": lambda d: gs.Graph(
        node_space=build(d["node_space"]),
        edge_space=None if d["edge_space"] is None else build(d["edge_space"]),
    ),
    "OneOf": lambda d: gs.OneOf(tuple(build(v) for v in d["spaces"])),
}


def _describe_mission(space: Any) -> Description:
    placeholders = space.ordered_placeholders
    blanks = [""] * len(placeholders) if placeholders is not None else []
    return {
        "ordered_placeholders": placeholders,
        "template": space.mission_func(*blanks),
    }


# MissionSpace checks its function's number of positional parameters, so the
# rebuilt function must take exactly as many as there are placeholder lists.
_CONSTANT_FUNCTIONS: list[Callable[[str], Callable[..., str]]] = [
    lambda t: lambda: t,
    lambda t: lambda a: t,
    lambda t: lambda a, b: t,
    lambda t: lambda a, b, c: t,
    lambda t: lambda a, b, c, d: t,
    lambda t: lambda a, b, c, d, e: t,
    lambda t: lambda a, b, c, d, e, f: t,
]


def _build_mission(d: Description) -> Any:
    # MiniGrid's mission function is a Python callable; what MissionSpace.__eq__
    # compares is the string it gives for blank placeholders, so that string is
    # what travels (minigrid/core/mission.py).
    from minigrid.core.mission import MissionSpace

    template = d["template"]
    placeholders = d["ordered_placeholders"]
    arity = len(placeholders) if placeholders is not None else 0

    if arity >= len(_CONSTANT_FUNCTIONS):
        raise CodecError(f"MissionSpace with {arity} placeholders is not supported")
    mission_func = _CONSTANT_FUNCTIONS[arity](template)
    return MissionSpace(
        mission_func=mission_func,
        ordered_placeholders=[list(p) for p in placeholders] if placeholders is not None else None,
    )


register_space("minigrid.MissionSpace", "minigrid.core.mission:MissionSpace",
               _describe_mission, _build_mission)


class StringArraySpace(gs.Space[np.ndarray]):
    """A Gymnasium space of numpy string arrays of a fixed shape (dm_env ``StringArray``).

    Values are numpy arrays of kind ``U`` (``str``) or ``S`` (``bytes``) of
    shape ``shape``, and a plain ``str``/``bytes`` for shape ``()`` (so that
    Gymnasium's ``data_equivalence``, which cannot compare string arrays, and
    ``check_env`` work on it); ``sample`` gives short random ASCII strings.
    """

    def __init__(self, shape: tuple[int, ...], string_type: type = str,
                 seed: int | np.random.Generator | None = None) -> None:
        if string_type not in (str, bytes):
            raise ValueError(f"string_type must be str or bytes, got {string_type!r}")
        self.string_type = string_type
        super().__init__(tuple(shape), np.dtype("U" if string_type is str else "S"), seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        size = int(np.prod(self.shape or (), dtype=np.int64))
        lengths = self.np_random.integers(0, 8, size)
        words = ["".join(self.np_random.choice(letters, n)) for n in lengths]
        array = np.array(words, dtype=str).reshape(self.shape)
        if self.string_type is bytes:
            array = np.char.encode(array, "ascii")
        return array.item() if self.shape == () else array

    def contains(self, x: Any) -> bool:
        if isinstance(x, (str, bytes)) and self.shape == ():
            return isinstance(x, self.string_type)
        if not isinstance(x, np.ndarray) or x.shape != self.shape:
            return False
        if x.dtype.kind == ("U" if self.string_type is str else "S"):
            return True
        return x.dtype == object and all(isinstance(v, self.string_type) for v in x.flat)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StringArraySpace) and other.shape == self.shape
                and other.string_type is self.string_type)

    def __repr__(self) -> str:
        return f"StringArraySpace({self.shape}, {self.string_type.__name__})"


def describe_string_space(space: StringArraySpace) -> Description:
    """The description fields of a :class:`StringArraySpace`: ``shape``, ``string_type``."""
    return {"shape": list(space.shape or ()), "string_type": space.string_type.__name__}


def _build_string_space(d: Description) -> StringArraySpace:
    return StringArraySpace(tuple(d["shape"]), bytes if d["string_type"] == "bytes" else str)


register_space("dm_env.StringArray", "relay.core.spaces:StringArraySpace",
               describe_string_space, _build_string_space)
