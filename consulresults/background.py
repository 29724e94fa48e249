"""The process's one background thread, for everything the package does in the background:
timers (session renewals, closing idle connections) and the waiting service's rounds.

One thread, however many backend instances (Celery makes one per thread), started when first
needed, gone after ``fork`` (a prefork child starts its own when it needs one) and stopped at
exit. Under gevent's monkey-patching it is a greenlet, like every thread.
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

logger = logging.getLogger(__name__)


class Worker(Protocol):
    """Work that comes in rounds (the waiting service): ``round(until)`` does one round, which
    must not outlast ``until`` (monotonic time) by more than a request timeout, and returns
    when the next round is due (None: nothing to do until woken)."""

    def round(self, until: float) -> float | None: ...


class Timer:
    """A call scheduled on the background thread; :meth:`cancel` unschedules it."""

    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Background:
    """Timers and round-based workers on one lazily started daemon thread."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)  # the thread did not follow the fork

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._workers: dict[Worker, float] = {}  # worker -> when its next round is due
        self._thread: threading.Thread | None = None
        self._stopping = False

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        """Run ``fn()`` on the background thread in ``delay`` seconds."""
        timer = Timer(time.monotonic() + delay, fn)
        with self._cond:
            heapq.heappush(self._timers, (timer.when, next(self._order), timer))
            self._start()
            self._cond.notify()
        return timer

    def wake(self, worker: Worker) -> None:
        """Run a round of ``worker`` now (it has new work)."""
        with self._cond:
            self._workers[worker] = 0.0
            self._start()
            self._cond.notify()

    def pending(self) -> list[Timer]:
        """The timers not yet run (for a clean exit that runs some of them early)."""
        with self._cond:
            return [timer for _, _, timer in self._timers if not timer.cancelled]

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
        while True:
            with self._cond:
                due, worker, until = self._next()
                if due is None and worker is None:
                    if self._stopping:
                        return
                    self._cond.wait(None if until == float("inf") else until - time.monotonic())
                    continue
            if due is not None:
                _safely(due.fn)
            if worker is not None:
                self._run_round(worker, until)

    def _next(self) -> tuple[Timer | None, Worker | None, float]:
        """What to do now: a due timer, else a due worker round (with the time it must end
        by: the next timer), else nothing until the returned time."""
        now = time.monotonic()
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        next_timer = self._timers[0][0] if self._timers else float("inf")
        if self._stopping:
            return None, None, now
        if next_timer <= now:
            return heapq.heappop(self._timers)[2], None, next_timer
        for worker, when in self._workers.items():
            if when <= now:
                return None, worker, next_timer
        return None, None, min([next_timer, *self._workers.values()])

    def _run_round(self, worker: Worker, until: float) -> None:
        with self._cond:
            self._workers[worker] = float("inf")  # a wake during the round asks for another
        try:
            due = worker.round(until)
        except Exception:  # a worker's bug must not end the thread every waiter relies on
            logger.exception("consulresults background round failed")
            due = time.monotonic() + 1.0
        with self._cond:
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
