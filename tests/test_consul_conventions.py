"""Consul's own client conventions (``api/api.go`` ``NewClient``, ``command/flags/http.go``), on
every face: the backend URL and its ``consulresults_*`` settings, the CLI's flags, the
``CONSUL_*`` environment. Default ports, the token's precedence, unix sockets, basic auth, a CA
directory, an address's path, Go's booleans, and what keeps two endpoints' connections apart."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from certs import make_ca_and_certs
from conftest import run_cli
from recording_proxy import RecordingProxy

from consulresults.commands.errors import EXIT_PERMISSION
from consulresults.connection import connect
from consulresults.pressure import HostPressure
from consulresults.settings import SettingsError, resolve

NAMES = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_HTTP_AUTH",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_RESULTS_BACKEND_URL",
    "CONSUL_RESULTS_PREFIX",
    "CELERY_APP",
)


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any Consul setting, plus ``variables``."""
    return {k: v for k, v in os.environ.items() if k not in NAMES} | variables


def address(text: str, **environ: str) -> tuple:
    settings = resolve(None, environ={"CONSUL_HTTP_ADDR": text, **environ})
    return settings.scheme, settings.host, settings.port, settings.path_prefix, settings.socket


@pytest.fixture
def short_dir():
    """A directory with a short path: a unix socket's path must fit in 108 bytes."""
    directory = tempfile.mkdtemp(prefix="cr-", dir="/tmp")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


def put_and_get(transport, key: str, value: bytes = b"v") -> bytes:
    transport.send("PUT", f"/v1/kv/{key}", data=value)
    return transport.send("GET", f"/v1/kv/{key}", [("raw", "")]).content


# ---------------------------------------------------------------------- default ports


SSL = "CONSUL_HTTP_SSL"
SOCK = "/run/consul/consul.sock"


@pytest.mark.parametrize(
    "text,environ,expected",
    [
        ("https://consul.example", {}, ("https", "consul.example", 443, "", None)),
        ("http://consul.example", {}, ("http", "consul.example", 80, "", None)),
        ("consul.example", {}, ("http", "consul.example", 80, "", None)),
        ("consul.example", {SSL: "true"}, ("https", "consul.example", 443, "", None)),
        ("http://consul.example", {SSL: "1"}, ("https", "consul.example", 443, "", None)),
        ("http://h:8500", {SSL: "t"}, ("https", "h", 8500, "", None)),
        ("https://h", {SSL: "false"}, ("https", "h", 443, "", None)),
        ("[::1]", {}, ("http", "::1", 80, "", None)),
        ("https://[::1]:8501", {}, ("https", "::1", 8501, "", None)),
        ("http://proxy:8080/consul", {}, ("http", "proxy", 8080, "/consul", None)),
        ("https://proxy/a/b/", {}, ("https", "proxy", 443, "/a/b", None)),
        ("http://h:8500/", {}, ("http", "h", 8500, "", None)),
        (f"unix://{SOCK}", {}, ("http", "localhost", 80, "", SOCK)),
        (f"unix://{SOCK}", {SSL: "true"}, ("https", "localhost", 443, "", SOCK)),
    ],
)
def test_consul_addresses_as_consuls_client_reads_them(text, environ, expected):
    assert address(text, **environ) == expected


def test_the_backend_urls_host_is_no_consul_address_and_keeps_8500():
    """As Celery's built-in backend reads ``consul://host/p``."""
    assert resolve("consulresults://h/p", environ={}).port == 8500
    assert resolve("consulresults://h/p?scheme=https", environ={}).port == 8500
    # the URL's host is a whole address: the environment's port is not borrowed
    assert resolve("consulresults://h/p", environ={"CONSUL_HTTP_ADDR": "e:1111"}).port == 8500
    # without a host, the environment's address stands, with Consul's ports
    from_env = resolve("consulresults:///p", environ={"CONSUL_HTTP_ADDR": "https://e"})
    assert (from_env.scheme, from_env.host, from_env.port) == ("https", "e", 443)


def test_an_address_replaces_a_lower_levels_whole():
    """``--http-addr b`` over ``CONSUL_HTTP_ADDR=https://a/x``: b on port 80, plain http, no
    path (https:// belonged to the environment's address); CONSUL_HTTP_SSL still counts."""
    environ = {"CONSUL_HTTP_ADDR": "https://a:9/x"}
    flag = resolve(None, environ=environ, overrides={"address": "b"})
    assert (flag.scheme, flag.host, flag.port, flag.path_prefix) == ("http", "b", 80, "")
    ssl = resolve(None, environ={**environ, "CONSUL_HTTP_SSL": "1"}, overrides={"address": "b"})
    assert (ssl.scheme, ssl.port) == ("https", 443)
    # an explicit port stays what it says, whatever the scheme
    assert resolve(None, environ={}, overrides={"address": "https://b:8501"}).port == 8501


