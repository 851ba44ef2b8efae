"""relay.plugin, the kit for transport authors: frame header, error mapping, the
shared URL options, and relay.testing without pytest."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import relay.plugin as kit
from relay import ConfigError, ConnectError, InvalidURL, MessageTooLarge, TransportError
from relay.core.plugins import get_transport
from relay.core.url import make_url
from relay.testing import make_certificate


def test_every_public_name_resolves() -> None:
    for name in kit.__all__:
        assert getattr(kit, name) is not None, name
    assert kit.TransportCompliance.__name__ == "TransportCompliance"


def test_frame_header_round_trip_keeps_frames_and_boundaries() -> None:
    frames = [b"", b"a", np.arange(1000, dtype=np.float64).tobytes(), bytearray(b"xyz")]
    data = kit.pack(frames)
    assert data[:4 + 8 * 4] == kit.pack_header([0, 1, 8000, 3])
    assert kit.read_count(data) == 4 and kit.header_size(4) == 36
    assert kit.read_lengths(data, 4) == (0, 1, 8000, 3)
    assert [bytes(f) for f in kit.unpack(data)] == [bytes(f) for f in frames]


@pytest.mark.parametrize("data", [b"", b"\x01\x00", kit.pack_header([5]) + b"four",
                                  kit.pack_header([1]) + b"two", b"\x09\x00\x00\x00" + bytes(8)])
def test_unpack_refuses_a_malformed_message(data: bytes) -> None:
    with pytest.raises(ValueError):
        kit.unpack(data)


def test_unpack_refuses_frames_over_the_limit_before_reading_them() -> None:
    header = kit.pack_header([1 << 40])  # declared, never sent
    with pytest.raises(MessageTooLarge):
        kit.unpack(header, limit=1 << 20)


def test_check_count_refuses_too_many_frames_or_a_header_over_the_limit() -> None:
    assert kit.check_count(4, 1 << 20) is None
    assert "65537 frames" in (kit.check_count(kit.MAX_FRAMES + 1, 1 << 30) or "")
    assert "3000 frames" in (kit.check_count(3000, 16 * 1024) or "")  # 24 KB of header


def test_map_errors_maps_the_first_matching_type_and_keeps_the_cause() -> None:
    native = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(ConnectError, match="cannot connect to x: .*refused") as caught, \
            kit.map_errors({ConnectionRefusedError: ConnectError, OSError: TransportError},
                           "cannot connect to x"):
        raise native
    assert caught.value.__cause__ is native


def test_map_errors_lets_relay_errors_and_unlisted_types_through() -> None:
    with pytest.raises(KeyError), kit.map_errors({OSError: TransportError}):
        raise KeyError("k")
    mine = ConnectError("already relay's")
    with pytest.raises(ConnectError) as caught, kit.map_errors({Exception: TransportError}):
        raise mine
    assert caught.value is mine


def test_tls_options_take_the_shared_names_and_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TLS_CA", "/env/ca.pem")
    tls = kit.TLSOptions.from_url(make_url("grpcs://h:1?cert=c.pem&key=k.pem&server_name=n"))
    assert tls == kit.TLSOptions(cert="c.pem", key="k.pem", ca="/env/ca.pem", server_name="n")


@pytest.mark.parametrize(("old", "new"), [("certfile", "cert"), ("keyfile", "key"),
                                          ("cafile", "ca"), ("ping_interval", "keepalive"),
                                          ("ping_timeout", "keepalive_timeout")])
def test_former_option_names_still_work_and_warn(old: str, new: str) -> None:
    url = make_url(f"wss://h:1?{old}=7")
    with pytest.warns(DeprecationWarning, match=f"{old}= is now called {new}="):
        assert kit.option(url, new) == "7"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kit.option(make_url(f"wss://h:1?{new}=8&{old}=7"), new) == "8"


def test_keepalive_parses_seconds_and_names_a_bad_value() -> None:
    url = make_url("ws://h:1?keepalive=0&keepalive_timeout=2.5")
    assert kit.Keepalive.from_url(url, interval=20, timeout=20, zero_disables=True) == \
        kit.Keepalive(None, 2.5)
    with pytest.raises(InvalidURL, match="keepalive='0' must be positive"):
        kit.Keepalive.from_url(url, interval=10, timeout=5)
    with pytest.raises(InvalidURL, match="keepalive_timeout='soon'"):
        kit.seconds(make_url("ws://h:1?keepalive_timeout=soon"), "keepalive_timeout", 1.0)


def test_a_tls_server_without_cert_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cert=PEM"):
        kit.TLSOptions().server_context("wss")


def test_wss_with_the_former_option_names_still_connects(tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    settings = kit.Settings(connect_timeout=3.0)
    with pytest.warns(DeprecationWarning):
        listener = get_transport("wss").listen(
            make_url(f"wss://127.0.0.1:0/relay?certfile={certfile}&keyfile={keyfile}"), settings)
    try:
        assert "certfile" not in listener.address.query
        with pytest.warns(DeprecationWarning, match="cafile"):
            client = get_transport("wss").connect(
                listener.address.with_options(cafile=str(certfile)), settings, timeout=3.0)
        server = listener.accept(3.0)
        client.send([b"hi"])
        assert [bytes(f) for f in server.recv(3.0)] == [b"hi"]
        client.close()
        server.close()
    finally:
        listener.close()


def test_relay_testing_and_relay_plugin_import_without_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None\n"
            "import relay.testing, relay.plugin\n"
            "assert relay.plugin.TransportCompliance is relay.testing.TransportCompliance\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
