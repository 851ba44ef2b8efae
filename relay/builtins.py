"""relay's own transports and codecs, registered through the public plugin hooks."""

from relay.core.plugins import Register, hookimpl


@hookimpl
def relay_register_transports(register: Register) -> None:
    register("memory", "relay.transports.memory:MemoryTransport")
    register("shm", "relay.transports.shm:ShmTransport", extra="posix-ipc")
    register("zmq+tcp", "relay.transports.zmq:ZmqTransport", extra="pyzmq")
    register("zmq+ipc", "relay.transports.zmq:ZmqTransport", extra="pyzmq")
    register("grpc", "relay.transports.grpc:GrpcTransport", extra="grpcio")
    register("grpcs", "relay.transports.grpc:GrpcTransport", extra="grpcio")
    register("ws", "relay.transports.ws:WsTransport", extra="websockets")
    register("wss", "relay.transports.ws:WsTransport", extra="websockets")


@hookimpl
def relay_register_codecs(register: Register) -> None:
    register("msgpack", "relay.codecs.msgpack:MsgpackCodec", extra="msgpack")
    register("json", "relay.codecs.json:JsonCodec")
    register("gymie", "relay.compat.gymie:GymieProtocol", extra="websockets")
    register("dm_env_rpc", "relay.compat.dm_env_rpc:DmEnvRpcCodec", extra="dm-env-rpc")


@hookimpl
def relay_register_commands(register: Register) -> None:
    for name in ("bench", "cleanup", "demo", "plugins", "run", "serve"):
        register(name, f"relay.cli:{name}")