def test_servers_on_ports_80_and_443_are_reached_without_a_port(
    consul_dev_server_factory, tmp_path
):
    """Consul's client dials the scheme's port. We run as root and bind 80 and 443 of
    127.0.0.1; a machine where they cannot be bound fails here, saying so."""
    certs = make_ca_and_certs(tmp_path)
    plain = _bound(consul_dev_server_factory, port=80)
    tls = _bound(
        consul_dev_server_factory,
        port=443,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
    )
    assert (plain.port, tls.port) == (80, 443)
    key = f"ports-{uuid.uuid4().hex[:8]}"
    http_transport = connect(resolve(None, environ={"CONSUL_HTTP_ADDR": "http://127.0.0.1"}))
    assert put_and_get(http_transport, key, b"on-80") == b"on-80"
    for environ in (
        {"CONSUL_HTTP_ADDR": "https://127.0.0.1"},
        {"CONSUL_HTTP_ADDR": "127.0.0.1", "CONSUL_HTTP_SSL": "true"},
        {"CONSUL_HTTP_ADDR": "http://127.0.0.1", "CONSUL_HTTP_SSL": "T"},
    ):
        transport = connect(resolve(None, environ={**environ, "CONSUL_CACERT": certs.ca}))
        assert transport.base_uri == "https://127.0.0.1:443"
        assert put_and_get(transport, key, b"on-443") == b"on-443"
    # the CLI, a real process: the flag's address, no port, TLS from https://
    env = clean_env(CONSUL_CACERT=certs.ca)
    result = run_cli("ls", "--prefix", "p", "--http-addr", "https://127.0.0.1", env=env)
    assert result.returncode == 0, result.stderr


def test_a_proxy_on_port_80_sees_the_bare_host_name(consul_dev_server_factory):
    """``http://127.0.0.1/consul``: port 80, the path kept, and ``Host: 127.0.0.1`` without the
    scheme's own port, as Go's client sends it (a proxy routing on names sees the bare name)."""
    server = consul_dev_server_factory()
    try:
        proxy = RecordingProxy(server.address, prefix="/consul", port=80)
    except OSError as exc:
        pytest.fail(f"cannot bind 127.0.0.1:80 ({exc}): this test must run as root")
    with proxy:
        transport = connect(resolve(None, environ={"CONSUL_HTTP_ADDR": "http://127.0.0.1/consul"}))
        assert transport.send("GET", "/v1/status/leader").status == 200
    assert [(seen.path, seen.headers["Host"]) for seen in proxy.seen] == [
        ("/consul/v1/status/leader", "127.0.0.1")
    ]


def _bound(factory, **options):
    try:
        return factory(**options)
    except PermissionError as exc:
        pytest.fail(f"cannot bind 127.0.0.1:{options['port']} ({exc}): this test must run as root")
    except OSError as exc:
        pytest.fail(f"cannot bind 127.0.0.1:{options['port']} ({exc}): is something on it?")


# ---------------------------------------------------------------------- token precedence


@pytest.fixture
def token_files(tmp_path):
    def make(name: str, token: str) -> str:
        path = tmp_path / name
        path.write_text(token + "\n")
        return str(path)

    return make


TOKEN, FILE = "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"


