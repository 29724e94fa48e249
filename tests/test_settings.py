"""Settings resolution: explicit > URL > CONSUL_* environment > default, with one-line errors."""

from __future__ import annotations

import pytest

from consulresults.settings import ConsulSettings, SettingsError, parse_address, resolve


def test_defaults():
    settings = resolve(None, environ={})
    assert (settings.scheme, settings.host, settings.port) == ("http", "127.0.0.1", 8500)
    assert settings.prefix == ""
    assert settings.token is None


def test_url_with_token_prefix_and_options():
    settings = resolve(
        "consulresults://s3cr3t@consul.example:8501/apps/billing/"
        "?scheme=https&dc=east&consistency=stale&timeout=2.5&verify=false",
        environ={},
    )
    assert (settings.host, settings.port, settings.scheme) == ("consul.example", 8501, "https")
    assert settings.prefix == "apps/billing"
    assert settings.token == "s3cr3t"
    assert (settings.datacenter, settings.consistency, settings.timeout) == ("east", "stale", 2.5)
    assert settings.verify is False
    assert resolve("consulresults://:pw-form@h/p", environ={}).token == "pw-form"


@pytest.mark.parametrize(
    "addr,expected",
    [
        ("10.0.0.5:8500", ("http", "10.0.0.5", 8500)),
        ("https://consul.local:8501", ("https", "consul.local", 8501)),
        ("http://[::1]:8500", ("http", "::1", 8500)),
        ("consul.local", ("http", "consul.local", 80)),  # Consul's client: the scheme's port
    ],
)
def test_consul_http_addr_forms(addr, expected):
    settings = resolve(None, environ={"CONSUL_HTTP_ADDR": addr})
    assert (settings.scheme, settings.host, settings.port) == expected


def test_precedence_explicit_over_url_over_environment():
    environ = {"CONSUL_HTTP_ADDR": "env-host:1111", "CONSUL_HTTP_TOKEN": "env-token"}
    from_env = resolve("consulresults:///p", environ=environ)
    assert (from_env.host, from_env.port, from_env.token) == ("env-host", 1111, "env-token")
    from_url = resolve("consulresults://url-token@url-host:2222/p", environ=environ)
    assert (from_url.host, from_url.port, from_url.token) == ("url-host", 2222, "url-token")
    explicit = resolve(
        "consulresults://url-token@url-host:2222/p",
        explicit={"token": "explicit-token", "timeout": 3},
        environ=environ,
    )
    assert explicit.token == "explicit-token"
    assert explicit.host == "url-host"


def test_tls_environment_and_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    settings = resolve(
        None,
        environ={
            "CONSUL_HTTP_SSL": "true",
            "CONSUL_HTTP_SSL_VERIFY": "false",
            "CONSUL_CACERT": "/ca.pem",
            "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        },
    )
    assert (settings.scheme, settings.verify, settings.ca_file) == ("https", False, "/ca.pem")
    assert settings.resolved_token() == "from-file"
    assert (  # within a level the file wins, as in Consul's client
        resolve(
            None, environ={"CONSUL_HTTP_TOKEN_FILE": str(token_file), "CONSUL_HTTP_TOKEN": "direct"}
        ).resolved_token()
        == "from-file"
    )


def test_token_never_in_repr_or_redacted_url():
    settings = resolve("consulresults://very-secret@h:8500/app", environ={})
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in settings.redacted_url()
    assert settings.redacted_url() == "consulresults://h:8500/app"


@pytest.mark.parametrize(
    "url,message",
    [
        ("consulresults://h:99999/p", "invalid port '99999'"),
        ("consulresults://h:abc/p", "invalid port 'abc'"),
        ("consulresults://h/p?colour=red", "unknown option 'colour'"),
        ("consulresults://h/p?consistency=eventual", "must be one of default, consistent, stale"),
        ("consulresults://h/p?timeout=-1", "must be more than 0 seconds"),
        ("consulresults://h/p?timeout=inf", "must be more than 0 seconds and finite"),
        ("consulresults://h/p?timeout=nan", "must be more than 0 seconds and finite"),
        ("consulresults://h/p?verify=maybe", "expected true or false"),
        ("consulresults://h/a/../b", "no empty, '.' or '..' path segments"),
        ("consulresults://h/a//b", "no empty, '.' or '..' path segments"),
        ("consulresults://h/p?scheme=ftp", "must be http or https"),
        ("consulresults://h/p?max_connections=1", "a whole number from 2 to 1000, not '1'"),
        ("consulresults://h/p?max_connections=lots", "a whole number from 2 to 1000"),
        ("consulresults://h/p?idle_timeout=0", "must be more than 0 seconds"),
        ("consulresults://h/p?one_client=perhaps", "expected true or false"),
    ],
)
def test_bad_urls_give_one_clear_line(url, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.").replace("(", r"\(")) as err:
        resolve(url, environ={})
    assert "\n" not in str(err.value)


def test_connection_budget_options():
    settings = resolve(
        "consulresults://h/p?max_connections=8&idle_timeout=2.5&backpressure_patience=60",
        environ={},
    )
    assert (settings.max_connections, settings.idle_timeout) == (8, 2.5)
    assert settings.backpressure_patience == 60
    defaults = resolve(None, environ={})
    assert (defaults.max_connections, defaults.idle_timeout) == (4, 5.0)
    assert defaults.backpressure_patience == 30.0


def test_the_built_in_backends_one_client_option_is_accepted_and_changes_nothing():
    """Celery documents consul://host:port?one_client=1 for its built-in backend."""
    assert resolve("consulresults://h:8500/p?one_client=1", environ={}) == resolve(
        "consulresults://h:8500/p", environ={}
    )


def test_bad_environment_is_named():
    with pytest.raises(SettingsError, match="CONSUL_HTTP_ADDR: unsupported scheme 'ftp'"):
        resolve(None, environ={"CONSUL_HTTP_ADDR": "ftp://consul.local"})
    with pytest.raises(SettingsError, match="CONSUL_HTTP_SSL_VERIFY"):
        resolve(None, environ={"CONSUL_HTTP_SSL_VERIFY": "perhaps"})


def test_unreadable_token_file_is_a_clear_error(tmp_path):
    settings = ConsulSettings(token_file=str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="cannot read the Consul token file"):
        settings.resolved_token()


def test_parse_address_rejects_empty_host():
    with pytest.raises(SettingsError, match="no host"):
        parse_address(":8500", "test")
