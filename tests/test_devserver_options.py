"""The ``dev-server`` options turned into a server (``build_server``), without the command: what
each option sets up is really in force, and every unusable option is one ``OptionError``."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Api

from consulresults.devserver import (
    DevServerOptions,
    ListenError,
    OptionError,
    announce_listening,
    build_server,
    run,
)

ITEM_SECRET = "item-secret"
FILE_SECRET = "file-secret"
ROOT_SECRET = "root-secret"


def options(**changes) -> DevServerOptions:
    """The command's defaults, on a free port."""
    return replace(DevServerOptions(port=0), **changes)


@contextlib.contextmanager
def serving(opts: DevServerOptions):
    server = build_server(opts).start()
    try:
        yield server
    finally:
        server.stop()


def put_status(server, key: str, token: str | None = None) -> int:
    return Api(server.url, token).put(f"/v1/kv/{key}", b"v").status_code


def test_acl_tokens_from_items_and_file_are_enforced(tmp_path):
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({FILE_SECRET: {"key_prefix": {"file/": "write"}}}))
    opts = options(
        acl_default_policy="deny",
        acl_management_token=ROOT_SECRET,
        acl_token=[f'{ITEM_SECRET}={{"key_prefix": {{"item/": "write"}}}}'],
        acl_tokens_file=tokens_file,
    )
    with serving(opts) as server:
        assert put_status(server, "item/a") == 403
        assert put_status(server, "item/a", ITEM_SECRET) == 200
        assert put_status(server, "file/a", ITEM_SECRET) == 403
        assert put_status(server, "file/a", FILE_SECRET) == 200
        assert put_status(server, "item/a", FILE_SECRET) == 403
        assert put_status(server, "elsewhere", ROOT_SECRET) == 200


def test_an_item_replaces_the_files_rules_for_the_same_secret(tmp_path):
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({ITEM_SECRET: {"key_prefix": {"file/": "write"}}}))
    opts = options(
        acl_default_policy="deny",
        acl_token=[f'{ITEM_SECRET}={{"key_prefix": {{"item/": "write"}}}}'],
        acl_tokens_file=tokens_file,
    )
    with serving(opts) as server:
        assert put_status(server, "item/a", ITEM_SECRET) == 200
        assert put_status(server, "file/a", ITEM_SECRET) == 403


def test_a_token_alone_enables_acls_with_the_allow_default():
    opts = options(acl_token=[f'{ITEM_SECRET}={{"key_prefix": {{"item/": "deny"}}}}'])
    with serving(opts) as server:
        assert put_status(server, "item/a") == 200
        assert put_status(server, "item/a", ITEM_SECRET) == 403
        response = Api(server.url, "unknown-secret").get("/v1/kv/item/a")
        assert (response.status_code, response.text) == (403, "ACL not found")


def test_without_acl_options_any_token_may_do_anything():
    with serving(options()) as server:
        assert put_status(server, "a", "unknown-secret") == 200


def test_error_fraction_one_answers_every_api_request_with_the_fault():
    opts = options(fault_error_fraction=1.0, fault_status=503, fault_body="Try later")
    with serving(opts) as server:
        api = Api(server.url)
        answers = [
            (r.status_code, r.text)
            for r in (api.put("/v1/kv/a", b"v"), api.get("/v1/kv/a"), api.delete("/v1/kv/a"))
        ]
        assert answers == [(503, "Try later")] * 3
        assert server.faults.injected["error"] == 3


def test_latency_and_reset_options_install_their_rules():
    server = build_server(
        options(fault_latency="1500ms", fault_latency_fraction=0.5, fault_reset_fraction=0.25)
    )
    rules = [(r["kind"], r["fraction"], r["seconds"]) for r in server.faults.rules()]
    assert rules == [("latency", 0.5, 1.5), ("reset", 0.25, 0.0)]


def test_no_fault_options_install_no_rules():
    assert build_server(options()).faults.rules() == []