@pytest.mark.parametrize(
    "environ,url,explicit,overrides,expected",
    [
        # -token-file > -token > CONSUL_HTTP_TOKEN_FILE > CONSUL_HTTP_TOKEN
        ({TOKEN: "env"}, None, {}, {}, "env"),
        ({TOKEN: "env", FILE: "@env-file"}, None, {}, {}, "env-file"),
        ({FILE: "@env-file"}, None, {}, {"token": "flag"}, "flag"),
        ({TOKEN: "env"}, None, {}, {"token": "flag", "token_file": "@flag-file"}, "flag-file"),
        # the backend's levels: settings > URL > environment, the file winning within each
        ({FILE: "@env-file"}, "consulresults://url@h/p", {}, {}, "url"),
        ({}, "consulresults://url@h/p?token_file=@url-file", {}, {}, "url-file"),
        ({}, "consulresults://h/p?token_file=@url-file", {"token": "setting"}, {}, "setting"),
        ({}, "consulresults://url@h/p", {"token": "s", "token_file": "@s-file"}, {}, "s-file"),
        # the CLI's flags over an app's settings
        ({}, None, {"token_file": "@setting-file"}, {"token": "flag"}, "flag"),
    ],
)
def test_token_precedence(token_files, environ, url, explicit, overrides, expected):
    def files(values):  # "@name" is a token file holding "name"
        return {
            k: token_files(v[1:], v[1:]) if str(v).startswith("@") else v for k, v in values.items()
        }

    if url and "@url-file" in url:
        url = url.replace("@url-file", token_files("url-file", "url-file"))
    settings = resolve(url, files(explicit), files(environ), files(overrides))
    assert settings.resolved_token() == expected


