"""Stock dm_env_rpc servers, written only with dm_env_rpc's own modules.

They follow the structure of dm_env_rpc's ``examples/catch_environment.py``
(a ``dm_env_rpc_pb2_grpc.EnvironmentServicer`` whose ``Process`` loops over
the request stream, packs with ``spec_manager``/``tensor_utils``, and answers
failures with a ``google.rpc.Status``) and use nothing of relay, so relay's
dm_env_rpc client is tested and benchmarked against a peer that is not relay.

* :class:`CatchService`: the Catch game.  CreateWorld settings ``seed`` (int,
  default 1), ``rows`` (default 10), ``columns`` (default 5); JoinWorld
  setting ``reward_scale`` (float, default 1.0); Reset setting ``seed``
  (reseeds the ball's column).  Unknown settings are errors.
  Observations ``board`` (rows x columns float32) and ``reward`` (float32);
  action ``paddle`` (int8 in -1..1).
* :class:`PayloadService`: a fixed-size observation for benchmarks.
  CreateWorld settings ``shape`` (ints) and ``dtype`` (numpy name); episodes
  never end; action ``action`` (int64 in 0..1) is ignored.

:func:`start` runs a service on ``127.0.0.1`` and returns ``(server, port)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2 as pb
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc, spec_manager, tensor_spec_utils, tensor_utils
from google.rpc import code_pb2, status_pb2

__all__ = ["CatchService", "PayloadService", "start"]


class _Stop(Exception):
    """A request the server refuses (becomes an error Status)."""


def _settings(settings: Any, allowed: dict[str, Any], doing: str) -> dict[str, Any]:
    unknown = set(settings) - set(allowed)
    if unknown:
        raise _Stop(f"{doing}: unknown settings {sorted(unknown)} (known: {sorted(allowed)})")
    values = dict(allowed)
    for name, tensor in settings.items():
        values[name] = tensor_utils.unpack_tensor(tensor)
    return values


class _Game:
    def __init__(self, rows: int, columns: int, seed: int) -> None:
        self.rows, self.columns = rows, columns
        self.rng = np.random.RandomState(seed)
        self.new_episode()

    def new_episode(self) -> None:
        self.ball_x = self.rng.randint(self.columns)
        self.ball_y = 0
        self.paddle_x = self.columns // 2

    def board(self) -> np.ndarray:
        board = np.zeros((self.rows, self.columns), dtype=np.float32)
        board[self.ball_y, self.ball_x] = 1.0
        board[self.rows - 1, self.paddle_x] = 1.0
        return board

    def update(self, action: int) -> None:
        self.paddle_x = int(np.clip(self.paddle_x + action, 0, self.columns - 1))
        self.ball_y += 1

    def terminated(self) -> bool:
        return self.ball_y == self.rows - 1

    def reward(self) -> float:
        if not self.terminated():
            return 0.0
        return 1.0 if self.paddle_x == self.ball_x else -1.0


class _Service(dm_env_rpc_pb2_grpc.EnvironmentServicer):
    """One world per stream, named after the game; subclasses define the game."""

    world_name = "world"
    create_settings: dict[str, Any] = {}
    join_settings: dict[str, Any] = {}
    reset_settings: dict[str, Any] = {}

    def reset(self, world: Any, settings: dict[str, Any]) -> None:
        """Apply the Reset settings that were given."""

    def specs(self, world: Any, join: dict[str, Any]) -> pb.ActionObservationSpecs:
        raise NotImplementedError

    def new_world(self, settings: dict[str, Any]) -> Any:
        raise NotImplementedError

    def step(self, world: Any, join: dict[str, Any], actions: dict[str, Any],
             fresh: bool) -> tuple[dict, bool]:
        """Observations by name and whether the episode terminated."""
        raise NotImplementedError

    def Process(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        world = None
        join: dict[str, Any] | None = None
        fresh = True
        actions: Any = None
        observations: Any = None
        for request in request_iterator:
            response = pb.EnvironmentResponse()
            try:
                kind = request.WhichOneof("payload")
                body = getattr(request, kind)
                if kind == "create_world":
                    if world is not None:
                        raise _Stop("this server supports one world per connection")
                    world = self.new_world(_settings(body.settings, self.create_settings,
                                                     "CreateWorld"))
                    response.create_world.world_name = self.world_name
                elif kind == "join_world":
                    if world is None or body.world_name != self.world_name:
                        raise _Stop(f"no world {body.world_name!r}")
                    if join is not None:
                        raise _Stop("already joined")
                    join = _settings(body.settings, self.join_settings, "JoinWorld")
                    specs = self.specs(world, join)
                    actions = spec_manager.SpecManager(specs.actions)
                    observations = spec_manager.SpecManager(specs.observations)
                    response.join_world.specs.CopyFrom(specs)
                    fresh = True
                elif kind in ("step", "reset"):
                    if join is None:
                        raise _Stop(f"cannot {kind} before joining a world")
                    if kind == "reset":
                        given = set(body.settings)
                        reset = _settings(body.settings, self.reset_settings, "Reset")
                        self.reset(world, {k: v for k, v in reset.items() if k in given})
                        fresh = True
                        response.reset.specs.CopyFrom(self.specs(world, join))
                    else:
                        unpacked = {} if fresh else actions.unpack(body.actions)
                        values, done = self.step(world, join, unpacked, fresh)
                        fresh = done
                        packed = observations.pack(values)
                        for uid in body.requested_observations:
                            response.step.observations[uid].CopyFrom(packed[uid])
                        response.step.state = (pb.EnvironmentStateType.TERMINATED if done
                                               else pb.EnvironmentStateType.RUNNING)
                elif kind == "reset_world":
                    if world is None or body.world_name != self.world_name:
                        raise _Stop(f"no world {body.world_name!r}")
                    fresh = True
                    response.reset_world.SetInParent()
                elif kind == "leave_world":
                    join = None
                    response.leave_world.SetInParent()
                elif kind == "destroy_world":
                    if world is None or body.world_name != self.world_name:
                        raise _Stop(f"no world {body.world_name!r}")
                    if join is not None:
                        raise _Stop("cannot destroy a joined world")
                    world = None
                    response.destroy_world.SetInParent()
                else:
                    raise _Stop(f"unsupported request {kind}")
            except Exception as exc:
                response = pb.EnvironmentResponse(error=status_pb2.Status(
                    code=code_pb2.INVALID_ARGUMENT if isinstance(exc, (_Stop, ValueError))
                    else code_pb2.INTERNAL, message=str(exc)))
            yield response


class CatchService(_Service):
    """The Catch game of dm_env_rpc's example, with create and join settings."""

    world_name = "catch"
    create_settings = {"seed": 1, "rows": 10, "columns": 5}
    join_settings = {"reward_scale": 1.0}
    reset_settings = {"seed": None}

    def reset(self, world: _Game, settings: dict[str, Any]) -> None:
        if "seed" in settings:
            world.rng = np.random.RandomState(int(settings["seed"]))

    def new_world(self, settings: dict[str, Any]) -> _Game:
        return _Game(int(settings["rows"]), int(settings["columns"]), int(settings["seed"]))

    def specs(self, world: _Game, join: dict[str, Any]) -> pb.ActionObservationSpecs:
        specs = pb.ActionObservationSpecs()
        specs.observations[1].CopyFrom(pb.TensorSpec(
            name="board", shape=[world.rows, world.columns], dtype=pb.DataType.FLOAT))
        tensor_spec_utils.set_bounds(specs.observations[1], 0.0, 1.0)
        specs.observations[2].CopyFrom(pb.TensorSpec(name="reward", dtype=pb.DataType.FLOAT))
        specs.actions[1].CopyFrom(pb.TensorSpec(name="paddle", dtype=pb.DataType.INT8))
        tensor_spec_utils.set_bounds(specs.actions[1], -1, 1)
        return specs

    def step(self, world: _Game, join: dict[str, Any], actions: dict[str, Any],
             fresh: bool) -> tuple[dict, bool]:
        if fresh:
            world.new_episode()
        else:
            paddle = int(actions.get("paddle", 0))
            if not -1 <= paddle <= 1:
                raise _Stop(f"paddle {paddle} is outside -1..1")
            world.update(paddle)
        return ({"board": world.board(), "reward": world.reward() * float(join["reward_scale"])},
                world.terminated())


