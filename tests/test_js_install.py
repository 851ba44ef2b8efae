"""The JavaScript client as a user installs it: ``npm pack`` of clients/js, the
tarball installed into an empty project (offline: ``ws`` comes from the
client's own node_modules, packed the same way), imported, and driving a
served env over ws://."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import relay

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js"
WS = CLIENT / "node_modules" / "ws"

AGENT = """
import { make } from "relay-rl-client";
const env = await make(process.argv[2], { envId: "CartPole-v1" });
const [obs] = await env.reset({ seed: 0 });
const [, reward] = await env.step(1);
await env.close();
console.log(JSON.stringify({ shape: obs.shape, reward }));
"""


@pytest.fixture(autouse=True)
def npm_ready() -> None:
    """Skip without npm and the client's packages, except in CI (``CI`` set), which
    installs both."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        missing = "node and npm are not installed"
    elif not WS.is_dir():
        missing = "the JavaScript client's packages are missing: `npm ci` in clients/js"
    else:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{missing}; CI tests the JavaScript client's install")
    pytest.skip(f"{missing} (make test does it)")


def npm(*args: str, cwd: Path) -> str:
    result = subprocess.run(["npm", *args, "--no-audit", "--no-fund"], cwd=cwd,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pack_holds_the_sources_and_no_tests(tmp_path):
    (listing,) = json.loads(npm("pack", "--dry-run", "--json", cwd=CLIENT))
    files = {entry["path"] for entry in listing["files"]}
    assert {"package.json", "README.md", "src/index.js"} <= files
    assert not any(path.startswith(("test/", "node_modules/")) for path in files)


def test_packed_tarball_installs_offline_and_drives_a_served_env(tmp_path):
    npm("pack", str(CLIENT), str(WS), "--pack-destination", str(tmp_path), cwd=tmp_path)
    (client,) = tmp_path.glob("relay-rl-client-*.tgz")
    (ws,) = tmp_path.glob("ws-*.tgz")
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    npm("install", "--offline", str(ws), str(client), cwd=app)
    assert (app / "node_modules" / "relay-rl-client" / "src" / "index.js").is_file()
    (app / "agent.mjs").write_text(AGENT)
    with relay.serve("CartPole-v1", "ws://127.0.0.1:0/relay") as server:
        result = subprocess.run(["node", "agent.mjs", str(server.address)], cwd=app,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"shape": [4], "reward": 1}
