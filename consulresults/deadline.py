"""A caller's deadline, carried through every layer of one operation.

``get(timeout=T)`` crosses several retry layers (Celery's policy under
``result_backend_always_retry``, the quick read retries, the write loop, the back-off on the
agent's connection limit), each with its own patience: alone, each would keep its promise and
together they would not. So the operation sets one deadline (:func:`within`), and every layer
asks it (:func:`remaining`) before it waits or tries again: none starts a wait that ends past
it, and none retries after it. What is in flight at the deadline may take one request timeout
more, which bounds any call at its timeout plus one request timeout.

It lives in a context variable, so threads, greenlets and asyncio tasks each have their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("consulresults_deadline", default=None)


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Everything inside ends by ``seconds`` from now, or by an enclosing deadline if that is
    sooner (None: no new deadline)."""
    with until(after(seconds)):
        yield


@contextmanager
def until(at: float | None) -> Iterator[None]:
    """Everything inside ends by ``at`` (monotonic time; None: the enclosing deadline). Not
    for a generator to hold across a ``yield``: the caller's code would run under it."""
    if at is None:
        yield
        return
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def after(seconds: float | None) -> float | None:
    """The deadline ``seconds`` from now would set (the enclosing one if that is sooner), as a
    monotonic time; None when there is neither."""
    outer = _DEADLINE.get()
    if seconds is None:
        return outer
    mine = time.monotonic() + seconds
    return mine if outer is None else min(outer, mine)


def remaining() -> float | None:
    """Seconds left before the deadline (0 once it passed); None when there is none."""
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def clamp(seconds: float) -> float:
    """``seconds``, or what is left before the deadline if that is less."""
    left = remaining()
    return seconds if left is None else min(seconds, left)


def passed() -> bool:
    """Whether a deadline is set and has passed."""
    return remaining() == 0.0
