"""The result backend over real HTTP: every method and option, and each defect of Celery's
built-in Consul backend shown fixed (where meaningful, the same check fails on the built-in)."""

from __future__ import annotations

import pickle
import threading
import time
import warnings

import consul
import pytest
import requests
from celery import states
from celery.exceptions import BackendStoreError, ImproperlyConfigured, TimeoutError
from conftest import backend_url

from consulresults.backend import ConsulBackend
from consulresults.connection import (
    ConsulError,
    ConsulTimeout,
    ConsulUnreachable,
    PermissionDenied,
    compatible,
)
from consulresults.expiry import ExpiryPlan


def raw_entry(server, key: str) -> dict | None:
    client = consul.Consul(
        host=server.host, port=server.port, scheme=server.scheme, token=server.token
    )
    return client.kv.get(key)[1]


# ---------------------------------------------------------------- selection and configuration


def test_selected_by_url_scheme_and_by_class_path(make_app, consul_server, consul_prefix):
    assert isinstance(make_app().backend, ConsulBackend)
    url = backend_url(consul_server, consul_prefix, "consul")
    app = make_app(backend=f"consulresults.backend:ConsulBackend+{url}")
    assert isinstance(app.backend, ConsulBackend)
    assert app.backend.prefix == consul_prefix.rstrip("/")


def test_builtin_name_consul_is_left_to_celery(builtin_backend):
    assert type(builtin_backend).__module__ == "celery.backends.consul"


def test_bad_url_is_improperly_configured_in_one_line(make_app):
    with pytest.raises(ImproperlyConfigured, match="invalid port 'x'") as err:
        make_app(backend="consulresults://h:x/p").backend  # noqa: B018
    assert "\n" not in str(err.value)


def test_token_is_never_shown(make_app, consul_server, consul_prefix):
    secret = "tok-7f3a9e"
    app = make_app(backend=f"consulresults://:{secret}@{consul_server.address}/p")
    backend = app.backend
    assert backend.settings.token == secret
    assert secret not in backend.as_uri()
    assert secret not in backend.as_uri(include_password=True)
    assert secret not in repr(backend.settings)


def test_environment_cannot_override_the_configured_address(
    make_app, monkeypatch, api, consul_prefix, builtin_backend
):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:9")  # discard port: nothing listens
    backend = make_app(consulresults_token=None).backend
    backend.store_result("env-task", 1, states.SUCCESS)  # goes to the configured server
    assert backend.get_task_meta("env-task")["result"] == 1
    with pytest.raises(requests.ConnectionError):  # python-consul2 lets the env var win
        builtin_backend.get_task_meta("env-task")


def test_picklable(make_app):
    app = make_app()
    backend = app.backend
    backend.store_result("pickled", "v", states.SUCCESS)
    app.set_current()  # Celery unpickles a backend for the current app, as in a worker
    clone = pickle.loads(pickle.dumps(backend))
    assert clone.get_task_meta("pickled")["result"] == "v"
    assert clone.settings == backend.settings


# ---------------------------------------------------------------- key layout and compatibility


def test_results_of_the_builtin_backend_are_read_and_vice_versa(make_app, builtin_backend):
    ours = make_app().backend
    builtin_backend.store_result("from-builtin", {"n": 1}, states.SUCCESS)
    assert ours.get_task_meta("from-builtin")["result"] == {"n": 1}
    ours.store_result("from-ours", [1, 2], states.SUCCESS)
    assert builtin_backend.get_task_meta("from-ours")["result"] == [1, 2]


def test_keys_use_celerys_layout(make_app, consul_server, consul_prefix):
    ours = make_app().backend
    ours.store_result("3f1c-layout", 1, states.SUCCESS)
    assert raw_entry(consul_server, consul_prefix + "celery-task-meta-3f1c-layout")


