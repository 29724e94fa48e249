"""What a forked child must not inherit as it is. A prefork worker's children are forked from
a process whose threads may be using Consul: the child would share its parent's sockets, and a
lock held by a parent's thread at the fork would stay held for ever in the child, where that
thread does not exist. Objects registered here are reset in the child, before it runs on."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class Resettable(Protocol):
    def reset(self) -> None:
        """Start afresh: new locks, none of the parent's connections or sessions."""


_OBJECTS: weakref.WeakSet[Resettable] = weakref.WeakSet()


def reset_in_forked_child(obj: Resettable) -> None:
    """Call ``obj.reset()`` in every child forked from now on (while ``obj`` lives)."""
    _OBJECTS.add(obj)


class Lock:
    """A module-level lock that a forked child gets anew (a parent's thread may hold it at the
    fork, and would never release it in the child)."""

    def __init__(self) -> None:
        self.reset()
        reset_in_forked_child(self)

    def reset(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _reset_all() -> None:
    for obj in list(_OBJECTS):
        obj.reset()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork to guard against
    os.register_at_fork(after_in_child=_reset_all)
