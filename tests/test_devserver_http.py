"""General HTTP behaviour: routing, methods, errors, datacenters, status and agent endpoints."""

from __future__ import annotations

import consul
import pytest
import requests


@pytest.mark.parametrize(
    "path,allow",
    [
        ("/v1/kv/x", "OPTIONS,GET,PUT,DELETE"),
        ("/v1/txn", "OPTIONS,PUT"),
        ("/v1/session/create", "OPTIONS,PUT"),
        ("/v1/session/list", "OPTIONS,GET"),
    ],
)
def test_wrong_method_is_405_with_allow(api, path, allow):  # consul-api.md §1.1
    response = api.request("POST", path)
    assert (response.status_code, response.text) == (405, "method POST not allowed")
    assert response.headers["Allow"] == allow
    options = api.request("OPTIONS", path)
    assert (options.status_code, options.content) == (200, b"")
    assert options.headers["Allow"] == allow


def test_head_on_kv_is_405(api):
    assert api.request("HEAD", "/v1/kv/x").status_code == 405


def test_unknown_paths_and_redirects(api):  # consul-api.md §1.1
    unknown = api.get("/v1/nope")
    assert (unknown.status_code, unknown.text) == (
        404,
        "Invalid URL path: not a recognized HTTP API endpoint\n",
    )
    outside = api.get("/elsewhere")
    assert outside.status_code == 404
    assert outside.text.startswith("Invalid URL path: if attempting to use the HTTP API")
    no_slash = api.get("/v1/kv?recurse")
    assert no_slash.status_code == 301
    assert no_slash.headers["Location"].endswith("/v1/kv/?recurse")


def test_datacenter_and_enterprise_parameters(api, consul_prefix):  # consul-api.md §1.3
    dc = api.get("/v1/agent/self").json()["Config"]["Datacenter"]
    api.put(f"/v1/kv/{consul_prefix}dc?dc={dc}", b"x")
    assert api.get(f"/v1/kv/{consul_prefix}dc?dc={dc}").status_code == 200
    other = api.get(f"/v1/kv/{consul_prefix}dc?dc=nowhere")
    assert (other.status_code, other.text) == (500, "No path to datacenter")
    ns = api.get(f"/v1/kv/{consul_prefix}dc?ns=team")
    assert ns.status_code == 400
    assert ns.text.startswith('Invalid query parameter: "ns"')


def test_common_headers_and_compact_go_json(api, consul_prefix):  # consul-api.md §1.2
    key = consul_prefix + "<&>"
    api.put(f"/v1/kv/{consul_prefix}%3C%26%3E", b"x")
    response = api.get(f"/v1/kv/{consul_prefix}%3C%26%3E")
    assert response.headers["X-Consul-Default-Acl-Policy"] in ("allow", "deny")
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()[0]["Key"] == key
    pretty = api.get(f"/v1/kv/{consul_prefix}%3C%26%3E?pretty")
    assert pretty.text.endswith("\n")
    assert pretty.json() == response.json()


def test_writes_send_no_index_headers(api, consul_prefix):  # consul-api.md §1.2
    response = api.put(f"/v1/kv/{consul_prefix}w", b"x")
    assert "X-Consul-Index" not in response.headers
    assert response.headers["Content-Type"] == "application/json"


def test_status_and_agent_self(api, consul_server):  # consul-api.md §7
    leader = api.get("/v1/status/leader").json()
    assert leader
    peers = api.get("/v1/status/peers").json()
    assert leader in peers
    info = api.get("/v1/agent/self").json()
    assert {"Config", "Member", "Stats", "Meta", "Coord", "DebugConfig"} <= set(info)
    assert info["Stats"]["consul"]["leader_addr"] == leader
    assert info["Config"]["Server"] in (True, False)
    assert info["Config"]["NodeName"]
    client = consul.Consul(
        host=consul_server.host,
        port=consul_server.port,
        scheme=consul_server.scheme,
        token=consul_server.token,
    )
    assert client.status.leader() == leader
    assert client.agent.self()["Config"]["NodeName"] == info["Config"]["NodeName"]


def test_error_statuses_are_plain_text(api, consul_prefix):  # consul-api.md §8.24
    cases = [
        api.get(f"/v1/kv/{consul_prefix}x?wait=bad"),  # 400 input
        api.request("POST", "/v1/kv/x"),  # 405 method
        api.put(f"/v1/kv/{consul_prefix}x", b"x" * 524_289),  # 413 size
        api.put("/v1/session/create", json={"TTL": "1y"}),  # 500 validation
    ]
    assert [c.status_code for c in cases] == [400, 405, 413, 500]
    for response in cases:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    conflict = api.put("/v1/txn", json=[{"KV": {"Verb": "get", "Key": consul_prefix + "no"}}])
    assert conflict.status_code == 409
    assert conflict.headers["Content-Type"] == "application/json"


def test_keep_alive_connections_are_reused_and_served_concurrently(consul_dev_server_factory):
    from concurrent.futures import ThreadPoolExecutor

    server = consul_dev_server_factory()
    session = requests.Session()
    for i in range(20):
        session.put(f"{server.url}/v1/kv/ka/{i}", data=b"x")
    assert server.counters()["connections"] == 1
    assert server.counters()["kv.put"] == 20

    def blocked_read(_):
        return requests.get(f"{server.url}/v1/kv/ka/0?index=999999&wait=1s", timeout=30)

    with ThreadPoolExecutor(8) as pool:
        import time

        started = time.monotonic()
        results = list(pool.map(blocked_read, range(8)))
        elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in results)
    assert elapsed < 6  # overlapped: served one after another, eight 1 s waits take >= 8 s


def test_large_answers_are_gzipped_when_accepted(api, consul_prefix):  # as Consul's gziphandler
    api.put(f"/v1/kv/{consul_prefix}big", b"x" * 5000)
    zipped = api.get(f"/v1/kv/{consul_prefix}big?raw", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.content == b"x" * 5000  # requests decompressed it
    plain = api.get(f"/v1/kv/{consul_prefix}big?raw", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    small = api.get("/v1/status/leader", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
