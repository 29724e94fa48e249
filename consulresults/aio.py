"""Waiting for Celery results from asyncio, on the process's waiting service.

    from consulresults import aio

    value = await aio.get(add.delay(2, 2), timeout=10)
    async for done in aio.as_completed(results, timeout=60):
        print(done.id, done.result)

No blocking call runs on the event loop's thread: the background thread reads Consul and wakes
the awaiting tasks; once a result is ready, its value is taken from what was read (Celery's own
``get()``/``maybe_throw`` on a cached meta), so it returns what ``result.get()`` would return and
raises what it would raise. Cancelling the awaiting task stops waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from celery import states
from celery.exceptions import TimeoutError
from celery.result import AsyncResult, GroupResult

from .celery_waiting import WaitingMixin, _Waiter, known, parent_ids, timing_out
from .deadline import until

# AsyncResult's own method that keeps a meta it was given (Celery's, not public): where a Celery
# lacks it, the results yielded read their state again, one request each
CACHE_HOOK = "_maybe_set_cache"


async def get(
    result: AsyncResult | GroupResult, timeout: float | None = None, propagate: bool = True
) -> Any:
    """``await`` what ``result.get(timeout=timeout, propagate=propagate)`` returns (for a
    ``GroupResult``, the list of its members' values), raising what it raises: the task's
    exception when ``propagate``, a failed parent's, or ``celery.exceptions.TimeoutError``."""
    members = list(result.results) if isinstance(result, GroupResult) else [result]
    parents = () if isinstance(result, GroupResult) or not propagate else parent_ids(result)
    metas: dict[str, dict[str, Any]] = {}
    async for done in _completed(members, parents, timeout, metas):
        if propagate and metas[done.id]["status"] in states.PROPAGATE_STATES:
            with known(metas):  # a group raises its first failure as it comes, as join_native
                done.maybe_throw()
    with known(metas):  # Celery's get() reads these: no request on the event loop
        if isinstance(result, GroupResult):
            return result.join_native(propagate=propagate, disable_sync_subtasks=False)
        return result.get(propagate=propagate, follow_parents=False, disable_sync_subtasks=False)


async def as_completed(
    results: Iterable[AsyncResult], timeout: float | None = None
) -> AsyncIterator[AsyncResult]:
    """Yield each result as it becomes ready (its ``state``, ``result`` and ``get()`` then need
    no request); ``celery.exceptions.TimeoutError`` if some are not ready in ``timeout``."""
    metas: dict[str, dict[str, Any]] = {}
    async for done in _completed(list(results), (), timeout, metas):
        remember = getattr(done, CACHE_HOOK, None)  # Celery's own, not public: if there
        if remember is not None:
            remember(metas[done.id])  # its state, result and get() then need no request
        yield done


async def _completed(
    results: list[AsyncResult],
    parents: tuple[str, ...],
    timeout: float | None,
    metas: dict[str, dict[str, Any]],
) -> AsyncIterator[AsyncResult]:
    """Each result as it becomes ready, its meta put in ``metas``; a failed parent raised."""
    if not results:
        return
    backend = _backend(results[0])
    deadline = None if timeout is None else time.monotonic() + timeout
    by_id = {r.id: r for r in results}
    keys = {backend._key(backend.get_key_for_task(task_id)): task_id for task_id in by_id}
    watched = {backend._key(backend.get_key_for_task(p)): p for p in parents}
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    waiter = _Waiter(
        backend.result_consumer,
        keys,
        watched,
        backend._meta,
        notify=lambda: loop.call_soon_threadsafe(event.set),
    )
    subscription = waiter.subscription
    remaining = len(keys)
    with subscription:
        if deadline is not None and deadline <= time.monotonic():  # timeout=0: one read
            with until(deadline), timing_out("The operation timed out."):
                await asyncio.to_thread(subscription.begin, [*keys, *watched], deadline)
        else:
            subscription.begin([*keys, *watched], deadline)
        while remaining:
            while waiter.ready:
                task_id, meta = waiter.ready.popleft()
                metas[task_id] = meta
                remaining -= 1
                yield by_id[task_id]
            subscription.raise_unless_retried()
            if waiter.parent_failed is not None:
                parent_id, meta = waiter.parent_failed
                with known({parent_id: meta}):
                    results[0].app.AsyncResult(parent_id).maybe_throw()
            if not remaining:
                return
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # at the deadline, the last read, off the loop's thread
            if left == 0.0:
                with until(deadline), timing_out("The operation timed out."):
                    expired = await asyncio.to_thread(
                        subscription.expired, deadline, waiter.unfinished
                    )
                if expired:
                    raise TimeoutError("The operation timed out.") from subscription.last_error
            if not waiter.ready:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
            event.clear()


def _backend(result: AsyncResult) -> WaitingMixin:
    backend = result.backend
    if not isinstance(backend, WaitingMixin):
        raise TypeError(
            f"consulresults.aio waits for results of the consulresults backend, not "
            f"{type(backend).__name__} (set the app's result_backend to consulresults://...)"
        )
    return backend