def test_data_dir_is_created_and_keeps_state_across_servers(tmp_path):
    data_dir = tmp_path / "not" / "yet"
    opts = options(data_dir=data_dir)
    server = build_server(opts)
    assert data_dir.is_dir()
    with server:
        assert put_status(server, "kept") == 200
    with serving(opts) as again:
        assert Api(again.url).entry("kept") is not None


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    (tmp_path / "not-json").write_text("{secret: rules}")
    (tmp_path / "list.json").write_text('["secret"]')
    (tmp_path / "a-file").write_text("")
    return tmp_path


INVALID = [  # (options, with {dir} for the test's directory; the exact message)
    ({"acl_token": ["s3cr3t"]}, "--acl-token must look like SECRET=RULES"),
    ({"acl_token": ["=rules"]}, "--acl-token must look like SECRET=RULES"),
    (
        {"acl_token": ["t=[bad"]},
        "invalid dev-server option: ACL rules are not valid JSON: Expecting value",
    ),
    (
        {"acl_default_policy": "maybe"},
        "invalid dev-server option: ACL default policy must be 'allow' or 'deny'",
    ),
    ({"session_ttl_min": "10"}, 'invalid dev-server option: time: invalid duration "10"'),
    ({"fault_latency": "2 s"}, 'invalid dev-server option: time: invalid duration "2 s"'),
    (
        {"fault_error_fraction": 2.0},
        "invalid dev-server option: fault fraction must be between 0 and 1",
    ),
    ({"port": 70000}, "invalid dev-server option: --port must be between 0 and 65535, not 70000"),
    (
        {"tls_key": "{dir}/bad.pem"},
        "invalid dev-server option: TLS needs --tls-cert (with --tls-key); --tls-key/--tls-ca "
        "alone do not enable it",
    ),
    (
        {"tls_cert": "{dir}/bad.pem", "tls_key": "{dir}/bad.pem"},
        "invalid dev-server option: cannot load --tls-cert {dir}/bad.pem / --tls-key "
        "{dir}/bad.pem: not pem, or the key does not match (expect PEM files: the certificate "
        "and its unencrypted private key)",
    ),
    (
        {"acl_tokens_file": "{dir}/missing.json"},
        "invalid dev-server option: [Errno 2] No such file or directory: '{dir}/missing.json'",
    ),
    (
        {"acl_tokens_file": "{dir}/not-json"},
        "invalid dev-server option: Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1)",
    ),
    (
        {"acl_tokens_file": "{dir}/list.json"},
        "invalid dev-server option: --acl-tokens-file {dir}/list.json must hold a JSON object "
        "{SECRET: RULES, ...}",
    ),
    (
        {"data_dir": "{dir}/a-file/state"},
        "cannot use --data-dir {dir}/a-file/state: Not a directory",
    ),
]


PATH_OPTIONS = {"tls_key", "tls_cert", "acl_tokens_file", "data_dir"}


@pytest.mark.parametrize(("changes", "message"), INVALID)
def test_each_invalid_option_is_one_option_error(bad_files, changes, message):
    def fill(text: str) -> str:
        return text.replace("{dir}", str(bad_files))

    opts = options(**{k: Path(fill(v)) if k in PATH_OPTIONS else v for k, v in changes.items()})
    with pytest.raises(OptionError) as raised:
        build_server(opts)
    assert str(raised.value) == fill(message)


def test_run_refuses_a_busy_port_with_listen_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as raised:
            run(options(port=port), announce=pytest.fail)
    assert str(raised.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use "
        "(choose another --port, or --port 0 for a free one)"
    )


def test_run_raises_option_error_before_listening():
    with pytest.raises(OptionError, match="invalid duration"):
        run(options(session_ttl_min="soon"), announce=pytest.fail)


def test_announce_prints_the_line_whose_last_word_is_the_url(capsys):
    announce_listening("http://127.0.0.1:8500")
    assert (
        capsys.readouterr().out == "consul-results dev-server listening on http://127.0.0.1:8500\n"
    )


def test_the_command_and_the_options_agree_on_every_default():
    """The CLI declares the options for Typer; DevServerOptions is what a Python caller builds:
    the same names and the same defaults, so both start the same server."""
    import dataclasses
    import inspect

    from consulresults.commands.devserver import dev_server

    command = {name: p.default for name, p in inspect.signature(dev_server).parameters.items()}
    options = {f.name: f.default for f in dataclasses.fields(DevServerOptions)}
    assert command == options
