"""dm_env_rpc wire compatibility, both directions.

* relay's server (``?codec=dm_env_rpc``) against dm_env_rpc's own compliance
  suite (all five classes), dm_env's ``EnvironmentTestMixin`` on a stock
  ``DmEnvAdaptor``, bad input from a stock client, several clients, a killed
  client;
* relay's Gymnasium client against a stock server written with dm_env_rpc's
  own modules only (:mod:`relay_bench.peers.dm_env_rpc_reference`).

The compliance module is imported, not its classes, so pytest does not
collect the abstract bases themselves.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import dm_env
import grpc
import gymnasium as gym
import gymnasium.spaces as gs
import numpy as np
import pytest
from absl.testing import absltest
from dm_env import test_utils as dm_env_test_utils
from dm_env_rpc.v1 import (
    compliance,
    connection,
    dm_env_adaptor,
    error,
    tensor_spec_utils,
    tensor_utils,
)
from dm_env_rpc.v1 import dm_env_rpc_pb2 as pb
from google.protobuf import any_pb2
from google.rpc import code_pb2

import relay
from relay.core.errors import ConfigError
from relay.server import gymnasium_factory
from relay.testing import check_env_as_local
from relay_bench import envs  # noqa: F401  (registers relay-bench/FixedObs-v0)
from relay_bench.peers import dm_env_rpc_reference as reference

# -- environments -------------------------------------------------------------------------


class MixedEnv(gym.Env):
    """Every leaf space kind, nested in Dict and Tuple, with deterministic dynamics."""

    observation_space = gs.Dict({
        "pos": gs.Box(-10.0, 10.0, (3,), np.float64),
        "count": gs.Discrete(30),
        "grid": gs.Box(0, 255, (2, 2), np.uint8),
        "flags": gs.MultiBinary(3),
        "arm": gs.Tuple((gs.Box(-np.inf, np.inf, (), np.float32), gs.MultiDiscrete([3, 4]))),
        "small": gs.Box(-5, 5, (2,), np.int16),
    })
    action_space = gs.Dict({
        "move": gs.Discrete(3, start=-1),
        "force": gs.Box(-1.0, 1.0, (2,), np.float32),
        "buttons": gs.MultiBinary(2),
    })

    def __init__(self, length: int = 20) -> None:
        self.length = length
        self.t = 0
        self.pos = np.zeros(3)

    def _obs(self) -> dict[str, Any]:
        return {
            "pos": self.pos.copy(),
            "count": np.int64(self.t),
            "grid": np.full((2, 2), self.t * 7 % 256, np.uint8),
            "flags": np.array([self.t % 2, 1, 0], np.int8),
            "arm": (np.array(self.t * 0.5, np.float32), np.array([self.t % 3, 3], np.int64)),
            "small": np.array([-(self.t % 5), self.t % 5], np.int16),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.pos = self.np_random.uniform(-1, 1, 3) if options is None else np.full(
            3, float(options.get("start", 0.0)))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + float(action["move"]) * 0.1
                           + float(action["force"].sum()) * 0.01
                           + float(action["buttons"].sum()) * 0.001, -10, 10)
        return self._obs(), float(action["move"]), False, self.t >= self.length, {}


class AllTypesEnv(gym.Env):
    """The payload types MixedEnv lacks: uint32, uint64, bool and string tensors."""

    observation_space = gs.Dict({
        "u32": gs.Box(0, 10, (2,), np.uint32),
        "u64": gs.Box(0, 2**40, (), np.uint64),
        "flag": gs.Box(0, 1, (3,), np.bool_),
        "name": gs.Text(8, min_length=0, charset="abcxyz"),
    })
    action_space = gs.Dict({
        "on": gs.Box(0, 1, (2,), np.bool_),
        "word": gs.Text(4, min_length=0, charset="xyz"),
        "n": gs.Box(0, 100, (1,), np.uint32),
    })

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.last = {"on": np.zeros(2, bool), "word": "", "n": np.zeros(1, np.uint32)}
        return self._obs(), {}

    def _obs(self):
        n = int(self.last["n"][0])
        return {"u32": np.array([n % 11, 3], np.uint32), "u64": np.uint64(2**40 - n),
                "flag": np.array([*self.last["on"], True]), "name": "ab" + self.last["word"]}

    def step(self, action):
        self.last = action
        return self._obs(), 0.5, False, False, {}


class SlowEnv(MixedEnv):
    """Steps take ``delay`` seconds (a deadline test)."""

    def __init__(self, delay: float = 1.0) -> None:
        super().__init__()
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


CLOSED: list[str] = []


class TrackedEnv(MixedEnv):
    """Records its close (the killed-client test)."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(length=10**9)
        self.tag = tag

    def close(self) -> None:
        CLOSED.append(self.tag)