@pytest.mark.parametrize(
    "task_id", ["../../escape", "a/b", "sp ace", "ctl\x01x", "ünï", "%41", "x" * 10_000]
)
def test_hostile_task_ids_stay_under_the_prefix(make_app, api, consul_prefix, task_id):
    ours = make_app().backend
    ours.store_result(task_id, task_id, states.SUCCESS)
    keys = api.get(f"/v1/kv/{consul_prefix}?keys").json()
    assert len(keys) == 1
    assert keys[0].startswith(consul_prefix + "celery-task-meta-")
    assert "/" not in keys[0][len(consul_prefix) :]
    assert ours.get_task_meta(task_id, cache=False)["result"] == task_id


# ---------------------------------------------------------------- writes


def test_first_write_is_one_request_and_sessions_are_reused(make_app, consul_server):
    backend = make_app().backend
    backend.store_result("warm-up", 0, states.SUCCESS)  # creates this process's session
    consul_server.reset_counters()
    for i in range(20):
        backend.store_result(f"t{i}", i, states.SUCCESS)
    counts = consul_server.counters()
    assert counts["requests"] == 20
    assert counts["txn"] == 20
    assert counts.get("session.create", 0) == 0


def test_builtin_backend_costs_three_requests_on_new_connections(builtin_backend, consul_server):
    consul_server.reset_counters()
    builtin_backend.store_result("b0", 0, states.SUCCESS)
    counts = consul_server.counters()
    # a GET (on a new client), then a session create and a PUT (on another new client)
    assert (counts["requests"], counts["connections"]) == (3, 2)


@pytest.mark.parametrize(
    "first,final",
    [
        (states.STARTED, states.SUCCESS),
        (states.RETRY, states.SUCCESS),
        ("PROGRESS", states.FAILURE),
    ],
)
def test_rewrites_land_across_processes(make_app, first, final, builtin_backend):
    """A second writer (another process = another session) must land: the built-in drops it."""
    first_result = KeyError("again") if first == states.RETRY else {"step": 1}
    final_result = {"step": 2} if final == states.SUCCESS else KeyError("boom")
    writer_a, writer_b = make_app().backend, make_app().backend
    writer_a.store_result("rw", first_result, first)
    writer_b.store_result("rw", final_result, final)
    assert writer_a.get_task_meta("rw", cache=False)["status"] == final
    builtin_backend.store_result("rw-builtin", first_result, first)
    builtin_backend.store_result("rw-builtin", final_result, final)
    assert builtin_backend.get_task_meta("rw-builtin")["status"] == first  # the defect


def test_success_is_never_overwritten(make_app):
    backend, other = make_app().backend, make_app().backend
    backend.store_result("done", "ok", states.SUCCESS)
    backend.store_result("done", KeyError("late"), states.FAILURE)
    other.store_result("done", "again", states.STARTED)
    meta = other.get_task_meta("done", cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, "ok")


def test_session_destroyed_by_an_operator_is_replaced(make_app, consul_server, api, consul_prefix):
    backend = make_app().backend
    backend.store_result("s1", 1, states.STARTED)
    session = raw_entry(consul_server, consul_prefix + "celery-task-meta-s1")["Session"]
    api.put(f"/v1/session/destroy/{session}")  # behaviour delete: s1 is gone too
    backend.store_result("s2", 2, states.SUCCESS)
    entry = raw_entry(consul_server, consul_prefix + "celery-task-meta-s2")
    assert entry["Session"] and entry["Session"] != session
    assert backend.get_task_meta("s2")["result"] == 2


def test_too_large_result_is_refused_before_sending(make_app, consul_server, api, consul_prefix):
    backend = make_app().backend
    with pytest.raises(
        BackendStoreError,
        match=r"over Consul's 524288-byte value limit .* "
        r"result_compression",
    ):
        backend.store_result("huge", "x" * 600_000, states.SUCCESS)
    assert api.get(f"/v1/kv/{consul_prefix}?keys").status_code == 404


