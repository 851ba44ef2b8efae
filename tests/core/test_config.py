import pytest

from relay.core.config import Settings, resolve_settings
from relay.core.errors import ConfigError
from relay.core.url import make_url


def test_defaults():
    assert resolve_settings() == Settings()


def test_precedence_argument_over_query_over_env_over_file():
    files = {"codec": "json", "timeout": 1.5, "connect_timeout": 2, "max_message_size": 1000}
    env = {"RELAY_TIMEOUT": "2.5", "RELAY_CONNECT_TIMEOUT": "3"}
    url = make_url("memory://x?connect_timeout=4&max_message_size=2000")
    settings = resolve_settings(url, environ=env, files=files, max_message_size=3000)
    assert settings.codec == "json"  # file
    assert settings.timeout == 2.5  # env over file
    assert settings.connect_timeout == 4.0  # query over env
    assert settings.max_message_size == 3000  # argument over query


def test_unknown_names_in_files_and_environment_are_ignored():
    settings = resolve_settings(environ={"RELAY_COLOUR": "red", "PATH": "/bin"},
                                files={"colour": "red", "timeout": 3})
    assert settings == Settings(timeout=3.0)


def test_none_argument_means_not_given():
    url = make_url("memory://x?codec=json")
    assert resolve_settings(url, codec=None).codec == "json"


def test_transport_options_are_kept_not_rejected():
    url = make_url("memory://x?sndhwm=10")
    assert resolve_settings(url) == Settings()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": -1}, "positive"),
        ({"zero_copy": "maybe"}, "zero_copy"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_settings(**kwargs)


def test_bad_value_names_its_source():
    with pytest.raises(ConfigError, match="relay.toml/pyproject.toml"):
        resolve_settings(files={"timeout": "soon"})


def test_bool_from_string():
    url = make_url("memory://x?zero_copy=1")
    assert resolve_settings(url).zero_copy is True