class PayloadService(_Service):
    """A fixed observation of settings ``shape``/``dtype``; episodes never end."""

    world_name = "payload"
    create_settings = {"shape": np.array([4]), "dtype": "float32"}

    def new_world(self, settings: dict[str, Any]) -> np.ndarray:
        shape = tuple(int(d) for d in np.atleast_1d(settings["shape"]))
        rng = np.random.default_rng(0)
        return (rng.random(shape) * 255).astype(np.dtype(str(settings["dtype"])))

    def specs(self, world: np.ndarray, join: dict[str, Any]) -> pb.ActionObservationSpecs:
        specs = pb.ActionObservationSpecs()
        specs.observations[1].CopyFrom(pb.TensorSpec(
            name="observation", shape=world.shape,
            dtype=tensor_utils.np_type_to_data_type(world.dtype)))
        specs.observations[2].CopyFrom(pb.TensorSpec(name="reward", dtype=pb.DataType.DOUBLE))
        specs.actions[1].CopyFrom(pb.TensorSpec(name="action", dtype=pb.DataType.INT64))
        tensor_spec_utils.set_bounds(specs.actions[1], 0, 1)
        return specs

    def step(self, world: np.ndarray, join: dict[str, Any], actions: dict[str, Any],
             fresh: bool) -> tuple[dict, bool]:
        return {"observation": world, "reward": 0.0}, False


def start(service: dm_env_rpc_pb2_grpc.EnvironmentServicer, *, workers: int = 8,
          ) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``127.0.0.1`` at a free port: ``(server, port)``; stop with
    ``server.stop(None)``."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    dm_env_rpc_pb2_grpc.add_EnvironmentServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
