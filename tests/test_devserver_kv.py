"""KV conformance: docs/consul-api.md §8.1-§8.14, §8.23, §8.25, and KV error paths.

Each test names the item of ``docs/consul-api.md`` §8 it covers as ``[§8.N]``.
"""

from __future__ import annotations

import base64

import consul
import pytest


def test_empty_put_stores_null_value_and_raw_is_empty(api, consul_prefix):  # [§8.1]
    key = consul_prefix + "empty"
    assert api.put(f"/v1/kv/{key}", b"").json() is True
    assert api.entry(key)["Value"] is None
    raw = api.get(f"/v1/kv/{key}?raw")
    assert raw.status_code == 200
    assert raw.content == b""


def test_raw_serves_bytes_as_sandboxed_text(api, consul_prefix):  # [§2.3]
    key = consul_prefix + "raw"
    api.put(f"/v1/kv/{key}", b"\x00\xffbinary")
    raw = api.get(f"/v1/kv/{key}?raw")
    assert raw.content == b"\x00\xffbinary"
    assert raw.headers["Content-Type"].startswith("text/plain")
    assert raw.headers["X-Content-Type-Options"] == "nosniff"
    assert raw.headers["Content-Security-Policy"] == "sandbox"
    assert api.get(f"/v1/kv/{consul_prefix}missing?raw").status_code == 404


def test_plain_put_without_flags_resets_flags(api, consul_prefix):  # [§8.2]
    key = consul_prefix + "flags"
    api.put(f"/v1/kv/{key}?flags=42", b"v")
    assert api.entry(key)["Flags"] == 42
    api.put(f"/v1/kv/{key}", b"v2")
    assert api.entry(key)["Flags"] == 0


def test_acquire_and_release_overwrite_value_and_flags(api, consul_prefix):  # [§8.3]
    key = consul_prefix + "lock"
    api.put(f"/v1/kv/{key}?flags=7", b"before")
    session = api.session(TTL="30s")
    assert api.put(f"/v1/kv/{key}?acquire={session}&flags=9", b"held").json() is True
    entry = api.entry(key)
    assert (base64.b64decode(entry["Value"]), entry["Flags"]) == (b"held", 9)
    assert api.put(f"/v1/kv/{key}?release={session}", b"").json() is True
    entry = api.entry(key)
    assert entry["Value"] is None
    assert entry["Flags"] == 0
    assert "Session" not in entry


def test_acquire_of_key_held_by_another_session_is_false(api, consul_prefix):  # [§8.4]
    key = consul_prefix + "held"
    first, second = api.session(TTL="30s"), api.session(TTL="30s")
    assert api.put(f"/v1/kv/{key}?acquire={first}", b"a").json() is True
    refused = api.put(f"/v1/kv/{key}?acquire={second}", b"b")
    assert (refused.status_code, refused.json()) == (200, False)
    assert base64.b64decode(api.entry(key)["Value"]) == b"a"
    assert api.entry(key)["Session"] == first


def test_acquire_with_unknown_or_empty_session_is_500(api, consul_prefix):  # [§8.4]
    unknown = "00000000-0000-0000-0000-00000000abcd"
    response = api.put(f"/v1/kv/{consul_prefix}x?acquire={unknown}", b"v")
    assert response.status_code == 500
    assert f'invalid session "{unknown}"' in response.text
    empty = api.put(f"/v1/kv/{consul_prefix}x?acquire=", b"v")
    assert empty.status_code == 500
    assert "missing session" in empty.text
    assert api.entry(consul_prefix + "x") is None


def test_release_by_non_holder_is_false_and_empty_release_is_500(api, consul_prefix):  # [§8.5]
    key = consul_prefix + "rel"
    holder = api.session(TTL="30s")
    api.put(f"/v1/kv/{key}?acquire={holder}", b"v")
    other = api.session(TTL="30s")
    assert api.put(f"/v1/kv/{key}?release={other}", b"v").json() is False
    never = "11111111-2222-3333-4444-555555555555"
    assert api.put(f"/v1/kv/{key}?release={never}", b"v").json() is False
    assert api.put(f"/v1/kv/{key}?release=", b"v").status_code == 500
    assert api.entry(key)["Session"] == holder


def test_plain_put_on_locked_key_keeps_session(api, consul_prefix):  # [§8.6]
    key = consul_prefix + "locked"
    session = api.session(TTL="30s")
    api.put(f"/v1/kv/{key}?acquire={session}", b"a")
    assert api.put(f"/v1/kv/{key}", b"overwritten").json() is True
    entry = api.entry(key)
    assert entry["Session"] == session
    assert base64.b64decode(entry["Value"]) == b"overwritten"


