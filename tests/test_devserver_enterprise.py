"""Namespaces and partitions: a CE server refuses them where Consul CE does (these tests run
against a real CE agent too), an ``enterprise=True`` dev server keeps keys and sessions apart
per (partition, namespace) as Consul Enterprise does (docs/consul-api.md §1.3, §4.1, §12)."""

from __future__ import annotations

import base64

import pytest
from conftest import Api, run_cli
from test_devserver_blocking import once_blocking

NS_REFUSED = 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'
PARTITION_REFUSED = (
    'Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature'
)
NS_HEADER_REFUSED = (
    'Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature'
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


@pytest.fixture
def ent(consul_dev_server_factory) -> Api:
    server = consul_dev_server_factory(enterprise=True)
    api = Api(server.url)
    api.server = server
    return api


# ---------------------------------------------------------------------- Consul CE


@pytest.mark.parametrize("value", ["default", "team"])
def test_ce_refuses_any_namespace_on_kv_and_session_endpoints(api, consul_prefix, value):
    key = consul_prefix + "k"
    session = api.session(TTL="30s")
    calls = [
        ("GET", f"/v1/kv/{key}"),
        ("GET", f"/v1/kv/{consul_prefix}?recurse"),
        ("GET", f"/v1/kv/{consul_prefix}?keys"),
        ("PUT", f"/v1/kv/{key}"),
        ("DELETE", f"/v1/kv/{key}"),
        ("PUT", "/v1/session/create"),
        ("PUT", f"/v1/session/renew/{session}"),
        ("PUT", f"/v1/session/destroy/{session}"),
        ("GET", f"/v1/session/info/{session}"),
        ("GET", "/v1/session/list"),
        ("GET", "/v1/session/node/any"),
    ]
    for method, path in calls:
        for param, text in (("ns", NS_REFUSED), ("partition", PARTITION_REFUSED)):
            sep = "&" if "?" in path else "?"
            answer = api.request(method, f"{path}{sep}{param}={value}", data=b"v")
            assert (answer.status_code, answer.text) == (400, text), (method, path, param)
    assert api.entry(key) is None  # nothing was written
    assert api.get(f"/v1/session/info/{session}").json() != []  # nor destroyed


def test_ce_refuses_the_header_forms_and_accepts_empty_values(api, consul_prefix):
    key = consul_prefix + "k"
    header = api.get(f"/v1/kv/{key}", headers={"X-Consul-Namespace": "default"})
    assert (header.status_code, header.text) == (400, NS_HEADER_REFUSED)
    partition = api.put(f"/v1/kv/{key}", b"v", headers={"X-Consul-Partition": "default"})
    assert partition.status_code == 400
    assert partition.text == (
        'Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature'
    )
    assert api.put(f"/v1/kv/{key}?ns=&partition=", b"v").json() is True  # empty = not given
    assert api.get(f"/v1/kv/{key}?ns=").status_code == 200


def test_ce_checks_the_namespace_where_consul_does(api, consul_prefix):
    # a single-key GET says its key is missing first; PUT and DELETE look at the namespace first
    missing = api.get("/v1/kv/?ns=team")
    assert (missing.status_code, missing.text) == (400, "Missing key name")
    assert api.put("/v1/kv/?ns=team", b"v").text == NS_REFUSED
    assert api.delete("/v1/kv/?ns=team").text == NS_REFUSED
    assert api.get("/v1/session/info/?ns=team").text == NS_REFUSED
    # the status and agent endpoints parse no namespace at all
    assert api.get("/v1/status/leader?ns=team").status_code == 200
    assert api.get("/v1/agent/self?ns=team&partition=p").status_code == 200


def test_ce_txn_parses_no_namespace_and_ignores_the_operations_fields(api, consul_prefix):
    key = consul_prefix + "k"
    ops = [kv("set", key, Value=b64(b"v"), Namespace="team", Partition="p1")]
    written = api.put("/v1/txn?ns=team&partition=p1", json=ops)
    assert written.status_code == 200, written.text
    assert "Namespace" not in written.json()["Results"][0]["KV"]
    # a txn-only client asking for namespace "team" silently wrote in the default one
    assert base64.b64decode(api.entry(key)["Value"]) == b"v"
    read = api.put("/v1/txn?ns=team", json=[kv("get", key, Namespace="elsewhere")])
    assert read.status_code == 200
    assert read.json()["Results"][0]["KV"]["Key"] == key


# ---------------------------------------------------------------------- Consul Enterprise


def test_keys_live_apart_per_namespace_and_partition(ent):
    places = {
        "": b"default",
        "ns=team": b"team",
        "partition=p1": b"p1",
        "ns=team&partition=p1": b"both",
    }
    for query, value in places.items():
        assert ent.put(f"/v1/kv/app/k?{query}", value).json() is True
    for query, value in places.items():
        assert ent.get(f"/v1/kv/app/k?raw&{query}").content == value
    assert ent.get("/v1/kv/app/k?ns=default&partition=default&raw").content == b"default"
    assert ent.get("/v1/kv/app/k?ns=other").status_code == 404
    entry = ent.get("/v1/kv/app/k?ns=team&partition=p1").json()[0]
    assert (entry["Namespace"], entry["Partition"]) == ("team", "p1")
    assert ent.get("/v1/kv/app/k").json()[0]["Namespace"] == "default"
    header = ent.get("/v1/kv/app/k?raw", headers={"X-Consul-Namespace": "team"})
    assert header.content == b"team"


def test_listings_and_deletes_stay_in_their_namespace(ent):
    ent.put("/v1/kv/app/a", b"1")
    ent.put("/v1/kv/app/b?ns=team", b"2")
    assert ent.get("/v1/kv/?keys").json() == ["app/a"]
    assert ent.get("/v1/kv/?keys&ns=team").json() == ["app/b"]
    assert [e["Key"] for e in ent.get("/v1/kv/app/?recurse&ns=team").json()] == ["app/b"]
    assert ent.delete("/v1/kv/app/b").json() is True  # absent here: nothing to delete
    assert ent.delete("/v1/kv/?recurse").json() is True
    assert ent.get("/v1/kv/?keys").json() == []
    assert ent.get("/v1/kv/app/b?ns=team").status_code == 200


def test_sessions_and_locks_stay_in_their_namespace(ent):
    team = ent.put("/v1/session/create?ns=team", json={"TTL": "30s"}).json()["ID"]
    assert ent.put(f"/v1/kv/lock?ns=team&acquire={team}", b"x").json() is True
    # from the default namespace the session does not exist and the lock cannot be taken
    foreign = ent.put(f"/v1/kv/lock?acquire={team}", b"x")
    assert (foreign.status_code, foreign.text) == (
        500,
        f'raft apply failed: invalid session "{team}"',
    )
    assert ent.get(f"/v1/session/info/{team}").json() == []
    assert ent.get("/v1/session/list").json() == []
    assert [s["ID"] for s in ent.get("/v1/session/list?ns=team").json()] == [team]
    renew = ent.put(f"/v1/session/renew/{team}")
    assert (renew.status_code, renew.text) == (404, f"Session id '{team}' not found")
    assert ent.put(f"/v1/session/destroy/{team}").json() is True  # a no-op here
    listed = ent.get(f"/v1/session/info/{team}?ns=team").json()
    assert [(s["ID"], s["Namespace"], s["Partition"]) for s in listed] == [
        (team, "team", "default")
    ]
    assert ent.get("/v1/kv/lock?ns=team").json()[0]["Session"] == team
    assert ent.put(f"/v1/session/destroy/{team}?ns=team").json() is True
    assert "Session" not in ent.get("/v1/kv/lock?ns=team").json()[0]  # released


def test_txn_operations_name_their_own_namespace(ent):
    session = ent.put("/v1/session/create?ns=team").json()["ID"]
    written = ent.put(
        "/v1/txn",
        json=[
            kv("set", "k", Value=b64(b"default")),
            kv("set", "k", Value=b64(b"team"), Namespace="team"),
            kv("lock", "held", Value=b64(b"x"), Session=session, Namespace="team"),
            kv("set", "k", Value=b64(b"p1"), Partition="p1"),
        ],
    )
    assert written.status_code == 200, written.text
    scopes = [(r["KV"]["Namespace"], r["KV"]["Partition"]) for r in written.json()["Results"]]
    assert scopes == [
        ("default", "default"),
        ("team", "default"),
        ("team", "default"),
        ("default", "p1"),
    ]
    assert ent.get("/v1/kv/k?raw").content == b"default"
    assert ent.get("/v1/kv/k?ns=team&raw").content == b"team"
    assert ent.get("/v1/kv/k?partition=p1&raw").content == b"p1"
    # the team's session cannot lock a key of the default namespace, in a txn either
    refused = ent.put("/v1/txn", json=[kv("lock", "held", Value=b64(b"x"), Session=session)])
    assert refused.status_code == 409
    assert refused.json()["Errors"] == [{"OpIndex": 0, "What": f'invalid session "{session}"'}]
    read = ent.put(
        "/v1/txn", json=[kv("get-tree", "h", Namespace="team"), kv("get-tree", "h")]
    ).json()
    assert [(r["KV"]["Key"], r["KV"]["Namespace"]) for r in read["Results"]] == [("held", "team")]


def test_a_blocking_listing_ignores_writes_in_other_namespaces(ent):
    ent.put("/v1/kv/app/a?ns=team", b"1")
    index = ent.get("/v1/kv/?recurse&ns=team").headers["X-Consul-Index"]

    def writes() -> None:
        ent.put("/v1/kv/app/a", b"default")  # the same key elsewhere must not answer the query
        ent.put("/v1/kv/app/b?ns=team", b"2")

    writer = once_blocking(ent, "kv.get", writes)
    answer = ent.get(f"/v1/kv/?recurse&ns=team&index={index}&wait=30s")
    writer.join()
    assert [e["Key"] for e in answer.json()] == ["app/a", "app/b"]


def test_enterprise_agent_self_names_its_partition(ent):
    assert ent.get("/v1/agent/self").json()["Config"]["Partition"] == "default"


def test_namespaces_survive_a_kill_and_a_restart(consul_dev_server_factory, tmp_path):
    from consulresults.devserver import DevServerProcess

    with DevServerProcess("--enterprise", "--data-dir", str(tmp_path)) as process:
        api = Api(process.url)
        team = api.put("/v1/session/create?ns=team&partition=p1", json={"TTL": "60s"}).json()["ID"]
        assert api.put(f"/v1/kv/app/held?ns=team&partition=p1&acquire={team}", b"x").json()
        assert api.put("/v1/kv/app/gone?ns=team&partition=p1", b"x").json() is True
        assert api.delete("/v1/kv/app/gone?ns=team&partition=p1").json() is True
        api.put("/v1/kv/app/default", b"d")
        listing = "/v1/kv/app/?recurse&ns=team&partition=p1"
        before = (api.get(listing).json(), api.get(listing).headers["X-Consul-Index"])
        missing_index = api.get("/v1/kv/nothing?ns=team&partition=p1").headers["X-Consul-Index"]
        for restart in (process.kill, process.stop):  # the journal, then the snapshot
            restart()
            process.start()
            api = Api(process.url)
            assert (api.get(listing).json(), api.get(listing).headers["X-Consul-Index"]) == before
            again = api.get("/v1/kv/nothing?ns=team&partition=p1").headers["X-Consul-Index"]
            assert again == missing_index
            assert [s["ID"] for s in api.get("/v1/session/list?ns=team&partition=p1").json()] == [
                team
            ]
            assert api.get("/v1/session/list").json() == []
            assert api.get("/v1/kv/app/?keys").json() == ["app/default"]


def test_the_command_serves_namespaces(consul_dev_server_factory):  # the factory: dev server only
    from consulresults.devserver import DevServerProcess

    assert "--enterprise" in run_cli("dev-server", "--help").stdout
    with DevServerProcess("--enterprise") as process:
        api = Api(process.url)
        assert api.put("/v1/kv/k?ns=team", b"v").json() is True
        assert api.get("/v1/kv/k").status_code == 404
        assert api.get("/v1/kv/k?ns=team").status_code == 200
