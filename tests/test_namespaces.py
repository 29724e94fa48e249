"""Consul Enterprise's namespaces and partitions on both faces, over real HTTP: sent only when
set (``ns``/``partition`` on KV and session calls, fields of each txn operation), results and
their sessions kept in their namespace, and refused at once by Consul CE, txn-only paths too."""

from __future__ import annotations

import pytest
import requests
from celery import states
from conftest import backend_url
from typer.testing import CliRunner

from consulresults.cli import app as cli_app


@pytest.fixture
def enterprise(consul_dev_server_factory):
    return consul_dev_server_factory(enterprise=True)


def raw_keys(server, prefix: str, **scope: str) -> list[str]:
    answer = requests.get(
        f"{server.url}/v1/kv/{prefix}/", params={"keys": "1", **scope}, timeout=10
    )
    assert answer.status_code in (200, 404), answer.text
    return answer.json() if answer.status_code == 200 else []


def sessions(server, **scope: str) -> list[str]:
    answer = requests.get(f"{server.url}/v1/session/list", params=scope, timeout=10)
    assert answer.status_code == 200, answer.text
    return [s["Name"] for s in answer.json()]


def test_results_and_their_sessions_live_in_the_namespace(enterprise, make_app):
    app = make_app(backend=backend_url(enterprise, "ns-app") + "?ns=team-a&partition=part-1")
    app.backend.store_result("in-team-a", 42, states.SUCCESS)
    assert app.backend.get_task_meta("in-team-a", cache=False)["result"] == 42
    scope = {"ns": "team-a", "partition": "part-1"}
    assert raw_keys(enterprise, "ns-app", **scope) == ["ns-app/celery-task-meta-in-team-a"]
    assert raw_keys(enterprise, "ns-app") == []  # not in the default namespace
    assert raw_keys(enterprise, "ns-app", ns="team-a") == []  # nor another partition
    assert any(name.startswith("consul-results") for name in sessions(enterprise, **scope))
    assert not sessions(enterprise)


def test_the_cli_reads_the_namespace_from_its_flag_and_the_environment(
    enterprise, make_app, monkeypatch
):
    app = make_app(backend=backend_url(enterprise, "ns-cli"), consulresults_namespace="team-b")
    app.backend.store_result("seen", 1, states.SUCCESS)
    runner = CliRunner()
    base = ["ls", "--http-addr", enterprise.address, "--prefix", "ns-cli", "-o", "tsv"]
    flagged = runner.invoke(cli_app, [*base, "--namespace", "team-b"])
    assert flagged.exit_code == 0, flagged.output
    assert "seen" in flagged.stdout
    monkeypatch.setenv("CONSUL_NAMESPACE", "team-b")
    from_env = runner.invoke(cli_app, base)
    assert from_env.exit_code == 0 and "seen" in from_env.stdout, from_env.output
    monkeypatch.delenv("CONSUL_NAMESPACE")
    default = runner.invoke(cli_app, base)
    assert "seen" not in default.stdout


def test_consul_ce_refuses_a_namespace_at_once(consul_dev_server_factory, make_app):
    server = consul_dev_server_factory()
    app = make_app(backend=backend_url(server, "ce") + "?ns=default")
    with pytest.raises(Exception, match="Namespaces are a Consul Enterprise feature") as caught:
        app.backend.store_result("nowhere", 1, states.SUCCESS)
    assert "unset the namespace 'default'" in str(caught.value)
    assert raw_keys(server, "ce") == []


def test_consul_ce_refuses_a_namespace_on_a_txn_only_path_too(consul_dev_server_factory, make_app):
    """Batched reads are txns, which Consul CE runs in the default namespace whatever their
    operations say: the scope is checked first, so they fail instead of reading another
    namespace's results."""
    server = consul_dev_server_factory()
    plain = make_app(backend=backend_url(server, "ce-txn"))
    plain.backend.store_result("default-ns", 1, states.SUCCESS)
    scoped = make_app(backend=backend_url(server, "ce-txn") + "?ns=team-a")
    key = scoped.backend.store.key("celery-task-meta-default-ns")
    server.reset_counters()
    with pytest.raises(Exception, match="Namespaces are a Consul Enterprise feature"):
        scoped.backend.store.entries([key])
    assert server.counters().get("txn", 0) == 0


def test_consul_ce_refuses_a_partition_on_a_read(consul_dev_server_factory):
    server = consul_dev_server_factory()
    result = CliRunner().invoke(
        cli_app, ["get", "x", "--http-addr", server.address, "--prefix", "p", "--partition", "p1"]
    )
    assert result.exit_code != 0
    assert "Partitions are a Consul Enterprise feature" in result.output


def test_without_a_namespace_nothing_is_sent(consul_server, make_app, consul_prefix):
    """On Consul CE (and an agent with no namespace set) the calls carry no ns/partition."""
    app = make_app()
    app.backend.store_result("plain", 1, states.SUCCESS)
    assert app.backend.transport.scope.params("/v1/kv/x", []) == []
    assert app.backend.get_task_meta("plain", cache=False)["result"] == 1


def test_doctor_names_the_scope_and_where_the_credentials_came_from(
    enterprise, tmp_path, monkeypatch
):
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token\n")
    monkeypatch.setenv("CONSUL_NAMESPACE", "team-c")
    monkeypatch.setenv("CONSUL_HTTP_AUTH", "alice:pa55word")
    args = ["doctor", "--http-addr", enterprise.address, "--prefix", "d"]
    result = CliRunner().invoke(cli_app, [*args, "--token-file", str(token_file)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if "scope and credentials" in x)
    assert "namespace team-c (CONSUL_NAMESPACE); partition: default" in line
    assert "token read from a file (--token-file)" in line
    assert "basic auth (CONSUL_HTTP_AUTH)" in line
    assert "the agent's default ACL policy: allow" in line
    assert "s3cr3t" not in result.output and "pa55word" not in result.output
