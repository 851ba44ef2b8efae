"""Plugins: the pluggy hooks through which transports and codecs are registered.

Built-ins are registered through the same hooks as third-party plugins
(:class:`_Builtins`, below).  A third party names a module in the entry-point group
``relay``::

    [project.entry-points.relay]
    nng = "relay_nng.hooks"

and implements any of the hooks, registering ``"module:Class"`` strings so
that loading the plugin imports nothing heavy::

    @relay.hookimpl
    def relay_register_transports(register):
        register("nng+tcp", "relay_nng.transport:NngTransport", extra="relay-nng")

``relay_register_commands`` adds a subcommand to the ``relay`` command line
(``"module:click_command"``, imported only when that subcommand runs).

Plugins are loaded on first use (never at ``import relay``).  Lookup order is
built-in, then entry points; a plugin cannot take a built-in name.  A plugin
that fails to load is reported by name (:func:`plugin_errors`, ``relay
plugins``) and the other schemes keep working.  ``RELAY_DISABLE_PLUGINS=1``
loads built-ins only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import pluggy

from relay.core.errors import MissingDependency, PluginError, UnknownCodec, UnknownScheme

__all__ = [
    "ENTRY_POINT_GROUP",
    "Entry",
    "Register",
    "codecs",
    "commands",
    "get_codec",
    "get_command",
    "get_transport",
    "hookimpl",
    "hookspec",
    "plugin_errors",
    "transports",
]

ENTRY_POINT_GROUP = "relay"
hookspec = pluggy.HookspecMarker("relay")
hookimpl = pluggy.HookimplMarker("relay")


class Register(Protocol):
    """``register(name, target, *, extra=None)``: ``target`` is ``"module:Class"``;
    ``extra`` is the pip requirement to suggest if importing it fails."""

    def __call__(self, name: str, target: str, *, extra: str | None = None) -> None: ...


class HookSpecs:
    """The hook specifications of relay plugins."""

    @hookspec
    def relay_register_transports(self, register: Register) -> None:
        """Register transports by URL scheme (``"zmq+tcp"``) and ``"module:Class"``."""

    @hookspec
    def relay_register_codecs(self, register: Register) -> None:
        """Register codecs by name (``"msgpack"``) and ``"module:Class"``."""

    @hookspec
    def relay_register_commands(self, register: Register) -> None:
        """Register ``relay`` subcommands by name (``"ray"``) and ``"module:click_command"``."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered transport scheme or codec name."""

    name: str
    target: str
    extra: str | None
    provider: str  # distribution that registered it ("relay-rl" for built-ins)
    builtin: bool


class _Builtins:
    """relay's own transports, codecs and commands, registered through the public hooks."""

    @hookimpl
    def relay_register_transports(self, register: Register) -> None:
        register("memory", "relay.transports.memory:MemoryTransport")
        register("shm", "relay.transports.shm:ShmTransport", extra="posix-ipc")
        register("zmq+tcp", "relay.transports.zmq:ZmqTransport", extra="pyzmq")
        register("zmq+ipc", "relay.transports.zmq:ZmqTransport", extra="pyzmq")
        register("grpc", "relay.transports.grpc:GrpcTransport", extra="grpcio")
        register("grpcs", "relay.transports.grpc:GrpcTransport", extra="grpcio")
        register("ws", "relay.transports.ws:WsTransport", extra="websockets")
        register("wss", "relay.transports.ws:WsTransport", extra="websockets")

    @hookimpl
    def relay_register_codecs(self, register: Register) -> None:
        register("msgpack", "relay.codecs.msgpack:MsgpackCodec", extra="msgpack")
        register("json", "relay.codecs.json:JsonCodec")
        register("gymie", "relay.compat.gymie:GymieProtocol", extra="websockets")
        register("dm_env_rpc", "relay.compat.dm_env_rpc:DmEnvRpcCodec", extra="dm-env-rpc")

    @hookimpl
    def relay_register_commands(self, register: Register) -> None:
        for name in ("bench", "cleanup", "demo", "plugins", "run", "serve"):
            register(name, f"relay.cli:{name}")


