"""Races and partial failures of pushed waiting, each pinned by a focused test: the doorbell's
bookkeeping, the ringer's flush, a round whose step fails for some keys only. On the dev server
or a real agent; a fault no request can make is injected at the one call it concerns."""

from __future__ import annotations

import threading

import pytest
from celery import states
from conftest import backend_url, wait_until

from consulresults import doorbell, rings, waiting
from consulresults.connection import ConsulError
from consulresults.devserver.faults import FaultRule
from consulresults.waiting import WAITING


@pytest.fixture
def bell(make_app):
    """A doorbell of a store of the test's prefix, closed at the end."""
    app = make_app()
    opened = doorbell.Doorbell(app.backend.store, on_rung=lambda e: None, on_lost=lambda: None)
    opened.app = app
    yield opened
    opened.close()


def keys_of(bell, n: int, name: str = "k") -> list[str]:
    """The keys of ``n`` task ids of the bell's app."""
    return task_keys(bell.app, n, name)


def task_keys(app, n: int, name: str) -> list[str]:
    backend = app.backend
    return [backend._key(backend.get_key_for_task(f"{name}-{i}")) for i in range(n)]


def test_forgetting_past_a_full_batch_starts_the_clean_up(bell):
    """A forget that takes the pending keys from below CLEANUP_BATCH to above it asks for a
    round at once, not only one that lands exactly on it."""
    keys = keys_of(bell, doorbell.CLEANUP_BATCH + 4)
    bell.registered.update(dict.fromkeys(keys, 0))
    assert bell.forget({keys[0]})  # the first: a batch is due within CLEANUP_DELAY
    assert bell.forget(set(keys[1:]))
    assert bell.cleanup_due() == 0.0


def test_a_failed_clean_up_keeps_the_newer_ring_index(bell, monkeypatch):
    """A ring seen while a clean-up is on its way (the doorbell takes the key for a stray at
    its newer index) survives that clean-up's failure: the next delete-cas uses it."""
    bell.register(keys_of(bell, 2), lambda entries: None)  # opens the session
    key = keys_of(bell, 1)[0]
    bell.forget({key})
    stale = bell._forgotten[key]

    def failing(session, items):
        with bell._lock:
            bell._forgotten[key] = stale + 100  # the doorbell saw a ring meanwhile
        raise ConsulError("Consul answered 500: injected", status=500)

    monkeypatch.setattr(bell, "_delete", failing)
    bell.clean_up()
    assert bell._forgotten[key] == stale + 100


def test_the_ringers_flush_waits_for_the_txn_on_its_way(make_app, monkeypatch):
    """A process on its way out flushes its rings: a ring txn taken from the queue but not yet
    answered is still to wait for."""
    store = make_app().backend.store
    entered, release = threading.Event(), threading.Event()

    def slow_send(transport, ops):
        entered.set()
        release.wait(30)
        return 0

    monkeypatch.setattr(rings, "send", slow_send)
    ringer = rings.Ringer()
    ringer.submit(store.transport, [rings.lock_op("k", "no-such-session")])
    assert entered.wait(30)
    assert ringer.flush(0.2) is False  # the queue is empty, the txn is not answered
    release.set()
    assert ringer.flush(30) is True


def test_a_cancel_forgets_its_keys_in_one_step_with_the_watchs_removal(bell, monkeypatch):
    """A waiter that goes forgets its keys under the service's lock: no new waiter on one of
    them, and no round, can come between its removal and the forget (else the new waiter
    relies on a registration being cleaned up, its rings taken for strays)."""
    held: list[bool] = []
    forget = doorbell.Doorbell.forget

    def spy(self, keys):
        held.append(WAITING._lock.locked())
        return forget(self, keys)

    monkeypatch.setattr(doorbell.Doorbell, "forget", spy)
    subscription = bell.app.backend.result_consumer.subscribe(lambda key, entry: False)
    keys = keys_of(bell, 2, "cancelled")
    subscription.consume_from(keys)
    wait_until(lambda: WAITING.registered_keys() >= 2, 30, "2 registrations")
    subscription.cancel_for()
    wait_until(lambda: held, 30, "a forget")
    assert all(held)


@pytest.fixture
def own_server(consul_dev_server_factory):
    """A dev server of the test's own, for faults that would hit other tests."""
    return consul_dev_server_factory()


def test_a_failed_registration_batch_costs_the_earlier_ones_nothing(make_app, own_server):
    """Keys registered in several txns: when a later txn fails, the earlier ones' reads are
    handed over all the same (they are registered, and nothing else reads them soon)."""
    app = make_app(backend=backend_url(own_server, "batches"))
    backend = app.backend
    bell = doorbell.Doorbell(backend.store, on_rung=lambda e: None, on_lost=lambda: None)
    per_txn = (backend.store.txn_ops - 1) // 2
    ids = [f"batch-{i}" for i in range(per_txn + 1)]
    keys = [backend._key(backend.get_key_for_task(t)) for t in ids]
    backend.store_result(ids[0], 1, states.SUCCESS)
    own_server.faults.add(FaultRule("error", count=1, after=1, path_prefix="/v1/txn"))
    read: dict = {}
    try:
        with pytest.raises(ConsulError):
            bell.register(keys, read.update)
    finally:
        bell.close()
    assert set(read) == set(keys[:per_txn])
    assert backend.decode_result(read[keys[0]]["Value"])["result"] == 1


