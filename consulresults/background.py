"""The process's one background thread, for everything the package does in the background:
timers (session renewals, closing idle connections, request watchdogs) and the waiting
service's rounds.

One thread, however many backend instances (Celery makes one per thread), started when first
needed and gone as soon as nothing is scheduled or waited on (an idle process runs none), gone
after ``fork`` (a prefork child starts its own when it needs one) and stopped at exit. Under
gevent's monkey-patching it is a greenlet, like every thread.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from . import forks
from .deadline import until as deadline_until

logger = logging.getLogger(__name__)


MAX_ROUND = 10.0  # a round ends by then, so that timers scheduled meanwhile run in time


class Worker(Protocol):
    """Work that comes in rounds (the waiting service): ``round(until)`` does one round, which
    must not outlast ``until`` (monotonic time) by more than a request timeout, and returns
    when the next round is due (None: nothing to do until woken). ``cut_short()`` (from another
    thread) ends a round early: an urgent timer is due before it would end."""

    def round(self, until: float) -> float | None: ...

    def cut_short(self) -> None: ...


class Timer:
    """A call scheduled on the background thread; :meth:`cancel` unschedules it."""

    def __init__(self, when: float, fn: Callable[[], object], owner: Background) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self.fired = False
        self._owner = owner

    def cancel(self) -> None:
        self._owner._settle(self, cancelled=True)


class Background:
    """Timers and round-based workers on one lazily started daemon thread."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)  # the thread did not follow the fork

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int, Timer]] = []
        self._urgent: list[
            tuple[float, int, Timer]
        ] = []  # the urgent ones again: rounds end by them
        self._order = itertools.count()
        self._workers: dict[Worker, float] = {}  # worker -> when its next round is due
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running: tuple[Worker, float] | None = None  # the round in progress, its end
        self._live = 0  # timers neither fired nor cancelled: the thread stays while any are

    def call_later(self, delay: float, fn: Callable[[], object], urgent: bool = False) -> Timer:
        """Run ``fn()`` on the background thread in ``delay`` seconds. Rounds end by the next
        ``urgent`` timer (one due before the round in progress would end cuts it short); other
        timers may wait for a round to end, at most ``MAX_ROUND`` seconds."""
        timer = Timer(time.monotonic() + delay, fn, self)
        with self._cond:
            self._live += 1
            earliest = not self._timers or timer.when < self._timers[0][0]
            entry = (timer.when, next(self._order), timer)
            heapq.heappush(self._timers, entry)
            if urgent:
                heapq.heappush(self._urgent, entry)
            self._start()
            if earliest:  # else the thread already wakes in time for it
                self._cond.notify()
            running = self._running
        if urgent and running is not None and timer.when < running[1]:
            running[0].cut_short()
        return timer

    def alive(self) -> bool:
        """Whether the thread is running now."""
        with self._cond:
            return self._thread is not None

    def on_thread(self) -> bool:
        """Whether the caller is the background thread (whose own timers cannot fire while it
        is busy with the caller's request)."""
        return threading.current_thread() is self._thread

    def wake(self, worker: Worker) -> None:
        """Run a round of ``worker`` now (it has new work)."""
        with self._cond:
            self._workers[worker] = 0.0
            self._start()
            self._cond.notify()

    def _settle(self, timer: Timer, cancelled: bool) -> None:
        """A timer fired or was cancelled: one fewer reason for the thread to stay."""
        with self._cond:
            if not (timer.cancelled or timer.fired):
                self._live -= 1
            timer.cancelled = timer.cancelled or cancelled
            timer.fired = timer.fired or not cancelled

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (at exit): what it is doing is allowed ``timeout`` seconds."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _start(self) -> None:
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(
                target=self._run, name="consulresults-background", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # however it ended, a later call_later or wake starts a new thread
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                due, worker, until = self._next()
                if due is None and worker is None:
                    if self._stopping or not (self._live or self._workers):
                        self._thread = None  # nothing to do: gone until needed again
                        return
                    self._cond.wait(None if until == float("inf") else until - time.monotonic())
                    continue
            if due is not None:
                _safely(due.fn)
            if worker is not None:
                self._run_round(worker, until)

    def _next(self) -> tuple[Timer | None, Worker | None, float]:
        """What to do now: a due timer, else a due worker round (with the time it must end
        by: the next urgent timer), else nothing until the returned time."""
        now = time.monotonic()
        for heap in (self._timers, self._urgent):
            while heap and (heap[0][2].cancelled or heap[0][2].fired):
                heapq.heappop(heap)
        next_timer = self._timers[0][0] if self._timers else float("inf")
        if self._stopping:
            return None, None, now
        if next_timer <= now:
            timer = heapq.heappop(self._timers)[2]
            self._live -= 1
            timer.fired = True
            return timer, None, next_timer
        for worker, when in self._workers.items():
            if when <= now:
                return None, worker, self._urgent[0][0] if self._urgent else float("inf")
        return None, None, min([next_timer, *self._workers.values()])

    def _run_round(self, worker: Worker, until: float) -> None:
        until = min(until, time.monotonic() + MAX_ROUND)
        with self._cond:
            self._workers[worker] = float("inf")  # a wake during the round asks for another
            self._running = (worker, until)
        try:
            with deadline_until(until):  # every retry inside gives up by then
                due = worker.round(until)
        except Exception:  # a worker's bug must not end the thread every waiter relies on
            logger.exception("consulresults background round failed")
            due = time.monotonic() + 1.0
        with self._cond:
            self._running = None
            if self._workers.get(worker) == float("inf"):
                if due is None:
                    del self._workers[worker]
                else:
                    self._workers[worker] = due


def _safely(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        logger.exception("consulresults background timer failed")


BACKGROUND = Background()
atexit.register(BACKGROUND.stop)
