"""Pushed waiting: registrations, rings and the doorbell, and what happens when a side fails
or does not take part. On the dev server or a real agent (a few need the dev server's controls).

Where a test must show that a result came by a ring, it turns the safety net off
(``SAFETY_NET`` very long): a lost wake-up would then be a waiter that times out."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import signal
import subprocess
import sys
import textwrap

import pytest
from celery import states
from celery.exceptions import TimeoutError
from celery.result import ResultSet
from conftest import SESSION_TTL_MIN_S, Api, backend_url, wait_until
from test_waiting import start_waiters

from consulresults import aio, consumer, doorbell, rings, waiting
from consulresults.waiting import WAITING

NEVER = 1e9


def waiting_keys(api: Api, prefix: str) -> list[str]:
    """Every key under the prefix's waiting directory."""
    found = api.get(f"/v1/kv/{prefix.rstrip('/')}/{rings.WAITING_DIR}/", params={"keys": "1"})
    return found.json() if found.status_code == 200 else []


def registrations(api: Api, prefix: str) -> list[str]:
    return [k for k in waiting_keys(api, prefix) if f"/{rings.WAITING_DIR}/r/" in k]


def waiting_session(api: Api, prefix: str) -> str:
    """The session whose doorbell anchor is under the prefix (there is one)."""
    head = f"{prefix.rstrip('/')}/{rings.WAITING_DIR}/d/"
    anchors = {k[len(head) :].split("/")[0] for k in waiting_keys(api, prefix) if head in k}
    assert len(anchors) == 1, anchors
    return anchors.pop()


def registered(api: Api, prefix: str, n: int) -> None:
    wait_until(lambda: len(registrations(api, prefix)) >= n, 30, f"{n} registrations")


def joined(threads) -> None:
    for thread in threads:
        thread.join(60)


def stored_while_waiting(app, ids: list[str], timeout: float) -> dict[str, object]:
    """A waiting thread per id, each id's result stored (its index) at once: the outcomes."""
    threads, outcomes = start_waiters(app, ids, timeout=timeout)
    for i, task_id in enumerate(ids):
        app.backend.store_result(task_id, i, states.SUCCESS)
    joined(threads)
    return outcomes


@pytest.fixture
def rung_only(monkeypatch):
    """No safety net, and no last read at a deadline allowed: what the waiters get came by a
    registration's read or a ring (a lost wake-up would be a waiter that times out)."""
    monkeypatch.setattr(waiting, "SAFETY_NET", NEVER)
    deadline_reads: list[object] = []
    read_now = consumer.Subscription.read_now

    def spy(self, keys):
        deadline_reads.append(keys)
        return read_now(self, keys)

    monkeypatch.setattr(consumer.Subscription, "read_now", spy)
    yield
    assert deadline_reads == []


def test_no_wake_up_is_lost_while_stores_race_registrations(make_app, rung_only):
    """Stores sent while their waiters are still registering: each result comes through the
    registration's read or a ring, with no safety net behind them."""
    app = make_app()
    ids = [f"race-{i}" for i in range(100)]
    assert stored_while_waiting(app, ids, timeout=30) == {t: i for i, t in enumerate(ids)}


def test_a_registration_reads_earlier_stores_and_later_ones_ring(make_app):
    """Both orders of a store and a registration, one after the other."""
    app = make_app()
    backend = app.backend
    rung: list[dict] = []
    arrived = multiprocessing.Event()

    def on_rung(entries: dict) -> None:
        rung.append(entries)
        arrived.set()

    bell = doorbell.Doorbell(backend.store, on_rung, on_lost=lambda: None)
    before, after = (backend._key(backend.get_key_for_task(t)) for t in ("before", "after"))
    try:
        backend.store_result("before", 1, states.SUCCESS)
        found: dict = {}
        bell.register([before, after], found.update)
        assert backend.decode_result(found[before]["Value"])["result"] == 1
        assert found[after] is None
        backend.store_result("after", 2, states.SUCCESS)
        assert arrived.wait(30), "no ring"
        assert backend.decode_result(rung[0][after]["Value"])["result"] == 2
    finally:
        bell.close()