_ANY = gymnasium_factory(None)


def factory(env_id: str | None, **kwargs: Any) -> gym.Env:
    """Any Gymnasium id, plus the test envs above by class name."""
    test_envs = {"Mixed": MixedEnv, "AllTypes": AllTypesEnv, "Slow": SlowEnv,
                 "Tracked": TrackedEnv}
    if env_id in test_envs:
        return test_envs[env_id](**kwargs)
    if env_id is None:
        raise ConfigError("setting env_id is required")
    return _ANY(env_id, **kwargs)


@pytest.fixture(scope="module")
def server():
    with relay.serve(factory, "grpc://127.0.0.1:0?codec=dm_env_rpc") as srv:
        yield srv


def _target(srv) -> str:
    return f"{srv.address.host}:{srv.address.port}"


def _connect(srv) -> connection.Connection:
    return connection.Connection(grpc.insecure_channel(_target(srv)))


def _pack(value: Any, dtype: Any = None) -> pb.Tensor:
    return tensor_utils.pack_tensor(value, dtype=dtype)


def _valid_actions(specs: pb.ActionObservationSpecs) -> dict[int, pb.Tensor]:
    """A valid tensor (the minimum, False, "") for every action of ``specs``."""
    out = {}
    for uid, spec in specs.actions.items():
        if spec.dtype in (pb.DataType.BOOL, pb.DataType.STRING):
            value = tensor_utils.data_type_to_np_type(spec.dtype).type()
            out[uid] = _pack(np.full(tuple(spec.shape), value), dtype=spec.dtype)
            continue
        low = tensor_spec_utils.bounds(spec).min
        out[uid] = _pack(np.broadcast_to(low, tuple(spec.shape)), dtype=spec.dtype)
    return out


@pytest.fixture(scope="class")
def class_server(request, server):
    request.cls.relay_server = server


class _Stock:
    """A stock dm_env_rpc connection per test (``self.stock``)."""

    relay_server: Any
    env_id = "CartPole-v1"

    def setUp(self) -> None:
        super().setUp()
        self.channel = grpc.insecure_channel(_target(self.relay_server))
        self.stock = connection.Connection(self.channel)

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            self.stock.close()
            self.channel.close()

    @property
    def connection(self) -> connection.Connection:
        return self.stock

    def _create(self) -> str:
        return self.stock.send(pb.CreateWorldRequest(
            settings={"env_id": _pack(self.env_id)})).world_name


# -- dm_env_rpc's compliance suite against relay's server -----------------------------------


@pytest.mark.usefixtures("class_server")
class TestCreateDestroyWorld(_Stock, compliance.CreateDestroyWorld):
    required_world_settings = {"env_id": _pack("CartPole-v1")}
    invalid_world_settings = {"no_such_kwarg": _pack(1), "seed": _pack("abc")}
    has_multiple_world_support = True

    def test_invalid_env_id_alone(self):  # required settings override env_id above
        with self.assertRaises(error.DmEnvRpcError):
            self.create_world({"env_id": _pack("NoSuchEnv-v9")})


@pytest.mark.usefixtures("class_server")
class TestJoinLeaveWorld(_Stock, compliance.JoinLeaveWorld):
    invalid_join_settings = {"unknown": _pack(1)}

    def setUp(self) -> None:
        super().setUp()
        self._world = self._create()

    def tearDown(self) -> None:
        super().tearDown()

    @property
    def world_name(self) -> str:
        return self._world


class TestJoinLeaveWorldMixed(TestJoinLeaveWorld):
    env_id = "Mixed"


@pytest.mark.usefixtures("class_server")
class TestReset(_Stock, compliance.Reset):
    def setUp(self) -> None:
        super().setUp()
        self._world = self._create()

    def join_world(self):
        return self.stock.send(pb.JoinWorldRequest(world_name=self._world)).specs


@pytest.mark.usefixtures("class_server")
class TestResetWorld(_Stock, compliance.ResetWorld):
    def setUp(self) -> None:
        super().setUp()
        self._world = self._create()

    @property
    def world_name(self) -> str:
        return self._world


@pytest.mark.usefixtures("class_server")
class TestStep(_Stock, compliance.Step):
    def setUp(self) -> None:
        super().setUp()
        world = self._create()
        self._specs = self.stock.send(pb.JoinWorldRequest(world_name=world)).specs

    @property
    def specs(self):
        return self._specs

    @property
    def required_actions(self):
        return _valid_actions(self._specs)


