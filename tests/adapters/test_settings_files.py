"""The settings files and environment that relay's public functions read."""

import pytest

import relay
from relay.adapters.config import file_settings, load_settings
from relay.core.config import Settings
from relay.core.errors import ConfigError
from relay.core.url import make_url


def test_no_file_no_environment_gives_the_defaults(tmp_path, monkeypatch):
    for name in ("RELAY_CODEC", "RELAY_TIMEOUT", "RELAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert file_settings(tmp_path) == {}
    assert load_settings(directory=tmp_path) == Settings()


def test_relay_toml_under_environment_under_query_under_argument(tmp_path, monkeypatch):
    (tmp_path / "relay.toml").write_text('codec = "json"\ntimeout = 1.5\nconnect_timeout = 2\n'
                                         'max_message_size = 1000\n')
    monkeypatch.setenv("RELAY_TIMEOUT", "2.5")
    monkeypatch.setenv("RELAY_CONNECT_TIMEOUT", "3")
    url = make_url("memory://x?connect_timeout=4&max_message_size=2000")
    settings = load_settings(url, directory=tmp_path, max_message_size=3000)
    assert (settings.codec, settings.timeout, settings.connect_timeout,
            settings.max_message_size) == ("json", 2.5, 4.0, 3000)


def test_pyproject_tool_relay(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.relay]\ncodec = "json"\n')
    assert file_settings(tmp_path) == {"codec": "json"}


def test_relay_toml_wins_over_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.relay]\ncodec = "json"\n')
    (tmp_path / "relay.toml").write_text("timeout = 7\n")
    assert file_settings(tmp_path) == {"timeout": 7}


def test_bad_toml_is_a_config_error_naming_the_directory(tmp_path):
    (tmp_path / "relay.toml").write_text("timeout = \n")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        file_settings(tmp_path)


def test_the_current_directory_reaches_relay_make(tmp_path, monkeypatch):
    (tmp_path / "relay.toml").write_text('codec = "json"\n')
    monkeypatch.chdir(tmp_path)
    with relay.serve("CartPole-v1", "memory://config-file-test") as server:
        assert server.settings.codec == "json"
        with relay.make(str(server.address)) as env:
            assert env.settings.codec == "json"
            env.reset(seed=0)