def test_an_empty_token_file_stays_an_error_whatever_lies_below(tmp_path):
    """Consul's client would fall back to the token; an empty file is more likely a mistake
    (a secret not mounted yet) than a wish for the agent's default token."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    settings = resolve(
        None, environ={"CONSUL_HTTP_TOKEN": "env"}, overrides={"token_file": str(empty)}
    )
    with pytest.raises(SettingsError, match="is empty"):
        settings.resolved_token()


def test_the_cli_sends_the_token_consul_would(consul_dev_server_factory, token_files):
    """A real process against ACLs: the wrong token file exported for the shell no longer beats
    ``--token``, and ``--token-file`` beats ``--token``."""
    from consulresults.devserver import AclConfig

    acl = AclConfig(enabled=True, default_policy="deny", management_token="mgmt")
    server = consul_dev_server_factory(acl=acl)
    env = clean_env(
        CONSUL_HTTP_ADDR=server.address, CONSUL_HTTP_TOKEN_FILE=token_files("stale", "stale")
    )
    assert run_cli("ls", "--prefix", "p", env=env).returncode == EXIT_PERMISSION  # stale
    assert run_cli("ls", "--prefix", "p", "--token", "mgmt", env=env).returncode == 0
    both = run_cli(
        "ls", "--prefix", "p", "--token", "stale", "--token-file", token_files("m", "mgmt"), env=env
    )
    assert both.returncode == 0, both.stderr
    env[TOKEN] = "mgmt"  # the environment's file beats its token
    assert run_cli("ls", "--prefix", "p", env=env).returncode == EXIT_PERMISSION


# ---------------------------------------------------------------------- unix sockets


def test_a_unix_socket_on_every_face(consul_dev_server_factory, short_dir):
    path = str(short_dir / "consul.sock")
    server = consul_dev_server_factory(socket=f"unix://{path}")
    assert server.socket_url == f"unix://{path}"
    key = f"unix-{uuid.uuid4().hex[:8]}"
    via_env = connect(resolve(None, environ={"CONSUL_HTTP_ADDR": f"unix://{path}"}))
    assert via_env.base_uri == f"unix://{path}"
    assert put_and_get(via_env, key, b"env") == b"env"
    via_url = connect(resolve(f"consulresults:///app?socket={path}", environ={}))
    assert put_and_get(via_url, key, b"url") == b"url"
    via_setting = connect(resolve("consulresults:///app", {"socket": path}, environ={}))
    assert put_and_get(via_setting, key, b"setting") == b"setting"
    assert set(server.connection_stats()["peak"]) == {"unix/"}  # no TCP connection at all
    env = clean_env(CONSUL_HTTP_ADDR=f"unix://{path}")
    result = run_cli("ls", "--prefix", key, "-o", "json", env=env)
    assert result.returncode == 0, result.stderr
    flag = run_cli("ls", "--prefix", key, "--http-addr", f"unix://{path}", env=clean_env())
    assert flag.returncode == 0, flag.stderr


def test_a_celery_backend_on_a_unix_socket(consul_dev_server_factory, make_app, short_dir):
    from celery import states

    path = str(short_dir / "consul.sock")
    consul_dev_server_factory(socket=path)
    app = make_app(backend=f"consulresults:///sock-app?socket={path}")
    app.backend.store_result("on-a-socket", 42, states.SUCCESS)
    assert app.AsyncResult("on-a-socket").get(timeout=10) == 42
    assert app.backend.as_uri() == f"consulresults:///sock-app?socket={path}"


def test_all_unix_clients_share_one_connection_limit(consul_dev_server_factory, short_dir):
    """go-connlimit keys a unix client by its socket name, empty unless it bound one."""
    path = str(short_dir / "consul.sock")
    server = consul_dev_server_factory(socket=path, http_max_conns_per_client=1)
    with socket.socket(socket.AF_UNIX) as held, socket.socket(socket.AF_UNIX) as refused:
        held.connect(path)
        held.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert held.recv(4096).startswith(b"HTTP/1.1 200")  # accepted and counted
        refused.connect(path)
        answer = refused.recv(4096)
    assert answer.startswith(b"HTTP/1.1 429 Too Many Requests")
    assert b"too many concurrent connections" in answer
    stats = server.connection_stats()
    assert (stats["peak"], stats["refused"]) == ({"unix/": 1}, {"unix/": 1})


def test_tls_on_a_unix_socket_when_the_scheme_asks(consul_dev_server_factory, short_dir):
    """Consul's client speaks TLS over the socket when CONSUL_HTTP_SSL is true, checking the
    name ``localhost`` (or CONSUL_TLS_SERVER_NAME)."""
    certs = make_ca_and_certs(short_dir)
    path = str(short_dir / "tls.sock")
    consul_dev_server_factory(socket=path, tls_cert=certs.server_cert, tls_key=certs.server_key)
    environ = {
        "CONSUL_HTTP_ADDR": f"unix://{path}",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_CACERT": certs.ca,
    }
    transport = connect(resolve(None, environ=environ))
    assert put_and_get(transport, f"tls-unix-{uuid.uuid4().hex[:6]}", b"tls") == b"tls"
    named = connect(resolve(None, environ={**environ, "CONSUL_TLS_SERVER_NAME": "nobody"}))
    with pytest.raises(Exception, match="certificate verify failed"):
        named.send("GET", "/v1/status/leader")


def test_the_dev_server_command_serves_a_socket(short_dir):
    from consulresults.devserver import DevServerProcess

    path = short_dir / "cmd.sock"
    path.write_text("a file that is no socket")
    with pytest.raises(RuntimeError, match=f"cannot listen on the socket {path}: exists and is"):
        DevServerProcess("--socket", f"unix://{path}").start()
    path.unlink()
    with DevServerProcess("--socket", f"unix://{path}"):
        transport = connect(resolve(None, environ={"CONSUL_HTTP_ADDR": f"unix://{path}"}))
        assert transport.send("GET", "/v1/status/leader").status == 200
    assert not path.exists()  # removed on the way out, as Consul's agent does


# ---------------------------------------------------------------------- a path, basic auth


@pytest.fixture
def proxied(consul_dev_server_factory):
    """A dev server behind a recording proxy under /consul that wants basic auth u:p:w."""
    server = consul_dev_server_factory()
    header = "Basic " + base64.b64encode(b"u:p:w").decode()
    with RecordingProxy(server.address, prefix="/consul", auth=header) as proxy:
        proxy.header = header
        yield proxy


def test_an_address_path_and_basic_auth_reach_the_agent_behind_a_proxy(proxied):
    key = f"proxied-{uuid.uuid4().hex[:8]}"
    environ = {"CONSUL_HTTP_ADDR": f"http://{proxied.address}/consul", "CONSUL_HTTP_AUTH": "u:p:w"}
    transport = connect(resolve(None, environ=environ))
    assert put_and_get(transport, key) == b"v"
    assert [seen.path.partition("?")[0] for seen in proxied.seen] == [
        f"/consul/v1/kv/{key}",
        f"/consul/v1/kv/{key}",
    ]
    assert {seen.headers["Authorization"] for seen in proxied.seen} == {proxied.header}
    assert {seen.headers["Host"] for seen in proxied.seen} == {proxied.address}
    without_auth = connect(resolve(None, environ={"CONSUL_HTTP_ADDR": environ["CONSUL_HTTP_ADDR"]}))
    assert without_auth.send("GET", f"/v1/kv/{key}").status == 401


def test_the_backend_url_forms_for_a_path_and_basic_auth(proxied, make_app):
    from celery import states

    url = f"consulresults://{proxied.address}/proxied-app?path_prefix=/consul&http_auth=u:p:w"
    app = make_app(backend=url)
    with pytest.warns(UserWarning, match="set CONSUL_HTTP_AUTH in the environment instead"):
        app.backend.store_result("behind-a-proxy", "ok", states.SUCCESS)
    assert app.AsyncResult("behind-a-proxy").get(timeout=10) == "ok"
    assert "p:w" not in app.backend.as_uri() and "http_auth" not in app.backend.as_uri()
    assert all(seen.path.startswith("/consul/v1/") for seen in proxied.seen)
    settings_app = make_app(
        backend=f"consulresults://{proxied.address}/proxied-app",
        consulresults_path_prefix="consul",
        consulresults_http_auth="u:p:w",
    )
    with pytest.warns(UserWarning, match="`celery report` prints basic auth"):
        assert settings_app.AsyncResult("behind-a-proxy").get(timeout=10) == "ok"


def test_the_cli_flags_for_a_path_and_basic_auth_and_the_auth_is_never_printed(proxied):
    addr = f"http://{proxied.address}/consul"
    ok = run_cli(
        "ls", "--prefix", "p", "--http-addr", addr, "--http-auth", "u:p:w", env=clean_env()
    )
    assert ok.returncode == 0, ok.stderr
    env = clean_env(CONSUL_HTTP_ADDR=addr, CONSUL_HTTP_AUTH="u:p:w")
    assert run_cli("ls", "--prefix", "p", env=env).returncode == 0
    wrong = run_cli("ls", "--prefix", "p", "--http-auth", "u:secret-pw", env=env)
    assert wrong.returncode != 0 and "401" in wrong.stderr  # the proxy's refusal
    assert "secret-pw" not in wrong.stdout + wrong.stderr
    unreachable = run_cli(
        "ls", "--prefix", "p", "--http-addr", "127.0.0.1:9", "--http-auth", "u:secret-pw"
    )
    assert unreachable.returncode != 0 and "secret-pw" not in unreachable.stderr


def test_basic_auth_is_split_at_the_first_colon_and_never_shown():
    def header(auth: str) -> str:
        return base64.b64decode(resolve(None, environ={"CONSUL_HTTP_AUTH": auth})
                                .authorization.split()[1]).decode()  # fmt: skip

    assert header("user") == "user:"  # no password: an empty one, as Go's SetBasicAuth
    assert header("user:pa:ss") == "user:pa:ss"
    settings = resolve("consulresults://h/p?http_auth=u:secret-pw", environ={})
    assert "secret-pw" not in repr(settings) + settings.redacted_url() + settings.endpoint
    with pytest.raises(SettingsError) as err:
        resolve(None, environ={"CONSUL_HTTP_ADDR": "http://u:secret-pw@h"})
    assert "secret-pw" not in str(err.value) and "CONSUL_HTTP_AUTH" in str(err.value)


# ---------------------------------------------------------------------- a CA directory


@pytest.fixture
def tls_server(consul_dev_server_factory, tmp_path):
    certs = make_ca_and_certs(tmp_path)
    server = consul_dev_server_factory(tls_cert=certs.server_cert, tls_key=certs.server_key)
    server.certs = certs
    return server


def test_a_ca_directory_of_plain_files(tls_server, tmp_path):
    """Any names, nested directories, several CAs: no OpenSSL hashed names needed."""
    (tmp_path / "other").mkdir()
    other = make_ca_and_certs(tmp_path / "other")
    ca_dir = tmp_path / "cas"
    (ca_dir / "nested").mkdir(parents=True)
    shutil.copy(other.ca, ca_dir / "someone-else.crt")
    shutil.copy(tls_server.certs.ca, ca_dir / "nested" / "our CA.pem")
    url = f"consulresults://{tls_server.address}/p?scheme=https&ca_path={ca_dir}"
    assert connect(resolve(url, environ={})).send("GET", "/v1/status/leader").status == 200
    environ = {"CONSUL_HTTP_ADDR": f"https://{tls_server.address}", "CONSUL_CAPATH": str(ca_dir)}
    assert connect(resolve(None, environ=environ)).send("GET", "/v1/status/leader").status == 200
    env = clean_env(CONSUL_HTTP_ADDR=f"https://{tls_server.address}")
    flag = run_cli("ls", "--prefix", "p", "--ca-path", str(ca_dir), env=env)
    assert flag.returncode == 0, flag.stderr
    assert run_cli("ls", "--prefix", "p", env=env | {"CONSUL_CAPATH": str(ca_dir)}).returncode == 0


def test_a_ca_directory_trusts_only_its_own(tls_server, tmp_path):
    """No system roots, nor the dev server's CA unless it is in the directory; a CA file beats
    the directory when both are set."""
    (tmp_path / "other").mkdir()
    other = make_ca_and_certs(tmp_path / "other")
    ca_dir = tmp_path / "only-other"
    ca_dir.mkdir()
    shutil.copy(other.ca, ca_dir / "ca.pem")
    environ = {"CONSUL_HTTP_ADDR": f"https://{tls_server.address}", "CONSUL_CAPATH": str(ca_dir)}
    with pytest.raises(Exception, match="certificate verify failed"):
        connect(resolve(None, environ=environ)).send("GET", "/v1/status/leader")
    with_file = {**environ, "CONSUL_CACERT": tls_server.certs.ca}
    assert connect(resolve(None, environ=with_file)).send("GET", "/v1/status/leader").status == 200


def test_a_file_in_the_ca_directory_that_is_not_pem_is_named(tls_server, tmp_path):
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    shutil.copy(tls_server.certs.ca, ca_dir / "ca.pem")
    (ca_dir / "README").write_text("these are our CAs\n")
    with pytest.raises(SettingsError, match=f"cannot use {ca_dir / 'README'} of the CA path"):
        connect(resolve(None, environ={"CONSUL_HTTP_SSL": "1", "CONSUL_CAPATH": str(ca_dir)}))
    (ca_dir / "README").write_bytes(b"\xff\xfe binary")
    with pytest.raises(SettingsError, match=r"README of the CA path .*: not PEM"):
        connect(resolve(None, environ={"CONSUL_HTTP_SSL": "1", "CONSUL_CAPATH": str(ca_dir)}))
    (tmp_path / "empty").mkdir()
    for missing, what in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "holds")):
        with pytest.raises(SettingsError, match=f"cannot use the CA path {missing}: it {what}"):
            connect(resolve(None, environ={"CONSUL_HTTP_SSL": "1", "CONSUL_CAPATH": str(missing)}))
    # a lone file is walked too, as go-rootcerts does
    lone = {
        "CONSUL_HTTP_ADDR": f"https://{tls_server.address}",
        "CONSUL_CAPATH": str(ca_dir / "ca.pem"),
    }
    assert connect(resolve(None, environ=lone)).send("GET", "/v1/status/leader").status == 200


# ---------------------------------------------------------------------- Go booleans


@pytest.mark.parametrize(
    "text,value",
    [
        *((t, True) for t in ("1", "t", "T", "TRUE", "true", "True", "yes", "on", "ON")),
        *((f, False) for f in ("0", "f", "F", "FALSE", "false", "False", "no", "off")),
    ],
)
def test_go_booleans(text, value):
    settings = resolve(None, environ={"CONSUL_HTTP_SSL": text, "CONSUL_HTTP_SSL_VERIFY": text})
    assert (settings.scheme == "https", settings.verify) == (value, value)
    assert resolve(f"consulresults://h/p?verify={text}", environ={}).verify is value


def test_a_word_that_is_no_boolean_is_named():
    with pytest.raises(SettingsError, match="CONSUL_HTTP_SSL: expected true or false, not 'sure'"):
        resolve(None, environ={"CONSUL_HTTP_SSL": "sure"})


# ---------------------------------------------------------------------- what tells endpoints apart


def test_socket_path_and_auth_make_pools_identities_and_pressure_files_apart():
    base = resolve("consulresults://h:8500/p", environ={})
    variants = {
        "socket": resolve("consulresults:///p?socket=/run/a.sock", environ={}),
        "other socket": resolve("consulresults:///p?socket=/run/b.sock", environ={}),
        "path": resolve("consulresults://h:8500/p?path_prefix=/a", environ={}),
        "other path": resolve("consulresults://h:8500/p?path_prefix=/b", environ={}),
        "auth": resolve("consulresults://h:8500/p?http_auth=u:one", environ={}),
        "other auth": resolve("consulresults://h:8500/p?http_auth=u:two", environ={}),
    }
    transports = {name: connect(s) for name, s in {"base": base, **variants}.items()}
    assert len({t.identity for t in transports.values()}) == len(transports)
    assert len({id(t.pool) for t in transports.values()}) == len(transports)
    pressure_files = {HostPressure(s.endpoint, 10.0).path for s in [base, *variants.values()]}
    assert len(pressure_files) == len(transports)
    assert not any("one" in path or "two" in path for path in pressure_files)
    again = connect(resolve("consulresults://h:8500/other-prefix?http_auth=u:one", environ={}))
    assert again.identity == transports["auth"].identity  # the same endpoint: shared