class TestStepMountainCar(TestStep):
    env_id = "MountainCarContinuous-v0"


class TestStepMixed(TestStep):
    env_id = "Mixed"


class TestStepAllTypes(TestStep):
    env_id = "AllTypes"


# -- dm_env's test mixin on a stock DmEnvAdaptor --------------------------------------------


@pytest.mark.usefixtures("class_server")
class TestStockAdaptor(dm_env_test_utils.EnvironmentTestMixin, absltest.TestCase):
    env_id = "CartPole-v1"
    relay_server: Any

    def make_object_under_test(self):
        self.stock = _connect(self.relay_server)
        env, _ = dm_env_adaptor.create_and_join_world(self.stock, {"env_id": self.env_id}, {})
        return env

    def tearDown(self) -> None:
        super().tearDown()
        self.stock.close()


class TestStockAdaptorMountainCar(TestStockAdaptor):
    env_id = "MountainCarContinuous-v0"


class TestStockAdaptorMixed(TestStockAdaptor):
    env_id = "Mixed"


class TestStockAdaptorAllTypes(TestStockAdaptor):
    env_id = "AllTypes"


class TestJoinLeaveWorldAllTypes(TestJoinLeaveWorld):
    env_id = "AllTypes"


# -- a dm_env environment (bsuite) served by relay to stock dm_env_rpc clients ----------------


def _bsuite(env_id: str | None = None, seed: int = 0, **kwargs: Any) -> dm_env.Environment:
    """bsuite's Catch (a dm_env), seedable (``bsuite.load_from_id`` is not)."""
    from bsuite.environments import catch

    return catch.Catch(seed=seed, **kwargs)


@pytest.fixture(scope="module")
def dm_server():
    pytest.importorskip("bsuite")
    with relay.serve(_bsuite, "grpc://127.0.0.1:0?codec=dm_env_rpc") as srv:
        yield srv


@pytest.fixture(scope="class")
def class_dm_server(request, dm_server):
    request.cls.relay_server = dm_server


@pytest.mark.usefixtures("class_dm_server")
class TestStockAdaptorBsuiteCatch(TestStockAdaptor):
    env_id = "catch/0"


@pytest.mark.usefixtures("class_dm_server")
class TestStepBsuiteCatch(TestStep):
    env_id = "catch/0"


def test_bsuite_episode_through_dm_env_rpc_equals_local(dm_server):
    stock = _connect(dm_server)
    env, _ = dm_env_adaptor.create_and_join_world(stock, {"seed": 3, "rows": 6}, {})
    local = _bsuite(seed=3, rows=6)
    try:
        ts, want = env.reset(), local.reset()
        np.testing.assert_array_equal(ts.observation["observation"], want.observation)
        while not want.last():
            ts, want = env.step({"action": np.int64(2)}), local.step(2)
            np.testing.assert_array_equal(ts.observation["observation"], want.observation)
            assert ts.step_type == want.step_type and ts.reward == want.reward
        assert ts.discount == want.discount == 0.0
    finally:
        env.close()
        stock.close()


@pytest.mark.slow
def test_dm_control_cartpole_for_a_stock_client():
    suite = pytest.importorskip("dm_control.suite")

    def cartpole(env_id: str | None = None, seed: int | None = None) -> dm_env.Environment:
        return suite.load("cartpole", "swingup", task_kwargs={"random": seed})

    with relay.serve(cartpole, "grpc://127.0.0.1:0?codec=dm_env_rpc") as srv:
        stock = _connect(srv)
        env, _ = dm_env_adaptor.create_and_join_world(stock, {"seed": 1}, {})
        local = cartpole(seed=1)
        try:
            assert env.observation_spec()["position"].shape == (3,)
            assert env.action_spec()["action"].dtype == np.float64
            ts, want = env.reset(), local.reset()
            np.testing.assert_array_equal(ts.observation["position"], want.observation["position"])
            for _ in range(20):
                action = np.array([0.3])
                ts, want = env.step({"action": action}), local.step(action)
                np.testing.assert_array_equal(ts.observation["velocity"],
                                              want.observation["velocity"])
                assert ts.reward == pytest.approx(want.reward)
        finally:
            env.close()
            stock.close()