def test_a_failed_registration_is_the_error_of_its_own_waiters_only(
    make_app, own_server, monkeypatch
):
    """A waiter whose key's registration fails gets the failure; one whose keys were
    registered already keeps waiting, and gets its results by their rings."""
    monkeypatch.setattr(waiting, "SAFETY_NET", 1e9)
    app = make_app(backend=backend_url(own_server, "concerned"))
    backend = app.backend
    outcome: list[object] = []

    def wait_for_both() -> None:
        try:
            outcome.append(dict(backend.get_many(["a1", "a2"], timeout=60)))
        except Exception as exc:  # the outcome under test
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_both)
    waiter.start()
    wait_until(lambda: WAITING.registered_keys() >= 2, 30, "2 registrations")
    own_server.faults.add(FaultRule("error", count=1, path_prefix="/v1/txn"))
    with pytest.raises(Exception, match="No cluster leader"):
        app.AsyncResult("b").get(timeout=60)
    for task_id in ("a1", "a2"):
        backend.store_result(task_id, task_id, states.SUCCESS)
    waiter.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    assert {k: meta["result"] for k, meta in outcome[0].items()} == {"a1": "a1", "a2": "a2"}


def test_pushes_are_tried_again_after_a_refusal(make_app, own_server, monkeypatch, caplog):
    """A token refused a waiting session once (an ACL granted later, say) polls meanwhile,
    says so once, and registers its keys at a later try."""
    monkeypatch.setattr(waiting, "PUSH_RETRY", 0.0)
    monkeypatch.setattr(WAITING, "_warned", False)
    app = make_app(backend=backend_url(own_server, "again"))
    refused = FaultRule(
        "error", count=1, status=403, body="Permission denied", path_prefix="/v1/session/create"
    )
    own_server.faults.add(refused)
    subscription = app.backend.result_consumer.subscribe(lambda key, entry: False)
    with caplog.at_level("WARNING", logger="consulresults.waiting"), subscription:
        subscription.consume_from(
            [app.backend._key(app.backend.get_key_for_task(f"again-{i}")) for i in range(2)]
        )
        wait_until(lambda: WAITING.registered_keys() >= 2, 30, "2 registrations")
    assert caplog.text.count("trying pushes again") == 1


def test_a_rung_key_read_behind_its_ring_is_read_again(make_app, monkeypatch):
    """The read after a ring is no writing txn: a lagging server (a stale read, a deposed
    leader) may answer with the state before the ring's. The ring carries the written index,
    and a key read older than it is read again. A lagging server is what the dev server cannot
    be: its first answer is replaced by the key's earlier entry."""
    backend = make_app().backend
    rung: list[dict] = []
    arrived = threading.Event()

    def on_rung(entries: dict) -> None:
        rung.append(entries)
        arrived.set()

    bell = doorbell.Doorbell(backend.store, on_rung, on_lost=lambda: None)
    key, other = (backend._key(backend.get_key_for_task(f"lagging-{i}")) for i in range(2))
    backend.store_result("lagging-0", "before", states.STARTED)
    earlier = backend.store.entries([key])
    entries = backend.store.entries
    lagged: list[bool] = []

    def lagging(keys):
        if not lagged:
            lagged.append(True)
            return {**entries(keys), **earlier}
        return entries(keys)

    try:
        bell.register([key, other], lambda found: None)
        monkeypatch.setattr(backend.store, "entries", lagging)
        backend.store_result("lagging-0", "after", states.SUCCESS)
        assert arrived.wait(30), "no ring"
        assert lagged
        assert backend.decode_result(rung[-1][key]["Value"])["result"] == "after"
    finally:
        bell.close()


def test_get_many_counts_intervals_not_wake_ups(make_app):
    """``on_interval`` and ``max_iterations`` count intervals of ``interval`` seconds, as
    Celery's get_many does: results arriving one at a time within an interval are no
    iterations (they ended a max_iterations=3 wait after two results)."""
    app = make_app()
    backend = app.backend
    ids = [f"intervals-{i}" for i in range(4)]
    got: list[str] = []
    intervals: list[int] = []

    def consume() -> None:
        for task_id, _ in backend.get_many(
            ids, timeout=60, interval=600, max_iterations=3, on_interval=lambda: intervals.append(1)
        ):
            got.append(task_id)

    consumer_thread = threading.Thread(target=consume)
    consumer_thread.start()
    wait_until(lambda: intervals, 30, "the first interval")
    for n, task_id in enumerate(ids, 1):
        backend.store_result(task_id, n, states.SUCCESS)
        wait_until(lambda n=n: len(got) >= n or not consumer_thread.is_alive(), 30, "a result")
    consumer_thread.join(30)
    assert got == ids
    assert intervals == [1]
