"""Both built-in codecs round-trip every value type exactly and refuse bad frames."""

import json

import msgpack
import numpy as np
import pytest
from gymnasium.spaces import GraphInstance

from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import MsgpackCodec
from relay.core.errors import CodecError
from relay.core.messages import (
    Call,
    Envelope,
    Hello,
    Make,
    Observation,
    Returned,
    Step,
    Transition,
)

CODECS = [MsgpackCodec(), JsonCodec()]

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", ">f4", "<U5", "S3"]


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and np.isnan(a):
        return np.isnan(b)
    return a == b


def round_trip(codec, value):
    envelope = Envelope(7, Observation(obs=value, info={"v": value}))
    decoded = codec.decode(codec.encode(envelope))
    assert decoded.id == 7
    return decoded.message.obs, decoded.message.info["v"]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4), (0, 5), (600, 4)])
def test_arrays_bit_identical(codec, dtype, shape):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape)
    for decoded in round_trip(codec, array):
        assert same(array, decoded)
        assert decoded.flags.writeable


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_non_contiguous_array(codec):
    array = np.arange(100, dtype=np.float32).reshape(10, 10)[:, ::3]
    obs, _ = round_trip(codec, array)
    assert np.array_equal(obs, array) and obs.dtype == array.dtype


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -3, 2**63 - 1, 1.5, float("inf"), float("-inf"), float("nan"),
        "text", "", b"\x00\xff", [1, "a"], (1, (2, 3)), (), [], {"a": 1},
        {1: "int key", "$x": "dollar key"}, np.int64(3), np.float32(0.1), np.bool_(True),
        np.uint8(255), {"nested": [(np.int32(1), np.zeros(2)), {"k": (None,)}]},
        GraphInstance(np.zeros((3, 2), np.float32), np.ones(2, np.int64),
                      np.array([[0, 1], [1, 2]], np.int64)),
        GraphInstance(np.zeros((3, 2), np.float32), None, np.zeros((0, 2), np.int64)),
    ],
    ids=repr,
)
def test_values_keep_python_type(codec, value):
    for decoded in round_trip(codec, value):
        assert same(value, decoded), (value, decoded)


def test_msgpack_large_arrays_travel_as_separate_frames_without_copy():
    codec = MsgpackCodec()
    array = np.zeros((3, 224, 224), np.uint8)
    frames = codec.encode(Envelope(1, Observation(obs=array)))
    assert len(frames) == 2
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), array)
    assert len(frames[0]) < 100


def test_msgpack_zero_copy_decode_views_the_frame():
    codec = MsgpackCodec()
    array = np.arange(1000, dtype=np.float64)
    frames = [bytes(f) for f in codec.encode(Envelope(1, Observation(obs=array)))]
    view = codec.decode(frames, zero_copy=True).message.obs
    assert np.shares_memory(view, np.frombuffer(frames[1], np.uint8))
    copy = codec.decode(frames).message.obs
    assert copy.flags.writeable and not np.shares_memory(copy, np.frombuffer(frames[1], np.uint8))


def test_json_is_plain_json_text():
    frames = JsonCodec().encode(Envelope(3, Step(instance=1, action=np.int64(1))))
    tree = json.loads(frames[0])
    assert tree["id"] == 3 and tree["tag"] == "step"
    assert tree["body"]["action"] == {"$scalar": ["<i8", "AQAAAAAAAAA="]}
    assert b"Infinity" not in JsonCodec().encode(Envelope(1, Observation(obs=float("inf"))))[0]


def test_messages_of_every_kind_round_trip():
    for codec in CODECS:
        for message in [Hello(codecs=("json", "msgpack")),
                        Transition(obs=np.ones(4, np.float32), reward=1.0, terminated=True,
                                   truncated=False, info={"discount": 0.0}),
                        Make(env_id="ALE/Pong-v5", wrappers=[
                            {"name": "AtariPreprocessing", "kwargs": {"frame_skip": 1},
                             "entry_point": "gymnasium.wrappers:AtariPreprocessing"}]),
                        Call(instance=1, name="turn", args=[np.arange(3)], kwargs={"by": 2}),
                        Call(instance=1, name="level", kind="set", args=[4], index=0),
                        Returned(value=("a", np.int16(3))), Returned(callable=True)]:
            assert same(codec.decode(codec.encode(Envelope(0, message))).message.__repr__(),
                        message.__repr__())


def _msgpack_frames(header):
    return [msgpack.packb(header, use_bin_type=True)]


def _array_ext(dtype, shape, data):
    return msgpack.ExtType(1, msgpack.packb([dtype, shape, data], use_bin_type=True))


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "no frames"),
        ([b"\xc1garbage"], "malformed"),
        (_msgpack_frames([1, "nope", {}]), "unknown message tag"),
        (_msgpack_frames([-1, "closed", {}]), "request id"),
        (_msgpack_frames([1, "reset", {"instance": 1, "colour": 2}]), "bad fields"),
        (_msgpack_frames([1, "observation", {"obs": _array_ext("O", [1], b"\0" * 8)}]),
         "not allowed"),
        (_msgpack_frames([1, "observation", {"obs": _array_ext("<f4", [10**9, 10**9],
                                                               b"\0" * 8)}]), "needs"),
        (_msgpack_frames([1, "observation", {"obs": _array_ext("<f4", [-1], b"")}]),
         "non-negative"),
        (_msgpack_frames([1, "observation", {"obs": _array_ext("<f4", [1], 5)}]), "frame 5"),
        (_msgpack_frames([1, "observation", {"obs": msgpack.ExtType(99, b"")}]), "extension"),
        (_msgpack_frames([1, "closed", {}]) + [b"extra"], "not referred"),
    ],
)
def test_msgpack_rejects_malformed_frames(frames, match):
    with pytest.raises(CodecError, match=match):
        MsgpackCodec().decode(frames)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"not json", "malformed JSON"),
        (b"[1, 2]", "keys"),
        (b'{"id": 1, "tag": "observation", "body": {"obs": {"$ndarray": ["|O", [1], ""]}}}',
         "not allowed"),
        (b'{"id": 1, "tag": "observation", "body": {"obs": {"$float": "big"}}}', "malformed"),
        (b'{"id": 1, "tag": "observation", "body": {"obs": {"$what": 1}}}', "unknown JSON tag"),
        (b'\xff\xfe', "malformed JSON"),
    ],
)
def test_json_rejects_malformed_frames(text, match):
    with pytest.raises(CodecError, match=match):
        JsonCodec().decode([text])


def test_unencodable_value_is_codec_error():
    for codec in CODECS:
        with pytest.raises(CodecError):
            codec.encode(Envelope(1, Observation(obs=object())))
        with pytest.raises(CodecError):
            codec.encode(Envelope(1, Observation(obs=np.array([object()]))))