def test_compression_makes_large_results_fit(make_app):
    """Celery 5.7 compresses results (``result_compression``); earlier Celery ignores the
    setting, so there the result is refused as too large, clearly, as without it."""
    import celery

    backend = make_app(result_compression="zlib").backend
    if celery.VERSION < (5, 7):
        with pytest.raises(BackendStoreError, match="value limit"):
            backend.store_result("zipped", "y" * 600_000, states.SUCCESS)
        return
    backend.store_result("zipped", "y" * 600_000, states.SUCCESS)
    assert backend.get_task_meta("zipped")["result"] == "y" * 600_000


@pytest.mark.parametrize("serializer", ["json", "pickle", "yaml", "msgpack"])
def test_every_serializer(make_app, serializer):
    backend = make_app(result_serializer=serializer, result_accept_content=[serializer]).backend
    backend.store_result("ser", {"a": [1, 2.5, "x"]}, states.SUCCESS)
    assert backend.get_task_meta("ser", cache=False)["result"] == {"a": [1, 2.5, "x"]}


def test_forget_removes_the_result(make_app, api, consul_prefix):
    backend = make_app().backend
    backend.store_result("gone", 1, states.SUCCESS)
    backend.forget("gone")
    assert api.get(f"/v1/kv/{consul_prefix}celery-task-meta-gone").status_code == 404
    assert backend.get_task_meta("gone")["status"] == states.PENDING


# ---------------------------------------------------------------- expiry


@pytest.mark.parametrize(
    "expires,session_ttl",
    [(3600, 3900), (40, 50), (2, 10), (86_400, 86_400), (3 * 86_400, None), (None, None)],
)
def test_every_result_expires_is_honoured(
    make_app, consul_server, consul_prefix, expires, session_ttl, api
):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = make_app(result_expires=expires).backend
    assert any("below Consul's 10 s" in str(w.message) for w in caught) == (expires == 2)
    only_cleanup = any("celery beat" in str(w.message) for w in caught)
    assert only_cleanup == (expires == 3 * 86_400)  # nothing else would remove them
    before = time.time()
    backend.store_result("exp", 1, states.SUCCESS)
    entry = raw_entry(consul_server, consul_prefix + "celery-task-meta-exp")
    if session_ttl is None:
        assert "Session" not in entry
    else:
        info = api.get(f"/v1/session/info/{entry['Session']}").json()[0]
        assert info["TTL"] == f"{session_ttl}s"
        assert info["Behavior"] == "delete"
        assert info["NodeChecks"] == []
        assert info["LockDelay"] == 0
    if expires:
        assert before + expires <= entry["Flags"] <= time.time() + expires + 1
    else:
        assert entry["Flags"] == 0
    assert backend.supports_autoexpire == (session_ttl is not None or not expires)


def test_expired_session_deletes_its_results(make_app, consul_server, consul_prefix, api):
    backend = make_app(result_expires=60).backend
    backend.store_result("ttl", 1, states.SUCCESS)
    session = raw_entry(consul_server, consul_prefix + "celery-task-meta-ttl")["Session"]
    api.put(f"/v1/session/destroy/{session}")  # what TTL expiry does (consul-api.md §3.6)
    assert backend.get_task_meta("ttl", cache=False)["status"] == states.PENDING


def test_builtin_cannot_store_with_long_or_short_expiry(consul_server, consul_prefix):
    from celery import Celery

    for expires in (2 * 86_400, 5):
        app = Celery("b", set_as_current=False)
        app.conf.update(
            result_backend=backend_url(consul_server, consul_prefix, "consul"),
            result_expires=expires,
        )
        with pytest.raises(AssertionError):
            app.backend.store_result("nope", 1, states.SUCCESS)


def test_cleanup_removes_only_expired_results_of_ours(make_app, consul_server, consul_prefix, api):
    backend = make_app(result_expires=2 * 86_400).backend
    backend.store_result("fresh", 1, states.SUCCESS)
    expired_key = consul_prefix + "celery-task-meta-old"
    api.put(f"/v1/kv/{expired_key}?flags={int(time.time()) - 5}", b'{"status": "SUCCESS"}')
    foreign = consul_prefix + "other-app-config"
    api.put(f"/v1/kv/{foreign}?flags={int(time.time()) - 5}", b"keep me")
    assert backend.cleanup() == 1
    assert api.entry(expired_key) is None
    assert api.entry(foreign) is not None
    assert backend.get_task_meta("fresh")["result"] == 1


