"""The process's one waiting service: every waiter of the process (``AsyncResult.get()``,
``GroupResult.get()``, ``get_many``, ``consulresults.aio``, the CLI's ``get --wait``) is served
here, over a bounded number of connections however many wait. Waiters are grouped by store
(agent, token, datacenter and prefix); a group is served in one of three ways:

- **one key waited on** (and nothing registered): a round is one blocking read of it, on the
  background thread. The answer comes one round trip after the store; a new waiter cuts it
  short. Nothing is written to Consul for a lone waiter.
- **pushed** (two keys or more): the keys are registered under the process's waiting session
  and writers ring its doorbell as they store them (:mod:`consulresults.doorbell`,
  :mod:`consulresults.rings`). A round registers the keys that are new (in batches, reading
  them in the same txn), cleans up the ones no longer needed (in batches), and every
  ``SAFETY_NET`` seconds reads every waited key once (``⌈K/128⌉`` txns), for writers that do
  not ring (Celery's built-in backend, an earlier release, a token that may not). Between
  rounds nothing is read: the doorbell's blocking query, on its own thread, wakes on a ring and
  reads just the rung keys.
- **polled** (push unavailable: the token may not register, or Consul is older than 1.14): the
  keys are read in ``/v1/txn`` batches every ``ROUND_SECONDS``, and pushes are tried again
  every ``PUSH_RETRY``.

Reads are ``default``-consistency (``stale`` if the backend is configured stale): a READY
answer is final, and a not-ready one is read again later. Registrations read inside a writing
txn, which is what makes them safe (see :mod:`consulresults.doorbell`).

The service knows nothing of Celery: a :class:`Watch` decides what an entry means.
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
from .doorbell import Doorbell, PushUnavailable, SessionLost
from .kv import Entry, KVStore

logger = logging.getLogger(__name__)
ROUND_SECONDS = 0.5  # polling, where push is unavailable
SAFETY_NET = 5.0  # pushed keys are read this often all the same
LONG_WAIT = 10.0
INTERRUPT_HOLDOFF = 5.0  # after cutting a long read short, no other for a while
LINGER = 10.0  # an idle doorbell's session is destroyed this long after its last key went
PUSH_RETRY = 60.0  # a group that could not take part in pushes tries again this often


class Watch:
    """Keys one waiter waits on. ``on_change(key, entry)`` is called (on a service thread,
    briefly: it must not block) with each new state of a key and returns True when the
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
        self.indexed: set[str] = set()  # the keys its group finds it under

    def offer(self, key: str, entry: Entry | None) -> bool:
        """Take a state of ``key``, unless it is one seen already or older (Raft's indexes
        only grow, and a ring may come after a later read); whether the key is done with."""
        if entry is None or entry["ModifyIndex"] <= self._seen.get(key, -1):
            return False
        self._seen[key] = entry["ModifyIndex"]
        try:
            done = self._on_change(key, entry)
        except Exception as exc:  # e.g. a value the waiter cannot decode: the waiter's error
            self._on_error(exc)
            done = False
        if done:
            self.keys.discard(key)
        return done

    def fail(self, exc: BaseException) -> None:
        self._on_error(exc)