class Screen(gym.Env):
    """A ``height`` x ``width`` picture; ``level`` is its pixel value (dm_alchemy's
    connect code creates a world with settings, then joins it with width and height)."""

    MADE: list[dict[str, Any]] = []

    def __init__(self, level: int = 0, width: int = 2, height: int = 2) -> None:
        Screen.MADE.append({"level": level, "width": width, "height": height})
        self.observation_space = gs.Box(0, 255, (height, width), np.uint8)
        self.action_space = gs.Discrete(2)
        self._frame = np.full((height, width), level, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._frame, {}

    def step(self, action):
        return self._frame, 1.0, True, False, {}


def test_join_world_settings_reach_the_factory():
    with relay.serve(lambda env_id, **kwargs: Screen(**kwargs),
                     "grpc://127.0.0.1:0?codec=dm_env_rpc") as srv:
        stock = _connect(srv)
        try:
            env, world = dm_env_adaptor.create_and_join_world(
                stock, {"level": 7}, {"width": 4, "height": 3})
            assert Screen.MADE[-1] == {"level": 7, "width": 4, "height": 3}
            assert env.observation_spec()["observation"].shape == (3, 4)
            timestep = env.reset()
            np.testing.assert_array_equal(timestep.observation["observation"],
                                          np.full((3, 4), 7, np.uint8))
            assert env.step({"action": 1}).last()
            env.close()  # leaves the world; joining again without settings: CreateWorld's only
            env = dm_env_adaptor.join_world(stock, world, {})
            assert Screen.MADE[-1] == {"level": 7, "width": 2, "height": 2}
            assert env.reset().observation["observation"].shape == (2, 2)
            env.close()
            with pytest.raises(error.DmEnvRpcError, match="no_such_setting"):
                dm_env_adaptor.join_world(stock, world, {"no_such_setting": 1})
            with pytest.raises(error.DmEnvRpcError, match="belongs to CreateWorld"):
                dm_env_adaptor.join_world(stock, world, {"env_id": "CartPole-v1"})
        finally:
            stock.close()


def test_relay_dm_env_client_over_dm_env_rpc(dm_server):
    env = relay.make_dm_env(dm_server.address, "catch/0")
    local = _bsuite(seed=4)
    try:
        assert env.action_spec() == local.action_spec()
        ts, want = env.reset(seed=4), local.reset()
        assert ts.first() and ts.reward is None and ts.discount is None
        while not want.last():
            ts, want = env.step(np.int64(0)), local.step(0)
            np.testing.assert_array_equal(ts.observation, want.observation)
        assert ts.last() and ts.discount == 0.0 and ts.reward == want.reward
    finally:
        env.close()


# -- relay's server with stock clients: specs, episodes, errors, many clients -----------------


def test_specs_of_a_mixed_env(server):
    stock = _connect(server)
    env, _ = dm_env_adaptor.create_and_join_world(stock, {"env_id": "Mixed"}, {})
    try:
        obs_spec = env.observation_spec()
        assert obs_spec["pos"] == dm_env.specs.BoundedArray((3,), np.float64, -10.0, 10.0, "pos")
        assert obs_spec["count"] == dm_env.specs.DiscreteArray(30, np.int64, name="count")
        assert obs_spec["grid"].dtype == np.uint8 and obs_spec["grid"].shape == (2, 2)
        assert obs_spec["small"].dtype == np.int32  # int16 widened (no INT16 in the protocol)
        assert obs_spec["arm"]["1"].maximum.tolist() == [2, 3]  # MultiDiscrete per element
        assert "reward" not in obs_spec and env.reward_spec().dtype == np.float64
        act = env.action_spec()
        assert act["move"].minimum == -1 and act["move"].maximum == 1
        assert act["force"].dtype == np.float32 and act["buttons"].dtype == np.int8
        first = env.reset()
        assert first.first() and first.reward is None and first.discount is None
        ts = env.step({"move": np.int64(1), "force": np.zeros(2, np.float32),
                       "buttons": np.array([1, 0], np.int8)})
        assert ts.mid() and ts.reward == 1.0 and ts.discount == 1.0
        assert ts.observation["count"] == 1 and ts.observation["arm"]["0"] == np.float32(0.5)
        assert ts.observation["small"].tolist() == [-1, 1]
    finally:
        env.close()
        stock.close()


def test_episode_matches_local_env_and_ends_with_the_right_state(server):
    stock = _connect(server)
    env, world = dm_env_adaptor.create_and_join_world(
        stock, {"env_id": "CartPole-v1", "seed": 5}, {})
    local = gym.make("CartPole-v1")
    obs, _ = local.reset(seed=5)
    try:
        ts = env.reset()
        np.testing.assert_array_equal(ts.observation["observation"], obs)
        for _ in range(500):
            ts = env.step({"action": np.int64(1)})
            obs, reward, terminated, truncated, _ = local.step(1)
            np.testing.assert_array_equal(ts.observation["observation"], obs)
            if ts.last():
                assert terminated and ts.discount == 0.0 and ts.reward == reward
                break
        else:
            pytest.fail("no episode end")
        # the next step starts a new episode with its actions ignored (protocol rule)
        assert env.step({"action": np.int64(1)}).first()
    finally:
        env.close()
        stock.send(pb.DestroyWorldRequest(world_name=world))
        stock.close()


def test_truncation_is_interrupted_and_reset_settings_reach_the_env(server):
    stock = _connect(server)
    env, _ = dm_env_adaptor.create_and_join_world(stock, {"env_id": "Mixed", "length": 3}, {})
    try:
        stock.send(pb.ResetRequest(settings={"start": _pack(2.5)}))  # -> reset options
        first = env.step({})
        assert first.first() and first.observation["pos"].tolist() == [2.5, 2.5, 2.5]
        action = {"move": np.int64(0), "force": np.zeros(2, np.float32),
                  "buttons": np.zeros(2, np.int8)}
        states = [env.step(action) for _ in range(3)]
        assert [s.step_type for s in states] == [dm_env.StepType.MID, dm_env.StepType.MID,
                                                 dm_env.StepType.LAST]
        assert states[-1].discount == 1.0  # INTERRUPTED: truncated, not terminated
    finally:
        env.close()
        stock.close()


def _status(call) -> Any:
    with pytest.raises(error.DmEnvRpcError) as caught:
        call()
    return caught.value


def test_bad_requests_get_a_status_and_the_stream_goes_on(server):
    stock = _connect(server)
    try:
        step = pb.StepRequest(actions={1: _pack(0, np.int64)}, requested_observations=[1])
        status = _status(lambda: stock.send(step))
        assert status.code == code_pb2.FAILED_PRECONDITION and "JoinWorld" in status.message
        status = _status(lambda: stock.send(pb.JoinWorldRequest(world_name="nope")))
        assert status.code == code_pb2.NOT_FOUND
        extension = any_pb2.Any()
        extension.Pack(pb.StepRequest())
        assert _status(lambda: stock.send(extension)).code == code_pb2.UNIMPLEMENTED

        world = stock.send(pb.CreateWorldRequest(
            settings={"env_id": _pack("CartPole-v1")})).world_name
        specs = stock.send(pb.JoinWorldRequest(world_name=world)).specs
        assert stock.send(step).state == pb.EnvironmentStateType.RUNNING  # first: ignored
        bad = {
            "unknown action uid": {99: _pack(0, np.int64)},
            "wrong dtype": {1: _pack(0.0, np.float64)},
            "out of bounds": {1: _pack(2, np.int64)},
            "below bounds": {1: _pack(-1, np.int64)},
            "wrong shape": {1: _pack([0, 1], np.int64)},
            "missing action": {},
        }
        for what, actions in bad.items():
            status = _status(lambda a=actions: stock.send(pb.StepRequest(
                actions=a, requested_observations=[1])))
            assert status.code == code_pb2.INVALID_ARGUMENT, what
        status = _status(lambda: stock.send(pb.StepRequest(
            actions={1: _pack(0, np.int64)}, requested_observations=[7])))
        assert "7" in status.message
        assert _status(lambda: stock.send(pb.DestroyWorldRequest(
            world_name=world))).code == code_pb2.FAILED_PRECONDITION
        # after all that, the env steps normally
        response = stock.send(step)
        assert response.state == pb.EnvironmentStateType.RUNNING
        assert list(response.observations) == [1] and specs.observations[1].name == "observation"
    finally:
        stock.close()


def test_undecodable_bytes_end_only_that_stream(server):
    channel = grpc.insecure_channel(_target(server))
    try:
        process = channel.stream_stream("/dm_env_rpc.v1.Environment/Process")
        with pytest.raises(grpc.RpcError) as caught:
            list(process(iter([b"\xff\xff\xff not a protobuf"]), timeout=5))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    finally:
        channel.close()
    env = relay.make(str(server.address), "CartPole-v1")
    try:
        env.reset(seed=0)
        assert env.step(0)[1] == 1.0
    finally:
        env.close()


def test_an_answer_over_max_message_size_is_an_error_status():
    url = "grpc://127.0.0.1:0?codec=dm_env_rpc&max_message_size=100000"
    with relay.serve(factory, url) as srv:
        stock = _connect(srv)
        try:
            world = stock.send(pb.CreateWorldRequest(settings={
                "env_id": _pack("relay-bench/FixedObs-v0"), "shape": _pack([400, 400]),
                "dtype": _pack("uint8")})).world_name
            stock.send(pb.JoinWorldRequest(world_name=world))
            status = _status(lambda: stock.send(pb.StepRequest(requested_observations=[1])))
            assert status.code == code_pb2.RESOURCE_EXHAUSTED and "max_message_size" in str(status)
            # the stream goes on (that step happened: only its observation was too large)
            step = pb.StepRequest(actions={1: _pack(1, np.int64)})
            assert stock.send(step).state == pb.EnvironmentStateType.RUNNING
        finally:
            stock.close()


def test_env_errors_carry_the_server_traceback(server):
    from google.rpc import error_details_pb2

    stock = _connect(server)
    try:
        status = _status(lambda: stock.send(pb.CreateWorldRequest(settings={
            "env_id": _pack("Mixed"), "length": _pack("x"), "bogus": _pack(1)})))
        assert status.code == code_pb2.INVALID_ARGUMENT and "bogus" in status.message
        info = error_details_pb2.DebugInfo()
        assert status.details[0].Unpack(info) and "Traceback" in info.stack_entries[0]
    finally:
        stock.close()


def test_several_stock_clients_each_with_its_own_env(server):
    results: dict[int, Any] = {}

    def run(seed: int) -> None:
        stock = _connect(server)
        env, _ = dm_env_adaptor.create_and_join_world(
            stock, {"env_id": "CartPole-v1", "seed": seed}, {})
        local = gym.make("CartPole-v1")
        obs, _ = local.reset(seed=seed)
        ok = np.array_equal(env.reset().observation["observation"], obs)
        for t in range(40):
            ts = env.step({"action": np.int64(t % 2)})
            obs, _, terminated, truncated, _ = local.step(t % 2)
            ok = ok and np.array_equal(ts.observation["observation"], obs)
            ok = ok and ts.last() == (terminated or truncated)
            if ts.last():
                break
        env.close()
        stock.close()
        results[seed] = ok

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {0: True, 1: True, 2: True, 3: True}


KILLED_CLIENT = """
import sys, grpc, numpy as np
from dm_env_rpc.v1 import connection, dm_env_adaptor
conn = connection.Connection(grpc.insecure_channel(sys.argv[1]))
env, _ = dm_env_adaptor.create_and_join_world(conn, {"env_id": "Tracked", "tag": "killed"}, {})
env.reset()
action = {"move": np.int64(1), "force": np.zeros(2, np.float32), "buttons": np.zeros(2, np.int8)}
print("stepping", flush=True)
while True:
    env.step(action)
"""


def test_a_client_killed_mid_stream_does_not_disturb_another(server):
    CLOSED.clear()
    victim = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, _target(server)],
                              stdout=subprocess.PIPE, text=True)
    stock = _connect(server)
    env, _ = dm_env_adaptor.create_and_join_world(stock, {"env_id": "Tracked", "tag": "ok"}, {})
    action = {"move": np.int64(1), "force": np.zeros(2, np.float32),
              "buttons": np.zeros(2, np.int8)}
    try:
        assert victim.stdout.readline().strip() == "stepping"
        env.reset()
        for _ in range(20):
            env.step(action)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        count = 0
        deadline = time.monotonic() + 20
        while "killed" not in CLOSED and time.monotonic() < deadline:
            assert env.step(action).observation["count"] == 21 + count
            count += 1
        assert CLOSED == ["killed"]  # the dead client's env was closed, ours was not
    finally:
        victim.kill()
        env.close()
        stock.close()