def test_a_writer_that_stops_before_ringing_is_caught_by_the_safety_net(
    make_app, monkeypatch, api, consul_prefix
):
    """A worker killed between its store and its ring (a fault no request can make: the ring is
    left out): the waiters read the result at the next safety-net round."""
    monkeypatch.setattr(waiting, "SAFETY_NET", 0.5)
    monkeypatch.setattr(rings, "ring", lambda *args, **kwargs: 0)
    app = make_app()
    threads, outcomes = start_waiters(app, ["unrung-1", "unrung-2"], timeout=60)
    registered(api, consul_prefix, 2)
    app.backend.store_result("unrung-1", 1, states.SUCCESS)
    app.backend.store_result("unrung-2", 2, states.SUCCESS)
    joined(threads)
    assert outcomes == {"unrung-1": 1, "unrung-2": 2}


def test_results_of_celerys_builtin_backend_reach_waiters(
    make_app, builtin_backend, monkeypatch, api, consul_prefix
):
    """A mixed fleet: a writer that does not ring (Celery's own backend) is read by the safety
    net."""
    monkeypatch.setattr(waiting, "SAFETY_NET", 0.5)
    app = make_app()
    threads, outcomes = start_waiters(app, ["mixed-1", "mixed-2"], timeout=60)
    registered(api, consul_prefix, 2)
    builtin_backend.store_result("mixed-1", "one", states.SUCCESS)
    builtin_backend.store_result("mixed-2", "two", states.SUCCESS)
    joined(threads)
    assert outcomes == {"mixed-1": "one", "mixed-2": "two"}


WAITER = textwrap.dedent(
    """
    import sys, threading, time
    from celery import Celery
    from consulresults import doorbell
    from consulresults.waiting import WAITING

    doorbell.SESSION_TTL = int(sys.argv[3])
    app = Celery(backend=sys.argv[1], set_as_current=False)
    app.conf.consulresults_token = sys.argv[2] or None
    for task_id in ("killed-1", "killed-2"):
        threading.Thread(target=app.AsyncResult(task_id).get, daemon=True).start()
    while WAITING.registered_keys() < 2:
        time.sleep(0.01)
    print("registered", flush=True)
    time.sleep(600)
    """
)


