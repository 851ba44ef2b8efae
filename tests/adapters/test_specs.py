"""dm_env specs <-> descriptions <-> Gymnasium spaces, and their values (no I/O)."""

from __future__ import annotations

import collections
import warnings

import gymnasium.spaces as gs
import numpy as np
import pytest
import tree
from dm_env import specs as S

from relay.adapters import specs
from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import MsgpackCodec
from relay.core import spaces
from relay.core.errors import CodecError
from relay.core.messages import Envelope, Made

NEST = collections.OrderedDict(
    z=S.BoundedArray((2, 3), np.float32, -1.0, [1, 2, 3], name="z"),
    a=S.Array((4,), np.int16, name="a"),
    f=S.Array((2, 2), np.float64, name="f"),
    b=S.Array((), bool, name="b"),
    d=S.DiscreteArray(5, dtype=np.int32, name="d"),
    s=S.StringArray((2,), name="s"),
    sb=S.StringArray((), string_type=bytes),
    t=(S.Array((1,), np.float64), [S.DiscreteArray(3), S.Array((), np.uint8)]),
    inner={"y": S.BoundedArray((), np.int64, 0, 9), "x": S.Array((3,), np.uint8)},
)


def assert_same_specs(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_specs(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_specs(x, y)
    else:
        assert a == b and a.name == b.name and a.dtype == b.dtype, (a, b)
        if isinstance(a, S.StringArray):
            assert a.string_type is b.string_type
        if isinstance(a, S.DiscreteArray):
            assert a.num_values == b.num_values


@pytest.mark.parametrize("codec", [MsgpackCodec(), JsonCodec()], ids=["msgpack", "json"])
def test_spec_nest_survives_the_wire_exactly(codec) -> None:
    description = specs.describe_spec(NEST)
    made = Made(instance=1, observation_space=description, action_space=description)
    received = codec.decode(codec.encode(Envelope(1, made))).message.observation_space
    assert_same_specs(NEST, specs.spec_from_description(received))


def test_values_convert_both_ways() -> None:
    description = specs.describe_spec(NEST)
    space = spaces.build(description)
    for value in (space.sample(), specs.to_gym_value(
            tree.map_structure(lambda s: s.generate_value(), NEST), description)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert value in space
        dm_value = specs.to_dm_value(value, description)
        assert isinstance(dm_value, collections.OrderedDict)
        assert isinstance(dm_value["t"][1], list)
        assert dm_value["s"].dtype == object and isinstance(dm_value["s"][0], str)
        tree.map_structure(lambda spec, v: spec.validate(v), NEST, dm_value)
        again = specs.to_gym_value(dm_value, description)
        assert again in space


@pytest.mark.parametrize("spec", [
    S.Array((3,), np.float32),
    S.Array((2,), np.int32),
    S.Array((2,), np.uint8),
    S.BoundedArray((2,), np.float64, [-1, 0], [1, 5]),
    S.BoundedArray((), np.int64, 0, 9),
    {"pos": S.Array((3,), np.float64), "vel": S.BoundedArray((2,), np.float32, -1, 1)},
])
def test_boxes_equal_shimmys(spec) -> None:
    """The spec -> space rules are Shimmy's (shimmy/utils/dm_env.py)."""
    shimmy_dm_env = pytest.importorskip("shimmy.utils.dm_env")
    assert specs.space_from_spec(spec) == shimmy_dm_env.dm_spec2gym_space(spec)


def test_discrete_array_keeps_its_dtype() -> None:
    space = specs.space_from_spec(S.DiscreteArray(4, dtype=np.int32))
    assert space == gs.Discrete(4, dtype=np.int32)


@pytest.mark.parametrize(("space", "expected"), [
    (gs.Box(-np.inf, np.inf, (2,), np.float32), S.Array((2,), np.float32)),
    (gs.Box(0, 1, (2,), np.float32), S.BoundedArray((2,), np.float32, 0, 1)),
    (gs.Discrete(3), S.DiscreteArray(3, dtype=np.int64)),
    (gs.Discrete(3, start=2), S.BoundedArray((), np.int64, 2, 4)),
    (gs.MultiDiscrete([3, 4]), S.BoundedArray((2,), np.int64, 0, [2, 3])),
    (gs.MultiBinary(3), S.BoundedArray((3,), np.int8, 0, 1)),
    (gs.Text(5), S.StringArray(())),
])
def test_gymnasium_spaces_to_specs(space, expected) -> None:
    spec = specs.spec_from_space(space, "observation")
    assert spec == expected and type(spec) is type(expected)
    assert spec.name == "observation"
    description = spaces.describe(space)
    value = specs.to_dm_value(space.sample(), description)
    spec.validate(value)
    assert specs.to_gym_value(value, description) in space


def test_gymnasium_containers_to_specs() -> None:
    space = gs.Dict({"b": gs.Discrete(2), "a": gs.Tuple((gs.Box(0, 1, (1,)),))})
    spec = specs.spec_from_space(space)
    assert isinstance(spec, dict) and isinstance(spec["a"], tuple)
    assert spec["b"].name == "b"


@pytest.mark.parametrize("space", [
    gs.Sequence(gs.Discrete(2)),
    gs.OneOf((gs.Discrete(2), gs.Discrete(3))),
])
def test_spaces_without_a_spec(space) -> None:
    with pytest.raises(CodecError):
        specs.spec_from_space(space)


def test_not_a_spec() -> None:
    with pytest.raises(CodecError):
        specs.describe_spec({"x": 3})


def test_string_array_space() -> None:
    space = spaces.build(spaces.describe(spaces.StringArraySpace((2, 2))))
    assert space == spaces.StringArraySpace((2, 2))
    space.seed(0)
    sample = space.sample()
    assert sample in space and sample.shape == (2, 2) and sample.dtype.kind == "U"
    assert np.array(["a", 1], dtype=object).reshape(1, 2) not in spaces.StringArraySpace((1, 2))


def test_structure_mismatch_is_codec_error() -> None:
    description = specs.describe_spec((S.Array((), np.float32), S.Array((), np.float32)))
    with pytest.raises(CodecError):
        specs.to_gym_value((1.0,), description)
    with pytest.raises(CodecError):
        specs.to_dm_value((1.0, 2.0, 3.0), description)