class _Group:
    """The watches of one store (same agent, token, datacenter and prefix)."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.watches: set[Watch] = set()
        self.index: dict[str, set[Watch]] = {}  # key -> the watches that wait on it
        self.fresh: set[str] = set()  # keys to read at the next round, not at the next poll
        self.next_poll = 0.0
        self.long_key: str | None = None  # the key of a long blocking read in progress
        self.last_long: tuple[str, int] = ("", 0)  # the key last read so, and its index
        self.interrupt: Interrupt | None = None
        self.no_long_until = 0.0
        self.push = True  # False while the token or server cannot take part: polled
        self.push_again_at = 0.0  # when a polled group tries pushes again
        self.doorbell: Doorbell | None = None
        self.next_safety = 0.0
        self.idle_since: float | None = None

    def keys(self) -> set[str]:
        return {key for watch in self.watches for key in watch.keys}

    def add(self, watch: Watch, keys: Iterable[str]) -> None:
        self.watches.add(watch)
        for key in keys:
            self.index.setdefault(key, set()).add(watch)
        watch.indexed.update(keys)

    def remove(self, watch: Watch) -> set[str]:
        """Stop serving ``watch``; the keys no other watch waits on."""
        self.watches.discard(watch)
        gone = set()
        for key in watch.indexed:
            watching = self.index.get(key, set())
            watching.discard(watch)
            if not watching:
                self.index.pop(key, None)
                gone.add(key)
        watch.indexed = set()
        return gone

    def busy(self) -> bool:
        """Whether a round has work: waiters, or a doorbell still to clean up or close."""
        return bool(self.watches) or self.doorbell is not None


class WaitingService:
    """Rounds for every waiter of the process (see the module's docstring)."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)  # a child starts with none of its parent's waiters

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self.rounds = 0
        self._warned = False

    def watch(self, store: KVStore, watch: Watch, keys: Iterable[str] = ()) -> None:
        """Serve ``watch`` (and add ``keys`` to it); its new keys are read at the next round."""
        ident = (*store.transport.identity, store.prefix)
        with self._lock:
            new = set(keys) - watch.keys
            watch.keys.update(new)
            group = self._groups.get(ident)
            if group is None:
                group = self._groups[ident] = _Group(store)
            if watch not in group.watches:
                new = set(watch.keys)
            group.add(watch, new)
            group.fresh.update(new)
            for blocking in self._groups.values():  # this group's, or another one's
                cut_short = blocking.long_key is not None and watch.keys != {blocking.long_key}
                if cut_short and blocking.interrupt is not None:
                    blocking.interrupt.fire()
                    blocking.no_long_until = time.monotonic() + INTERRUPT_HOLDOFF
        BACKGROUND.wake(self)

    def cancel(self, watch: Watch) -> None:
        """Stop serving ``watch`` (it is done, timed out or cancelled). The keys no other watch
        waits on are forgotten under the service's lock, in one step with the watch's removal:
        a new waiter on one of them in between would find it registered, while its
        registration is on its way to be cleaned up, and its rings taken for strays."""
        wake = False
        with self._lock:
            for group in [g for g in self._groups.values() if watch in g.watches]:
                gone = group.remove(watch)
                if group.doorbell is not None:
                    wake = group.doorbell.forget(gone) or wake
        if wake:  # keys nobody waits on any more are cleaned up with the next batch
            BACKGROUND.wake(self)

    def watched_keys(self) -> int:
        """How many keys are waited on now, over every group (for tests and benchmarks)."""
        with self._lock:
            return sum(len(group.keys()) for group in self._groups.values())

    def registered_keys(self) -> int:
        """How many keys are registered for pushes now (for tests and benchmarks)."""
        with self._lock:
            doors = [g.doorbell for g in self._groups.values() if g.doorbell is not None]
        return sum(len(door.registered_keys()) for door in doors)

    def open_doorbells(self) -> int:
        """How many doorbells are open (lingering ones included), for tests and benchmarks."""
        with self._lock:
            return sum(g.doorbell is not None for g in self._groups.values())

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
            groups = [group for group in self._groups.values() if group.busy()]
        if not groups:
            return None
        self.rounds += 1
        may_block = sum(bool(group.watches) for group in groups) == 1  # others just clean up
        due = [self._round(group, until, may_block) for group in groups]
        return min((d for d in due if d is not None), default=None)

    def _round(self, group: _Group, until: float, may_block: bool) -> float | None:
        now = time.monotonic()
        with self._lock:
            keys = group.keys()
            fresh, group.fresh = group.fresh & keys, set()
        if not group.push and now >= group.push_again_at:
            group.push = True  # an ACL granted or an upgrade since: try again
        door = group.doorbell
        pushed = door is not None and not door.idle
        if group.push and (len(keys) > 1 or pushed or (keys and not may_block)):
            return self._push_round(group, keys, fresh, now)
        if door is not None:
            door.rest()  # nobody is pushed: its query must not hold a connection
        if not keys:
            return self._linger(group, now)
        if may_block and len(keys) == 1 and now >= group.no_long_until:
            key = next(iter(keys))
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

    def _push_round(self, group: _Group, keys: set[str], fresh: set[str], now: float) -> float:
        """Register new keys, clean up old ones, and read every key once per ``SAFETY_NET``.
        A step that fails is the error of the watches of the keys it concerned only."""
        group.idle_since = None
        door = group.doorbell or self._open(group, now)
        with self._lock:  # as in cancel(): no waiter may come between the two
            door.forget(door.registered_keys() - group.keys())
        new = sorted(keys - door.registered_keys())
        try:
            failed = self._register(group, door, new)
            again = sorted(fresh - set(new))  # new waiters on keys registered already
            if again:
                self._read(group, again)
            cleanup = door.cleanup_due()
            if cleanup is not None and cleanup <= now:
                door.clean_up()
            if now >= group.next_safety:
                group.next_safety = now + SAFETY_NET
                if keys - set(new):
                    self._read(group, sorted(keys - set(new)))
        except PushUnavailable as exc:
            self._unpushed(group, exc)
            return time.monotonic()
        except SessionLost:
            return time.monotonic()  # registered again at once, with a new session
        if failed:
            return time.monotonic() + ROUND_SECONDS
        cleanup = door.cleanup_due()
        return min(group.next_safety, cleanup if cleanup is not None else group.next_safety)

    def _register(self, group: _Group, door: Doorbell, keys: list[str]) -> bool:
        """Register ``keys``, handing each batch's reads over; whether a batch failed. Its
        failure is the error of the watches of the keys not registered: the others'
        registrations stand."""
        if not keys:
            return False
        handed: set[str] = set()

        def took(entries: dict[str, Entry | None]) -> None:
            handed.update(entries)
            self._dispatch(group, entries)

        try:
            door.register(keys, took)
        except (PushUnavailable, SessionLost):
            raise
        except Exception as exc:
            self._fail(group, exc, set(keys) - handed)
            return True
        return False

    def _open(self, group: _Group, now: float) -> Doorbell:
        group.doorbell = Doorbell(
            group.store,
            on_rung=lambda entries: self._dispatch(group, entries),
            on_lost=lambda: BACKGROUND.wake(self),
        )
        group.next_safety = now + SAFETY_NET
        return group.doorbell

    def _unpushed(self, group: _Group, exc: BaseException) -> None:
        """The token or server cannot take part: poll this group, and try pushes again after
        ``PUSH_RETRY`` (an ACL may be granted, a server upgraded). Said once in the log."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "consulresults: waiting polls every %g s instead of being pushed results: %s "
                "(consul-results doctor says what the token needs); trying pushes again "
                "every %g s",
                ROUND_SECONDS,
                exc,
                PUSH_RETRY,
            )
        group.push, group.push_again_at = False, time.monotonic() + PUSH_RETRY
        if group.doorbell is not None:
            group.doorbell.close()
            group.doorbell = None

    def _linger(self, group: _Group, now: float) -> float | None:
        """No waiter: keep the doorbell's session for ``LINGER`` seconds (the next burst of
        waiters needs no new one), then destroy it."""
        if group.doorbell is None:
            return None
        if group.idle_since is None:
            group.idle_since = now
        if now - group.idle_since < LINGER:
            return group.idle_since + LINGER
        group.doorbell.close()
        group.doorbell = None
        return None

    def _read(self, group: _Group, keys: list[str]) -> None:
        try:
            entries = group.store.entries(keys)
        except Exception as exc:
            self._fail(group, exc, keys)
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
            self._fail(group, exc, [key])
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
            watching = {w for key in entries for w in group.index.get(key, ())}
            for watch in watching:
                read = [key for key in watch.keys if key in entries]
                watch.reads += bool(read)
                for key in read:
                    try:
                        watch.offer(key, entries[key])
                    except Exception:  # one broken waiter must not cost the others their news
                        logger.exception("consulresults: a waiter failed to take its result")
                        group.remove(watch)

    def _fail(self, group: _Group, exc: BaseException, keys: Iterable[str]) -> None:
        """``exc`` is the error of the watches waiting on ``keys``, and of no other: a failed
        step that concerned other keys cost them nothing."""
        with self._lock:
            for watch in {w for key in keys for w in group.index.get(key, ())}:
                watch.fail(exc)


WAITING = WaitingService()
