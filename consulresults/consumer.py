"""One caller's wait for results, the same for every face (Celery's ``get()``, ``join_native``
and ``get_many``, ``consulresults.aio``, the CLI's ``get --wait``), in the vocabulary of
Celery's ``ResultConsumer``: :meth:`Subscription.consume_from` starts waiting on keys,
``on_state_change`` is told of each new state, :meth:`Subscription.cancel_for` stops, and
:meth:`Subscription.drain_events` sleeps until there is news.

The process's waiting service (:mod:`consulresults.waiting`) does the reading; a subscription
holds what one caller was told, and one retry accounting: a failed round is the caller's
error unless its retry policy (Celery's ``result_backend_always_retry``) allows it, counting
failed rounds *in a row* against ``result_backend_max_retries``, as Celery counts the retries
of one read.

Deadlines: a caller whose deadline has passed sends no request (:mod:`consulresults.deadline`),
with one exception, :meth:`Subscription.read_now`: ``timeout=0`` means one read, and a result
that became ready as the deadline came is a success. That read is allowed one request timeout
past the deadline, which keeps every call within its timeout plus one request timeout.

Nothing here knows Celery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from .deadline import until
from .kv import Entry, KVStore
from .retry import RetryPolicy
from .waiting import WAITING, Watch


class ResultConsumer:
    """The waits of one store (a backend's ``result_consumer``): subscriptions share its
    store and retry policy."""

    def __init__(self, store: KVStore, policy: RetryPolicy | None) -> None:
        self.store = store
        self.policy = policy

    def subscribe(
        self,
        on_state_change: Callable[[str, Entry], bool],
        notify: Callable[[], object] | None = None,
    ) -> Subscription:
        """A new wait. ``on_state_change(key, entry)`` runs on a service thread, briefly, and
        returns True when that key needs no more news, and calls the subscription's
        ``notify()`` when it has news for the caller (default: wake the sleeping caller;
        failures notify by themselves)."""
        return Subscription(self, on_state_change, notify)


class Subscription:
    """One caller's wait (see the module's docstring)."""

    def __init__(
        self,
        consumer: ResultConsumer,
        on_state_change: Callable[[str, Entry], bool],
        notify: Callable[[], object] | None,
    ) -> None:
        self._consumer = consumer
        self.event = threading.Event()
        self.notify = notify or self.event.set
        self.watch = Watch((), on_state_change, self._failed)
        self.error: BaseException | None = None
        self.last_error: BaseException | None = None  # chained to a timeout
        self._failed_rounds = 0
        self._reads_at_failure = 0
        self.read_at_deadline = False

    # ------------------------------------------------------------------ Celery's vocabulary

    def consume_from(self, keys: Iterable[str]) -> None:
        """Wait on ``keys`` too; they are read at the service's next round."""
        WAITING.watch(self._consumer.store, self.watch, keys)

    def cancel_for(self) -> None:
        """Stop waiting (on every key of this subscription)."""
        WAITING.cancel(self.watch)

    def on_state_change(self, key: str, entry: Entry | None) -> bool:
        """Take news read outside the service (:meth:`begin`, :meth:`read_now`); whether
        that key needs no more news."""
        return self.watch.offer(key, entry)

    def drain_events(self, deadline: float | None, periodic: float | None = None) -> None:
        """Sleep until there is news, ``deadline`` (monotonic) or ``periodic`` seconds pass;
        then raise a failed round's error unless the retry policy keeps waiting through it."""
        self.sleep(deadline, periodic)
        self.raise_unless_retried()

    # ------------------------------------------------------------------ deadlines

    def begin(self, keys: Iterable[str], deadline: float | None, read_first: bool = False) -> None:
        """:meth:`consume_from`, or, with no time left (``timeout=0``), one read now. With
        ``read_first`` (many keys for one caller, ``get_many``), this caller reads them in
        txn batches itself first, and waits only on those not ready."""
        if deadline is not None and deadline <= time.monotonic():
            self.read_at_deadline = True
            self.read_now(keys)
        elif read_first:
            keys = list(keys)
            store, policy = self._consumer.store, self._consumer.policy
            with until(deadline):
                read = policy.call(lambda: store.entries(keys)) if policy else store.entries(keys)
            self.consume_from([key for key in keys if not self.on_state_change(key, read.get(key))])
        else:
            self.consume_from(keys)

    def expired(self, deadline: float | None, unfinished: Callable[[], Iterable[str]]) -> bool:
        """Whether it is time to give up: the deadline passed and the last read is made.
        At the deadline, that read comes first (``unfinished()`` says what to read), so that
        a result ready as the deadline came is handed over, not timed out."""
        if deadline is None or time.monotonic() < deadline:
            return False
        if self.read_at_deadline:
            return True
        self.read_at_deadline = True
        self.read_now(unfinished())
        return False

    # ------------------------------------------------------------------ the parts

    def sleep(self, deadline: float | None, periodic: float | None = None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if periodic is not None:
            timeout = periodic if timeout is None else min(timeout, periodic)
        self.event.wait(timeout)
        self.event.clear()

    def raise_unless_retried(self) -> None:
        error, self.error = self.error, None
        if error is None:
            return
        self.last_error = error
        if self.watch.reads != self._reads_at_failure:  # a round succeeded since
            self._failed_rounds, self._reads_at_failure = 0, self.watch.reads
        policy = self._consumer.policy
        if policy is None or not policy.allows(error, self._failed_rounds):
            raise error
        self._failed_rounds += 1

    def read_now(self, keys: Iterable[str]) -> None:
        """Read ``keys`` once, now, in this thread (batched), and take what they say: the one
        read of ``timeout=0``, and the last one at a deadline. Allowed one request timeout,
        even past the caller's deadline."""
        keys = sorted(keys)
        if not keys:
            return
        store = self._consumer.store
        with until(time.monotonic() + store.transport.timeout):
            entries = store.entries(keys)
        for key, entry in entries.items():
            self.on_state_change(key, entry)

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.notify()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel_for()