def test_cli_serves_dm_env_rpc(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "CartPole-v1", "--url",
         "grpc://127.0.0.1:0?codec=dm_env_rpc"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        match = re.search(r"grpc://([\d.]+:\d+)", line)
        assert match, line
        conn = connection.create_secure_channel_and_connect(match.group(1), timeout=10)
        env, _ = dm_env_adaptor.create_and_join_world(conn, {}, {})
        assert env.reset().first() and env.step({"action": np.int64(0)}).mid()
        env.close()
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_relay_client_sees_a_killed_server_as_connection_lost():
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "CartPole-v1", "--url",
         "grpc://127.0.0.1:0?codec=dm_env_rpc"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match = re.search(r"(grpc://\S+)", proc.stderr.readline())
        assert match
        env = relay.make(match.group(1), timeout=5)
        env.reset(seed=0)
        env.step(0)
        proc.kill()
        proc.wait(10)
        started = time.monotonic()
        with pytest.raises(relay.ConnectionLost):
            env.step(0)
        assert time.monotonic() - started < 5
        with pytest.raises(relay.ConnectionLost):  # and every later call at once
            env.step(0)
        env.close()  # no error, no hang
    finally:
        proc.kill()


# -- relay's clients against relay's dm_env_rpc server ----------------------------------------


def test_relay_client_seeded_episode_equals_local(server):
    env = relay.make(str(server.address), "MountainCarContinuous-v0")
    local = gym.make("MountainCarContinuous-v0")
    try:
        assert env.observation_space == local.observation_space
        assert env.action_space == local.action_space
        obs, _ = env.reset(seed=11)
        expected, _ = local.reset(seed=11)
        np.testing.assert_array_equal(obs, expected)
        rng = np.random.default_rng(0)
        for _ in range(50):
            action = rng.uniform(-1, 1, 1).astype(np.float32)
            got = env.step(action)
            want = local.step(action)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1:4] == pytest.approx(want[1:4])
    finally:
        env.close()


