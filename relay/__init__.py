"""relay: reinforcement-learning environments and agents across processes,
machines and languages, through the standard Gymnasium and dm_env APIs.

    server = relay.serve("CartPole-v1", "zmq+tcp://127.0.0.1:5555")
    env = relay.make("zmq+tcp://127.0.0.1:5555")      # a gymnasium.Env
    envs = relay.make_vec("zmq+tcp://127.0.0.1:5555", num_envs=4)  # a VectorEnv

Importing relay loads no plugin and opens nothing; it registers the
Gymnasium id ``relay/Remote-v0``.  ``dm_env`` is imported on first use of
:func:`make_dm_env`, not by ``import relay``.
"""

import importlib
import typing

from relay.adapters.batch import RemoteBatchVectorEnv
from relay.adapters.gymnasium import RemoteEnv, make, register_envs
from relay.adapters.inverted import ListeningEnv, connect_env, listen_env
from relay.adapters.launch import launch, launch_vec
from relay.adapters.serving import serve
from relay.adapters.vector import RemoteVectorEnv, make_vec
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    EnvClosed,
    InvalidAction,
    InvalidURL,
    LaunchError,
    MessageTooLarge,
    MissingDependency,
    NotAllowed,
    NotReset,
    PluginError,
    ProtocolError,
    RelayError,
    RemoteEnvError,
    RemoteError,
    ServerClosing,
    SpaceMismatch,
    Timeout,
    TLSError,
    TransportError,
    UnknownCodec,
    UnknownScheme,
)
from relay.core.plugins import hookimpl
from relay.core.url import URL, make_url
from relay.server import Server

if typing.TYPE_CHECKING:
    from relay.adapters.dm_env import make_dm_env

__version__ = "0.1.0"

__all__ = [
    "CodecError",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "EnvClosed",
    "InvalidAction",
    "InvalidURL",
    "LaunchError",
    "ListeningEnv",
    "MessageTooLarge",
    "MissingDependency",
    "NotAllowed",
    "NotReset",
    "PluginError",
    "ProtocolError",
    "RelayError",
    "RemoteBatchVectorEnv",
    "RemoteEnv",
    "RemoteEnvError",
    "RemoteError",
    "RemoteVectorEnv",
    "Server",
    "ServerClosing",
    "Settings",
    "SpaceMismatch",
    "TLSError",
    "Timeout",
    "TransportError",
    "URL",
    "UnknownCodec",
    "UnknownScheme",
    "connect_env",
    "hookimpl",
    "launch",
    "launch_vec",
    "listen_env",
    "make",
    "make_dm_env",
    "make_url",
    "make_vec",
    "serve",
]

_LAZY = {"make_dm_env": "relay.adapters.dm_env"}
"""Names whose module is imported on first use (it imports ``dm_env``)."""


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


register_envs()
