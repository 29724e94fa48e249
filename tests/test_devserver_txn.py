"""Transaction conformance: docs/consul-api.md §8.19-§8.21 (tagged [§8.N]) and every KV verb."""

from __future__ import annotations

import base64

import consul


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def test_all_failing_ops_are_reported_and_everything_rolls_back(api, consul_prefix):  # [§8.19]
    key = consul_prefix + "k"
    response = api.put(
        "/v1/txn",
        json=[
            kv("set", consul_prefix + "written", Value=b64(b"x")),
            kv("lock", key, Value=b64(b"v")),
            kv("get", consul_prefix + "absent"),
        ],
    )
    assert response.status_code == 409
    body = response.json()
    assert body["Results"] is None
    assert body["Errors"] == [
        {"OpIndex": 1, "What": "missing session"},
        {"OpIndex": 2, "What": f'key "{consul_prefix}absent" doesn\'t exist'},
    ]
    assert api.entry(consul_prefix + "written") is None


def test_success_shape_and_write_results_without_values(api, consul_prefix):  # [§8.19]
    a, b = consul_prefix + "a", consul_prefix + "b"
    response = api.put(
        "/v1/txn",
        json=[
            kv("set", a, Value=b64(b"1"), Flags=2**63 + 1),
            kv("set", b, Value=b64(b"2")),
            kv("check-not-exists", consul_prefix + "nope"),
            kv("get", a),
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert body["Errors"] is None
    results = [r["KV"] for r in body["Results"]]
    assert [r["Key"] for r in results] == [a, b, a]
    assert results[0]["Value"] is None
    assert results[0]["Flags"] == 2**63 + 1
    assert results[2]["Value"] == b64(b"1")
    assert results[0]["ModifyIndex"] == results[1]["ModifyIndex"]  # one Raft index per txn
    deletes = api.put("/v1/txn", json=[kv("delete", a), kv("delete-tree", consul_prefix)])
    assert deletes.json() == {"Results": [], "Errors": None}
    assert api.entry(b) is None


def test_get_or_empty_echoes_the_op_for_a_missing_key(api, consul_prefix):  # [§8.19]
    key = consul_prefix + "nothing"
    response = api.put("/v1/txn", json=[kv("get-or-empty", key, Flags=3, Index=9)])
    entry = response.json()["Results"][0]["KV"]
    assert entry["Key"] == key
    assert entry["Value"] is None
    assert (entry["Flags"], entry["ModifyIndex"], entry["CreateIndex"]) == (3, 9, 0)


def test_cas_check_and_lock_verbs(api, consul_prefix):
    key = consul_prefix + "v"
    api.put(f"/v1/kv/{key}", b"1")
    index = api.entry(key)["ModifyIndex"]
    stale = api.put("/v1/txn", json=[kv("cas", key, Index=index + 100, Value=b64(b"2"))])
    assert stale.json()["Errors"][0]["What"] == f'failed to set key "{key}", index is stale'
    check = api.put("/v1/txn", json=[kv("check-index", key, Index=index + 1)])
    assert check.json()["Errors"][0]["What"] == (
        f'failed index check for key "{key}", current modify index {index} != {index + 1}'
    )
    ok = api.put(
        "/v1/txn",
        json=[kv("check-index", key, Index=index), kv("cas", key, Index=index, Value=b64(b"2"))],
    )
    assert ok.status_code == 200
    session = api.session(LockDelay=0, Checks=[])
    locked = api.put("/v1/txn", json=[kv("lock", key, Session=session, Value=b64(b"L"))])
    assert locked.json()["Results"][0]["KV"]["Session"] == session
    other = api.session(LockDelay=0, Checks=[])
    held = api.put("/v1/txn", json=[kv("lock", key, Session=other)])
    assert held.json()["Errors"][0]["What"] == f'failed to lock key "{key}", lock is already held'
    mismatch = api.put("/v1/txn", json=[kv("check-session", key, Session=other)])
    assert mismatch.status_code == 409
    unlock = api.put("/v1/txn", json=[kv("unlock", key, Session=session)])
    assert "Session" not in unlock.json()["Results"][0]["KV"]
    exists = api.put("/v1/txn", json=[kv("check-not-exists", key)])
    assert exists.json()["Errors"][0]["What"] == f'key "{key}" exists'
    stale_delete = api.put("/v1/txn", json=[kv("delete-cas", key, Index=1)])
    assert stale_delete.json()["Errors"][0]["What"] == (
        f'failed to delete key "{key}", index is stale'
    )
    assert api.put("/v1/txn", json=[kv("delete-cas", consul_prefix + "gone", Index=7)]).ok


def test_limits_and_parse_errors(api, consul_prefix):  # [§8.20]
    too_many = api.put("/v1/txn", json=[kv("get", f"{consul_prefix}{i}") for i in range(129)])
    assert (too_many.status_code, too_many.text) == (
        413,
        "Transaction contains too many operations (129 > 128)",
    )
    big = api.put("/v1/txn", data=b"[" + b" " * 524_289 + b"]")
    assert big.status_code == 413
    assert big.text.startswith("Request body(524291 bytes) too large, max size: 524288 bytes.")
    bad_base64 = api.put("/v1/txn", json=[kv("set", consul_prefix + "x", Value="@@@@")])
    assert bad_base64.status_code == 400
    assert bad_base64.text == "Failed to parse body: illegal base64 data at input byte 0"
    unknown = api.put("/v1/txn", json=[{"KV": {"Verb": "get", "Key": "x", "Foo": 1}}])
    assert (unknown.status_code, unknown.text) == (
        400,
        'Failed to parse body: json: unknown field "Foo"',
    )
    verb = api.put("/v1/txn", json=[kv("explode", consul_prefix + "x")])
    assert verb.json()["Errors"][0]["What"] == 'unknown KV verb "explode"'
    no_key = api.put("/v1/txn", json=[kv("set", "")])
    assert no_key.json()["Errors"] == [{"OpIndex": 0, "What": "Must provide key"}]


def test_error_texts_quote_keys_sessions_and_verbs_as_go_does(api, consul_prefix):  # [§4.4]
    odd = consul_prefix + 'q"uo\\te\tn\u00e9\u00ad'
    quoted = '"' + consul_prefix + 'q\\"uo\\\\te\\tn\u00e9\\u00ad"'  # Go's %q
    session = 'not"a-session'
    response = api.put(
        "/v1/txn",
        json=[kv("get", odd), kv("lock", odd, Session=session), kv('ex"plode', odd)],
    )
    assert response.json()["Errors"] == [
        {"OpIndex": 0, "What": f"key {quoted} doesn't exist"},
        {"OpIndex": 1, "What": 'invalid session "not\\"a-session"'},
        {"OpIndex": 2, "What": 'unknown KV verb "ex\\"plode"'},
    ]


def test_field_names_are_case_insensitive(api, consul_prefix):
    key = consul_prefix + "ci"
    response = api.put("/v1/txn", json=[{"kv": {"verb": "set", "key": key, "value": b64(b"c")}}])
    assert response.status_code == 200
    assert base64.b64decode(api.entry(key)["Value"]) == b"c"


def test_read_only_txn_has_no_index_header(api, consul_prefix):  # [§8.21]
    api.put(f"/v1/kv/{consul_prefix}r", b"1")
    read = api.put("/v1/txn", json=[kv("get", consul_prefix + "r")])
    assert read.status_code == 200
    assert "X-Consul-Index" not in read.headers
    assert read.headers["X-Consul-Knownleader"] == "true"
    empty = api.put("/v1/txn", json=[])
    assert (empty.json()["Results"], empty.json()["Errors"]) == ([], None)
    tree = api.put("/v1/txn", json=[kv("get-tree", consul_prefix)])
    assert [r["KV"]["Key"] for r in tree.json()["Results"]] == [consul_prefix + "r"]


def test_python_consul2_txn(consul_server, consul_prefix):
    client = consul.Consul(
        host=consul_server.host,
        port=consul_server.port,
        scheme=consul_server.scheme,
        token=consul_server.token,
    )
    result = client.txn.put(
        [
            {"KV": {"Verb": "set", "Key": consul_prefix + "t", "Value": b64(b"txn")}},
            {"KV": {"Verb": "get", "Key": consul_prefix + "t"}},
        ]
    )
    assert base64.b64decode(result["Results"][1]["KV"]["Value"]) == b"txn"
