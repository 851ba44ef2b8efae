"""One nesting limit for every value tree, and nothing but CodecError out of decode."""

import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from relay.codecs.base import NESTING_LIMIT, check_nesting, object_array
from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import MsgpackCodec
from relay.core.errors import CodecError
from relay.core.messages import Envelope, Observation

CODECS = [MsgpackCodec(), JsonCodec()]
PEER = Path(__file__).with_name("hostile_peer.py")
LIMIT_MESSAGE = f"nesting limit of {NESTING_LIMIT} levels"


def nested(kind, levels):
    """``levels`` containers of ``kind``, one inside the other, around 0."""
    value = 0
    for _ in range(levels):
        value = {"list": lambda v: [v], "tuple": lambda v: (v,), "map": lambda v: {"k": v},
                 "int key map": lambda v: {1: v},
                 "object array": lambda v: object_array([1], [v])}[kind](value)
    return value


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("kind", ["list", "tuple", "map", "int key map", "object array"])
def test_values_up_to_the_limit_travel_deeper_ones_are_refused_on_encode(codec, kind):
    # the body is level 1, so obs may hold NESTING_LIMIT - 1 containers
    fits = nested(kind, NESTING_LIMIT - 1)
    decoded = codec.decode(codec.encode(Envelope(1, Observation(obs=fits)))).message.obs
    for _ in range(NESTING_LIMIT - 1):  # walk down both (== on object arrays is elementwise)
        assert type(decoded) is type(fits)
        fits, decoded = next(iter(fits.values() if isinstance(fits, dict) else fits)), \
            next(iter(decoded.values() if isinstance(decoded, dict) else decoded))
    assert decoded == fits == 0
    for levels in (NESTING_LIMIT, 500):  # (numpy frees object arrays recursively)
        with pytest.raises(CodecError, match=LIMIT_MESSAGE):
            codec.encode(Envelope(1, Observation(obs=nested(kind, levels))))


def msgpack_tuples(levels):
    """A msgpack observation frame: ``levels`` tuple extensions around []."""
    payload = msgpack.packb([])
    for _ in range(levels - 1):
        payload = msgpack.packb([msgpack.ExtType(3, payload)])
    return msgpack.packb([1, "observation", {"obs": msgpack.ExtType(3, payload), "info": {}}])


def msgpack_lists(levels):
    return msgpack.packb([1, "observation", {"obs": nested("list", levels), "info": {}}])


def json_frame(obs_text):
    return b'{"id":1,"tag":"observation","body":{"info":{},"obs":' + obs_text + b"}}"


@pytest.mark.parametrize(
    ("codec", "frame"),
    [
        (MsgpackCodec(), msgpack_tuples(NESTING_LIMIT)),
        (MsgpackCodec(), msgpack_lists(NESTING_LIMIT)),
        (MsgpackCodec(), msgpack_lists(1000)),
        (JsonCodec(), json_frame(b"[" * NESTING_LIMIT + b"]" * NESTING_LIMIT)),
        (JsonCodec(), json_frame(b'{"$tuple":[' * NESTING_LIMIT + b"]}" * NESTING_LIMIT)),
        (JsonCodec(), json_frame(b"[" * 900 + b"]" * 900)),
        (JsonCodec(), json_frame(b"[" * 100_000 + b"]" * 100_000)),
    ],
    ids=["msgpack tuples 64", "msgpack lists 64", "msgpack lists 1000",
         "json lists 64", "json tuples 64", "json lists 900", "json lists 100k"],
)
def test_decode_refuses_values_over_the_limit_naming_it(codec, frame):
    # (far deeper msgpack tuples are tested in a child process: they once crashed it)
    with pytest.raises(CodecError, match=LIMIT_MESSAGE):
        codec.decode([frame])


def test_decode_takes_values_at_the_limit():
    tuples, lists = (), []  # NESTING_LIMIT - 1 levels with the body's
    for _ in range(NESTING_LIMIT - 2):
        tuples, lists = (tuples,), [lists]
    assert MsgpackCodec().decode([msgpack_tuples(NESTING_LIMIT - 1)]).message.obs == tuples
    assert MsgpackCodec().decode([msgpack_lists(NESTING_LIMIT - 1)]).message.obs == \
        nested("list", NESTING_LIMIT - 1)
    text = json_frame(b"[" * (NESTING_LIMIT - 1) + b"]" * (NESTING_LIMIT - 1))
    assert JsonCodec().decode([text]).message.obs == lists


def test_check_nesting_counts_the_tree_itself_as_level_one():
    check_nesting(nested("list", NESTING_LIMIT))
    check_nesting(np.zeros((2,) * 30))  # an array is a leaf, whatever its ndim
    with pytest.raises(CodecError, match=LIMIT_MESSAGE):
        check_nesting(nested("map", NESTING_LIMIT + 1))


def test_crafted_deep_tuple_frame_does_not_crash_the_decoding_process():
    # 400 nested tuple extensions once overflowed the C stack (SIGSEGV); run in a
    # child so a crash fails this test instead of killing pytest
    child = subprocess.run([sys.executable, str(PEER), "decode"], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == f"CodecError value nested deeper than the {LIMIT_MESSAGE}"


def test_server_answers_a_too_deep_request_and_keeps_serving(listen_url):
    child = subprocess.run([sys.executable, str(PEER), listen_url], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert lines[0] == "welcome"
    if lines[1] == "lost":  # zmq may drop the answer with the connection it closes
        assert listen_url.startswith("zmq")
    else:
        assert lines[1].startswith("Error(code='protocol'") and LIMIT_MESSAGE in lines[1]
    assert lines[-1] == "served"


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([json_frame(b"1" * 5000)], "malformed JSON"),  # over Python's int digit limit
        (['{"id":1,"tag":"closed","body":{}}'], "bytes-like, got str"),
        ([None], "bytes-like, got NoneType"),
        ([json_frame(b'{"$map":[[[1],2]]}')], "malformed \\$map"),  # an unhashable key
        ([b'{"id":1,"tag":"closed","body":{"$map":[[1,2]]}}'], "bad fields"),
    ],
)
def test_json_decode_raises_only_codec_error(frames, match):
    with pytest.raises(CodecError, match=match):
        JsonCodec().decode(frames)


def test_json_keeps_numpy_float64_a_numpy_scalar():
    # np.float64 is a float subclass: it must not come back as a plain float
    for value in (np.float64(0.1), np.float64("inf"), {"r": np.float64(-2.5)}):
        decoded = JsonCodec().decode(JsonCodec().encode(Envelope(1, Observation(obs=value))))
        obs = decoded.message.obs
        got = obs["r"] if isinstance(obs, dict) else obs
        want = value["r"] if isinstance(value, dict) else value
        assert type(got) is np.float64 and got == want
