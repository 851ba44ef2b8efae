"""The fuzzer of both codecs and of the server handshake, run by test_fuzz.py in a
child process (``python fuzz_peer.py [SCALE]``), so that a crash (a segfault, a
stack overflow) fails that test instead of killing pytest.

Each property is a Hypothesis test run with a fixed seed (``derandomize``) and
a bounded number of examples, except the bulk of mutated frames, which a
seeded mutator makes (Hypothesis costs a few ms per input); ``SCALE`` (default
1.0) multiplies the counts.  A property that fails prints Hypothesis' falsifying
example (or the traceback) and exits non-zero; at the end the child prints
``fuzzed N inputs``.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_codecs import same  # this file's directory is on sys.path

import relay
from relay.codecs.base import NESTING_LIMIT, envelope_to_parts
from relay.codecs.json import JsonCodec
from relay.codecs.msgpack import MsgpackCodec
from relay.connection import HANDSHAKE_CODEC, answer_hello
from relay.core.config import resolve_settings
from relay.core.errors import CodecError, ConnectionLost
from relay.core.messages import Envelope, Error, Hello, Observation, Step, Welcome
from relay.core.plugins import get_transport
from relay.core.session import ServerSession

CODECS = (MsgpackCodec(), JsonCodec())
SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
count = 0


def fuzz(examples: int) -> Any:
    """``settings`` for a property: ``examples`` inputs (times SCALE), fixed seed."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True,
                    database=None, deadline=None, suppress_health_check=list(HealthCheck))


def decodes_or_codec_error(codec: Any, frames: list[Any]) -> Envelope | None:
    """The one property of every decode: a message, or CodecError and nothing else."""
    global count
    count += 1
    try:
        return codec.decode(frames)  # type: ignore[no-any-return]
    except CodecError:
        return None


# -- values ---------------------------------------------------------------------------

DTYPES = st.sampled_from(["bool", "int8", "uint16", "int64", "float16", "float32", "float64",
                          "complex64", ">f4", "<U3", "S2"])
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.text(max_size=20), st.binary(max_size=20),
    hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
    hnp.from_dtype(np.dtype("float64")).map(np.float64),
    hnp.from_dtype(np.dtype("int32")).map(np.int32),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.dictionaries(st.integers(-5, 5) | st.tuples(st.integers(-9, 9)), inner, max_size=3),
    ),
    max_leaves=20,
)
messages = st.one_of(
    st.builds(lambda v, i: Envelope(7, Observation(obs=v, info={"i": i})), values, values),
    st.builds(lambda v: Envelope(3, Step(instance=1, action=v)), values),
)


@fuzz(1000)
@given(messages)
def values_round_trip(envelope: Envelope) -> None:
    for codec in CODECS:
        decoded = decodes_or_codec_error(codec, codec.encode(envelope))
        assert decoded is not None, envelope
        assert same(envelope_to_parts(decoded), envelope_to_parts(envelope)), decoded


# -- random and mutated frames --------------------------------------------------------

@fuzz(2000)
@given(st.lists(st.binary(max_size=300), max_size=3))
def random_frames(frames: list[bytes]) -> None:
    for codec in CODECS:
        decodes_or_codec_error(codec, frames)


def corpus() -> list[tuple[int, list[bytes]]]:
    """Valid messages of every kind relay sends, encoded by each codec: what the
    seeded mutator starts from."""
    import gymnasium as gym
    from gymnasium.spaces import GraphInstance

    from relay.codecs.base import object_array
    from relay.core import spaces
    from relay.core.messages import Hello, Made, Transition

    space = gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (3, 2)), "b": gym.spaces.Discrete(4),
                             "c": gym.spaces.Tuple((gym.spaces.MultiBinary(3),))})
    envelopes = [
        Envelope(0, Hello(codecs=("msgpack", "json"), token="s3cret")),
        Envelope(1, Made(instance=1, observation_space=spaces.describe(space),
                         action_space=spaces.describe(gym.spaces.Discrete(2)),
                         metadata={"render_fps": 50}, spec=None)),
        Envelope(2, Transition(obs=np.arange(4, dtype=np.float32), reward=np.float64(1.5),
                               terminated=False, truncated=True, info={"k": (1, [2.0])})),
        Envelope(3, Observation(obs=np.zeros((40, 40), np.uint8), info={
            "g": GraphInstance(np.zeros((2, 1)), None, np.zeros((1, 2), np.int64)),
            "o": object_array([2], [np.ones(2), None]), (1, 2): b"\x00\xff", "f": float("nan"),
            "deep": [[[{"x": ("y", np.int8(3))}]]]})),
        Envelope(4, Step(instance=1, action=np.array([0.5, -1], np.float64))),
    ]
    return [(which, [bytes(f) for f in codec.encode(envelope)])
            for envelope in envelopes for which, codec in enumerate(CODECS)]