def test_relay_client_mixed_spaces_and_errors(server):
    env = relay.make(str(server.address), "Mixed", length=4)
    try:
        # a Tuple travels as names "arm.0", "arm.1": it comes back as a Dict
        assert env.observation_space["arm"] == gs.Dict({
            "0": gs.Box(-np.inf, np.inf, (), np.float32),
            "1": gs.Box(np.array([0, 0]), np.array([2, 3]), (2,), np.int64)})
        assert env.action_space["move"] == gs.Discrete(3, start=-1)
        with pytest.raises(relay.NotReset):
            env.step(env.action_space.sample())
        obs, _ = env.reset(seed=0)
        assert obs["count"] == 0 and obs["grid"].dtype == np.uint8
        bad = {"move": np.int64(1), "force": np.array([3.0, 0.0], np.float32),
               "buttons": np.zeros(2, np.int8)}
        with pytest.raises(relay.InvalidAction, match="above its maximum"):
            env.step(bad)
        with pytest.raises(relay.InvalidAction):  # caught before sending
            env.step({**bad, "force": np.zeros(3, np.float32)})
        with pytest.raises(relay.InvalidAction):
            env.step({**bad, "force": "not numbers"})
        with pytest.raises(relay.InvalidAction):
            env.step(3)
        done, steps = False, 0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            done = terminated or truncated
        assert truncated and not terminated and steps == 4 and obs["count"] == 4
    finally:
        env.close()