def test_lock_index_counts_new_acquisitions_only(api, consul_prefix):  # [§8.7]
    key = consul_prefix + "li"
    session = api.session(TTL="30s")
    api.put(f"/v1/kv/{key}?acquire={session}", b"1")
    assert api.entry(key)["LockIndex"] == 1
    api.put(f"/v1/kv/{key}?acquire={session}", b"2")
    assert api.entry(key)["LockIndex"] == 1
    api.put(f"/v1/kv/{key}?release={session}", b"3")
    assert api.entry(key)["LockIndex"] == 1
    api.put(f"/v1/kv/{key}?acquire={session}", b"4")
    assert api.entry(key)["LockIndex"] == 2
    api.put(f"/v1/kv/{key}", b"plain")
    assert api.entry(key)["LockIndex"] == 0


def test_same_value_write_keeps_modify_index(api, consul_prefix):  # [§8.8]
    key = consul_prefix + "same"
    api.put(f"/v1/kv/{key}?flags=3", b"same")
    before = api.entry(key)["ModifyIndex"]
    assert api.put(f"/v1/kv/{key}?flags=3", b"same").json() is True
    assert api.entry(key)["ModifyIndex"] == before
    api.put(f"/v1/kv/{key}?flags=3", b"different")
    assert api.entry(key)["ModifyIndex"] > before


def test_delete_and_cas_answers_for_missing_and_existing_keys(api, consul_prefix):  # [§8.9]
    missing = consul_prefix + "nothing"
    assert api.delete(f"/v1/kv/{missing}").json() is True
    assert api.delete(f"/v1/kv/{missing}?cas=5").json() is True
    key = consul_prefix + "cas"
    assert api.put(f"/v1/kv/{key}?cas=0", b"first").json() is True
    assert api.put(f"/v1/kv/{key}?cas=0", b"second").json() is False
    index = api.entry(key)["ModifyIndex"]
    assert api.put(f"/v1/kv/{key}?cas={index + 1000}", b"x").json() is False
    assert api.put(f"/v1/kv/{key}?cas={index}", b"third").json() is True
    assert api.put(f"/v1/kv/{consul_prefix}absent?cas=3", b"x").json() is False
    new_index = api.entry(key)["ModifyIndex"]
    assert api.delete(f"/v1/kv/{key}?cas=0").json() is False
    assert api.delete(f"/v1/kv/{key}?cas={new_index}").json() is True
    assert api.entry(key) is None


@pytest.mark.parametrize("query", ["cas=0&acquire=x", "acquire=a&release=b", "cas=1&release=b"])
def test_conflicting_flags_are_400(api, consul_prefix, query):  # [§8.10]
    response = api.put(f"/v1/kv/{consul_prefix}k?{query}", b"v")
    assert response.status_code == 400
    assert response.text.startswith("Conflicting flags: ")
    assert api.delete(f"/v1/kv/{consul_prefix}k?recurse&cas=1").status_code == 400


def test_query_flags_count_by_presence(api, consul_prefix):  # [§8.11]
    api.put(f"/v1/kv/{consul_prefix}a", b"1")
    api.put(f"/v1/kv/{consul_prefix}b", b"2")
    listed = api.get(f"/v1/kv/{consul_prefix}?recurse=false")
    assert [e["Key"] for e in listed.json()] == [consul_prefix + "a", consul_prefix + "b"]


def test_missing_key_404_carries_index_and_no_body(api, consul_prefix):  # [§8.12]
    response = api.get(f"/v1/kv/{consul_prefix}missing")
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["X-Consul-Index"]) >= 1
    assert api.get(f"/v1/kv/{consul_prefix}?recurse").status_code == 404
    assert api.get(f"/v1/kv/{consul_prefix}?keys").status_code == 404


def test_empty_store_root_keys_is_empty_list_and_root_recurse_is_404(
    consul_dev_server_factory,
):  # [§8.12]
    from conftest import Api

    api = Api(consul_dev_server_factory().url)
    keys = api.get("/v1/kv/?keys")
    assert (keys.status_code, keys.json()) == (200, [])
    assert api.get("/v1/kv/?recurse").status_code == 404
    assert api.get("/v1/kv/?recurse").headers["X-Consul-Index"] == "1"


def test_index_headers_follow_entries_tables_and_tombstones(api, consul_prefix):  # [§8.13]
    api.put(f"/v1/kv/{consul_prefix}dir/a", b"1")
    api.put(f"/v1/kv/{consul_prefix}dir/b", b"2")
    a = api.get(f"/v1/kv/{consul_prefix}dir/a")
    assert a.headers["X-Consul-Index"] == str(a.json()[0]["ModifyIndex"])
    b_index = api.entry(consul_prefix + "dir/b")["ModifyIndex"]
    listed = api.get(f"/v1/kv/{consul_prefix}dir/?recurse")
    assert listed.headers["X-Consul-Index"] == str(b_index)
    api.delete(f"/v1/kv/{consul_prefix}dir/b")
    after = api.get(f"/v1/kv/{consul_prefix}dir/?recurse")
    assert int(after.headers["X-Consul-Index"]) > b_index  # the tombstone counts
    missing = api.get(f"/v1/kv/{consul_prefix}dir/b")
    assert int(missing.headers["X-Consul-Index"]) >= int(after.headers["X-Consul-Index"])