def mutated_frames(inputs: int) -> None:
    """A seeded mutation fuzzer (cheaper per input than Hypothesis): bytes of valid
    messages flipped, inserted, cut, truncated, frames dropped or added."""
    import random

    rng = random.Random(0)
    seeds = corpus()
    for _ in range(max(1, int(inputs * SCALE))):
        which, frames = rng.choice(seeds)
        frames = list(frames)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(frames))
            frame = frames[i]
            at = rng.randint(0, len(frame))
            match rng.choice(["flip", "insert", "cut", "truncate", "drop", "add", "huge"]):
                case "flip" if frame:
                    at = min(at, len(frame) - 1)
                    frame = frame[:at] + bytes([frame[at] ^ rng.randint(1, 255)]) + \
                        frame[at + 1:]
                case "insert":
                    frame = frame[:at] + rng.randbytes(rng.randint(1, 8)) + frame[at:]
                case "cut":
                    frame = frame[:at] + frame[at + rng.randint(1, 16):]
                case "truncate":
                    frame = frame[:at]
                case "drop" if len(frames) > 1:
                    del frames[i]
                    continue
                case "add":
                    frames.append(rng.randbytes(rng.randint(0, 64)))
                case "huge":  # a length field (msgpack) or a number (JSON) made huge
                    frame = frame[:at] + rng.choice([b"\xdd\xff\xff\xff\xff",
                                                     b"\xc6\x7f\xff\xff\xff",
                                                     b"99999999999999999999"]) + frame[at:]
            frames[i] = frame
        decodes_or_codec_error(CODECS[which], frames)


# -- deep nesting and huge declared lengths --------------------------------------------

def msgpack_nested(kind: str, levels: int) -> bytes:
    """A msgpack observation ``levels`` containers deep (the body not counted)."""
    payload = msgpack.packb(0)
    for _ in range(levels):
        match kind:
            case "tuple":
                payload = msgpack.packb(msgpack.ExtType(3, b"\x91" + payload))
            case "objects":
                payload = msgpack.packb(msgpack.ExtType(5, b"\x92\x91\x01\x91" + payload))
            case "list":
                payload = b"\x91" + payload
            case "map":
                payload = b"\x81\xa1k" + payload
    return b"\x93\x01\xabobservation\x82\xa4info\x80\xa3obs" + payload


def json_nested(kind: str, levels: int) -> bytes:
    open_, close = {"list": (b"[", b"]"), "tuple": (b'{"$tuple":[', b"]}"),
                    "map": (b'{"k":', b"}"), "objects": (b'{"$objects":[[1],[', b"]]}")}[kind]
    return (b'{"id":1,"tag":"observation","body":{"info":{},"obs":' + open_ * levels + b"0"
            + close * levels + b"}}")


@fuzz(400)
@given(st.sampled_from(["tuple", "objects", "list", "map"]),
       st.integers(0, 3 * NESTING_LIMIT) | st.integers(0, 3000), st.integers(0, 1))
def deep_nesting(kind: str, levels: int, which: int) -> None:
    frame = (msgpack_nested, json_nested)[which](kind, levels)
    decoded = decodes_or_codec_error(CODECS[which], [frame])
    assert (decoded is not None) == (levels + 1 <= NESTING_LIMIT), (kind, levels, which)


HUGE = st.sampled_from([2**16 - 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1])


