"""The settings of relay's public functions, read where they live: this
process's ``RELAY_*`` environment variables and the settings file of the
current directory, merged with the URL query and the arguments in the order
of :mod:`relay.core.config` (which reads nothing itself).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from relay.core.config import Settings, resolve_settings
from relay.core.errors import ConfigError
from relay.core.url import URL

__all__ = ["file_settings", "load_settings"]


def file_settings(directory: Path | None = None) -> dict[str, Any]:
    """Settings from ``relay.toml`` (top level) or else ``[tool.relay]`` of
    ``pyproject.toml`` in ``directory`` (default: the current directory); ``{}``
    if neither file exists.

    Raises:
        ConfigError: the file is not valid TOML.
    """
    directory = directory or Path.cwd()
    relay_toml = directory / "relay.toml"
    pyproject = directory / "pyproject.toml"
    try:
        if relay_toml.is_file():
            return dict(tomllib.loads(relay_toml.read_text()))
        if pyproject.is_file():
            return dict(tomllib.loads(pyproject.read_text()).get("tool", {}).get("relay", {}))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read relay settings from {directory}: {exc}") from exc
    return {}


def load_settings(url: URL | None = None, *, directory: Path | None = None,
                  **explicit: Any) -> Settings:
    """:func:`~relay.core.config.resolve_settings` with ``os.environ`` and
    :func:`file_settings` ``(directory)``.

    Raises:
        ConfigError: a value cannot be converted, an explicit name is unknown,
            or the settings file is not valid TOML.
    """
    return resolve_settings(url, environ=os.environ, files=file_settings(directory), **explicit)
