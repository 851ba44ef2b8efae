"""The public face: a curated, sorted, complete __all__ and no plugin loading at import."""

import subprocess
import sys

import relay


def test_all_is_sorted_and_complete():
    assert relay.__all__ == sorted(relay.__all__)
    for name in relay.__all__:
        assert hasattr(relay, name), name
    public = {n for n in vars(relay) if not n.startswith("_") and n[0].isupper()}
    assert public - {"__version__"} <= set(relay.__all__)


def test_every_error_is_a_relay_error():
    errors = [getattr(relay, n) for n in relay.__all__ if n.endswith(("Error", "Lost"))]
    errors += [relay.Timeout, relay.UnknownScheme, relay.UnknownCodec, relay.NotReset]
    for error in errors:
        assert issubclass(error, relay.RelayError), error
    assert issubclass(relay.Timeout, TimeoutError)
    assert issubclass(relay.ConnectionLost, ConnectionError)


def test_import_opens_nothing_and_loads_no_plugin_nor_dm_env():
    heavy = ["dm_env", "dm_env_rpc", "grpc", "zmq", "websockets", "posix_ipc", "msgpack",
             "relay_bench"]
    code = (
        "import sys, relay, relay.core.plugins as p;"
        "assert p._registry is None;"
        f"loaded = [m for m in {heavy!r} if m in sys.modules];"
        "assert not loaded, f'import relay loaded {loaded}';"
        "import gymnasium; assert 'relay/Remote-v0' in gymnasium.registry;"
        "relay.make_dm_env; assert 'dm_env' in sys.modules"  # on first use
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
