"""Blocking queries with real timers: docs/consul-api.md §8.22 and §5 (tagged [§N])."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_until

HEAD_START = 0.3  # on a real agent, which cannot say when a request has reached it


def once_blocking(api, route: str, action) -> threading.Thread:
    """Run ``action`` (in a thread) once the blocking request the test sends next, on
    ``route``, has reached the server: the dev server counts requests per route, so it is
    waited for; a real agent does not say, so there it gets HEAD_START seconds."""
    server = api.server
    if getattr(server, "is_dev_server", False):
        before = server.counters().get(route, 0)

        def arrived() -> None:
            wait_until(lambda: server.counters().get(route, 0) > before, 30, f"a {route} request")

    else:

        def arrived() -> None:
            time.sleep(HEAD_START)

    thread = threading.Thread(target=lambda: (arrived(), action()))
    thread.start()
    return thread


def test_blocking_get_returns_when_the_key_changes(api, consul_prefix):  # [§8.22]
    key = consul_prefix + "watched"
    api.put(f"/v1/kv/{key}", b"1")
    index = api.get(f"/v1/kv/{key}").headers["X-Consul-Index"]
    writer = once_blocking(api, "kv.get", lambda: api.put(f"/v1/kv/{key}", b"2"))
    response = api.get(f"/v1/kv/{key}?index={index}&wait=20s")
    writer.join()
    # written only once the read was in: it waited for the write, and answered well before 20 s
    assert response.json()[0]["Value"] == "Mg=="
    assert int(response.headers["X-Consul-Index"]) > int(index)
    assert response.elapsed.total_seconds() < 15


def test_blocking_get_times_out_with_current_data_within_jitter(api, consul_prefix):  # [§8.22]
    key = consul_prefix + "quiet"
    api.put(f"/v1/kv/{key}", b"1")
    index = api.get(f"/v1/kv/{key}").headers["X-Consul-Index"]
    started = time.monotonic()
    response = api.get(f"/v1/kv/{key}?index={index}&wait=1s")
    waited = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["X-Consul-Index"] == index
    assert 1.0 <= waited < 1.0 + 1.0 / 16 + 0.5


def test_index_zero_or_lower_answers_at_once(api, consul_prefix):  # [§5]
    key = consul_prefix + "now"
    api.put(f"/v1/kv/{key}", b"1")
    index = int(api.get(f"/v1/kv/{key}").headers["X-Consul-Index"])
    started = time.monotonic()
    api.get(f"/v1/kv/{key}?index=0&wait=5s")
    api.get(f"/v1/kv/{key}?index={index - 1}&wait=5s")
    assert time.monotonic() - started < 4


def test_same_value_write_does_not_wake_a_watcher(api, consul_prefix):  # [§8.8, §8.22]
    key = consul_prefix + "same"
    api.put(f"/v1/kv/{key}", b"1")
    index = api.get(f"/v1/kv/{key}").headers["X-Consul-Index"]
    written = []
    writer = once_blocking(
        api,
        "kv.get",
        lambda: written.append((api.put(f"/v1/kv/{key}", b"1"), time.monotonic())),
    )
    started = time.monotonic()
    response = api.get(f"/v1/kv/{key}?index={index}&wait=1s")
    answered = time.monotonic()
    writer.join()
    assert written[0][0].status_code == 200
    assert written[0][1] < answered  # the write landed while the read waited
    assert answered - started >= 1.0
    assert response.headers["X-Consul-Index"] == index


def test_missing_key_keeps_blocking_through_unrelated_writes(api, consul_prefix):  # [§8.22]
    missing = consul_prefix + "later"
    index = api.get(f"/v1/kv/{missing}").headers["X-Consul-Index"]

    def writes():  # paced, so a watcher wrongly woken by the noise answers before the key is
        for i in range(3):  # written (a 404, or the wait's end)
            api.put(f"/v1/kv/{consul_prefix}noise{i}", b"x")
            time.sleep(0.1)
        time.sleep(0.3)
        api.put(f"/v1/kv/{missing}", b"here")

    writer = once_blocking(api, "kv.get", writes)
    started = time.monotonic()
    response = api.get(f"/v1/kv/{missing}?index={index}&wait=20s")
    waited = time.monotonic() - started
    writer.join()
    assert response.status_code == 200
    assert response.json()[0]["Key"] == missing
    assert waited >= 0.6


def test_missing_key_returns_at_once_when_table_moved_past_index(api, consul_prefix):  # [§5]
    missing = consul_prefix + "absent"
    index = int(api.get(f"/v1/kv/{missing}").headers["X-Consul-Index"])
    api.put(f"/v1/kv/{consul_prefix}other", b"x")
    started = time.monotonic()
    response = api.get(f"/v1/kv/{missing}?index={index}&wait=10s")
    assert response.status_code == 404
    assert time.monotonic() - started < 5


def test_recurse_wakes_on_a_delete_under_the_prefix(api, consul_prefix):  # [§5]
    api.put(f"/v1/kv/{consul_prefix}a", b"1")
    api.put(f"/v1/kv/{consul_prefix}b", b"1")
    index = api.get(f"/v1/kv/{consul_prefix}?recurse").headers["X-Consul-Index"]
    writer = once_blocking(api, "kv.get", lambda: api.delete(f"/v1/kv/{consul_prefix}a"))
    response = api.get(f"/v1/kv/{consul_prefix}?recurse&index={index}&wait=20s")
    writer.join()
    assert [e["Key"] for e in response.json()] == [consul_prefix + "b"]


def test_session_info_blocks_until_the_session_goes(api):  # [§5]
    session_id = api.session(Checks=[])
    index = api.get(f"/v1/session/info/{session_id}").headers["X-Consul-Index"]
    destroyer = once_blocking(
        api, "session.info", lambda: api.put(f"/v1/session/destroy/{session_id}")
    )
    response = api.get(f"/v1/session/info/{session_id}?index={index}&wait=20s")
    destroyer.join()
    assert response.json() == []


@pytest.mark.parametrize(
    "query,text",
    [
        ("wait=10", "Invalid wait time"),
        ("index=abc", "Invalid index"),
        ("stale&consistent", "Cannot specify ?stale with ?consistent, conflicting semantics."),
        ("max_stale=soon", 'Invalid max_stale value "soon"'),
    ],
)
def test_bad_query_options_are_400(api, consul_prefix, query, text):  # [§1.3]
    response = api.get(f"/v1/kv/{consul_prefix}x?{query}")
    assert (response.status_code, response.text) == (400, text)
