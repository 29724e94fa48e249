"""The waiting service: many waiters on a bounded number of connections, parents watched
instead of polled, groups, fork. On the dev server or a real agent."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from celery import states
from celery.exceptions import TimeoutError
from conftest import wait_until
from vine import promise

from consulresults.celery_waiting import checks_needed, parent_ids
from consulresults.waiting import WAITING


def watched_keys() -> int:
    return WAITING.watched_keys()


def start_waiters(app, ids, **get_options):
    """A thread per id, each ``AsyncResult(id).get()``; returns (threads, outcomes)."""
    outcomes: dict[str, object] = {}

    def wait(task_id: str) -> None:
        try:
            outcomes[task_id] = app.AsyncResult(task_id).get(**get_options)
        except Exception as exc:  # the outcome under test
            outcomes[task_id] = exc

    threads = [threading.Thread(target=wait, args=(task_id,)) for task_id in ids]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_many_waiting_threads_share_the_budget(make_app, consul_prefix):
    app = make_app()
    backend = app.backend
    ids = [f"many-{i}" for i in range(300)]
    before = watched_keys()
    pool = backend.transport.pool
    pool.peak = pool.stats()["open"]
    threads, outcomes = start_waiters(app, ids, timeout=60)
    wait_until(lambda: watched_keys() >= before + len(ids), 30, "300 waiters registered")
    for i, task_id in enumerate(ids):
        backend.store_result(task_id, i, states.SUCCESS)
    for thread in threads:
        thread.join(60)
    assert outcomes == {task_id: i for i, task_id in enumerate(ids)}
    assert pool.stats()["peak"] <= pool.limit  # 300 waiters, at most max_connections


def test_one_waiter_is_one_blocking_read(make_app, consul_prefix):
    """A result without a parent is not polled for parents: while one thread waits, the
    service holds one blocking read of its key, which answers when the result is stored."""
    app = make_app()
    threads, outcomes = start_waiters(app, ["alone"], timeout=60)
    key = app.backend._key(app.backend.get_key_for_task("alone"))
    wait_until(lambda: WAITING.blocking_on() == key, 30, "a blocking read of the key")
    rounds = WAITING.rounds
    app.backend.store_result("alone", 42, states.SUCCESS)
    threads[0].join(30)
    assert outcomes == {"alone": 42}
    assert WAITING.rounds - rounds <= 2  # the blocking read answered: no rounds in between


def chains_failing(app, n: int, before_failing=lambda: None) -> dict[int, object]:
    """``n`` threads each wait on a chain's second step; then each first step fails."""
    outcomes: dict[int, object] = {}

    def wait(i: int) -> None:
        child = app.AsyncResult(f"step2-{i}", parent=app.AsyncResult(f"step1-{i}"))
        try:
            outcomes[i] = child.get(timeout=60)
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc

    before = watched_keys()
    threads = [threading.Thread(target=wait, args=(i,), name=f"waiter-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    wait_until(lambda: watched_keys() >= before + 2 * n, 30, "results and parents watched")
    before_failing()
    for i in range(n):
        app.backend.mark_as_failure(f"step1-{i}", KeyError(f"first step {i}"))
    for thread in threads:
        thread.join(60)
    return outcomes


def test_a_failed_parent_surfaces_in_every_waiter(make_app, consul_prefix):
    """A chain's second step waits; its first step fails: each get() raises the first step's
    error, as Celery's other backends do, without polling the parent every second."""
    outcomes = chains_failing(make_app(), 50)
    assert all(isinstance(outcomes[i], KeyError) for i in range(50)), outcomes
    assert {str(outcomes[i]) for i in range(50)} == {repr(f"first step {i}") for i in range(50)}


def test_a_failed_parent_is_raised_from_what_the_service_read(
    consul_dev_server_factory, make_app, requests_from
):
    """Celery's parent check reads the parent's meta: it gets what the service read, so a
    thousand waiters re-raising one failure cost no thousand reads."""
    from conftest import backend_url

    app = make_app(backend=backend_url(consul_dev_server_factory(), "parent-reads"))
    from_waiters: list[list[tuple[str, str]]] = []

    def before_failing() -> None:
        from_waiters.append(requests_from(lambda thread: thread.name.startswith("waiter-")))

    outcomes = chains_failing(app, 20, before_failing=before_failing)
    assert all(isinstance(outcomes[i], KeyError) for i in range(20)), outcomes
    assert from_waiters == [[]]  # no waiter sent a request of its own


def test_a_parent_that_succeeds_is_no_longer_watched(make_app, consul_prefix):
    app = make_app()
    before = watched_keys()
    child = app.AsyncResult("after-ok", parent=app.AsyncResult("first-ok"))
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(v=child.get(timeout=60)))
    thread.start()
    wait_until(lambda: watched_keys() == before + 2, 30, "the result and its parent watched")
    app.backend.store_result("first-ok", 1, states.SUCCESS)
    wait_until(lambda: watched_keys() == before + 1, 30, "the parent dropped")
    app.backend.store_result("after-ok", 2, states.SUCCESS)
    thread.join(30)
    assert result == {"v": 2}


def test_group_join_native_and_get_many_are_served_by_the_service(make_app, consul_prefix):
    from celery.result import GroupResult

    app = make_app()
    ids = [f"member-{i}" for i in range(300)]
    group = GroupResult("group-x", [app.AsyncResult(task_id) for task_id in ids], app=app)
    outcome: dict[str, object] = {}
    before = watched_keys()
    thread = threading.Thread(target=lambda: outcome.update(v=group.get(timeout=60)))
    thread.start()
    wait_until(lambda: watched_keys() >= before + 300, 30, "the group's members watched")
    for i, task_id in enumerate(reversed(ids)):
        app.backend.store_result(task_id, len(ids) - 1 - i, states.SUCCESS)
    thread.join(60)
    assert outcome == {"v": list(range(300))}
    assert watched_keys() == before


def test_a_wait_times_out_and_stops_being_served(make_app, consul_prefix):
    app = make_app()
    before = watched_keys()
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0.3)
    assert watched_keys() == before
    with pytest.raises(TimeoutError):
        list(app.backend.get_many(["never", "nor-this"], timeout=0.3))
    assert watched_keys() == before