def test_relay_client_every_payload_type(server):
    env = relay.make(str(server.address), "AllTypes")
    try:
        assert env.observation_space["u64"] == gs.Box(0, 2**40, (), np.uint64)
        assert env.observation_space["flag"] == gs.Box(0, 1, (3,), np.bool_)
        assert isinstance(env.observation_space["name"], gs.Text)
        env.reset()
        obs, reward, *_ = env.step({"on": np.array([True, False]), "word": "xy",
                                    "n": np.array([7], np.uint32)})
        assert obs["u32"].tolist() == [7, 3] and obs["u32"].dtype == np.uint32
        assert obs["u64"] == 2**40 - 7 and obs["u64"].dtype == np.uint64
        assert obs["flag"].tolist() == [True, False, True] and obs["name"] == "abxy"
        assert reward == 0.5
    finally:
        env.close()


def test_relay_client_deadline_then_the_stream_is_still_usable(server):
    env = relay.make(str(server.address), "Slow", delay=0.5, timeout=0.2)
    try:
        env.reset(seed=0)
        action = {"move": np.int64(0), "force": np.zeros(2, np.float32),
                  "buttons": np.zeros(2, np.int8)}
        started = time.monotonic()
        with pytest.raises(relay.Timeout):
            env.step(action)
        assert time.monotonic() - started < 0.5
        env.unwrapped.connection.settings = env.unwrapped.connection.settings.replace(timeout=5)
        obs, *_ = env.step(action)  # the late answer of the first step is dropped
        assert obs["count"] == 2
    finally:
        env.close()


def test_check_env_over_dm_env_rpc(server):
    env = relay.make(str(server.address), "CartPole-v1")
    try:
        check_env_as_local(env.unwrapped, gym.make("CartPole-v1").unwrapped,
                           skip_render_check=True)
    finally:
        env.close()


def test_grpcs_for_stock_and_relay_clients(tmp_path):
    from relay.testing import make_certificate

    cert, key = make_certificate(tmp_path)
    with relay.serve("CartPole-v1", f"grpcs://127.0.0.1:0?codec=dm_env_rpc&cert={cert}&key={key}"
                     ) as srv:
        assert "key" not in srv.address.query
        stock = connection.create_secure_channel_and_connect(
            _target(srv), grpc.ssl_channel_credentials(cert.read_bytes()), timeout=10)
        env, _ = dm_env_adaptor.create_and_join_world(stock, {}, {})
        assert env.reset().first()
        env.close()
        stock.close()
        remote = relay.make(srv.address.with_options(ca=cert))
        try:
            remote.reset(seed=0)
            assert remote.step(1)[0].shape == (4,)
        finally:
            remote.close()
        with pytest.raises(relay.ConnectError):  # no trusted CA: the handshake fails
            relay.make(srv.address, connect_timeout=0.5)


