"""The process's one waiting service: every waiter of the process (``AsyncResult.get()``,
``GroupResult.get()``, ``get_many``, ``consulresults.aio``, the CLI's ``get --wait``) is served by
rounds on the background thread, over at most two connections, however many wait.

A round reads every key waited on and hands each changed entry to the watches that wait on it:

- while one key is waited on, a round is one blocking read of it: the answer comes as soon as
  the key changes, or after ``LONG_WAIT`` (a new waiter cuts it short, see below);
- while several are, a round reads them all in ``/v1/txn`` batches (128 keys a request, 64
  before Consul 1.14) every ``ROUND_SECONDS``: the cost grows with the keys waited on, never
  with the results stored under the prefix;
- nothing waited on, no rounds: no requests at all.

Polls are ``default``-consistency reads (``stale`` if the backend is configured stale): the
leader answers from its state without the quorum round a ``consistent`` read costs it. That is
safe for waiting: a READY answer is final (a result leaves a ready state only by being
deleted), and a not-yet-ready answer is simply polled again.

The service knows nothing of Celery: a :class:`Watch` decides what an entry means (the backend
decodes it and checks its state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import forks
from .background import BACKGROUND
from .connection import Interrupt, Interrupted
from .kv import Entry, KVStore

logger = logging.getLogger(__name__)
ROUND_SECONDS = 0.5
LONG_WAIT = 10.0
INTERRUPT_HOLDOFF = 5.0  # after cutting a long read short, poll for a while before another


class Watch:
    """Keys one waiter waits on. ``on_change(key, entry)`` is called (on the background
    thread, briefly: it must not block) with each new state of a key and returns True when the
    waiter needs that key no more; ``on_error(exc)`` with a failed round's error."""

    def __init__(
        self,
        keys: Iterable[str],
        on_change: Callable[[str, Entry], bool],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.keys = set(keys)
        self._on_change = on_change
        self._on_error = on_error
        self._seen: dict[str, int] = {}
        self.reads = 0  # rounds that read its keys: failures between two are consecutive

    def offer(self, key: str, entry: Entry | None) -> None:
        if entry is None or self._seen.get(key) == entry["ModifyIndex"]:
            return
        self._seen[key] = entry["ModifyIndex"]
        try:
            done = self._on_change(key, entry)
        except Exception as exc:  # e.g. a value the waiter cannot decode: the waiter's error
            self._on_error(exc)
            done = False
        if done:
            self.keys.discard(key)

    def fail(self, exc: BaseException) -> None:
        self._on_error(exc)


class _Group:
    """The watches whose keys one transport can read (same agent, token and datacenter)."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.watches: set[Watch] = set()
        self.fresh: set[str] = set()  # keys to read at the next round, not at the next poll
        self.next_poll = 0.0
        self.long_key: str | None = None  # the key of a long blocking read in progress
        self.last_long: tuple[str, int] = ("", 0)  # the key last read so, and its index
        self.interrupt: Interrupt | None = None
        self.no_long_until = 0.0

    def keys(self) -> set[str]:
        return {key for watch in self.watches for key in watch.keys}


class WaitingService:
    """Rounds of reads for every waiter of the process (see the module's docstring)."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)  # a child starts with none of its parent's waiters

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self.rounds = 0

    def watch(self, store: KVStore, watch: Watch, read_now: bool = False) -> None:
        """Start serving ``watch``. A waiter that has just read its keys itself leaves
        ``read_now`` False: they are read at the next poll (within ``ROUND_SECONDS``)."""
        with self._lock:
            group = self._groups.get(store.transport.identity)
            if group is None:
                group = self._groups[store.transport.identity] = _Group(store)
            group.watches.add(watch)
            if read_now:
                group.fresh.update(watch.keys)
            for blocking in self._groups.values():  # this group's, or another one's
                cut_short = blocking.long_key is not None and watch.keys != {blocking.long_key}
                if cut_short and blocking.interrupt is not None:
                    blocking.interrupt.fire()
                    blocking.no_long_until = time.monotonic() + INTERRUPT_HOLDOFF
        BACKGROUND.wake(self)

    def cancel(self, watch: Watch) -> None:
        """Stop serving ``watch`` (it is done, timed out or cancelled)."""
        with self._lock:
            for group in self._groups.values():
                group.watches.discard(watch)

    def watched_keys(self) -> int:
        """How many keys are waited on now, over every group (for tests and benchmarks)."""
        with self._lock:
            return sum(len(group.keys()) for group in self._groups.values())

    def blocking_on(self) -> str | None:
        """The key of the long blocking read in progress, if one is."""
        with self._lock:
            return next((g.long_key for g in self._groups.values() if g.long_key), None)

    def cut_short(self) -> None:
        """End the long blocking read in progress, if any (an urgent timer is due first)."""
        with self._lock:
            for group in self._groups.values():
                if group.interrupt is not None:
                    group.interrupt.fire()

    def round(self, until: float) -> float | None:
        """One round over every group (the background thread calls it); when the next is due."""
        with self._lock:
            groups = [group for group in self._groups.values() if group.watches]
        if not groups:
            return None
        self.rounds += 1
        may_block = len(groups) == 1
        due = [self._round(group, until, may_block) for group in groups]
        return min(due)

    def _round(self, group: _Group, until: float, may_block: bool) -> float:
        now = time.monotonic()
        with self._lock:
            keys = group.keys()
            fresh, group.fresh = group.fresh & keys, set()
        if may_block and len(keys) == 1 and now >= group.no_long_until:
            key = keys.pop()
            if key in fresh:
                group.last_long = ("", 0)  # a new waiter's key: read it now, not past an index
            return self._long_round(group, key, until)
        group.last_long = ("", 0)
        if now < group.next_poll:
            to_read = fresh
        else:
            to_read = keys
            group.next_poll = now + ROUND_SECONDS
        if to_read:
            self._read(group, sorted(to_read))
        return group.next_poll

    def _read(self, group: _Group, keys: list[str]) -> None:
        try:
            entries = group.store.entries(keys)
        except Exception as exc:
            self._fail(group, exc)
            return
        self._dispatch(group, entries)

    def _long_round(self, group: _Group, key: str, until: float) -> float:
        """One blocking read of the only key waited on; a new waiter may cut it short."""
        # no longer than a request timeout: requests sent meanwhile have timers to keep
        timeout = group.store.transport.timeout
        wait = max(0.0, min(LONG_WAIT, timeout, until - time.monotonic()))
        interrupt = Interrupt()
        with self._lock:
            if group.keys() != {key} or group.fresh:
                return time.monotonic()  # a waiter came meanwhile: a new round for it
            group.long_key, group.interrupt = key, interrupt
            index = group.last_long[1] if group.last_long[0] == key else 0
        mode = "stale" if group.store.transport.consistency == "stale" else "default"
        try:
            entry, index = group.store.read_blocking(key, index, wait, mode, interrupt)
        except Interrupted:
            return time.monotonic()
        except Exception as exc:
            self._fail(group, exc)
            group.last_long = ("", 0)
            return time.monotonic() + ROUND_SECONDS
        finally:
            with self._lock:
                group.long_key = group.interrupt = None
        group.last_long = (key, index)
        self._dispatch(group, {key: entry})
        return time.monotonic()

    def _dispatch(self, group: _Group, entries: dict[str, Entry | None]) -> None:
        with self._lock:
            for watch in list(group.watches):
                read = [key for key in watch.keys if key in entries]
                watch.reads += bool(read)
                for key in read:
                    try:
                        watch.offer(key, entries[key])
                    except Exception:  # one broken waiter must not cost the others their news
                        logger.exception("consulresults: a waiter failed to take its result")
                        group.watches.discard(watch)

    def _fail(self, group: _Group, exc: BaseException) -> None:
        with self._lock:
            for watch in list(group.watches):
                watch.fail(exc)


WAITING = WaitingService()