def test_failure_results_can_expire_differently(make_app, consul_server, consul_prefix):
    backend = make_app(result_expires=3600, result_failure_expires=7200).backend
    backend.store_result("ok", 1, states.SUCCESS)
    backend.store_result("bad", KeyError("x"), states.FAILURE)
    ok = raw_entry(consul_server, consul_prefix + "celery-task-meta-ok")
    bad = raw_entry(consul_server, consul_prefix + "celery-task-meta-bad")
    assert 3500 < bad["Flags"] - ok["Flags"] < 3700


def test_expiry_plan_bounds():
    assert ExpiryPlan.for_expires(3600) == ExpiryPlan(3600, 3900, 300.0)
    assert ExpiryPlan.for_expires(86_000).session_ttl == 86_300
    assert ExpiryPlan.for_expires(86_100) == ExpiryPlan(86_100, 86_400, 300.0)
    assert ExpiryPlan.for_expires(86_200) == ExpiryPlan(86_200, 86_400, 200.0)  # shrunk window
    assert ExpiryPlan.for_expires(86_370) == ExpiryPlan(86_370, 86_370, 300.0, renewed=True)
    assert ExpiryPlan.for_expires(86_400) == ExpiryPlan(86_400, 86_400, 300.0, renewed=True)
    assert ExpiryPlan.for_expires(86_401).session_ttl is None
    # a long session_window shrinks to fit the cap; a renewed one never exceeds MAX_WINDOW
    assert ExpiryPlan.for_expires(3600, window=86_000) == ExpiryPlan(3600, 86_400, 82_800.0)
    assert ExpiryPlan.for_expires(86_400, window=1e6) == ExpiryPlan(86_400, 86_400, 300.0, True)
    assert ExpiryPlan.for_expires(100, window=10).session_ttl == 110


# ---------------------------------------------------------------- reads, groups, chords


def test_mget_of_1000_ids_is_batched(make_app, consul_server, builtin_backend):
    backend = make_app().backend
    for i in range(0, 1000, 100):
        backend.store_result(f"m{i}", i, states.SUCCESS)
    keys = [backend.get_key_for_task(f"m{i}") for i in range(1000)]
    consul_server.reset_counters()
    values = backend.mget(keys)
    assert consul_server.counters()["requests"] <= 16
    assert sum(v is not None for v in values) == 10
    assert backend.decode_result(values[100])["result"] == 100


def test_mget_falls_back_on_servers_before_consul_1_14(consul_dev_server_factory):
    from celery import Celery

    server = consul_dev_server_factory(consul_version="1.13.9")
    app = Celery("old", set_as_current=False)
    app.conf.update(result_backend=f"consulresults://{server.address}/old", result_expires=3600)
    backend = app.backend
    backend.store_result("present", 1, states.SUCCESS)
    ids = ["present", *(f"absent-{i}" for i in range(200))]
    values = backend.mget([backend.get_key_for_task(i) for i in ids])
    assert values[0] is not None
    assert values[1:] == [None] * 200
    assert backend.store.txn_ops == 64


def test_groups_save_restore_delete(make_app):
    app = make_app()
    backend = app.backend
    group = app.GroupResult("g1", [app.AsyncResult("a"), app.AsyncResult("b")])
    backend.save_group("g1", group)
    restored = backend.restore_group("g1", cache=False)
    assert [r.id for r in restored.results] == ["a", "b"]
    backend.delete_group("g1")
    assert backend.restore_group("g1", cache=False) is None


def test_incr_counts_once_even_when_the_answer_is_lost(make_app, consul_server):
    backend = make_app().backend
    key = backend.get_key_for_chord("chord-x")
    assert backend.incr(key) == 1
    consul_server.faults.reset(count=1, when="after", path_prefix="/v1/txn")
    assert backend.incr(key) == 2  # applied, answer lost, re-read: counted once
    assert backend.incr(key) == 3