def test_a_ready_result_costs_one_read(consul_dev_server_factory, make_app):
    """The service reads a new waiter's key at once (a lone waiter: one GET), so a result
    stored already costs one request, as Celery's own get() would."""
    from conftest import backend_url

    server = consul_dev_server_factory()
    app = make_app(backend=backend_url(server, "ready-reads"))
    app.backend.store_result("ready", 5, states.SUCCESS)
    server.reset_counters()
    assert app.AsyncResult("ready").get(timeout=5) == 5
    assert server.counters()["requests"] == 1


def _child_waits(app, queue) -> None:
    queue.put(app.AsyncResult("for-child").get(timeout=60))


def test_a_forked_child_waits_with_its_own_service(make_app, consul_prefix):
    """The parent is waiting when it forks: the child starts with none of its waiters or
    sockets, and its own waits work."""
    app = make_app()
    before = watched_keys()
    threads, outcomes = start_waiters(app, ["for-parent"], timeout=60)
    wait_until(lambda: watched_keys() == before + 1, 30, "the parent's waiter registered")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_waits, args=(app, queue))
    child.start()
    app.backend.store_result("for-child", "hello child", states.SUCCESS)
    assert queue.get(timeout=60) == "hello child"
    child.join(30)
    assert child.exitcode == 0
    app.backend.store_result("for-parent", "hello parent", states.SUCCESS)
    threads[0].join(30)
    assert outcomes == {"for-parent": "hello parent"}


def test_on_interval_is_read_to_decide_what_it_needs():
    """Celery's empty promise needs nothing; its parent check alone is run when a parent fails;
    anything else (a caller's callback, or a promise whose insides are not what we read) is run
    every interval, as Celery would."""

    def check() -> None:
        pass

    assert checks_needed(None, ()) == "none"
    assert checks_needed(promise(), ()) == "none"
    assert checks_needed(promise(check), ("p",)) == "parents"
    assert checks_needed(promise(check), ()) == "periodic"
    chained = promise(check)
    chained.then(check)
    assert checks_needed(chained, ("p",)) == "periodic"
    assert checks_needed(check, ("p",)) == "periodic"  # no promise: the public path


def test_a_callers_own_on_interval_is_called_while_waiting(make_app, consul_prefix):
    app = make_app()
    called = threading.Event()
    outcome: dict[str, object] = {}

    def wait() -> None:
        outcome["v"] = app.AsyncResult("with-callback").get(timeout=60, on_interval=called.set)

    thread = threading.Thread(target=wait)
    thread.start()
    assert called.wait(30)
    app.backend.store_result("with-callback", 3, states.SUCCESS)
    thread.join(30)
    assert outcome == {"v": 3}


def test_parent_ids_follow_chains_and_groups(make_app):
    from celery.result import GroupResult

    app = make_app()
    group = GroupResult("g", [app.AsyncResult("a"), app.AsyncResult("b")], app=app)
    body = app.AsyncResult("body", parent=group)
    assert parent_ids(body) == ("a", "b")
    chain = app.AsyncResult("c3", parent=app.AsyncResult("c2", parent=app.AsyncResult("c1")))
    assert parent_ids(chain) == ("c2", "c1")
    assert parent_ids(app.AsyncResult("alone")) == ()


def test_get_many_max_iterations_ends_without_on_interval(make_app, consul_prefix):
    """Celery's contract: after max_iterations rounds, get_many stops, ready or not."""
    app = make_app()
    assert list(app.backend.get_many(["never-a", "never-b"], interval=0.05, max_iterations=2)) == []


def test_idle_doorbells_of_other_prefixes_leave_a_lone_waiter_its_connection(
    consul_dev_server_factory, make_app
):
    """A process that waited under three prefixes keeps their doorbells' sessions a while, but
    not their queries: a blocking read may take all connections of the budget but one, and
    three idle doorbells holding theirs would starve the next lone waiter."""
    from conftest import backend_url

    server = consul_dev_server_factory()
    url = backend_url(server, "{}") + "?backpressure_patience=3"
    for n in range(3):
        app = make_app(backend=url.format(f"idle-{n}"))
        ids = [f"pushed-{n}-{i}" for i in range(2)]
        threads, outcomes = start_waiters(app, ids, timeout=60)
        wait_until(lambda: WAITING.registered_keys() >= 2, 30, "keys registered")
        for task_id in ids:
            app.backend.store_result(task_id, task_id, states.SUCCESS)
        for thread in threads:
            thread.join(30)
        assert outcomes == {i: i for i in ids}
    lone = make_app(backend=url.format("lone"))
    threads, outcomes = start_waiters(lone, ["alone"], timeout=60)
    key = lone.backend._key(lone.backend.get_key_for_task("alone"))
    wait_until(lambda: WAITING.blocking_on() == key, 30, "the lone key's blocking read")
    lone.backend.store_result("alone", 1, states.SUCCESS)
    threads[0].join(30)
    assert outcomes == {"alone": 1}
