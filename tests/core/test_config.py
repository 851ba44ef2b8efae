import pytest

from relay.core.config import Settings, resolve_settings
from relay.core.errors import ConfigError
from relay.core.url import make_url


def test_defaults(tmp_path):
    assert resolve_settings(environ={}, directory=tmp_path) == Settings()


def test_precedence_argument_over_query_over_env_over_file(tmp_path):
    (tmp_path / "relay.toml").write_text('codec = "json"\ntimeout = 1.5\nconnect_timeout = 2\n'
                                         'max_message_size = 1000\n')
    env = {"RELAY_TIMEOUT": "2.5", "RELAY_CONNECT_TIMEOUT": "3"}
    url = make_url("memory://x?connect_timeout=4&max_message_size=2000")
    settings = resolve_settings(url, environ=env, directory=tmp_path, max_message_size=3000)
    assert settings.codec == "json"  # file
    assert settings.timeout == 2.5  # env over file
    assert settings.connect_timeout == 4.0  # query over env
    assert settings.max_message_size == 3000  # argument over query


def test_pyproject_tool_relay(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.relay]\ncodec = "json"\n')
    assert resolve_settings(environ={}, directory=tmp_path).codec == "json"


def test_none_argument_means_not_given(tmp_path):
    url = make_url("memory://x?codec=json")
    assert resolve_settings(url, environ={}, directory=tmp_path, codec=None).codec == "json"


def test_transport_options_are_kept_not_rejected(tmp_path):
    url = make_url("memory://x?sndhwm=10")
    assert resolve_settings(url, environ={}, directory=tmp_path) == Settings()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": -1}, "positive"),
        ({"zero_copy": "maybe"}, "zero_copy"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_bad_values(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_settings(environ={}, directory=tmp_path, **kwargs)


def test_bool_from_string(tmp_path):
    url = make_url("memory://x?zero_copy=1")
    assert resolve_settings(url, environ={}, directory=tmp_path).zero_copy is True
