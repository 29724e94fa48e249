"""consulresults.aio: awaiting results in an event loop, on the process's waiting service."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from celery import states
from celery.exceptions import TimeoutError
from celery.result import GroupResult

from consulresults import aio
from consulresults.waiting import WAITING


def run(coroutine):
    return asyncio.run(coroutine)


async def until(condition, what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not happen")


def test_many_awaits_in_one_loop(make_app, consul_prefix):
    app = make_app()
    backend = app.backend
    ids = [f"aio-{i}" for i in range(300)]
    backend.store_result(ids[0], 0, states.SUCCESS)  # one is ready before anyone awaits
    before = WAITING.watched_keys()

    async def main():
        waits = [asyncio.create_task(aio.get(app.AsyncResult(i), timeout=60)) for i in ids]
        await until(lambda: WAITING.watched_keys() >= before + len(ids) - 1, "awaits watched")
        # the loop's thread never blocks: stores run in another thread while it awaits
        store = threading.Thread(
            target=lambda: [backend.store_result(t, n, states.SUCCESS) for n, t in enumerate(ids)]
        )
        store.start()
        values = await asyncio.gather(*waits)
        store.join()
        return values

    assert run(main()) == list(range(300))
    assert WAITING.watched_keys() == before


def test_a_failure_raises_the_tasks_error_or_returns_it(make_app, consul_prefix):
    app = make_app()
    app.backend.mark_as_failure("aio-bad", ValueError("no good"))
    with pytest.raises(ValueError, match="no good"):
        run(aio.get(app.AsyncResult("aio-bad"), timeout=10))
    returned = run(aio.get(app.AsyncResult("aio-bad"), timeout=10, propagate=False))
    assert isinstance(returned, ValueError)


def test_a_failed_parent_is_raised(make_app, consul_prefix):
    app = make_app()
    child = app.AsyncResult("aio-step2", parent=app.AsyncResult("aio-step1"))

    async def main():
        waiting = asyncio.create_task(aio.get(child, timeout=60))
        await until(lambda: WAITING.watched_keys() >= 2, "the result and its parent watched")
        await asyncio.to_thread(app.backend.mark_as_failure, "aio-step1", KeyError("first"))
        return await waiting

    with pytest.raises(KeyError, match="first"):
        run(main())


def test_timeout_and_cancellation_stop_the_wait(make_app, consul_prefix):
    app = make_app()
    before = WAITING.watched_keys()
    with pytest.raises(TimeoutError):
        run(aio.get(app.AsyncResult("aio-never"), timeout=0.2))
    assert WAITING.watched_keys() == before

    async def cancelled():
        task = asyncio.create_task(aio.get(app.AsyncResult("aio-never"), timeout=60))
        await until(lambda: WAITING.watched_keys() == before + 1, "the await watched")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled())
    assert WAITING.watched_keys() == before


def test_as_completed_yields_in_the_order_results_become_ready(make_app, consul_prefix):
    app = make_app()
    results = [app.AsyncResult(f"aio-order-{i}") for i in range(3)]

    async def main():
        seen = []
        async for done in aio.as_completed(results, timeout=60):
            seen.append(done.id)
            if len(seen) < 3:
                following = results[2 - len(seen)].id  # store the next in reverse order
                await asyncio.to_thread(app.backend.store_result, following, 1, states.SUCCESS)
        return seen

    app.backend.store_result(results[2].id, 1, states.SUCCESS)
    assert run(main()) == [r.id for r in reversed(results)]
    assert results[0].result == 1  # ready, and read from what was awaited


def test_as_completed_without_celerys_cache_hook(make_app, consul_prefix, monkeypatch):
    """Where a Celery lacks AsyncResult's private cache method, the results still come, and
    read their state through the public path."""
    monkeypatch.setattr(aio, "CACHE_HOOK", "_no_such_method")
    app = make_app()
    results = [app.AsyncResult(f"aio-nohook-{i}") for i in range(2)]
    for i, result in enumerate(results):
        app.backend.store_result(result.id, i, states.SUCCESS)

    async def main():
        return [done.id async for done in aio.as_completed(results, timeout=10)]

    assert sorted(run(main())) == sorted(r.id for r in results)
    assert [r._cache for r in results] == [None, None]  # nothing primed: the public path reads
    assert [r.result for r in results] == [0, 1]


def test_a_group(make_app, consul_prefix):
    app = make_app()
    group = GroupResult("aio-group", [app.AsyncResult(f"aio-g{i}") for i in range(5)], app=app)
    for i in range(5):
        app.backend.store_result(f"aio-g{i}", i * i, states.SUCCESS)
    assert run(aio.get(group, timeout=10)) == [0, 1, 4, 9, 16]


def test_results_of_another_backend_are_refused(consul_server):
    from celery import Celery

    app = Celery(backend="cache+memory://", set_as_current=False)
    with pytest.raises(TypeError, match="consulresults backend"):
        run(aio.get(app.AsyncResult("x")))


def test_a_ready_result_is_returned_without_another_read(
    consul_dev_server_factory, make_app, requests_from
):
    """What the waiting service read is what get() returns: no request on the event loop,
    whatever result_cache_max says (Celery's cache is off by default)."""
    from conftest import backend_url

    app = make_app(backend=backend_url(consul_dev_server_factory(), "aio-reads"))
    ids = [f"aio-reads-{i}" for i in range(20)]

    async def main():
        waits = [asyncio.create_task(aio.get(app.AsyncResult(i), timeout=60)) for i in ids]
        await until(lambda: WAITING.watched_keys() >= len(ids), "awaits watched")
        loop_thread = threading.current_thread()
        on_loop = requests_from(lambda thread: thread is loop_thread)
        for n, task_id in enumerate(ids):
            await asyncio.to_thread(app.backend.store_result, task_id, n, states.SUCCESS)
        return await asyncio.gather(*waits), on_loop

    values, on_loop = run(main())
    assert values == list(range(20))
    assert on_loop == []


def test_a_key_just_read_by_a_thread_is_read_again_for_an_await(make_app, consul_prefix):
    """A waiter's key that the service has already read at some index is read at once for a
    new await, not after the next change (or its 10 s blocking read)."""
    app = make_app()
    app.backend.store_result("aio-twice", 7, states.SUCCESS)
    assert app.AsyncResult("aio-twice").get(timeout=10) == 7
    started = time.monotonic()
    assert run(aio.get(app.AsyncResult("aio-twice"), timeout=30)) == 7
    assert time.monotonic() - started < 5


def test_a_group_raises_its_first_failure_without_waiting_for_the_rest(make_app, consul_prefix):
    app = make_app()
    group = GroupResult("aio-g-bad", [app.AsyncResult(f"aio-gb{i}") for i in range(3)], app=app)
    app.backend.mark_as_failure("aio-gb1", ValueError("member one"))
    with pytest.raises(ValueError, match="member one"):  # the others never finish
        run(aio.get(group, timeout=30))
