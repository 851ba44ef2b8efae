"""Every Gymnasium space survives describe -> codec -> build exactly."""

from collections import OrderedDict

import gymnasium.spaces as gs
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import MsgpackCodec
from relay.core import spaces
from relay.core.errors import CodecError
from relay.core.messages import Envelope, Made

SPACES = {
    "box-f32-inf": gs.Box(-np.inf, np.inf, (3,), np.float32),
    "box-mixed-bounds": gs.Box(np.array([-1.0, -np.inf]), np.array([np.inf, 2.0]),
                               dtype=np.float64),
    "box-u8-image": gs.Box(0, 255, (84, 84, 4), np.uint8),
    "box-int64": gs.Box(-5, 5, (2, 2), np.int64),
    "box-f16": gs.Box(-1, 1, (2,), np.float16),
    "discrete": gs.Discrete(4),
    "discrete-start": gs.Discrete(3, start=-1),
    "discrete-int32": gs.Discrete(5, dtype=np.int32),
    "multi-discrete": gs.MultiDiscrete([3, 4, 5]),
    "multi-discrete-2d-start": gs.MultiDiscrete(np.array([[2, 3], [4, 5]]),
                                                start=[[1, 1], [0, -2]]),
    "multi-binary": gs.MultiBinary(5),
    "multi-binary-2d": gs.MultiBinary([2, 3]),
    "text": gs.Text(10),
    "text-charset": gs.Text(5, min_length=2, charset="xyz01"),
    "dict": gs.Dict({"b": gs.Discrete(2), "a": gs.Box(0, 1, (2,))}),
    "tuple": gs.Tuple((gs.Discrete(2), gs.Tuple((gs.MultiBinary(2),)))),
    "sequence": gs.Sequence(gs.Box(0, 1, (2,)), stack=False),
    "sequence-stacked": gs.Sequence(gs.Discrete(3), stack=True),
    "graph": gs.Graph(node_space=gs.Box(0, 1, (3,)), edge_space=gs.Discrete(4)),
    "graph-no-edges": gs.Graph(node_space=gs.Discrete(3), edge_space=None),
    "oneof": gs.OneOf((gs.Discrete(2), gs.Box(-1, 1, (2,)))),
    "nested": gs.Dict({"t": gs.Tuple((gs.Text(3), gs.Dict({"x": gs.Discrete(2)})))}),
}


@pytest.mark.parametrize("codec", [MsgpackCodec(), JsonCodec()], ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(SPACES))
def test_space_round_trips_through_codec(codec, name):
    space = SPACES[name]
    made = Made(instance=1, observation_space=spaces.describe(space), action_space={})
    wire = codec.decode(codec.encode(Envelope(1, made))).message
    rebuilt = spaces.build(wire.observation_space)
    assert type(rebuilt) is type(space)
    assert rebuilt == space and space == rebuilt
    assert rebuilt.dtype == space.dtype and rebuilt.shape == space.shape
    space.seed(3)
    rebuilt.seed(3)
    for _ in range(3):
        a, b = space.sample(), rebuilt.sample()
        assert data_equivalence(a, b, exact=True), (a, b)
        assert b in space


def test_dict_key_order_is_kept():
    space = gs.Dict(OrderedDict([("z", gs.Discrete(2)), ("a", gs.Discrete(3))]))
    assert list(spaces.build(spaces.describe(space)).spaces) == ["z", "a"]


def test_text_character_order_is_kept():
    space = gs.Text(4, charset="dcba")
    assert spaces.build(spaces.describe(space)).character_list == tuple("dcba")


def test_unknown_space_class_is_a_clear_error():
    class Custom(gs.Space):
        pass

    with pytest.raises(CodecError, match="register_space"):
        spaces.describe(Custom())


@pytest.mark.parametrize(
    "description",
    [{"type": "Nope"}, {"no": "type"}, {"type": "Box", "low": 0}, "Box"],
)
def test_malformed_descriptions(description):
    with pytest.raises(CodecError):
        spaces.build(description)


def test_minigrid_mission_space_rebuilt_equal():
    mission = pytest.importorskip("minigrid.core.mission")
    space = mission.MissionSpace(lambda color, obj: f"pick the {color} {obj}",
                                 [["red", "blue"], ["ball", "key"]])
    rebuilt = spaces.build(spaces.describe(space))
    assert type(rebuilt) is mission.MissionSpace
    assert rebuilt == space and space == rebuilt
    plain = mission.MissionSpace(lambda: "get to the goal")
    assert spaces.build(spaces.describe(plain)) == plain