def test_byte_prefix_matching_order_case_and_trailing_slash(api, consul_prefix):  # [§8.14]
    for key in ("foo", "foo/bar", "foobar", "Foo", "foo/", "fo"):
        api.put(f"/v1/kv/{consul_prefix}{key}", key.encode())
    listed = [
        e["Key"][len(consul_prefix) :] for e in api.get(f"/v1/kv/{consul_prefix}foo?recurse").json()
    ]
    assert listed == ["foo", "foo/", "foo/bar", "foobar"]
    keys = api.get(f"/v1/kv/{consul_prefix}?keys").json()
    assert keys == sorted(keys, key=lambda k: k.encode())
    assert consul_prefix + "Foo" in keys
    assert base64.b64decode(api.entry(consul_prefix + "foo/")["Value"]) == b"foo/"


def test_keys_with_separator_collapse_to_first_separator(api, consul_prefix):  # [§2.5]
    base = consul_prefix + "base/"
    for key in ("foo", "base/foo", "base/bar/baz"):
        api.put(f"/v1/kv/{base}{key}", b"x")
    keys = api.get(f"/v1/kv/{base}?keys&separator=/").json()
    assert keys == [base + "base/", base + "foo"]
    misspelt = api.get(f"/v1/kv/{base}?keys&seperator=/").json()
    assert misspelt == keys


def test_json_flags_are_exact_uint64_and_value_is_padded_base64(api, consul_prefix):  # [§8.23]
    key = consul_prefix + "big"
    flags = 2**64 - 1
    api.put(f"/v1/kv/{key}?flags={flags}", b"ab")
    response = api.get(f"/v1/kv/{key}")
    assert f'"Flags":{flags}' in response.text.replace(" ", "")
    assert response.json()[0]["Value"] == "YWI="
    assert "Session" not in response.json()[0]
    header_names = list(response.raw.headers.keys())
    assert "X-Consul-Index" in header_names
    assert "X-Consul-Knownleader" in header_names
    assert "X-Consul-Lastcontact" in header_names
    assert api.put(f"/v1/kv/{key}?flags={2**64}", b"x").status_code == 500
    assert api.put(f"/v1/kv/{key}?flags=abc", b"x").status_code == 500


def test_non_printable_path_is_400_and_double_slash_redirects(api, consul_prefix):  # [§8.25]
    bad = api.get(f"/v1/kv/{consul_prefix}a%0ab")
    assert (bad.status_code, bad.content) == (400, b"")
    redirect = api.put(f"/v1/kv/{consul_prefix}a//b", b"lost")
    assert redirect.status_code == 301
    assert redirect.headers["Location"].endswith(f"/v1/kv/{consul_prefix}a/b")
    assert api.get(f"/v1/kv/{consul_prefix}a%20b").status_code == 404  # space is printable


def test_value_size_limit_is_exact(api, consul_prefix):  # [§2.8]
    key = consul_prefix + "size"
    assert api.put(f"/v1/kv/{key}", b"x" * 524288).json() is True
    too_big = api.put(f"/v1/kv/{key}", b"y" * 524289)
    assert too_big.status_code == 413
    assert too_big.text.startswith("Request body(524289 bytes) too large, max size: 524288 bytes.")
    assert base64.b64decode(api.entry(key)["Value"]) == b"x" * 524288


def test_missing_key_name_is_400(api):
    assert api.put("/v1/kv/", b"x").text == "Missing key name"
    assert api.delete("/v1/kv/").status_code == 400
    assert api.get("/v1/kv/").status_code == 400


def test_delete_recurse_removes_the_byte_prefix_only(api, consul_prefix):
    for key in ("a/1", "a/2", "ab", "b"):
        api.put(f"/v1/kv/{consul_prefix}{key}", b"x")
    assert api.delete(f"/v1/kv/{consul_prefix}a/?recurse").json() is True
    remaining = [e["Key"] for e in api.get(f"/v1/kv/{consul_prefix}?recurse").json()]
    assert remaining == [consul_prefix + "ab", consul_prefix + "b"]


def test_python_consul2_round_trip(consul_server, consul_prefix):
    client = consul.Consul(
        host=consul_server.host,
        port=consul_server.port,
        scheme=consul_server.scheme,
        token=consul_server.token,
    )
    key = consul_prefix + "pc2"
    assert client.kv.put(key, "value", flags=5) is True
    index, data = client.kv.get(key)
    assert data["Value"] == b"value"
    assert data["Flags"] == 5
    assert int(index) == data["ModifyIndex"]
    _, listed = client.kv.get(consul_prefix, recurse=True)
    assert [d["Key"] for d in listed] == [key]
    assert client.kv.delete(key) is True
    assert client.kv.get(key)[1] is None