def test_a_full_server_refuses_at_once_and_serves_again_when_a_client_leaves():
    with relay.serve("CartPole-v1", "grpc://127.0.0.1:0?codec=dm_env_rpc&max_clients=1") as srv:
        first = relay.make(srv.address)
        started = time.monotonic()
        with pytest.raises(relay.ConnectionLost, match="RESOURCE_EXHAUSTED"):
            relay.make(srv.address)
        assert time.monotonic() - started < 5
        first.reset(seed=0)
        first.close()
        deadline = time.monotonic() + 5
        while srv.clients and time.monotonic() < deadline:
            time.sleep(0.02)
        second = relay.make(srv.address)
        second.reset(seed=0)
        second.close()


def test_a_relay_server_does_not_negotiate_a_peer_protocol():
    from relay.connection import HANDSHAKE_CODEC, server_codecs
    from relay.core.config import Settings
    from relay.core.messages import Envelope, Hello, Welcome
    from relay.core.plugins import get_transport
    from relay.core.url import make_url

    assert server_codecs(Settings()) == ("msgpack", "json")
    with pytest.raises(relay.ConfigError, match="peer protocol"):
        server_codecs(Settings(codec="dm_env_rpc"))
    with relay.serve("CartPole-v1", "memory://no-peer-protocols") as srv:
        url = make_url(srv.address)
        settings = srv.settings
        channel = get_transport(url.scheme).connect(url, settings, timeout=5)
        try:
            channel.send(HANDSHAKE_CODEC.encode(Envelope(0, Hello(codecs=("dm_env_rpc",)))))
            answer = HANDSHAKE_CODEC.decode(channel.recv(5)).message
            assert not isinstance(answer, Welcome)
        finally:
            channel.close()


def test_unreachable_server_is_a_connect_error(free_port):
    started = time.monotonic()
    with pytest.raises(relay.ConnectError):
        relay.make(f"grpc://127.0.0.1:{free_port}?codec=dm_env_rpc", connect_timeout=0.5)
    assert time.monotonic() - started < 3


# -- relay's clients against a stock server (dm_env_rpc's modules only) -----------------------


@pytest.fixture(scope="module")
def catch_server():
    grpc_server, port = reference.start(reference.CatchService())
    yield f"grpc://127.0.0.1:{port}?codec=dm_env_rpc"
    grpc_server.stop(None)


def test_relay_gymnasium_client_drives_a_stock_server(catch_server):
    env = relay.make(catch_server, rows=6, columns=4, seed=3,
                     join_settings={"reward_scale": 2.0})
    try:
        assert env.observation_space == gs.Dict({"board": gs.Box(0.0, 1.0, (6, 4), np.float32)})
        assert env.action_space == gs.Dict({"paddle": gs.Discrete(3, start=-1, dtype=np.int8)})
        returns = []
        for _ in range(3):
            obs, _ = env.reset()
            assert obs["board"].shape == (6, 4) and obs["board"].sum() == 2.0
            done, steps = False, 0
            while not done:
                obs, reward, terminated, truncated, _ = env.step({"paddle": np.int8(0)})
                steps += 1
                done = terminated or truncated
            assert terminated and steps == 5 and reward in (-2.0, 2.0)  # reward_scale 2
            returns.append(reward)
        check_env_as_local(env.unwrapped, None, skip_render_check=True)
    finally:
        env.close()


def test_stock_server_settings_errors_are_remote_errors(catch_server):
    with pytest.raises(relay.RemoteError, match="unknown settings"):
        relay.make(catch_server, colour="red")
    with pytest.raises(relay.RemoteError, match="unknown settings"):
        relay.make(catch_server, join_settings={"team": "blue"})
    env = relay.make(catch_server)  # the stream of a failed join was cleaned up
    try:
        env.reset()
        with pytest.raises(relay.InvalidAction):
            env.step({"paddle": np.int8(5)})
    finally:
        env.close()


def test_relay_dm_env_client_drives_a_stock_server(catch_server):
    env = relay.make_dm_env(catch_server, rows=5, columns=5)
    try:
        ts = env.reset()
        assert ts.first() and ts.reward is None and ts.discount is None
        while not ts.last():
            ts = env.step({"paddle": np.int8(1)})
        assert ts.discount == 0.0 and ts.reward in (-1.0, 1.0)
    finally:
        env.close()


if __name__ == "__main__":  # the compliance classes also run under absltest (needs pytest fixtures)
    raise SystemExit(pytest.main([__file__, "-q"]))
