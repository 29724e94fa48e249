"""Session conformance: docs/consul-api.md §8.15-§8.18 (tagged [§8.N]) and session error paths.

TTL and lock-delay tests use real timers, shortened the ways Consul allows: a low
``session_ttl_min`` (set through the shared server's options, or CONSUL_SESSION_TTL_MIN for a real
agent configured the same way) and a lock delay of one second.
"""

from __future__ import annotations

import time

import consul
from conftest import SESSION_TTL_MIN_S


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_session_defaults(api, consul_server):  # [§8.15]
    session_id = api.put("/v1/session/create").json()["ID"]
    info = api.get(f"/v1/session/info/{session_id}").json()[0]
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["TTL"] == ""
    assert info["CreateIndex"] == info["ModifyIndex"]
    api.put(f"/v1/session/destroy/{session_id}")


def test_empty_checks_mean_no_health_checks(api):  # [§8.15]
    for body in ({"Checks": []}, {"checks": []}, {"NodeChecks": []}):
        session_id = api.session(**body)
        info = api.get(f"/v1/session/info/{session_id}").json()[0]
        assert info["NodeChecks"] == []
        assert "Checks" not in info
        api.put(f"/v1/session/destroy/{session_id}")


def test_lock_delay_units(api):  # [§8.16]
    cases = {
        15: 15_000_000_000,
        "15ns": 15_000_000_000,
        "2500ms": 2_500_000_000,
        0: 0,
        5_000_000_000: 5_000_000_000,
    }
    for sent, expected in cases.items():
        session_id = api.session(LockDelay=sent)
        assert api.get(f"/v1/session/info/{session_id}").json()[0]["LockDelay"] == expected
        api.put(f"/v1/session/destroy/{session_id}")
    unitless = api.put("/v1/session/create", json={"LockDelay": "20"})
    assert unitless.status_code == 400
    assert unitless.text.startswith("Request decode failed:")


def test_ttl_bounds_and_texts(api):  # [§8.17]
    too_long = api.put("/v1/session/create", json={"TTL": "25h"})
    assert too_long.status_code == 500
    assert too_long.text.startswith("Invalid Session TTL '90000000000000', must be between [")
    garbage = api.put("/v1/session/create", json={"TTL": "soon"})
    assert garbage.status_code == 500
    assert garbage.text == "Session TTL 'soon' invalid: time: invalid duration \"soon\""
    below = api.put("/v1/session/create", json={"TTL": f"{SESSION_TTL_MIN_S / 2:g}s"})
    assert below.status_code == 500
    session_id = api.session(TTL="24h")
    assert api.get(f"/v1/session/info/{session_id}").json()[0]["TTL"] == "24h"
    api.put(f"/v1/session/destroy/{session_id}")


def test_unknown_session_answers(api):  # [§8.17]
    unknown = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    renew = api.put(f"/v1/session/renew/{unknown}")
    assert (renew.status_code, renew.text) == (404, f"Session id '{unknown}' not found")
    info = api.get(f"/v1/session/info/{unknown}")
    assert (info.status_code, info.json()) == (200, [])
    assert api.put(f"/v1/session/destroy/{unknown}").json() is True


def test_ttl_expiry_after_ttl_times_two_deletes_keys(api, consul_prefix):  # [§8.17, §8.18]
    ttl = SESSION_TTL_MIN_S
    session_id = api.session(TTL=f"{ttl:g}s", Behavior="delete", LockDelay=0, Checks=[])
    key = consul_prefix + "ephemeral"
    api.put(f"/v1/kv/{key}?acquire={session_id}", b"v")
    created = time.monotonic()
    assert wait_until(lambda: api.entry(key) is None, timeout=ttl * 2 + 15)
    elapsed = time.monotonic() - created
    assert elapsed >= ttl * 0.95  # never before the TTL
    assert api.get(f"/v1/session/info/{session_id}").json() == []


def test_renew_postpones_expiry(api):  # [§8.17]
    """Renewed every 3/4 of its TTL, a session outlives its twin, made just after it and never
    renewed (waited for: it goes between one and two TTLs)."""
    ttl = SESSION_TTL_MIN_S
    session_id = api.session(TTL=f"{ttl:g}s", Checks=[])
    twin = api.session(TTL=f"{ttl:g}s", Checks=[])

    def renewed_and_the_twin_gone() -> bool:
        renewed = api.put(f"/v1/session/renew/{session_id}")
        assert renewed.status_code == 200
        assert renewed.json()[0]["ID"] == session_id
        return api.get(f"/v1/session/info/{twin}").json() == []

    assert wait_until(renewed_and_the_twin_gone, timeout=ttl * 2 + 15, interval=ttl * 0.75)
    assert api.get(f"/v1/session/info/{session_id}").json()[0]["ID"] == session_id
    api.put(f"/v1/session/destroy/{session_id}")