def test_a_waiter_killed_leaves_nothing_behind(make_app, consul_server, consul_prefix, api):
    """SIGKILL: no atexit, no destroy. Its session lapses (within two TTLs), and its keys with
    it; a writer storing meanwhile is not held up."""
    ttl = max(2, int(SESSION_TTL_MIN_S))
    url = backend_url(consul_server, consul_prefix)
    child = subprocess.Popen(
        [sys.executable, "-c", WAITER, url, consul_server.token or "", str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "registered"
        assert len(registrations(api, consul_prefix)) == 2
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        make_app().backend.store_result("killed-1", 1, states.SUCCESS)  # rings a dead waiter
        wait_until(lambda: not waiting_keys(api, consul_prefix), 2 * ttl + 10, "keys gone")
        make_app().backend.store_result("killed-2", 2, states.SUCCESS)  # no waiter left at all
    finally:
        child.kill()
        child.wait(30)


def acl_server(factory, prefix: str):
    """A deny-by-default server with a full token, a read-only one, and a writer that may not
    read the waiting directory (nor ring)."""
    from consulresults.devserver import AclConfig

    full = {"key_prefix": {prefix: "write"}, "session_prefix": {"": "write"}}
    read_only = {"key_prefix": {prefix: "read"}}
    blind = {
        "key_prefix": {prefix: "write", f"{prefix}{rings.WAITING_DIR}/": "deny"},
        "session_prefix": {"": "write"},
    }
    tokens = {"full-secret": full, "read-secret": read_only, "blind-secret": blind}
    acl = AclConfig(
        enabled=True,
        default_policy="deny",
        management_token="root-secret",
        tokens={name: json.dumps(rules) for name, rules in tokens.items()},
    )
    return factory(acl=acl)


def test_a_read_only_waiter_polls_and_says_so(
    consul_dev_server_factory, make_app, caplog, monkeypatch
):
    monkeypatch.setattr(waiting.WAITING, "_warned", False)
    server = acl_server(consul_dev_server_factory, "ro/")
    writer = make_app(backend=backend_url(server, "ro"), consulresults_token="full-secret")
    reader = make_app(backend=backend_url(server, "ro"), consulresults_token="read-secret")
    with caplog.at_level(logging.WARNING, logger="consulresults.waiting"):
        threads, outcomes = start_waiters(reader, ["ro-1", "ro-2"], timeout=60)
        wait_until(lambda: "polls every" in caplog.text, 30, "the warning")
        writer.backend.store_result("ro-1", 1, states.SUCCESS)
        writer.backend.store_result("ro-2", 2, states.SUCCESS)
        joined(threads)
    assert outcomes == {"ro-1": 1, "ro-2": 2}
    assert caplog.text.count("polls every") == 1


def test_a_writer_that_may_not_ring_is_caught_by_the_safety_net(
    consul_dev_server_factory, make_app, monkeypatch
):
    """Without key:read on the registrations Consul filters the store's get-tree silently:
    no ring, and the waiter reads the result at the safety net's next round."""
    monkeypatch.setattr(waiting, "SAFETY_NET", 0.5)
    server = acl_server(consul_dev_server_factory, "blind/")
    api = Api(server.url, "full-secret")
    writer = make_app(backend=backend_url(server, "blind"), consulresults_token="blind-secret")
    waiter = make_app(backend=backend_url(server, "blind"), consulresults_token="full-secret")
    threads, outcomes = start_waiters(waiter, ["blind-1", "blind-2"], timeout=60)
    registered(api, "blind/", 2)
    writer.backend.store_result("blind-1", 1, states.SUCCESS)
    writer.backend.store_result("blind-2", 2, states.SUCCESS)
    joined(threads)
    assert outcomes == {"blind-1": 1, "blind-2": 2}


def _child_closes(queue) -> None:
    """In a forked child: what its exit would do, then what it inherited."""
    doorbell._close_all()
    queue.put(WAITING.registered_keys())


def test_a_forked_child_never_destroys_its_parents_session(make_app, api, consul_prefix, rung_only):
    app = make_app()
    threads, outcomes = start_waiters(app, ["forked-1", "forked-2"], timeout=60)
    registered(api, consul_prefix, 2)
    session = waiting_session(api, consul_prefix)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_closes, args=(queue,))
    child.start()
    assert queue.get(timeout=30) == 0  # the child inherited no waiters
    child.join(30)
    assert api.get(f"/v1/session/info/{session}").json()  # the parent's session lives
    app.backend.store_result("forked-1", 1, states.SUCCESS)
    app.backend.store_result("forked-2", 2, states.SUCCESS)
    joined(threads)
    assert outcomes == {"forked-1": 1, "forked-2": 2}


def test_a_lost_session_registers_everything_again(make_app, api, consul_prefix, rung_only):
    """An operator destroys the waiting session: its keys go, the waiters register again under
    a new one (with fresh reads), and rings reach them."""
    app = make_app()
    threads, outcomes = start_waiters(app, ["lost-1", "lost-2"], timeout=60)
    registered(api, consul_prefix, 2)
    first = waiting_session(api, consul_prefix)
    api.put(f"/v1/session/destroy/{first}")
    wait_until(
        lambda: (
            len(registrations(api, consul_prefix)) == 2
            and waiting_session(api, consul_prefix) != first
        ),
        30,
        "registered again under a new session",
    )
    app.backend.store_result("lost-1", 1, states.SUCCESS)
    app.backend.store_result("lost-2", 2, states.SUCCESS)
    joined(threads)
    assert outcomes == {"lost-1": 1, "lost-2": 2}


def test_rings_arrive_after_tombstones_are_reaped(consul_dev_server_factory, make_app, rung_only):
    """Cleaned-up rings leave tombstones under the doorbell's prefix; reaping them lowers its
    index, and the doorbell still wakes for the next ring."""
    server = consul_dev_server_factory()
    api = Api(server.url)
    app = make_app(backend=backend_url(server, "reaped"))
    ids = ["reaped-1", "reaped-2", "reaped-3"]
    threads, outcomes = start_waiters(app, ids, timeout=60)
    registered(api, "reaped/", 3)
    app.backend.store_result("reaped-1", 1, states.SUCCESS)
    threads[0].join(60)
    wait_until(lambda: len(registrations(api, "reaped/")) == 2, 30, "the first cleaned up")
    assert server.reap_tombstones() >= 1
    app.backend.store_result("reaped-2", 2, states.SUCCESS)
    app.backend.store_result("reaped-3", 3, states.SUCCESS)
    joined(threads)
    assert outcomes == {"reaped-1": 1, "reaped-2": 2, "reaped-3": 3}


def test_cancelled_awaits_are_unregistered(make_app, api, consul_prefix):
    app = make_app()

    async def main() -> None:
        waits = [asyncio.create_task(aio.get(app.AsyncResult(f"gone-{i}"))) for i in range(5)]
        while len(registrations(api, consul_prefix)) < 5:
            await asyncio.sleep(0.05)
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    asyncio.run(main())
    wait_until(lambda: not registrations(api, consul_prefix), 30, "registrations removed")


def test_timeout_zero_is_one_read(consul_dev_server_factory, make_app):
    """As Celery 5.7: ready results handed over, then TimeoutError for the rest."""
    server = consul_dev_server_factory()
    app = make_app(backend=backend_url(server, "zero"))
    app.backend.store_result("done-1", 1, states.SUCCESS)
    app.backend.store_result("done-2", 2, states.SUCCESS)
    server.reset_counters()
    assert app.AsyncResult("done-1").get(timeout=0) == 1
    assert server.counters()["requests"] == 1
    assert ResultSet([app.AsyncResult("done-1"), app.AsyncResult("done-2")]).join_native(
        timeout=0
    ) == [1, 2]
    with pytest.raises(TimeoutError):
        app.AsyncResult("pending").get(timeout=0)
    with pytest.raises(TimeoutError):
        ResultSet([app.AsyncResult("done-1"), app.AsyncResult("pending")]).join_native(timeout=0)
    many = app.backend.get_many(["done-2", "pending"], timeout=0)
    assert next(many)[0] == "done-2"
    with pytest.raises(TimeoutError):
        next(many)


def test_a_result_ready_by_the_deadline_is_no_timeout(make_app, monkeypatch):
    """The service never tells (it is switched off): the last read at the deadline finds it."""
    monkeypatch.setattr(waiting.WAITING, "watch", lambda *args, **kwargs: None)
    app = make_app()
    app.backend.store_result("by-the-deadline", 7, states.SUCCESS)
    assert app.AsyncResult("by-the-deadline").get(timeout=0.2) == 7
    (task_id, meta), *_ = app.backend.get_many(["by-the-deadline"], timeout=0.2)
    assert (task_id, meta["result"]) == ("by-the-deadline", 7)


def test_listings_never_take_waiting_keys_for_results(make_app, cli, api, consul_prefix):
    app = make_app()
    app.backend.store_result("listed", 1, states.SUCCESS)
    threads, _ = start_waiters(app, ["unlisted-1", "unlisted-2"], timeout=60)
    registered(api, consul_prefix, 2)
    listed = cli("ls", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert [row["id"] for row in json.loads(listed.output)] == ["listed"]
    app.backend.store_result("unlisted-1", 1, states.SUCCESS)
    app.backend.store_result("unlisted-2", 2, states.SUCCESS)
    joined(threads)


def test_waiters_on_a_consul_before_1_14_poll(consul_dev_server_factory, make_app):
    """64 txn operations at most and no get-or-empty: 40 new keys at once are no error for
    anybody, the waiters poll instead."""
    server = consul_dev_server_factory(consul_version="1.13.9")
    app = make_app(backend=backend_url(server, "old"))
    ids = [f"old-{i}" for i in range(40)]
    assert stored_while_waiting(app, ids, timeout=60) == {t: i for i, t in enumerate(ids)}


def test_only_ready_states_ring(make_app, api, consul_prefix):
    """A STARTED (or any state not ready) wakes no waiter: none acts on it. Its store rings
    nobody, so the doorbell's answers stay as short as the results still to clean up."""
    app = make_app()
    threads, outcomes = start_waiters(app, ["ready-1", "ready-2"], timeout=60)
    registered(api, consul_prefix, 2)
    session = waiting_session(api, consul_prefix)
    rings_of = f"/{rings.WAITING_DIR}/d/{session}/"
    app.backend.store_result("ready-1", None, states.STARTED)
    assert rings.RINGER.flush(30)
    assert [k for k in waiting_keys(api, consul_prefix) if rings_of in k] == []
    app.backend.store_result("ready-1", 1, states.SUCCESS)
    app.backend.store_result("ready-2", 2, states.SUCCESS)
    joined(threads)
    assert outcomes == {"ready-1": 1, "ready-2": 2}
