"""relay-ray's plugin hooks, named by the entry point ``[project.entry-points.relay] ray``.

Only a ``"module:object"`` string is registered, so loading the plugin imports
neither Ray nor the pool: ``relay ray ...`` imports them when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import relay

if TYPE_CHECKING:
    from relay.core.plugins import Register


@relay.hookimpl
def relay_register_commands(register: Register) -> None:
    register("ray", "relay_ray.cli:ray_group", extra="relay-ray")