def test_release_behaviour_keeps_value_and_bumps_index(api, consul_prefix):  # [§8.18]
    key = consul_prefix + "released"
    session_id = api.session(LockDelay=0, Checks=[])
    api.put(f"/v1/kv/{key}?acquire={session_id}&flags=4", b"kept")
    before = api.entry(key)
    api.put(f"/v1/session/destroy/{session_id}")
    after = api.entry(key)
    assert "Session" not in after
    assert (after["Value"], after["Flags"], after["LockIndex"]) == (
        before["Value"],
        before["Flags"],
        before["LockIndex"],
    )
    assert after["ModifyIndex"] > before["ModifyIndex"]


def test_lock_delay_blocks_acquire_but_not_plain_writes(api, consul_prefix):  # [§8.18]
    key = consul_prefix + "delayed"
    first = api.session(LockDelay="1s", Checks=[])
    api.put(f"/v1/kv/{key}?acquire={first}", b"v")
    api.put(f"/v1/session/destroy/{first}")
    second = api.session(LockDelay=0, Checks=[])
    assert api.put(f"/v1/kv/{key}?acquire={second}", b"v").json() is False
    assert api.put(f"/v1/kv/{key}", b"plain").json() is True
    assert wait_until(lambda: api.put(f"/v1/kv/{key}?acquire={second}", b"v").json(), 5)
    other_key = consul_prefix + "never-held"
    assert api.put(f"/v1/kv/{other_key}?acquire={second}", b"v").json() is True


def test_destroyed_session_with_delete_behaviour_removes_its_keys(api, consul_prefix):
    session_id = api.session(Behavior="delete", LockDelay=0, Checks=[])
    for name in ("a", "b"):
        api.put(f"/v1/kv/{consul_prefix}{name}?acquire={session_id}", b"v")
    api.put(f"/v1/kv/{consul_prefix}free", b"v")
    assert api.put(f"/v1/session/destroy/{session_id}").json() is True
    remaining = [e["Key"] for e in api.get(f"/v1/kv/{consul_prefix}?recurse").json()]
    assert remaining == [consul_prefix + "free"]


def test_session_list_node_and_errors(api, consul_server):
    session_id = api.session(Name="listed", Checks=[])
    node = api.get(f"/v1/session/info/{session_id}").json()[0]["Node"]
    listed = api.get("/v1/session/list")
    assert session_id in [s["ID"] for s in listed.json()]
    assert int(listed.headers["X-Consul-Index"]) >= 1
    by_node = api.get(f"/v1/session/node/{node.upper()}").json()
    assert session_id in [s["ID"] for s in by_node]
    assert api.get("/v1/session/node/").text == "Missing node name"
    assert api.get("/v1/session/info/").text == "Missing session"
    assert api.put("/v1/session/destroy/").text == "Missing session"
    assert api.put("/v1/session/renew/").text == "Missing session"
    assert api.get(f"/v1/session/destroy/{session_id}").status_code == 405
    api.put(f"/v1/session/destroy/{session_id}")


def test_session_create_errors(api):
    bad_json = api.put("/v1/session/create", data=b"{nope")
    assert bad_json.status_code == 400
    assert bad_json.text.startswith("Request decode failed:")
    behavior = api.put("/v1/session/create", json={"Behavior": "explode"})
    assert (behavior.status_code, behavior.text) == (500, "Invalid Behavior setting 'explode'")
    node = api.put("/v1/session/create", json={"Node": "no-such-node"})
    assert node.status_code == 500
    assert "Missing node registration" in node.text
    check = api.put("/v1/session/create", json={"NodeChecks": ["no-such-check"]})
    assert check.status_code == 500
    assert "Missing check 'no-such-check' registration" in check.text


def test_node_health_flap_invalidates_sessions_with_serf_health(consul_dev_server_factory):
    from conftest import Api

    server = consul_dev_server_factory()
    api = Api(server.url)
    watched = api.session(LockDelay=0)
    unwatched = api.session(LockDelay=0, Checks=[])
    api.put(f"/v1/kv/r/watched?acquire={watched}", b"v")
    server.set_node_health(False)
    assert api.get(f"/v1/session/info/{watched}").json() == []
    assert api.get(f"/v1/session/info/{unwatched}").json() != []
    assert "Session" not in api.entry("r/watched")
    refused = api.put("/v1/session/create")
    assert refused.status_code == 500
    assert "critical" in refused.text
    server.set_node_health(True)


def test_python_consul2_sessions(consul_server, consul_prefix):
    client = consul.Consul(
        host=consul_server.host,
        port=consul_server.port,
        scheme=consul_server.scheme,
        token=consul_server.token,
    )
    session_id = client.session.create(
        name="pc2", behavior="delete", ttl=30, lock_delay=0, checks=[]
    )
    assert client.kv.put(consul_prefix + "k", "v", acquire=session_id) is True
    assert client.session.renew(session_id)["ID"] == session_id
    assert client.session.info(session_id)[1]["Behavior"] == "delete"
    assert client.session.destroy(session_id) is True
    assert client.kv.get(consul_prefix + "k")[1] is None
