"""``X-Consul-Results-Filtered-By-Acls: true`` as Consul sends it: on list answers (KV
``?recurse`` and ``?keys``, session info, list and node), only when the ACLs left something out,
and only for a request with a token, its own or the agent's default (docs/consul-api.md §1.2)."""

from __future__ import annotations

import pytest
from conftest import Api

ROOT = "root-secret"
APP = "app-secret"
HEADER = "X-Consul-Results-Filtered-By-Acls"
APP_RULES = {"key_prefix": {"app/": "write"}, "session_prefix": {"": "read"}}
LISTS = ["/v1/kv/?recurse", "/v1/kv/?keys", "/v1/kv/?keys&separator=/"]


def acl_server(factory, default_token: str | None = None):
    from consulresults.devserver import AclConfig

    acl = AclConfig(
        enabled=True,
        default_policy="deny",
        management_token=ROOT,
        tokens={APP: APP_RULES, "nodes-secret": {"session": {"other-node": "read"}}},
        default_token=default_token,
    )
    server = factory(acl=acl)
    root = Api(server.url, ROOT)
    for key in ("app/a", "app/b", "other/c"):
        assert root.put(f"/v1/kv/{key}", b"v").json() is True
    return server


@pytest.fixture
def server(consul_dev_server_factory):
    return acl_server(consul_dev_server_factory)


@pytest.mark.parametrize("path", LISTS)
def test_a_token_that_misses_entries_is_told(server, path):
    listed = Api(server.url, APP).get(path)
    assert listed.status_code == 200
    assert listed.headers[HEADER] == "true"
    assert "other/" not in listed.text


@pytest.mark.parametrize("path", LISTS)
def test_no_header_when_nothing_was_left_out(server, path):
    assert HEADER not in Api(server.url, ROOT).get(path).headers
    assert HEADER not in Api(server.url, APP).get(path.replace("/v1/kv/", "/v1/kv/app/")).headers


@pytest.mark.parametrize("path", LISTS)
def test_never_for_the_anonymous_token(server, path):
    listed = Api(server.url).get(path)  # everything filtered by the deny policy, yet no header
    assert HEADER not in listed.headers


def test_a_listing_left_empty_by_acls_is_a_404_that_says_so(server):
    listed = Api(server.url, APP).get("/v1/kv/other/?recurse")
    assert listed.status_code == 404
    assert listed.headers[HEADER] == "true"


def test_never_on_a_single_key_or_a_write(server):
    app = Api(server.url, APP)
    assert HEADER not in app.get("/v1/kv/app/a").headers
    assert HEADER not in app.get("/v1/kv/other/c").headers  # a 403 instead
    assert HEADER not in app.put("/v1/kv/app/z", b"v").headers


def test_session_lists_say_so_too(server):
    root = Api(server.url, ROOT)
    session = root.session(TTL="30s")
    node = root.get("/v1/agent/self").json()["Config"]["NodeName"]
    reader = Api(server.url, "nodes-secret")  # may read other-node's sessions only
    for path in ("/v1/session/list", f"/v1/session/node/{node}", f"/v1/session/info/{session}"):
        hidden = reader.get(path)
        assert (hidden.json(), hidden.headers[HEADER]) == ([], "true"), path
        seen = Api(server.url, APP).get(path)
        assert [s["ID"] for s in seen.json()] == [session]
        assert HEADER not in seen.headers
    assert HEADER not in Api(server.url).get("/v1/session/list").headers


def test_the_agents_default_token_counts_as_a_token(consul_dev_server_factory):
    server = acl_server(consul_dev_server_factory, default_token=APP)
    listed = Api(server.url).get("/v1/kv/?keys")
    assert listed.json() == ["app/a", "app/b"]
    assert listed.headers[HEADER] == "true"