def test_concurrent_incr_never_loses_a_count(make_app):
    backends = [make_app().backend for _ in range(4)]
    key = backends[0].get_key_for_chord("race")
    seen: list[int] = []
    lock = threading.Lock()

    def work(backend):
        for _ in range(10):
            value = backend.incr(key)
            with lock:
                seen.append(value)

    threads = [threading.Thread(target=work, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 41))


# ---------------------------------------------------------------- waiting and retries


def test_wait_for_wakes_on_the_write_without_polling(make_app, consul_server):
    waiter, writer = make_app().backend, make_app().backend
    threading.Timer(1.0, lambda: writer.store_result("slow", "done", states.SUCCESS)).start()
    consul_server.reset_counters()
    started = time.monotonic()
    meta = waiter.wait_for("slow", timeout=20)
    elapsed = time.monotonic() - started
    assert meta["result"] == "done"
    assert elapsed < 10  # woken by the write, not by the end of a 10 s blocking wait
    assert consul_server.counters()["kv.get"] <= 3  # polling every 0.5 s would be ~3 per second


def test_get_times_out_cleanly(make_app):
    app = make_app()
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0.5)


def test_exception_safe_to_retry_and_always_retry(make_app, consul_server, builtin_backend):
    backend = make_app(
        result_backend_always_retry=True, result_backend_base_sleep_between_retries_ms=1
    ).backend
    assert backend.exception_safe_to_retry(compatible(ConsulUnreachable)("connection refused"))
    assert backend.exception_safe_to_retry(compatible(ConsulTimeout)("no answer in 10 s"))
    assert backend.exception_safe_to_retry(ConsulError(500, "No cluster leader"))
    assert backend.exception_safe_to_retry(ConsulError(429, ""))
    assert not backend.exception_safe_to_retry(ConsulError(404, ""))
    assert not backend.exception_safe_to_retry(PermissionDenied(403, "Permission denied"))
    assert not builtin_backend.exception_safe_to_retry(requests.ConnectionError())
    consul_server.faults.fail_next(3, status=500, body="No cluster leader")
    backend.store_result("retried", 7, states.SUCCESS)
    assert backend.get_task_meta("retried")["result"] == 7


def test_node_flap_does_not_delete_our_results(consul_dev_server_factory):
    from celery import Celery

    server = consul_dev_server_factory()
    ours, theirs = Celery("o", set_as_current=False), Celery("t", set_as_current=False)
    ours.conf.update(result_backend=f"consulresults://{server.address}/p", result_expires=3600)
    theirs.conf.update(result_backend=f"consul://{server.address}/p", result_expires=3600)
    ours.backend.store_result("ours", 1, states.SUCCESS)
    theirs.backend.store_result("theirs", 1, states.SUCCESS)
    server.set_node_health(False)
    server.set_node_health(True)
    assert ours.backend.get_task_meta("ours", cache=False)["status"] == states.SUCCESS
    assert theirs.backend.get_task_meta("theirs", cache=False)["status"] == states.PENDING


def test_values_are_stored_verbatim(make_app, consul_server, consul_prefix):
    backend = make_app().backend
    backend.store_result("verbatim", "v", states.SUCCESS)
    entry = raw_entry(consul_server, consul_prefix + "celery-task-meta-verbatim")
    assert backend.decode(entry["Value"])["result"] == "v"