@fuzz(400)
@given(st.sampled_from(["array32", "map32", "bin32", "str32", "ext32", "ndarray", "objects",
                        "json ndarray", "json objects", "json bytes"]), HUGE)
def huge_declared_lengths(kind: str, size: int) -> None:
    n32 = struct.pack(">I", size & 0xFFFFFFFF)
    obs = {
        "array32": b"\xdd" + n32, "map32": b"\xdf" + n32, "bin32": b"\xc6" + n32 + b"x",
        "str32": b"\xdb" + n32 + b"x", "ext32": b"\xc9" + n32 + b"\x03",
        "ndarray": msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [size, size], b""]))),
        "objects": msgpack.packb(msgpack.ExtType(5, msgpack.packb([[size], []]))),
    }.get(kind)
    if obs is not None:
        frame = b"\x93\x01\xabobservation\x82\xa4info\x80\xa3obs" + obs
        assert decodes_or_codec_error(CODECS[0], [frame]) is None
        return
    tree = {"json ndarray": f'{{"$ndarray":["<f8",[{size},{size}],""]}}',
            "json objects": f'{{"$objects":[[{size}],[]]}}',
            "json bytes": f'{{"$bytes":"{"A" * (size % 1000)}"}}'}[kind]
    frame = ('{"id":1,"tag":"observation","body":{"info":{},"obs":' + tree + "}}").encode()
    decodes_or_codec_error(CODECS[1], [frame])


# -- the server handshake --------------------------------------------------------------

hello_fields = st.fixed_dictionaries({}, optional={
    "protocol": st.one_of(st.just("relay/1"), st.text(max_size=10), values),
    "codecs": st.one_of(st.lists(st.sampled_from(["msgpack", "json", "bson"]), max_size=3),
                        values),
    "role": st.one_of(st.just("agent"), values),
    "token": st.one_of(st.none(), st.just("s3cret"), values),
})


@st.composite
def hello_frames(draw: Any) -> list[bytes]:
    envelope = Envelope(draw(st.integers(0, 2)), Hello(**draw(hello_fields)))
    try:
        frames = [bytes(f) for f in HANDSHAKE_CODEC.encode(envelope)]
    except CodecError:
        frames = [b"{}"]
    if draw(st.booleans()):  # mutate the JSON text
        text = frames[0]
        at = draw(st.integers(0, len(text)))
        frames[0] = text[:at] + draw(st.binary(max_size=4)) + text[at + draw(st.integers(0, 4)):]
    return frames


@fuzz(1500)
@given(hello_frames())
def handshakes(frames: list[bytes]) -> None:
    global count
    count += 1
    answer = answer_hello(ServerSession(["msgpack", "json"], token="s3cret"), frames)
    assert isinstance(answer.message, (Welcome, Error)), answer
    HANDSHAKE_CODEC.encode(answer)  # the answer can be sent


def handshakes_over_a_server(examples: int) -> None:
    """Hellos, mutated and not, each on its own connection to a real server: each
    gets an answer (Welcome or Error) and the server keeps serving."""
    global count
    with relay.serve("CartPole-v1", "memory://fuzz", token="s3cret") as server:
        address = server.address
        transport = get_transport(address.scheme)
        channel_settings = resolve_settings(address)

        @fuzz(examples)
        @given(hello_frames())
        def one(frames: list[bytes]) -> None:
            global count
            count += 1
            channel = transport.connect(address, channel_settings, timeout=5)
            try:
                channel.send(frames)
                try:
                    message = HANDSHAKE_CODEC.decode(channel.recv(5)).message
                except ConnectionLost:
                    raise AssertionError(f"no answer to {frames!r}") from None
                assert isinstance(message, (Welcome, Error)), message
            finally:
                channel.close()

        one()
        env = relay.make(address, token="s3cret")
        env.reset(seed=0)
        env.close()


if __name__ == "__main__":
    for run in (values_round_trip, random_frames, lambda: mutated_frames(12_000), deep_nesting,
                huge_declared_lengths, handshakes, lambda: handshakes_over_a_server(300)):
        run()
    print(f"fuzzed {count} inputs", flush=True)
