"""ACL enforcement on a deny-by-default dev server (docs/consul-api.md §1.4, §6)."""

from __future__ import annotations

import json

import pytest
from conftest import Api

MANAGEMENT = "root-secret"
APP = "app-secret"
READER = "reader-secret"
APP_RULES = {
    "key_prefix": {"app/": {"policy": "write"}, "app/locked/": "deny"},
    "session_prefix": {"": "write"},
}
READER_RULES = {"key_prefix": {"app/": "read"}, "key": {"public": "read"}}


@pytest.fixture
def acl_server(consul_dev_server_factory):
    from consulresults.devserver import AclConfig

    acl = AclConfig(
        enabled=True,
        default_policy="deny",
        management_token=MANAGEMENT,
        tokens={APP: APP_RULES, READER: json.dumps(READER_RULES)},
    )
    server = consul_dev_server_factory(acl=acl)
    root = Api(server.url, MANAGEMENT)
    for key in ("app/a", "app/b", "app/locked/x", "other/c", "public"):
        assert root.put(f"/v1/kv/{key}", b"v").json() is True
    return server


def test_anonymous_is_denied_with_consuls_text(acl_server):
    response = Api(acl_server.url).get("/v1/kv/app/a")
    assert response.status_code == 403
    assert response.text == (
        "Permission denied: anonymous token lacks permission 'key:read' on \"app/a\". The "
        "anonymous token is used implicitly when a request does not specify a token."
    )
    assert response.headers["X-Consul-Default-Acl-Policy"] == "deny"


def test_unknown_token_is_acl_not_found(acl_server):
    response = Api(acl_server.url, "who-am-i").get("/v1/kv/app/a")
    assert (response.status_code, response.text) == (403, "ACL not found")


def test_token_sources_header_bearer_and_query(acl_server):
    import requests

    url = f"{acl_server.url}/v1/kv/app/a"
    assert requests.get(url, headers={"X-Consul-Token": APP}).status_code == 200
    assert requests.get(url, headers={"Authorization": f"bearer {APP}"}).status_code == 200
    assert requests.get(url, params={"token": APP}).status_code == 200
    assert requests.get(url, params={"token": ""}).status_code == 403  # empty = absent


def test_prefix_token_reads_and_writes_inside_only(acl_server):
    app = Api(acl_server.url, APP)
    assert app.put("/v1/kv/app/new", b"v").json() is True
    denied = app.put("/v1/kv/other/new", b"v")
    assert denied.status_code == 403
    assert denied.text.startswith("Permission denied: token with AccessorID '")
    assert "lacks permission 'key:write' on \"other/new\"" in denied.text
    assert app.get("/v1/kv/app/locked/x").status_code == 403  # deny beats the shorter prefix
    assert app.get("/v1/kv/other/c").status_code == 403
    reader = Api(acl_server.url, READER)
    assert reader.get("/v1/kv/public").status_code == 200
    assert reader.put("/v1/kv/app/a", b"w").status_code == 403


def test_lists_are_filtered_not_refused(acl_server):
    listed = Api(acl_server.url, APP).get("/v1/kv/?recurse")
    assert listed.status_code == 200
    assert [e["Key"] for e in listed.json()] == ["app/a", "app/b", "app/new"][: len(listed.json())]
    assert listed.headers["X-Consul-Results-Filtered-By-Acls"] == "true"
    nothing = Api(acl_server.url, APP).get("/v1/kv/other/?keys")
    assert nothing.status_code == 404


def test_delete_tree_needs_write_on_the_whole_prefix(acl_server):
    app = Api(acl_server.url, APP)
    assert app.delete("/v1/kv/app/?recurse").status_code == 403  # app/locked/ is denied
    assert app.delete("/v1/kv/app/a?recurse").json() is True
    root = Api(acl_server.url, MANAGEMENT)
    assert root.entry("app/locked/x") is not None
    assert root.entry("app/b") is not None


def test_txn_denials_are_per_op_errors(acl_server):
    app = Api(acl_server.url, APP)
    response = app.put(
        "/v1/txn",
        json=[
            {"KV": {"Verb": "set", "Key": "app/t", "Value": "dg=="}},
            {"KV": {"Verb": "delete", "Key": "other/c"}},
            {"KV": {"Verb": "get", "Key": "other/c"}},
        ],
    )
    assert response.status_code == 409
    errors = response.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [1]
    assert errors[0]["What"].startswith("Permission denied")
    readable = app.put("/v1/txn", json=[{"KV": {"Verb": "get-tree", "Key": "app/"}}])
    keys = [r["KV"]["Key"] for r in readable.json()["Results"]]
    assert "app/a" in keys
    assert "app/locked/x" not in keys  # unreadable results are dropped silently
    assert Api(acl_server.url, MANAGEMENT).entry("other/c") is not None


def test_sessions_and_agent_need_their_permissions(acl_server):
    reader = Api(acl_server.url, READER)
    denied = reader.put("/v1/session/create")
    assert denied.status_code == 403
    assert "session:write" in denied.text
    app = Api(acl_server.url, APP)
    session_id = app.session(Checks=[])
    assert session_id
    assert reader.get("/v1/session/list").json() == []  # filtered, not refused
    assert app.get("/v1/agent/self").status_code == 403
    assert Api(acl_server.url, MANAGEMENT).get("/v1/agent/self").status_code == 200
    assert Api(acl_server.url).get("/v1/status/leader").status_code == 200  # no ACL


def test_bad_rules_are_refused_with_a_clear_error():
    from consulresults.devserver import AclConfig, AclRuleError

    with pytest.raises(AclRuleError, match="unsupported ACL rule section 'service_prefix'"):
        AclConfig(enabled=True, tokens={"t": {"service_prefix": {"": "write"}}})
    with pytest.raises(AclRuleError, match="policy must be one of"):
        AclConfig(enabled=True, tokens={"t": {"key_prefix": {"": "admin"}}})