def test_expire_never_undoes_a_concurrent_increment(make_app):
    """Celery calls expire() on the chord counter between other parts' incr(): an expire that
    rewrote a stale copy of the counter lost counts (found by the 100-part chord test)."""
    backends = [make_app().backend for _ in range(4)]
    key = backends[0].get_key_for_chord("expire-race")

    def increments(backend):
        for _ in range(15):
            backend.incr(key)

    def expiries(backend):
        for _ in range(15):
            backend.expire(key, 600)

    threads = [
        threading.Thread(target=increments, args=(backends[0],)),
        threading.Thread(target=increments, args=(backends[1],)),
        threading.Thread(target=expiries, args=(backends[2],)),
        threading.Thread(target=expiries, args=(backends[3],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backends[0].incr(key) == 31


def test_celery_report_never_shows_a_masked_or_setting_token(tmp_path, consul_server):
    import subprocess
    import sys

    (tmp_path / "reportapp.py").write_text(
        "from celery import Celery\n"
        "app = Celery('r')\n"
        f"app.conf.result_backend = 'consulresults://:pw-tok-1d2f@{consul_server.address}/p'\n"
        "app.conf.consulresults_token = 'setting-tok-9c8b'\n"
    )
    report = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "reportapp", "report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    assert "consulresults://" in report.stdout
    assert "pw-tok-1d2f" not in report.stdout + report.stderr
    assert "setting-tok-9c8b" not in report.stdout + report.stderr


def test_token_in_the_user_part_warns(make_app, consul_server):
    with pytest.warns(UserWarning, match="celery report"):
        make_app(backend=f"consulresults://tok@{consul_server.address}/p").backend  # noqa: B018


def test_fork_safe_connections(make_app, consul_server):
    """A forked child must not reuse the parent's socket (Celery issue #5605): the child's
    request comes on a connection of its own, and the parent keeps using its own."""
    import os

    backend = make_app().backend
    backend.store_result("parent", 1, states.SUCCESS)
    consul_server.reset_counters()
    pid = os.fork()
    if pid == 0:  # the child: one request, on the parent's socket unless fork-safe
        code = 1
        try:
            code = 0 if backend.get_task_meta("parent", cache=False)["result"] == 1 else 1
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    backend.store_result("parent-again", 2, states.SUCCESS)
    assert backend.get_task_meta("parent-again", cache=False)["result"] == 2
    assert consul_server.counters()["connections"] == 1  # the child's


def test_a_child_forked_while_a_session_is_being_created_still_writes(make_app, consul_server):
    """A thread of the parent holds the session pool's lock across a slow session create when
    the fork happens: the child must not inherit that lock held (it would wait for ever)."""
    import os
    import threading

    backend = make_app().backend
    delay = 2.0
    consul_server.faults.delay(delay, count=1, path_prefix="/v1/session/create")
    consul_server.reset_counters()
    writer = threading.Thread(target=backend.store_result, args=("parent", 1, states.SUCCESS))
    started = time.monotonic()
    writer.start()
    deadline = started + 30
    while not consul_server.counters().get("session.create"):  # the writer is inside the create
        assert time.monotonic() < deadline, "the writer never asked for a session"
        time.sleep(0.01)
    pid = os.fork()
    forked = time.monotonic() - started
    if pid == 0:
        code = 1
        try:
            backend.store_result("child", 2, states.SUCCESS)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    writer.join()
    assert done == (pid, 0), "the forked child hung or failed"
    # the create was answered `delay` after it reached the server, itself after `started`
    assert forked < delay, f"forked {forked:.2f} s in: maybe after the session create"
    assert backend.get_task_meta("child", cache=False)["result"] == 2


def test_a_stored_failure_of_ours_is_rebuilt_as_itself(make_app, consul_server, consul_prefix):
    """Celery's json serializer rebuilds a stored exception from its module in sys.modules: in
    a fresh reader, a task's ConsulUnreachable comes back as one, and as requests' error."""
    import subprocess
    import sys

    backend = make_app().backend
    failure = compatible(ConsulUnreachable)("no answer", "http://h:8500", "connection refused")
    backend.store_result("down", failure, states.FAILURE)
    probe = (
        "import requests\n"
        "from celery import Celery\n"
        "from consulresults.connection import ConsulUnreachable\n"
        f"app = Celery('p', backend={backend_url(consul_server, consul_prefix)!r})\n"
        f"app.conf.consulresults_token = {consul_server.token!r}\n"
        "exc = app.AsyncResult('down').result\n"
        "print(isinstance(exc, ConsulUnreachable), isinstance(exc, requests.ConnectionError))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["True", "True"], run.stderr
