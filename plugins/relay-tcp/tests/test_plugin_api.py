"""relay-tcp is written against ``relay.plugin`` alone: the example of a
third-party transport must not reach into relay's private modules."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src" / "relay_tcp"


def relay_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of relay in ``path``, also inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "relay"]


def test_the_plugin_imports_nothing_from_relay_but_relay_plugin() -> None:
    files = sorted(SOURCE.rglob("*.py"))
    assert files
    wrong = {f"{path.name}:{line}: {name}" for path in files
             for line, name in relay_imports(path) if name != "relay.plugin"}
    assert not wrong, f"relay_tcp imports relay beyond relay.plugin: {sorted(wrong)}"


def test_the_plugin_uses_relay_plugin() -> None:
    assert ("relay.plugin" in {name for path in SOURCE.rglob("*.py")
                               for _, name in relay_imports(path)})
