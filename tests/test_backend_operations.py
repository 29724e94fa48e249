"""The operations the CLI is built on: listing, fetching with metadata, purging, sessions, stats."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import states

from consulresults.operations import ResultFilter


@pytest.fixture
def backend(make_app):
    return make_app().backend


def store(backend, task_id, state=states.SUCCESS, result=1, done_days_ago=0, name="app.task"):
    """Store a result as a worker would, done ``done_days_ago`` days ago by task ``name``
    (Celery's meta layout, written through the public key/value API)."""
    done = datetime.now(timezone.utc) - timedelta(days=done_days_ago)
    meta = {
        "status": state,
        "result": backend.encode_result(result, state),
        "traceback": None,
        "children": [],
        "date_done": done.isoformat(),
        "task_id": task_id,
        "name": name,
    }
    backend.set(backend.get_key_for_task(task_id), backend.encode(meta))


def test_iter_results_reads_everything_and_skips_foreign_keys(
    backend, api, consul_prefix, consul_server, builtin_backend
):
    for i in range(300):
        backend.store_result(f"r{i}", i, states.SUCCESS)
    builtin_backend.store_result("from-builtin", "b", states.SUCCESS)
    api.put(f"/v1/kv/{consul_prefix}other-app/config", b"not ours")
    api.put(f"/v1/kv/{consul_prefix}celery-task-meta-garbage", b"\x00not json")
    if consul_server.is_dev_server:
        consul_server.reset_counters()
    results = {r.id: r for r in backend.operations().iter_results()}
    assert len(results) == 302
    assert "other-app/config" not in results
    assert results["from-builtin"].meta["result"] == "b"
    assert results["garbage"].state == "UNREADABLE"
    assert results["garbage"].error.startswith("cannot decode")
    assert results["r7"].meta["result"] == 7
    if consul_server.is_dev_server:
        assert consul_server.counters()["requests"] == 1 + 3  # keys, then 3 txn batches of 128


def test_fetch_returns_consul_metadata(backend, api):
    backend.store_result("meta", {"x": 1}, states.SUCCESS)
    found = backend.operations().fetch("meta")
    assert found.state == states.SUCCESS
    assert found.session
    assert found.modify_index >= found.create_index > 0
    assert found.expires_at > time.time() + 3000
    info = backend.operations().session_info(found.session)
    assert info["Behavior"] == "delete"
    assert backend.operations().fetch("missing") is None


def test_purge_filters(backend):
    store(backend, "old-ok", states.SUCCESS, done_days_ago=10, name="billing.charge")
    store(
        backend,
        "old-bad",
        states.FAILURE,
        result=KeyError("x"),
        done_days_ago=10,
        name="billing.refund",
    )
    store(backend, "new-ok", states.SUCCESS, done_days_ago=0, name="billing.charge")
    week_ago = time.time() - 7 * 86400
    selection = ResultFilter(states=frozenset({states.SUCCESS}), older_than=week_ago)
    dry = backend.operations().purge(selection, dry_run=True)
    assert (dry.matched, dry.deleted, dry.dry_run) == (1, 0, True)
    assert backend.operations().fetch("old-ok") is not None
    report = backend.operations().purge(selection)
    assert (report.matched, report.deleted, report.skipped, report.failed) == (1, 1, 0, 0)
    assert backend.operations().fetch("old-ok") is None
    assert backend.operations().purge(ResultFilter(task_globs=("billing.ref*",))).deleted == 1
    assert {r.id for r in backend.operations().iter_results()} == {"new-ok"}


def test_purge_max_delete_and_batches(backend, consul_server):
    for i in range(300):
        backend.store_result(f"p{i}", i, states.SUCCESS)
    report = backend.operations().purge(ResultFilter(), max_delete=200)
    assert (report.matched, report.deleted) == (200, 200)
    assert len(list(backend.operations().iter_results())) == 100


def test_delete_cas_skips_a_result_rewritten_meanwhile(backend):
    backend.store_result("moving", 1, states.STARTED)
    backend.store_result("still", 1, states.SUCCESS)
    listed = list(backend.operations().iter_results())
    backend.store_result("moving", 2, states.SUCCESS)  # rewritten after it was listed
    report = backend.operations().delete_results(listed)
    assert (report.matched, report.deleted, report.skipped) == (2, 1, 1)
    assert backend.operations().fetch("moving").meta["result"] == 2
    assert backend.operations().fetch("still") is None


def test_expired_and_no_session_filters(make_app, api, consul_prefix):
    forever = make_app(result_expires=None).backend
    forever.store_result("forever", 1, states.SUCCESS)
    hourly = make_app().backend
    hourly.store_result("hourly", 1, states.SUCCESS)
    api.put(
        f"/v1/kv/{consul_prefix}celery-task-meta-stale?flags={int(time.time()) - 1}",
        b'{"status": "SUCCESS", "result": 1}',
    )
    ids = {
        r.id
        for r in hourly.operations().iter_results()
        if ResultFilter(no_session=True).matches(r, 0)
    }
    assert ids == {"forever", "stale"}
    expired = [
        r.id
        for r in hourly.operations().iter_results()
        if ResultFilter(expired=True).matches(r, time.time())
    ]
    assert expired == ["stale"]


def test_sessions_with_keys_held_and_destroy(backend, builtin_backend):
    backend.store_result("s-a", 1, states.SUCCESS)
    backend.store_result("s-b", 1, states.SUCCESS)
    builtin_backend.store_result("s-builtin", 1, states.SUCCESS)
    ours = backend.operations().fetch("s-a").session
    theirs = backend.operations().fetch("s-builtin").session
    held = {s["ID"]: s["Held"] for s in backend.operations().sessions()}
    assert held[ours] == 2
    assert held[theirs] == 1
    backend.operations().destroy_session(ours)
    assert backend.operations().fetch("s-a") is None
    assert backend.operations().fetch("s-builtin") is not None


def test_expire_now_and_stats(backend):
    store(backend, "st-1", states.SUCCESS, name="a.one")
    store(backend, "st-2", states.FAILURE, result=KeyError("x"), name="a.two")
    store(backend, "st-3", states.SUCCESS, name="a.one")
    stats = backend.operations().stats()
    assert stats["results"] == 3
    assert stats["by_state"] == {states.SUCCESS: 2, states.FAILURE: 1}
    assert stats["by_task"] == {"a.one": 2, "a.two": 1}
    assert stats["sessions"] == 1
    assert stats["bytes"] > 0
    assert stats["oldest"] <= stats["newest"]
    assert backend.operations().expire_now("st-1") is True
    assert backend.operations().expire_now("st-1") is False
    assert backend.operations().stats()["results"] == 2
