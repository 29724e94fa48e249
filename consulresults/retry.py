"""The one retry loop of the package. Reads retry transient failures a few times, Celery's own
policy (``result_backend_always_retry``) wraps waits and joins, and the write loop retries lost
races until its patience runs out: three policies, one loop, so a bound is never forgotten."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .deadline import remaining, within

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures to try again after, how long to sleep before try ``n``, and when to stop
    (after ``max_retries`` retries, or once ``patience`` seconds have passed: whichever comes
    first). ``on_retry(exc, n)`` is told of each retry, e.g. to log it."""

    should_retry: Callable[[BaseException], bool]
    delay: Callable[[int], float]
    max_retries: int | None = None
    patience: float | None = None
    on_retry: Callable[[BaseException, int], None] | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, tried again while the policy allows; the last failure is raised as it is.
        The patience is a deadline for everything inside (:mod:`consulresults.deadline`), and
        no retry is made that would start after the caller's deadline."""
        with within(self.patience):
            retries = 0
            while True:
                try:
                    return fn()
                except Exception as exc:
                    pause = self.delay(retries + 1)
                    if not self.allows(exc, retries):
                        raise
                    left = remaining()
                    if left is not None and pause >= left:
                        time.sleep(left)  # no time for another try: give up at the deadline
                        raise
                    retries += 1
                    if self.on_retry:
                        self.on_retry(exc, retries)
                    time.sleep(pause)

    def allows(self, exc: BaseException, retries: int) -> bool:
        """Whether ``exc``, after ``retries`` retries already, may be tried again."""
        exhausted = self.max_retries is not None and retries >= self.max_retries
        return self.should_retry(exc) and not exhausted


def doubling(first: float) -> Callable[[int], float]:
    """``first``, 2x``first``, 4x``first``...: quick retries for reads, which are always safe."""
    return lambda n: first * 2 ** (n - 1)


def full_jitter(low: float, cap: float) -> Callable[[int], float]:
    """Exponential back-off with full jitter: writers that lost a race to the same key (chord
    parts finishing together) spread out instead of colliding again in lock-step."""
    return lambda n: random.uniform(0, min(cap, low * 2**n))
