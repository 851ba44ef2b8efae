"""The plugin registry: lazy loading, broken plugins, built-in names, unknown schemes."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import relay
from relay.core import plugins
from relay.core.errors import UnknownCodec, UnknownScheme


def _tcp_plugin_installed() -> bool:
    try:
        importlib.metadata.distribution("relay-tcp")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _memory_works() -> bool:
    return type(plugins.get_transport("memory")).__name__ == "MemoryTransport"


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Every test loads plugins anew, and leaves a registry of the real environment."""
    plugins._reset_for_tests()
    yield
    plugins._reset_for_tests()


def _fake_distribution(root: Path, name: str, hooks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put a distribution ``name`` with a ``relay`` entry point on sys.path."""
    module = f"{name.replace('-', '_')}_hooks"
    (root / f"{module}.py").write_text(textwrap.dedent(hooks))
    dist_info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[relay]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_builtins_are_registered_by_relay_rl() -> None:
    transports = plugins.transports()
    assert transports["memory"].provider == "relay-rl"
    assert transports["memory"].builtin
    assert plugins.codecs()["msgpack"].provider == "relay-rl"


def test_broken_plugin_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "relay-broken", """
        raise RuntimeError("this plugin is broken on purpose")
    """, monkeypatch)
    plugins._reset_for_tests()
    errors = plugins.plugin_errors()
    assert "relay-broken" in errors
    assert "broken on purpose" in errors["relay-broken"]
    assert _memory_works()
    if _tcp_plugin_installed():
        assert type(plugins.get_transport("tcp")).__name__ == "TcpTransport"


def test_broken_hook_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "relay-badhook", """
        import relay

        @relay.hookimpl
        def relay_register_transports(register):
            raise ValueError("hook exploded")
    """, monkeypatch)
    plugins._reset_for_tests()
    assert "hook exploded" in plugins.plugin_errors()["relay-badhook"]
    assert _memory_works()


def test_plugin_cannot_take_a_builtin_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_distribution(tmp_path, "relay-thief", """
        import relay

        @relay.hookimpl
        def relay_register_transports(register):
            register("memory", "relay_thief_hooks:Stolen")
            register("thief", "relay_thief_hooks:Stolen")

        class Stolen:
            pass
    """, monkeypatch)
    plugins._reset_for_tests()
    transports = plugins.transports()
    assert transports["memory"].provider == "relay-rl"
    assert transports["thief"].provider == "relay-thief"  # its other scheme still counts
    assert _memory_works()
    complaint = " ".join(plugins.plugin_errors().values())
    assert "relay-thief" in complaint and "'memory'" in complaint and "relay-rl" in complaint


def test_unknown_scheme_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownScheme) as info:
        plugins.get_transport("zqm+tcp")
    assert info.value.did_you_mean == "zmq+tcp"
    assert "did you mean 'zmq+tcp'" in str(info.value)
    assert "memory" in info.value.known and "memory" in str(info.value)


def test_unknown_scheme_from_the_user_api() -> None:
    with pytest.raises(UnknownScheme, match="did you mean 'zmq\\+tcp'"):
        relay.make("zqm+tcp://127.0.0.1:5555")
    with pytest.raises(UnknownScheme, match="memory"):
        relay.serve("CartPole-v1", "nosuchscheme://somewhere")


def test_unknown_codec_suggests() -> None:
    with pytest.raises(UnknownCodec, match="did you mean 'msgpack'"):
        plugins.get_codec("msgpak")


def test_disable_plugins_hides_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DISABLE_PLUGINS", "1")
    plugins._reset_for_tests()
    assert all(entry.builtin for entry in plugins.transports().values())
    assert "tcp" not in plugins.transports()
    with pytest.raises(UnknownScheme):
        plugins.get_transport("tcp")
    assert _memory_works()


@pytest.mark.skipif(not _tcp_plugin_installed(), reason="relay-tcp is not installed")
def test_tcp_plugin_found_through_its_entry_point() -> None:
    entry = plugins.transports()["tcp"]
    assert (entry.provider, entry.builtin) == ("relay-tcp", False)
    assert entry.target == "relay_tcp.transport:TcpTransport"


def test_import_relay_loads_no_plugin() -> None:
    code = textwrap.dedent("""
        import importlib.metadata, sys
        import relay
        import relay.core.plugins as plugins
        assert plugins._registry is None, "registry loaded at import"
        for module in ("relay.transports.memory", "relay.codecs.msgpack"):
            assert module not in sys.modules, module + " (a built-in) imported at import relay"
        for ep in importlib.metadata.entry_points(group="relay"):
            assert ep.module not in sys.modules, ep.module + " imported at import relay"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_plugin_command_runs_as_a_relay_subcommand_imported_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from relay.cli import main

    _fake_distribution(tmp_path, "relay-hello", """
        import relay

        @relay.hookimpl
        def relay_register_commands(register):
            register("hello", "relay_hello_cmd:hello")
            register("serve", "relay_hello_cmd:hello")  # relay's own command wins
    """, monkeypatch)
    (tmp_path / "relay_hello_cmd.py").write_text(textwrap.dedent("""
        import click

        @click.command()
        @click.argument("who")
        def hello(who):
            '''Say hello.'''
            click.echo(f"hello {who}")
    """))
    monkeypatch.delitem(sys.modules, "relay_hello_cmd", raising=False)
    plugins._reset_for_tests()
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert "hello" in listing.output and "Say hello." in listing.output
    assert plugins.commands()["hello"].provider == "relay-hello"
    result = runner.invoke(main, ["hello", "ray"])
    assert result.exit_code == 0 and result.output == "hello ray\n"
    assert plugins.commands()["serve"].provider == "relay-rl"  # taken: refused, and said so
    assert "'serve'" in " ".join(plugins.plugin_errors().values())
    served = runner.invoke(main, ["serve", "--help"])
    assert "Serve ENV_ID" in served.output
    assert "hello" in runner.invoke(main, ["plugins"]).output


def test_a_missing_plugin_command_module_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from relay.cli import main

    _fake_distribution(tmp_path, "relay-gone", """
        import relay

        @relay.hookimpl
        def relay_register_commands(register):
            register("gone", "relay_gone_nowhere:gone", extra="relay-gone")
    """, monkeypatch)
    plugins._reset_for_tests()
    result = CliRunner().invoke(main, ["gone"])
    assert result.exit_code != 0
    assert "relay-gone" in result.output and "MissingDependency" in result.output
