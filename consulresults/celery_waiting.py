"""How Celery's waits run on the Consul backend: ``AsyncResult.get()``, ``GroupResult.get()`` /
``join_native()`` and ``get_many`` are served by the process's one waiting service
(:mod:`consulresults.waiting`), so a thousand waiting threads share its two connections
instead of holding a blocking query each.

``get()`` hands its key to the service at once (the service's next round reads it: a
registration's read, or a lone waiter's blocking read) and sleeps on an event until the result
is ready, its deadline passes, or a parent failed; ``get_many`` reads its ids itself first, in
txn batches, and hands over only those not ready; ``timeout=0`` is one read in the caller's
thread (:meth:`consulresults.consumer.Subscription.begin`).

Parents: ``AsyncResult.get()`` passes an ``on_interval`` callback that re-raises a parent's
error (a failed first task of a chain). Celery's other backends call it every round, a read per
parent per waiter per second. Here the parents' keys are watched with the result's own, and the
callback runs when one of them fails, and once more when the result itself fails (so ``get()``
raises the failed header task's own error, as Celery's Redis backend does). A result without a
parent gets an empty callback, which is never called; a callback this module cannot read
(a caller's own ``on_interval``) is called every ``interval``, as Celery would.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import TimeoutError
from kombu.utils.encoding import bytes_to_str

from .connection import is_transient
from .consumer import ResultConsumer
from .deadline import after, passed, until, within
from .kv import Entry, KVStore

_PARENTS: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "consulresults_parents", default=None
)
_KNOWN: contextvars.ContextVar[Mapping[str, dict[str, Any]] | None] = contextvars.ContextVar(
    "consulresults_known", default=None
)
_WAIT_BOUND: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "consulresults_wait_bound", default=None
)
_UNREADABLE = object()
MAX_PARENT_KEYS = 1024
PERIODIC_MIN = 0.5


@contextlib.contextmanager
def timing_out(message: str) -> Iterator[None]:
    """A failure once the deadline has passed is Celery's ``TimeoutError``, with the failure
    chained: whichever layer gave up first, the caller sees that its time ran out."""
    try:
        yield
    except TimeoutError:
        raise
    except Exception as exc:
        if not (passed() and is_transient(exc)):  # a task's own error stays itself
            raise
        raise TimeoutError(message) from exc


@contextlib.contextmanager
def waits_bounded(seconds: float) -> Iterator[None]:
    """Within this block no wait (``wait_for``, ``get_many``) outlives ``seconds`` from now,
    even one Celery starts without a timeout (a chord join of the previous release): the
    waits only, not the writes around them."""
    token = _WAIT_BOUND.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _WAIT_BOUND.reset(token)


def _bounded(timeout: float | None) -> float | None:
    bound = _WAIT_BOUND.get()
    if bound is None:
        return timeout
    left = max(0.0, bound - time.monotonic())
    return left if timeout is None else min(timeout, left)


@contextlib.contextmanager
def known(metas: Mapping[str, dict[str, Any]]) -> Iterator[None]:
    """Within this block, the backend reads these task ids' metas from here, not from Consul:
    they were just read, and a ready meta is final. So Celery's own code that follows news from
    the waiting service (its parent check, ``get()`` once a result is ready) needs no request,
    whatever ``result_cache_max`` says (Celery's cache is off by default)."""
    token = _KNOWN.set({**(_KNOWN.get() or {}), **metas})
    try:
        yield
    finally:
        _KNOWN.reset(token)


def parent_ids(result: Any) -> tuple[str, ...]:
    """The task ids whose failure ``result.get()`` re-raises: each parent's, or each member's
    of a parent group (Celery's ``_parents()`` walk, through public attributes only)."""
    ids: list[str] = []
    node = getattr(result, "parent", None)
    while node is not None and len(ids) < MAX_PARENT_KEYS:
        members = getattr(node, "results", None)
        if members is not None:
            ids.extend(member.id for member in members if getattr(member, "id", None))
        elif getattr(node, "id", None):
            ids.append(node.id)
        node = getattr(node, "parent", None)
    return tuple(ids[:MAX_PARENT_KEYS])


def checks_needed(on_interval: object, parents: tuple[str, ...] | None) -> str:
    """How to honour ``on_interval``: ``none`` (Celery's empty promise, for a result without
    parents), ``parents`` (Celery's parent check alone: run it when a parent fails), or
    ``periodic`` (anything else: run it every interval). Reading a vine promise's contents is
    no public API: when its attributes are not there, it is ``periodic``, the safe answer."""
    if on_interval is None:
        return "none"
    fun = getattr(on_interval, "fun", _UNREADABLE)
    chained = [getattr(on_interval, name, _UNREADABLE) for name in ("_svpending", "_lvpending")]
    if fun is _UNREADABLE or any(c is _UNREADABLE or c for c in chained):
        return "periodic"
    if fun is None:
        return "none"
    return "parents" if parents else "periodic"


class _Waiter:
    """One caller's wait as Celery sees it: the metas found ready, a failed parent, over a
    :class:`~consulresults.consumer.Subscription` that holds the rest."""

    def __init__(
        self,
        consumer: ResultConsumer,
        keys: dict[str, str],
        parents: dict[str, str],
        decode: Callable[[bytes | None], dict[str, Any]],
        ready_states: frozenset[str] = states.READY_STATES,
        notify: Callable[[], object] | None = None,
    ) -> None:
        self.keys = keys  # full key -> task id
        self._ready_states = ready_states
        self.parents = parents
        self.ready: deque[tuple[str, dict[str, Any]]] = deque()
        self.finished: set[str] = set()  # keys found ready
        self.parent_failed: tuple[str, dict[str, Any]] | None = None  # its id and meta
        self._decode = decode
        self.subscription = consumer.subscribe(self._changed, notify)

    def _changed(self, key: str, entry: Entry) -> bool:
        meta = self._decode(entry["Value"])
        status = meta.get("status")
        if key in self.keys:
            if status not in self._ready_states or key in self.finished:
                return False
            self.finished.add(key)
            self.ready.append((self.keys[key], meta))
        elif status == states.SUCCESS:
            return True  # a parent that will not fail any more
        elif status in states.PROPAGATE_STATES:
            self.parent_failed = (self.parents[key], meta)
        else:
            return False
        self.subscription.notify()
        return key in self.keys

    def start(self, deadline: float | None, read_first: bool = False) -> None:
        self.subscription.begin([*self.keys, *self.parents], deadline, read_first)

    def unfinished(self) -> list[str]:
        return [key for key in self.keys if key not in self.finished]


class WaitingMixin(KeyValueStoreBackend):
    """Waits for :class:`consulresults.backend.ConsulBackend` (which provides ``store``,
    ``result_consumer`` and ``_key``)."""

    store: KVStore
    result_consumer: ResultConsumer

    def wait_for_pending(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        """Celery's, with the result's parents known to :meth:`wait_for`."""
        token = _PARENTS.set(parent_ids(result))
        try:
            return super().wait_for_pending(result, *args, **kwargs)
        finally:
            _PARENTS.reset(token)

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Callable[[], object] | None = None,
    ) -> dict[str, Any]:
        """The result's meta once it is ready; ``TimeoutError`` after ``timeout`` seconds,
        whatever fails meanwhile (the last failure chained), plus at most a request timeout."""
        self._ensure_not_eager()
        cached = self._ready_meta(task_id)
        if cached is not None:
            return cached
        with within(_bounded(timeout)), timing_out("The operation timed out."):
            meta = self._wait_for(task_id, on_interval, interval)
        if meta["status"] == states.SUCCESS:
            self._cache[task_id] = meta
        return meta

    def _wait_for(
        self, task_id: str, on_interval: Callable[[], object] | None, interval: float
    ) -> dict[str, Any]:
        parents = _PARENTS.get()
        checks = checks_needed(on_interval, parents)
        key = self._key(self.get_key_for_task(task_id))
        watched = {self._key(self.get_key_for_task(p)): p for p in parents or ()}
        parents_watched = watched if checks == "parents" else {}
        waiter = _Waiter(self.result_consumer, {key: task_id}, parents_watched, self._meta)
        meta = self._wait(waiter, after(None), on_interval, checks, interval)
        if on_interval is not None and checks != "none" and meta["status"] != states.SUCCESS:
            on_interval()  # a failed chord body: raise the failed header task's own error
        return meta

    def _wait(
        self,
        waiter: _Waiter,
        deadline: float | None,
        on_interval: Callable[[], object] | None,
        checks: str,
        interval: float,
    ) -> dict[str, Any]:
        """Until the result is ready; at the deadline, one last read before ``TimeoutError``
        (a result ready as the deadline came is no timeout)."""
        periodic = max(interval, PERIODIC_MIN) if checks == "periodic" else None
        subscription = waiter.subscription
        with subscription:
            waiter.start(deadline)
            while True:
                if waiter.ready:
                    return waiter.ready.popleft()[1]
                failed, waiter.parent_failed = waiter.parent_failed, None
                if on_interval is not None and (failed or periodic):
                    with known(dict([failed]) if failed else {}):  # what the check reads
                        on_interval()
                if subscription.expired(deadline, waiter.unfinished):
                    raise TimeoutError("The operation timed out.") from subscription.last_error
                if not waiter.ready:
                    subscription.drain_events(deadline, periodic)

    def _ready_meta(self, task_id: str) -> dict[str, Any] | None:
        """A ready meta this call knows already (Celery's cache, or :func:`known`)."""
        found: dict[str, Any] | None = (_KNOWN.get() or {}).get(task_id) or self._cache.get(task_id)
        return found if found and found["status"] in states.READY_STATES else None

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """Celery's ``get_task_meta`` reads through here: a meta :func:`known` in this call
        needs no request."""
        found = (_KNOWN.get() or {}).get(task_id)
        return found if found is not None else super()._get_task_meta_for(task_id)

    def _meta(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            return {"status": states.PENDING, "result": None}
        return self.decode_result(value)  # type: ignore[no-any-return]

    def get_many(
        self,
        task_ids: Iterable[str],
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Callable[[dict[str, Any]], object] | None = None,
        on_interval: Callable[[], object] | None = None,
        max_iterations: int | None = None,
        READY_STATES: frozenset[str] = states.READY_STATES,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each task's meta as it becomes ready: cached ones first, then one batched read,
        then the waiting service."""
        ids = {bytes_to_str(task_id) for task_id in task_ids}
        for task_id in list(ids):
            cached = self._ready_meta(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield task_id, cached
        yield from self._get_many(
            ids, timeout, interval, on_message, on_interval, max_iterations, READY_STATES
        )

    def _get_many(
        self,
        ids: set[str],
        timeout: float | None,
        interval: float,
        on_message: Callable[[dict[str, Any]], object] | None,
        on_interval: Callable[[], object] | None,
        max_iterations: int | None,
        ready_states: frozenset[str],
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """As Celery 5.7's ``get_many``: what is ready, then ``TimeoutError`` once the
        deadline has passed (``timeout=0``: after one read), with one last read at the
        deadline, so that results ready by then are handed over first."""
        deadline, message = after(_bounded(timeout)), f"Operation timed out ({timeout})"
        keys = {self._key(self.get_key_for_task(task_id)): task_id for task_id in ids}
        waiter = _Waiter(self.result_consumer, keys, {}, self._meta, ready_states)
        subscription = waiter.subscription
        with subscription:
            with until(deadline), timing_out(message):  # not held across a yield
                waiter.start(deadline, read_first=True)
            unfinished, iterations, next_interval = len(keys), 0, time.monotonic()
            while True:
                while waiter.ready:
                    task_id, meta = waiter.ready.popleft()
                    self._cache[task_id] = meta
                    if on_message is not None:
                        on_message(meta)
                    unfinished -= 1
                    yield task_id, meta
                if not unfinished:
                    return
                with until(deadline), timing_out(message):
                    expired = subscription.expired(deadline, waiter.unfinished)
                if expired:
                    raise TimeoutError(message) from subscription.last_error
                if waiter.ready:
                    continue
                subscription.raise_unless_retried()
                now = time.monotonic()
                # an interval, as Celery counts them, not a wake-up; none past the deadline
                if now >= next_interval and (deadline is None or now < deadline):
                    if on_interval is not None:
                        with until(deadline):  # its reads' retries end at the deadline too
                            on_interval()
                    iterations += 1
                    if max_iterations and iterations >= max_iterations:
                        return
                    next_interval = now + interval
                counting = on_interval is not None or bool(max_iterations)
                subscription.sleep(deadline, max(0.0, next_interval - now) if counting else None)
