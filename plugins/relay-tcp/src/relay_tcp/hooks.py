"""relay-tcp's plugin hooks, named by the entry point ``[project.entry-points.relay] tcp``.

Only a ``"module:Class"`` string is registered, so loading the plugin imports
no more than :mod:`relay.plugin`.
"""

from __future__ import annotations

from relay.plugin import Register, hookimpl


@hookimpl
def relay_register_transports(register: Register) -> None:
    register("tcp", "relay_tcp.transport:TcpTransport", extra="relay-tcp")
