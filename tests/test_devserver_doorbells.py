"""The Consul behaviours pushed waiting stands on (a waiter's doorbell, rung by writers), pinned
over real HTTP on the dev server or a real agent: docs/consul-api.md §11.1 to §11.6 (tagged [§N]).

- a writer's txn ``lock`` may name the waiter's session, and fails if that session is gone;
- a write that changes nothing rings nobody;
- ``get-tree`` inside the writer's txn reads the registrations as of that txn;
- ``delete-cas`` of a ring already gone is no error;
- how a blocking query on the doorbell's prefix wakes (empty, held, tombstones);
- a waiter's session (behaviour ``delete``, no lock delay) takes its keys with it.

Tests that need ACL tokens or tombstone reaping run on a dev server of their own, and skip on a
real agent.
"""

from __future__ import annotations

import base64
import time

from conftest import SESSION_TTL_MIN_S, Api, wait_until
from test_devserver_blocking import once_blocking

MISSING_SESSION = "0f0f0f0f-1111-2222-3333-444444444444"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def results(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [r["KV"] for r in response.json()["Results"]]


def prefix_index(api, prefix: str) -> int:
    return int(api.get(f"/v1/kv/{prefix}?recurse").headers["X-Consul-Index"])


def blocking_recurse(api, prefix: str, index: int, wait: str = "20s"):
    """The answer and how long it took."""
    started = time.monotonic()
    response = api.get(f"/v1/kv/{prefix}?recurse&index={index}&wait={wait}")
    return response, time.monotonic() - started


# ---------------------------------------------------------------- a. lock under another session


def test_lock_may_name_another_clients_session(api, consul_prefix):  # [§11.1]
    waiter = Api(api.url, api.server.token)  # another client, its own connection
    session_id = waiter.session(Behavior="delete", LockDelay=0, Checks=[])
    ring = consul_prefix + "ring"
    first = results(
        api.put("/v1/txn", json=[kv("lock", ring, Value=b64(b"1"), Session=session_id)])
    )
    assert (first[0]["Session"], first[0]["LockIndex"]) == (session_id, 1)
    again = api.put(
        "/v1/txn", json=[kv("lock", ring, Value=b64(b"2"), Flags=7, Session=session_id)]
    )
    second = results(again)[0]
    assert second["ModifyIndex"] > first[0]["ModifyIndex"]
    assert (second["LockIndex"], second["CreateIndex"]) == (1, first[0]["CreateIndex"])
    entry = api.entry(ring)
    assert (entry["Value"], entry["Flags"], entry["Session"]) == (b64(b"2"), 7, session_id)
    waiter.put(f"/v1/session/destroy/{session_id}")
    assert api.entry(ring) is None  # the waiter's behaviour: the ring went with its session


def test_lock_needs_key_write_only_not_the_sessions_rights(consul_dev_server_factory):  # [§11.1]
    from consulresults.devserver import AclConfig

    writer_rules = {"key_prefix": {"d/": "write"}}  # no session rule at all
    acl = AclConfig(
        enabled=True, default_policy="deny", management_token="root", tokens={"w": writer_rules}
    )
    server = consul_dev_server_factory(acl=acl)
    session_id = Api(server.url, "root").session(Checks=[])
    writer = Api(server.url, "w")
    assert writer.put("/v1/session/create", json={"Checks": []}).status_code == 403
    locked = results(writer.put("/v1/txn", json=[kv("lock", "d/ring", Session=session_id)]))
    assert locked[0]["Session"] == session_id
    denied = writer.put("/v1/txn", json=[kv("lock", "elsewhere", Session=session_id)])
    assert denied.status_code == 409
    assert denied.json()["Errors"][0]["What"].startswith("Permission denied")


def test_lock_naming_a_missing_session_fails_every_such_op(api, consul_prefix):  # [§11.1, §8.19]
    gone = api.session(Checks=[])
    api.put(f"/v1/session/destroy/{gone}")
    before, absent = consul_prefix + "before", consul_prefix + "absent"
    response = api.put(
        "/v1/txn",
        json=[
            kv("set", before, Value=b64(b"x")),
            kv("lock", consul_prefix + "ring", Session=MISSING_SESSION),
            kv("lock", consul_prefix + "other", Session=gone),
            kv("check-index", absent, Index=1),
        ],
    )
    assert response.status_code == 409
    assert response.json() == {
        "Results": None,
        "Errors": [
            {"OpIndex": 1, "What": f'invalid session "{MISSING_SESSION}"'},
            {"OpIndex": 2, "What": f'invalid session "{gone}"'},
            {"OpIndex": 3, "What": f'failed to check index, key "{absent}" doesn\'t exist'},
        ],
    }
    assert api.get(f"/v1/kv/{consul_prefix}?recurse").status_code == 404  # nothing applied


# ---------------------------------------------------------------- b. identical writes


def test_identical_writes_keep_modify_index_and_wake_nobody(api, consul_prefix):  # [§11.2]
    session_id = api.session(LockDelay=0, Checks=[])
    plain, held = consul_prefix + "plain", consul_prefix + "held"
    api.put("/v1/txn", json=[kv("set", plain, Value=b64(b"v"), Flags=3)])
    api.put(f"/v1/kv/{held}?acquire={session_id}&flags=5", b"h")
    index = prefix_index(api, consul_prefix)
    answers = []

    def same_again() -> None:
        answers.extend(
            [
                results(api.put("/v1/txn", json=[kv("set", plain, Value=b64(b"v"), Flags=3)])),
                results(
                    api.put(
                        "/v1/txn",
                        json=[
                            kv(
                                "cas",
                                plain,
                                Value=b64(b"v"),
                                Flags=3,
                                Index=api.entry(plain)["ModifyIndex"],
                            )
                        ],
                    )
                ),
                results(
                    api.put(
                        "/v1/txn",
                        json=[kv("lock", held, Value=b64(b"h"), Flags=5, Session=session_id)],
                    )
                ),
                api.put(f"/v1/kv/{plain}?flags=3", b"v").json(),
                api.put(f"/v1/kv/{held}?acquire={session_id}&flags=5", b"h").json(),
            ]
        )

    writer = once_blocking(api, "kv.get", same_again)
    response, waited = blocking_recurse(api, consul_prefix, index, wait="2s")
    writer.join()
    assert [r[0]["ModifyIndex"] <= index for r in answers[:3]] == [True] * 3
    assert answers[3:] == [True, True]
    assert waited >= 2.0  # the wait's end, not a write, answered
    assert int(response.headers["X-Consul-Index"]) == index
    api.put(f"/v1/session/destroy/{session_id}")


# ---------------------------------------------------------------- c. get-tree in a writing txn


def test_get_tree_in_a_writing_txn_reads_the_txn_so_far(api, consul_prefix):  # [§11.3]
    tree = consul_prefix + "r/"
    api.put(f"/v1/kv/{tree}a", b"old")
    api.put(f"/v1/kv/{tree}b", b"b")
    response = api.put(
        "/v1/txn",
        json=[
            kv("set", tree + "a", Value=b64(b"new")),
            kv("delete", tree + "b"),
            kv("get-tree", tree),
            kv("set", tree + "c", Value=b64(b"c")),
        ],
    )
    entries = results(response)
    assert [(e["Key"], e["Value"]) for e in entries] == [
        (tree + "a", None),  # the set's result: no value
        (tree + "a", b64(b"new")),  # get-tree: after the set and the delete, before the last set
        (tree + "c", None),
    ]
    assert entries[1]["ModifyIndex"] == entries[2]["ModifyIndex"]  # one Raft index


def test_get_tree_drops_unreadable_entries_silently(consul_dev_server_factory):  # [§11.3]
    from consulresults.devserver import AclConfig

    rules = {"key_prefix": {"app/": "write", "app/locked/": "deny"}}
    acl = AclConfig(
        enabled=True, default_policy="deny", management_token="root", tokens={"app": rules}
    )
    server = consul_dev_server_factory(acl=acl)
    root = Api(server.url, "root")
    for key in ("app/a", "app/locked/x"):
        root.put(f"/v1/kv/{key}", b"v")
    app = Api(server.url, "app")
    response = app.put("/v1/txn", json=[kv("set", "app/new"), kv("get-tree", "app/")])
    assert response.json()["Errors"] is None
    assert [e["Key"] for e in results(response)] == ["app/new", "app/a", "app/new"]


# ---------------------------------------------------------------- d. delete-cas


def test_delete_cas_of_a_missing_key_succeeds_and_a_stale_one_fails(api, consul_prefix):  # [§11.4]
    missing, ring = consul_prefix + "gone", consul_prefix + "ring"
    for index in (0, 42):
        response = api.put("/v1/txn", json=[kv("delete-cas", missing, Index=index)])
        assert (response.status_code, response.json()) == (200, {"Results": [], "Errors": None})
    api.put(f"/v1/kv/{ring}", b"1")
    index = api.entry(ring)["ModifyIndex"]
    stale = api.put("/v1/txn", json=[kv("delete-cas", ring, Index=index + 1)])
    assert stale.status_code == 409
    assert stale.json()["Errors"] == [
        {"OpIndex": 0, "What": f'failed to delete key "{ring}", index is stale'}
    ]
    assert api.put("/v1/txn", json=[kv("delete-cas", ring, Index=index)]).status_code == 200
    assert api.entry(ring) is None


# ---------------------------------------------------------------- e. blocking on a prefix


def test_empty_prefix_answers_at_once_once_the_table_moved(api, consul_prefix):  # [§11.5]
    empty = consul_prefix + "empty/"
    index = prefix_index(api, empty)
    api.put(f"/v1/kv/{consul_prefix}beside", b"x")
    response, waited = blocking_recurse(api, empty, index)
    assert response.status_code == 404
    assert int(response.headers["X-Consul-Index"]) > index
    assert waited < 5


def test_empty_prefix_returns_on_a_write_beside_it(api, consul_prefix):  # [§11.5]
    empty = consul_prefix + "empty/"
    index = prefix_index(api, empty)
    writer = once_blocking(api, "kv.get", lambda: api.put(f"/v1/kv/{consul_prefix}beside", b"x"))
    response, waited = blocking_recurse(api, empty, index)
    writer.join()
    assert response.status_code == 404  # still nothing under it: the table index moved
    assert int(response.headers["X-Consul-Index"]) > index
    assert waited < 15


def test_prefix_with_a_held_key_wakes_only_for_changes_under_it(api, consul_prefix):  # [§11.5]
    doorbell = consul_prefix + "d/"
    session_id = api.session(Behavior="delete", LockDelay=0, Checks=[])
    api.put(f"/v1/kv/{doorbell}anchor?acquire={session_id}", b"")
    index = prefix_index(api, doorbell)
    rung_at = []

    def noise_then_ring() -> None:
        api.put(f"/v1/kv/{consul_prefix}outside", b"x")
        api.put(f"/v1/session/renew/{session_id}")
        other = api.session(Checks=[])
        api.put(f"/v1/session/destroy/{other}")
        api.put(f"/v1/kv/{doorbell}anchor?acquire={session_id}", b"")  # identical
        time.sleep(0.5)  # a watcher wrongly woken by the noise has answered by now
        rung_at.append(time.monotonic())
        api.put(f"/v1/kv/{doorbell}ring", b"1")

    writer = once_blocking(api, "kv.get", noise_then_ring)
    response, _ = blocking_recurse(api, doorbell, index)
    answered = time.monotonic()
    writer.join()
    assert answered >= rung_at[0]
    assert [e["Key"] for e in response.json()] == [doorbell + "anchor", doorbell + "ring"]
    api.put(f"/v1/session/destroy/{session_id}")


def test_a_delete_under_the_prefix_wakes_once_through_its_tombstone(api, consul_prefix):  # [§11.5]
    doorbell = consul_prefix + "d/"
    api.put(f"/v1/kv/{doorbell}anchor", b"")
    api.put(f"/v1/kv/{doorbell}ring", b"1")
    index = prefix_index(api, doorbell)
    writer = once_blocking(api, "kv.get", lambda: api.delete(f"/v1/kv/{doorbell}ring"))
    response, _ = blocking_recurse(api, doorbell, index)
    writer.join()
    tombstone = int(response.headers["X-Consul-Index"])
    assert tombstone > index
    assert [e["Key"] for e in response.json()] == [doorbell + "anchor"]
    again, waited = blocking_recurse(api, doorbell, tombstone, wait="1s")
    assert waited >= 1.0  # the tombstone does not wake it a second time
    assert int(again.headers["X-Consul-Index"]) == tombstone


def test_after_reaping_a_prefix_index_may_go_down(consul_dev_server_factory):  # [§11.5]
    server = consul_dev_server_factory()
    api = Api(server.url)
    api.put("/v1/kv/d/anchor", b"")
    anchor_index = api.entry("d/anchor")["ModifyIndex"]
    api.put("/v1/kv/d/ring", b"1")
    api.delete("/v1/kv/d/ring")
    tombstone = prefix_index(api, "d/")
    assert tombstone > anchor_index
    assert server.reap_tombstones() == 1
    assert prefix_index(api, "d/") == anchor_index  # back below what a client may hold
    response, waited = blocking_recurse(api, "d/", tombstone, wait="1s")
    assert waited >= 1.0  # a lower index does not answer at once: the wait's end does
    assert int(response.headers["X-Consul-Index"]) == anchor_index
    assert Api(server.url).delete("/_dev/tombstones").json() == {"reaped": 0}


# ---------------------------------------------------------------- f. the waiter's session


def test_delete_behaviour_takes_the_keys_and_leaves_no_lock_delay(api, consul_prefix):  # [§11.6]
    ring = consul_prefix + "ring"
    session_id = api.session(Behavior="delete", LockDelay=0, Checks=[])
    api.put(f"/v1/kv/{ring}?acquire={session_id}", b"1")
    api.put(f"/v1/session/destroy/{session_id}")
    assert api.entry(ring) is None
    other = api.session(LockDelay=0, Checks=[])
    assert api.put(f"/v1/kv/{ring}?acquire={other}", b"2").json() is True  # no delay to wait
    assert results(api.put("/v1/txn", json=[kv("lock", ring, Session=other)]))
    api.put(f"/v1/session/destroy/{other}")


def test_a_session_holds_the_keys_locked_with_its_id_in_any_case(api, consul_prefix):  # [§11.6]
    session_id = api.session(Behavior="delete", LockDelay=0, Checks=[])
    ring = consul_prefix + "ring"
    locked = results(api.put("/v1/txn", json=[kv("lock", ring, Session=session_id.upper())]))
    assert locked[0]["Session"] == session_id.upper()  # stored as the lock named it
    api.put(f"/v1/session/destroy/{session_id}")
    assert api.entry(ring) is None


def test_ttl_expiry_with_delete_behaviour_leaves_no_lock_delay(api, consul_prefix):  # [§11.6]
    ring = consul_prefix + "ring"
    ttl = SESSION_TTL_MIN_S
    session_id = api.session(TTL=f"{ttl:g}s", Behavior="delete", LockDelay=0, Checks=[])
    api.put(f"/v1/kv/{ring}?acquire={session_id}", b"1")
    wait_until(lambda: api.entry(ring) is None, ttl * 2 + 15, "the session's expiry")
    other = api.session(LockDelay=0, Checks=[])
    locked = api.put("/v1/txn", json=[kv("lock", ring, Session=other)])
    assert results(locked)[0]["LockIndex"] == 1  # a new key: the deleted one's count went too
    api.put(f"/v1/session/destroy/{other}")
