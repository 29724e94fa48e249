"""Malformed URLs, ports, durations, tokens and certificates (issue 5): at every entry point (the
CLI as a real process, the backend inside Celery, the dev server), one line saying what is wrong
and what to do; no traceback, nothing written, and never the token."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from conftest import run_cli

from consulresults.devserver import DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

SECRET = "s3cr3t-token-value"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from certs import make_ca_and_certs

    base = tmp_path_factory.mktemp("malformed")
    (base / "bad.pem").write_text("not a certificate\n")
    (base / "empty.token").write_text("")
    (base / "two-lines.token").write_text(f"{SECRET}\n{SECRET}\n")
    (base / "certs").mkdir()
    return {"dir": base, "certs": make_ca_and_certs(base / "certs")}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"PATH": "/usr/bin:/bin", **(env or {})})


BACKEND = "consul-results: consulresults backend: "
CLI_CASES = [  # (arguments, environment, exit status, the start of the one error line)
    (
        ["ls", "--backend-url", "consulresults://h:99999/p"],
        {},
        2,
        BACKEND + "result_backend URL: invalid port '99999'",
    ),
    (
        ["ls", "--backend-url", "consulresults://h:http/p"],
        {},
        2,
        BACKEND + "result_backend URL: invalid port 'http'",
    ),
    (
        ["ls", "--backend-url", f"consulresults://:{SECRET}@[::1/p"],
        {},
        2,
        BACKEND + "result_backend URL: malformed (Invalid IPv6 URL)",
    ),
    (
        ["ls", "--backend-url", "127.0.0.1:8500/p"],
        {},
        2,
        BACKEND + "result_backend URL: expected consulresults://host:port/prefix",
    ),
    (
        ["ls", "--backend-url", "consulresults://h/p?timeout=soon"],
        {},
        2,
        BACKEND + "result_backend URL option timeout: expected a number of seconds",
    ),
    (
        ["ls", "--backend-url", "consulresults://h/p?timeout=0"],
        {},
        2,
        BACKEND + "result_backend URL option timeout: must be more than 0 seconds",
    ),
    (
        ["ls", "--backend-url", "consulresults://h/p?verify=maybe"],
        {},
        2,
        BACKEND + "result_backend URL option verify: expected true or false",
    ),
    (
        ["ls", "--backend-url", "consulresults://h/p?tiemout=3"],
        {},
        2,
        BACKEND + "result_backend URL: unknown option 'tiemout'",
    ),
    (
        ["ls", "--prefix", "p", "--http-addr", "127.0.0.1:0"],
        {},
        2,
        BACKEND + "setting option address: invalid port '0'",
    ),
    (
        ["ls", "--prefix", "p", "--http-addr", "[::1:8500"],
        {},
        2,
        BACKEND + "setting option address: unclosed '['",
    ),
    (
        ["ls", "--prefix", "p", "--http-addr", "ftp://consul.local"],
        {},
        2,
        BACKEND + "setting option address: unsupported scheme 'ftp'",
    ),
    (
        ["ls", "--prefix", "p"],
        {"CONSUL_HTTP_ADDR": "127.0.0.1:eighty"},
        2,
        BACKEND + "CONSUL_HTTP_ADDR: invalid port 'eighty'",
    ),
    (
        ["ls", "--prefix", "p"],
        {"CONSUL_HTTP_SSL": "perhaps"},
        2,
        BACKEND + "CONSUL_HTTP_SSL: expected true or false",
    ),
    (["ls", "--prefix", "../etc"], {}, 2, BACKEND + "invalid prefix '../etc'"),
    (
        ["ls", "--prefix", "p", "--older-than", "7 days"],
        {},
        2,
        "consul-results: --older-than: '7 days' is not a duration like 7d",
    ),
    (
        ["ls", "--prefix", "p", "--newer-than", ""],
        {},
        2,
        "consul-results: --newer-than: '' is not a duration",
    ),
    (
        ["ls", "--prefix", "p", "--limit", "many"],
        {},
        2,
        "consul-results ls: Invalid value for '--limit'",
    ),
    (
        ["get", "--prefix", "p", "--wait", "--timeout", "-5", "x"],
        {},
        2,
        "consul-results get: Invalid value for '--timeout'",
    ),
    (
        ["ls", "--prefix", "p", "--token", f"{SECRET}\n"],
        {},
        2,
        BACKEND + "the Consul token contains spaces, control or non-ASCII",
    ),
    (
        ["ls", "--prefix", "p"],
        {"CONSUL_HTTP_TOKEN": f"{SECRET} x"},
        2,
        BACKEND + "the Consul token contains spaces",
    ),
    (
        ["ls", "--prefix", "p", "--token-file", "{dir}/two-lines.token"],
        {},
        2,
        BACKEND + "the Consul token in {dir}/two-lines.token contains",
    ),
    (
        ["ls", "--prefix", "p", "--token-file", "{dir}/empty.token"],
        {},
        2,
        BACKEND + "the Consul token file {dir}/empty.token is empty",
    ),
    (
        ["ls", "--prefix", "p", "--token-file", "{dir}/missing"],
        {},
        2,
        BACKEND + "cannot read the Consul token file {dir}/missing: No such file",
    ),
    (
        ["ls", "--prefix", "p", "--ca-file", "{dir}/missing"],
        {},
        2,
        BACKEND + "cannot use the CA file {dir}/missing: no such file",
    ),
    (
        ["ls", "--prefix", "p", "--ca-file", "{dir}/bad.pem"],
        {},
        2,
        BACKEND + "cannot use the CA file {dir}/bad.pem: no certificate or crl found",
    ),
    (
        ["ls", "--prefix", "p"],
        {"CONSUL_CACERT": "{dir}/bad.pem"},
        2,
        BACKEND + "cannot use the CA file {dir}/bad.pem",
    ),
    (
        ["ls", "--prefix", "p", "--client-cert", "{dir}/bad.pem", "--client-key", "{dir}/bad.pem"],
        {},
        2,
        BACKEND + "cannot use the client certificate {dir}/bad.pem with key {dir}/bad.pem: not pem",
    ),
    (
        ["ls", "--prefix", "p", "--client-cert", "{client_cert}", "--client-key", "{server_key}"],
        {},
        2,
        BACKEND
        + "cannot use the client certificate {client_cert} with key {server_key}: key values "
        "mismatch",
    ),
    (
        ["ls", "--prefix", "p", "--client-key", "{client_key}"],
        {},
        2,
        BACKEND + "a client key needs its client certificate",
    ),
    (
        ["dev-server", "--port", "70000"],
        {},
        2,
        "consul-results dev-server: Invalid value for '--port'",
    ),
    (
        ["dev-server", "--session-ttl-min", "10 seconds"],
        {},
        2,
        "consul-results: invalid dev-server option: time: invalid duration",
    ),
    (
        ["dev-server", "--tls-cert", "{dir}/bad.pem", "--tls-key", "{dir}/bad.pem"],
        {},
        2,
        "consul-results: invalid dev-server option: cannot load --tls-cert {dir}/bad.pem / "
        "--tls-key {dir}/bad.pem: not pem",
    ),
    (
        [
            "dev-server",
            "--tls-cert",
            "{server_cert}",
            "--tls-key",
            "{server_key}",
            "--tls-ca",
            "{dir}/bad.pem",
        ],
        {},
        2,
        "consul-results: invalid dev-server option: cannot load --tls-ca {dir}/bad.pem",
    ),
    (
        ["dev-server", "--acl-token", SECRET],
        {},
        2,
        "consul-results: --acl-token must look like SECRET=RULES",
    ),
    (
        ["dev-server", "--data-dir", "/proc/version/state"],
        {},
        2,
        "consul-results: cannot use --data-dir /proc/version/state",
    ),
    (
        ["dev-server", "--session-ttl-min", "10"],
        {},
        2,
        'consul-results: invalid dev-server option: time: invalid duration "10"',
    ),
    (
        ["dev-server", "--acl-token", "t=[bad"],
        {},
        2,
        "consul-results: invalid dev-server option: ACL rules are not valid JSON",
    ),
    (
        ["dev-server", "--acl-default-policy", "maybe"],
        {},
        2,
        "consul-results: invalid dev-server option: ACL default policy must be 'allow' or 'deny'",
    ),
]


def _fill(text: str, files: dict) -> str:
    certs = files["certs"]
    return text.format(
        dir=files["dir"],
        client_cert=certs.client_cert,
        client_key=certs.client_key,
        server_cert=certs.server_cert,
        server_key=certs.server_key,
    )


def test_every_malformed_input_is_one_clear_line_from_the_cli(files):
    """All cases run as real processes (in parallel), each checked for its status and line."""
    cases = [
        ([_fill(a, files) for a in args], {k: _fill(v, files) for k, v in env.items()}, code, line)
        for args, env, code, line in CLI_CASES
    ]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda case: cli(*case[0], env=case[1]), cases))
    for (args, _env, code, line), run in zip(cases, runs, strict=True):
        assert (run.returncode, run.stdout) == (code, ""), (args, run.stderr)
        assert len(run.stderr.splitlines()) == 1, (args, run.stderr)
        assert run.stderr.startswith(_fill(line, files)), (args, run.stderr)
        assert SECRET not in run.stderr


@pytest.mark.parametrize(
    ("url", "conf", "message"),
    [
        ("consulresults://h:0/p", {}, "result_backend URL: invalid port '0'"),
        (f"consulresults://:{SECRET}@[::1/p", {}, "result_backend URL: malformed"),
        ("consulresults://h/p?timeout=never", {}, "option timeout: expected a number of seconds"),
        ("consulresults://h/p", {"consulresults_session_window": "-1"}, "must be more than 0"),
        (
            "consulresults://h/p",
            {"consulresults_token": f"{SECRET}\n"},
            "the Consul token contains",
        ),
        (
            "consulresults://h/p",
            {"consulresults_ca_file": "/nonexistent/ca.pem"},
            "cannot use the CA",
        ),
        ("consulresults://h/p/../q", {}, "invalid prefix"),
    ],
)
def test_every_malformed_setting_is_one_clear_line_from_celery(url, conf, message):
    app = Celery("bad", set_as_current=False)
    app.conf.update(result_backend=url, **conf)
    with pytest.raises(ImproperlyConfigured) as raised:
        app.backend  # noqa: B018 - building the backend is what fails
    text = str(raised.value)
    assert text.startswith("consulresults backend: ") and message in text
    assert "\n" not in text and SECRET not in text


@pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)
def test_cli_tls_untrusted_certificate_and_missing_client_certificate(files):
    """Verification is on by default: a CA the CLI does not trust is one line and exit 69;
    a server that wants client certificates says so in one line too; with both, it works."""
    certs = files["certs"]
    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-ca", certs.ca]
    with DevServerProcess(*tls) as server:
        addr = ["--http-addr", f"https://{server.address}", "--prefix", "tls"]
        untrusted = cli("ls", *addr)
        assert untrusted.returncode == 69
        assert untrusted.stderr.splitlines() == [
            f"consul-results: TLS failed talking to Consul at https://{server.address}: "
            "certificate verify failed (check --ca-file, --client-cert, --client-key, "
            "--tls-server-name)"
        ]
        no_client_cert = cli("ls", *addr, "--ca-file", certs.ca)
        assert no_client_cert.returncode == 69
        assert len(no_client_cert.stderr.splitlines()) == 1
        assert no_client_cert.stderr.startswith(
            f"consul-results: cannot reach Consul at https://{server.address}: closed without an "
            "answer (a Consul that requires TLS client certificates does this: --client-cert)"
        )
        mutual = ["--client-cert", certs.client_cert, "--client-key", certs.client_key]
        works = cli("ls", *addr, "--ca-file", certs.ca, *mutual, "-o", "json")
        assert (works.returncode, works.stdout.strip(), works.stderr) == (0, "[]", "")
        via_env = cli(
            "ls",
            *addr,
            "-o",
            "json",
            env={
                "CONSUL_CACERT": certs.ca,
                "CONSUL_CLIENT_CERT": certs.client_cert,
                "CONSUL_CLIENT_KEY": certs.client_key,
            },
        )
        assert (via_env.returncode, via_env.stdout.strip()) == (0, "[]")