class _Registry:
    def __init__(self) -> None:
        self.transports: dict[str, Entry] = {}
        self.codecs: dict[str, Entry] = {}
        self.commands: dict[str, Entry] = {}
        self.errors: dict[str, str] = {}
        self._instances: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        self._load_plugin(_Builtins(), provider="relay-rl", builtin=True)
        if os.environ.get("RELAY_DISABLE_PLUGINS", "").lower() in ("1", "true", "yes"):
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            provider = ep.dist.name if ep.dist is not None else ep.value
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                self.errors[ep.name] = f"{provider}: cannot load {ep.value!r}: {exc!r}"
                continue
            self._load_plugin(module, provider=provider, builtin=False, name=ep.name)

    def _load_plugin(self, module: Any, *, provider: str, builtin: bool, name: str = "") -> None:
        plugin = name or provider
        pm = pluggy.PluginManager("relay")
        pm.add_hookspecs(HookSpecs)
        try:
            pm.register(module, name=plugin)
            pm.check_pending()
        except Exception as exc:
            self.errors[plugin] = f"{provider}: invalid plugin: {exc}"
            return

        def registrar(table: dict[str, Entry]) -> Register:
            def register(name: str, target: str, *, extra: str | None = None) -> None:
                old = table.get(name)
                if old is not None:
                    self.errors[f"{plugin}:{name}"] = (
                        f"{provider} tried to register {name!r}, already provided by {old.provider}"
                    )
                    return
                if ":" not in target:
                    raise PluginError(f"{provider}: target {target!r} is not 'module:Class'")
                table[name] = Entry(name, target, extra, provider, builtin)

            return register

        try:
            pm.hook.relay_register_transports(register=registrar(self.transports))
            pm.hook.relay_register_codecs(register=registrar(self.codecs))
            pm.hook.relay_register_commands(register=registrar(self.commands))
        except Exception as exc:
            self.errors[plugin] = f"{provider}: hook failed: {exc!r}"

    def instance(self, entry: Entry, what: str) -> Any:
        with self._lock:
            cached = self._instances.get(entry.target)
            if cached is None:
                cached = self._instances[entry.target] = self.target(entry, what)()
            return cached

    @staticmethod
    def target(entry: Entry, what: str) -> Any:
        module_name, _, attr = entry.target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise MissingDependency(what, entry.extra or entry.provider, str(exc)) from exc
        except AttributeError as exc:
            raise PluginError(f"{entry.provider}: {entry.target!r} not found") from exc


_registry: _Registry | None = None
_registry_lock = threading.Lock()


def _get_registry() -> _Registry:
    global _registry
    with _registry_lock:
        if _registry is None:
            registry = _Registry()
            registry.load()
            _registry = registry
        return _registry


def transports() -> Mapping[str, Entry]:
    """Read-only view: URL scheme -> :class:`Entry` (loads plugins on first call)."""
    return MappingProxyType(_get_registry().transports)


def codecs() -> Mapping[str, Entry]:
    """Read-only view: codec name -> :class:`Entry` (loads plugins on first call)."""
    return MappingProxyType(_get_registry().codecs)


def commands() -> Mapping[str, Entry]:
    """Read-only view: ``relay`` subcommand name -> :class:`Entry` (loads plugins on first call)."""
    return MappingProxyType(_get_registry().commands)


def plugin_errors() -> Mapping[str, str]:
    """Read-only view: plugin name -> why it failed to load or register."""
    return MappingProxyType(_get_registry().errors)


def get_transport(scheme: str) -> Any:
    """The transport object for a URL scheme (one shared instance per class).

    Raises:
        UnknownScheme: no transport has this scheme (with the known ones and a
            "did you mean").
        MissingDependency: the transport's module needs a package not installed.
    """
    registry = _get_registry()
    entry = registry.transports.get(scheme)
    if entry is None:
        raise UnknownScheme(scheme, registry.transports)
    return registry.instance(entry, f"the {scheme!r} transport")


def get_codec(name: str) -> Any:
    """The codec registered as ``name``.

    Raises:
        UnknownCodec: no such codec (with the known ones and a "did you mean").
        MissingDependency: the codec's module needs a package not installed.
    """
    registry = _get_registry()
    entry = registry.codecs.get(name)
    if entry is None:
        raise UnknownCodec(name, registry.codecs)
    return registry.instance(entry, f"the {name!r} codec")


def get_command(name: str) -> Any:
    """The click command a plugin registered as ``name`` (imported now), or None.

    Raises:
        MissingDependency, PluginError: its module cannot be imported.
    """
    entry = _get_registry().commands.get(name)
    return None if entry is None else _Registry.target(entry, f"the 'relay {name}' command")


def _reset_for_tests() -> None:
    """Forget the loaded registry so the next use loads plugins again."""
    global _registry
    with _registry_lock:
        _registry = None
