"""relay's layers (docs/architecture.md): each module imports only from its own
layer or the layers below it, and the core does no I/O.  (What ``import relay``
loads is tested in test_public_api.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

RELAY = Path(__file__).parents[1] / "relay"

LAYERS = [  # lowest first: (layer name, module prefixes)
    ("core", ("relay.core",)),
    ("codecs", ("relay.codecs",)),
    ("transports", ("relay.transports",)),
    ("drivers", ("relay.connection", "relay.server", "relay.access", "relay.batching",
                 "relay.workers")),
    ("adapters and compat", ("relay.adapters", "relay.compat")),
    ("public package and entry points", ("relay.cli", "relay.__main__", "relay.plugin",
                                         "relay.testing")),
]

CORE_MAY_NOT_IMPORT = {  # the core is sans-I/O and knows no peer's library
    "asyncio", "io", "mmap", "pathlib", "select", "selectors", "socket", "subprocess",
    "time", "tomllib", "dm_env", "dm_env_rpc", "grpc", "msgpack", "posix_ipc", "websockets",
    "zmq",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    if module == "relay":  # the package's __init__: the public names, on top
        return len(LAYERS) - 1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, also inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "relay":  # from relay import x: the module relay.x if it is one
                found += [(node.lineno, f"relay.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(RELAY.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_only_from_its_layer_or_below(path: Path) -> None:
    module = module_name(path)
    layer = layer_of(module)
    wrong = []
    for line, imported in imports(path):
        top = imported.split(".")[0]
        if top == "relay_bench" and module != "relay.cli":
            wrong.append(f"line {line}: {imported} (the benchmark is not part of relay)")
        if top == "relay":
            target = layer_of(_existing_module(imported))
            if target > layer:
                wrong.append(f"line {line}: {imported} ({LAYERS[target][0]} layer)")
        if layer == 0 and top in CORE_MAY_NOT_IMPORT:
            wrong.append(f"line {line}: {imported} (the core does no I/O and knows no peer)")
    assert not wrong, f"{module} ({LAYERS[layer][0]} layer) imports " + "; ".join(wrong)


def _existing_module(name: str) -> str:
    """``name``, or its package when ``name`` is an attribute (``relay.serve``)."""
    path = RELAY.parent / name.replace(".", "/")
    if path.is_dir() or path.with_suffix(".py").is_file():
        return name
    return name.rsplit(".", 1)[0]


def test_every_layer_has_modules() -> None:
    # guards the table above against a renamed package making a rule vacuous
    names = [module_name(p) for p in MODULES]
    for layer, (name, _) in enumerate(LAYERS):
        assert any(layer_of(m) == layer for m in names), name




def test_architecture_doc_names_existing_modules() -> None:
    # docs/architecture.md is the map of the code: every file or package it names exists
    root = RELAY.parent
    doc = (root / "docs" / "architecture.md").read_text()
    named = re.findall(r"`([\w/]+(?:\.py|/))`", doc)
    paths = [n if n.split("/")[0] in ("relay", "benchmarks", "tests", "plugins", "docs")
             else f"relay/{n}" for n in named]
    assert len(paths) > 20
    missing = sorted({p for p in paths if not (root / p).exists()})
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
