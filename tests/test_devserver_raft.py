"""The dev server's count of Raft writes (``raft.*`` in ``/_dev/counters``), over real HTTP.

What a real Consul puts through Raft is what docs/consul-api.md §1.7 says (tagged [§N]): every
KV PUT and DELETE, every write txn (applied or failed in the state store), session create and
destroy, and each invalidation (TTL, node health); never reads, read-only txns, session renewals
or what the leader refuses before Raft (ACLs, lock delay, ``Must provide key``). Each test runs on
a server of its own, so nothing else moves its counters; a real agent has no such counters, and
the tests skip there.
"""

from __future__ import annotations

import base64

import pytest
from conftest import Api, wait_until

from consulresults.devserver import AclConfig, DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

pytestmark = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)

RAFT_KINDS = ("raft.txn.applied", "raft.txn.failed", "raft.kv", "raft.session")


def raft(counts: dict[str, int]) -> dict[str, int]:
    """The ``raft.*`` counters that are not zero, without their sum (checked on its own)."""
    assert counts["raft.writes"] == sum(counts[k] for k in RAFT_KINDS)
    return {k: counts[k] for k in RAFT_KINDS if counts[k]}


def kv(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


@pytest.fixture
def server(consul_dev_server_factory):
    return consul_dev_server_factory(session_ttl_min="1s", session_ttl_multiplier=1.0)


@pytest.fixture
def http(server) -> Api:
    return Api(server.url)


def test_every_kv_put_and_delete_is_one_raft_write(server, http):  # [§1.7]
    session_id = http.session(Checks=[], LockDelay="10s")
    server.reset_counters()
    assert http.put("/v1/kv/a", b"1").json() is True
    assert http.put("/v1/kv/a", b"1").json() is True  # identical: applied, nothing changes
    assert http.put("/v1/kv/a?cas=999999", b"2").json() is False  # refused by the state store
    assert http.put("/v1/kv/held?acquire=" + session_id, b"v").json() is True
    assert http.put("/v1/kv/a?acquire=no-such-session", b"v").status_code == 500
    assert http.delete("/v1/kv/missing").json() is True
    assert http.delete("/v1/kv/?recurse").json() is True
    assert raft(server.counters()) == {"raft.kv": 7}


def test_reads_and_refusals_before_raft_are_not_counted(server, http):  # [§1.7]
    session_id = http.session(Checks=[], LockDelay="10s")
    http.put(f"/v1/kv/delayed?acquire={session_id}", b"v")
    http.put(f"/v1/session/destroy/{session_id}")  # a 10 s lock delay on "delayed"
    other = http.session(Checks=[])
    server.reset_counters()
    assert http.put(f"/v1/kv/delayed?acquire={other}", b"v").json() is False  # lock delay
    http.get("/v1/kv/delayed")
    http.get("/v1/kv/?recurse")
    http.get("/v1/session/list")
    assert http.put(f"/v1/session/renew/{other}").status_code == 200  # the leader's timer only
    assert http.put("/v1/session/destroy/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").json() is True
    assert http.put("/v1/session/create", json={"Behavior": "explode"}).status_code == 500
    assert http.put("/v1/kv/x?flags=nope", b"v").status_code == 500
    counts = server.counters()
    assert raft(counts) == {}
    assert counts["requests"] == 8  # the raft.* counters are not requests


def test_write_txns_count_as_applied_or_failed(server, http):  # [§1.7]
    value = base64.b64encode(b"v").decode()
    server.reset_counters()
    assert http.put("/v1/txn", json=[kv("set", "t", Value=value)]).status_code == 200
    assert http.put("/v1/txn", json=[kv("set", "t", Value=value)]).status_code == 200  # no-op
    stale = [kv("set", "u", Value=value), kv("check-index", "t", Index=999_999)]
    assert http.put("/v1/txn", json=stale).status_code == 409
    missing_session = [kv("lock", "t", Session="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")]
    assert http.put("/v1/txn", json=missing_session).status_code == 409
    assert raft(server.counters()) == {"raft.txn.applied": 2, "raft.txn.failed": 2}


def test_read_only_and_prechecked_txns_never_reach_raft(server, http):  # [§1.7]
    session_id = http.session(Checks=[], LockDelay="10s")
    http.put(f"/v1/kv/delayed?acquire={session_id}", b"v")
    http.put(f"/v1/session/destroy/{session_id}")
    other = http.session(Checks=[])
    server.reset_counters()
    assert http.put("/v1/txn", json=[kv("get", "delayed")]).status_code == 200
    assert http.put("/v1/txn", json=[kv("get", "missing")]).status_code == 409  # read-only
    assert http.put("/v1/txn", json=[]).status_code == 200
    assert http.put("/v1/txn", json=[kv("set", "")]).status_code == 409  # Must provide key
    delayed = [kv("set", "free"), kv("lock", "delayed", Session=other)]
    response = http.put("/v1/txn", json=delayed)
    assert response.json()["Errors"] == [
        {"OpIndex": 1, "What": 'failed to lock key "delayed" due to lock delay'}
    ]
    assert raft(server.counters()) == {}


def test_acl_denials_are_refused_before_raft(consul_dev_server_factory):  # [§1.7]
    acl = AclConfig(
        enabled=True,
        default_policy="deny",
        management_token="root",
        tokens={"app": {"key_prefix": {"app/": "write"}}},
    )
    server = consul_dev_server_factory(acl=acl)
    app = Api(server.url, "app")
    server.reset_counters()
    assert app.put("/v1/kv/other", b"v").status_code == 403
    assert app.delete("/v1/kv/other").status_code == 403
    assert app.put("/v1/session/create", json={"Checks": []}).status_code == 403
    assert app.put("/v1/txn", json=[kv("set", "app/a"), kv("set", "other")]).status_code == 409
    assert raft(server.counters()) == {}
    assert app.put("/v1/txn", json=[kv("set", "app/a")]).status_code == 200
    assert raft(server.counters()) == {"raft.txn.applied": 1}


def test_session_create_destroy_and_invalidations(server, http):  # [§1.7]
    server.reset_counters()
    destroyed = http.session(Checks=[])
    http.put(f"/v1/session/destroy/{destroyed}")
    assert http.put("/v1/session/create", json={"Node": "elsewhere"}).status_code == 500
    assert raft(server.counters()) == {"raft.session": 3}  # the node is checked in the FSM
    expiring = http.session(TTL="1s", Checks=[])
    wait_until(lambda: http.get(f"/v1/session/info/{expiring}").json() == [], 10, "the expiry")
    assert raft(server.counters()) == {"raft.session": 5}
    watching = [http.session(LockDelay=0) for _ in range(2)]  # both on serfHealth
    server.reset_counters()
    server.set_node_health(False)
    assert [http.get(f"/v1/session/info/{s}").json() for s in watching] == [[], []]
    assert raft(server.counters()) == {"raft.session": 1}  # one write for the check's update
    server.set_node_health(True)


def test_counters_endpoint_shows_and_resets_raft_writes(server, http):  # [§1.7]
    http.put("/v1/kv/a", b"1")
    counts = http.get("/_dev/counters").json()
    assert counts["raft.kv"] == 1
    assert counts["raft.writes"] == 1
    assert counts["requests"] == counts["kv.put"] == 1  # the control endpoint is not counted
    reset = http.delete("/_dev/counters").json()
    assert {k: reset[k] for k in (*RAFT_KINDS, "raft.writes")} == dict.fromkeys(
        (*RAFT_KINDS, "raft.writes"), 0
    )


def test_a_dev_server_process_reports_raft_writes_too():  # [§1.7]
    with DevServerProcess() as process:
        http = Api(process.url)
        http.put("/v1/txn", json=[kv("set", "k")])
        http.put("/v1/kv/k", b"v")
        assert raft(process.counters()) == {"raft.txn.applied": 1, "raft.kv": 1}
        process.reset_counters()
        assert process.counters()["raft.writes"] == 0
