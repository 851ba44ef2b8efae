"""The array rules both codecs share, at their edges: the dtype whitelist on
encode and decode, and a byte length equal to shape x itemsize, not one byte
more or less (inline, out of band, and for scalars)."""

import base64
import json

import msgpack
import numpy as np
import pytest

from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import OUT_OF_BAND_BYTES, MsgpackCodec
from relay.core.errors import CodecError
from relay.core.messages import Envelope, Observation

CODECS = [MsgpackCodec(), JsonCodec()]

STRUCTURED = np.dtype([("a", "<f4"), ("b", "<i4")])

# values whose dtype is outside the whitelist: datetime, timedelta, void, structured
REFUSED_VALUES = {
    "datetime array": np.array(["2024-01-01"], "datetime64[s]"),
    "timedelta array": np.array([5], "timedelta64[ns]"),
    "void array": np.zeros(2, "V4"),
    "structured array": np.zeros(2, STRUCTURED),
    "datetime scalar": np.datetime64("2024-01-01"),
    "timedelta scalar": np.timedelta64(5, "s"),
    "void scalar": np.zeros(1, "V4")[0],
    "structured scalar": np.zeros(1, STRUCTURED)[0],
}

# dtype texts a peer could send: the same kinds, as numpy spells them
REFUSED_DTYPE_TEXTS = ["<M8[s]", "<m8[ns]", "|V8", "<f4,<i4", "(2,)<f4"]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("value", REFUSED_VALUES.values(), ids=REFUSED_VALUES.keys())
def test_encode_refuses_dtypes_outside_the_whitelist(codec, value):
    with pytest.raises(CodecError, match="not allowed"):
        codec.encode(Envelope(1, Observation(obs=value)))


def _msgpack_message(obs, *extra_frames):
    return [msgpack.packb([1, "observation", {"obs": obs}], use_bin_type=True), *extra_frames]


def _msgpack_array(dtype, shape, data):
    return msgpack.ExtType(1, msgpack.packb([dtype, shape, data], use_bin_type=True))


def _msgpack_scalar(dtype, raw):
    return msgpack.ExtType(2, msgpack.packb([dtype, raw], use_bin_type=True))


def _json_message(obs):
    return [json.dumps({"id": 1, "tag": "observation", "body": {"obs": obs}}).encode()]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("dtype", REFUSED_DTYPE_TEXTS)
def test_msgpack_decode_refuses_dtypes_outside_the_whitelist(dtype):
    itemsize = np.dtype(dtype).itemsize
    messages = {
        "inline array": _msgpack_message(_msgpack_array(dtype, [2], b"\0" * 2 * itemsize)),
        "array frame": _msgpack_message(
            _msgpack_array(dtype, [OUT_OF_BAND_BYTES], 1), b"\0" * OUT_OF_BAND_BYTES * itemsize),
        "scalar": _msgpack_message(_msgpack_scalar(dtype, b"\0" * itemsize)),
    }
    for name, frames in messages.items():
        with pytest.raises(CodecError, match="not allowed|malformed scalar"):
            MsgpackCodec().decode(frames)
            pytest.fail(f"{name} of dtype {dtype} was decoded")


@pytest.mark.parametrize("dtype", REFUSED_DTYPE_TEXTS)
def test_json_decode_refuses_dtypes_outside_the_whitelist(dtype):
    raw = b"\0" * np.dtype(dtype).itemsize
    for obs in ({"$ndarray": [dtype, [1], _b64(raw)]}, {"$scalar": [dtype, _b64(raw)]}):
        with pytest.raises(CodecError, match="not allowed"):
            JsonCodec().decode(_json_message(obs))
            pytest.fail(f"{obs} was decoded")


@pytest.mark.parametrize("surplus", [-1, 1], ids=["one byte short", "one byte over"])
def test_msgpack_decode_needs_exactly_shape_times_itemsize(surplus):
    small = np.arange(6, dtype="<f4").tobytes()
    large = np.arange(OUT_OF_BAND_BYTES, dtype="<f4").tobytes()
    messages = {
        "inline array": _msgpack_message(
            _msgpack_array("<f4", [2, 3], small + b"\0" if surplus > 0 else small[:-1])),
        "array frame": _msgpack_message(_msgpack_array("<f4", [OUT_OF_BAND_BYTES], 1),
                                        large + b"\0" if surplus > 0 else large[:-1]),
        "scalar": _msgpack_message(_msgpack_scalar("<f4", small[:4 + surplus])),
    }
    for name, frames in messages.items():
        with pytest.raises(CodecError, match="needs|malformed scalar"):
            MsgpackCodec().decode(frames)
            pytest.fail(f"{name} with {surplus:+} byte(s) was decoded")


def test_msgpack_out_of_band_frame_with_surplus_from_a_real_message():
    codec = MsgpackCodec()
    array = np.arange(OUT_OF_BAND_BYTES, dtype=np.float64)
    frames = [bytes(f) for f in codec.encode(Envelope(1, Observation(obs=array)))]
    assert len(frames) == 2  # the array travels in a frame of its own
    assert np.array_equal(codec.decode(frames).message.obs, array)
    for zero_copy in (False, True):
        with pytest.raises(CodecError, match="needs 8192 bytes, frame has 8193"):
            codec.decode([frames[0], frames[1] + b"\0"], zero_copy=zero_copy)


@pytest.mark.parametrize("surplus", [-1, 1], ids=["one byte short", "one byte over"])
def test_json_decode_needs_exactly_shape_times_itemsize(surplus):
    raw = np.arange(6, dtype="<f4").tobytes()
    raw = raw + b"\0" if surplus > 0 else raw[:-1]
    scalar = raw[:4 + surplus]
    for obs in ({"$ndarray": ["<f4", [2, 3], _b64(raw)]}, {"$scalar": ["<f4", _b64(scalar)]}):
        with pytest.raises(CodecError, match="needs"):
            JsonCodec().decode(_json_message(obs))
            pytest.fail(f"{obs} was decoded")
