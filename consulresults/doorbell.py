"""A waiting process's side of pushed waiting, for one prefix on one agent: its waiting
session, the keys it has registered, and the one blocking query on its doorbell.

- **Registering** a key is a ``lock`` of ``consulresults-waiting/r/<key>/<session>`` and a
  ``get-or-empty`` of the key, in one writing txn (64 keys a txn; each txn's reads are handed
  over as it is applied). Raft orders it against every store of the key, whose txn reads the
  registrations (:mod:`consulresults.rings`): either the store sees the registration and rings,
  or the registration reads the stored result. No wake-up is lost, and no read outside a
  writing txn is relied on: the read after a ring is checked against the index the ring
  carries, and read again while a lagging server answers with an older state.
- **The doorbell** is one blocking query on ``consulresults-waiting/d/<session>``, on its own
  thread, over one connection of the budget (a blocking read never takes the last one). Its
  answer lists the rings; each ring whose index moved names a key to read, and those keys are
  read in one txn and handed to :meth:`Doorbell.on_rung`. A session-held
  anchor keeps the prefix from being empty (a blocking query on an empty prefix returns on
  unrelated writes); the anchor's absence means the session is gone.
- **Forgetting** a key (no waiter needs it any more) deletes its registration and its ring
  (``delete-cas`` at the ring's last seen index: never a newer ring) in batches, at most
  ``CLEANUP_DELAY`` after the first key was forgotten, so a thousand waiters served one by one
  cost a few transactions, not one each.
- **The waiting session** has behaviour ``delete``, no checks, no lock delay and a TTL of
  ``SESSION_TTL`` (renewed every half TTL): a waiter that dies leaves nothing once it lapses,
  within two TTLs. Its name (``consul-results-waiting:...``) is no result session's, so
  ``sessions gc``/``expire`` leave it. A lost session (renewal refused, anchor gone, a txn's
  ``invalid session``) drops every registration: the next round registers them again, with
  fresh reads. A forked child starts without its parent's doorbells (the waiting service is
  reset), so it never renews or destroys them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import rings
from .background import BACKGROUND, Timer
from .connection import ConsulError, Interrupt, Interrupted, PermissionDenied, TxnAnswer
from .expiry import create_session
from .kv import LEGACY_TXN_OPS, Entry, KVStore, decoded

logger = logging.getLogger(__name__)
SESSION_TTL = 120
DOORBELL_WAIT = 300.0  # Consul's default max_query_time: a longer wait is cut to it
CLEANUP_DELAY = 1.0
CLEANUP_BATCH = 16  # the doorbell's answer lists every ring not cleaned up: keep it short
RETRY_PAUSE = (0.2, 5.0)  # the doorbell's pause after a failed query, first and longest
LAGGING_READS = (0.01, 0.02, 0.04)  # pauses before reading a rung key again, while it lags
_OPEN: weakref.WeakSet[Doorbell] = weakref.WeakSet()


class PushUnavailable(Exception):
    """This token or server cannot take part in pushed waiting (ACLs, or a Consul older than
    1.14 without ``get-or-empty``): the waiter polls instead."""


class SessionLost(Exception):
    """The waiting session is gone: every registration went with it."""


def session_name(prefix: str) -> str:
    """Not ``consul-results:``: the sessions commands take only those for result sessions."""
    host = f"consul-results-waiting:{socket.gethostname()}:{os.getpid()}"
    return f"{host} prefix={json.dumps(prefix)}"


class Doorbell:
    """Registrations and the doorbell of one waiting session (see the module's docstring).
    ``on_rung(entries)`` is called on the doorbell's thread with the entries of rung keys;
    ``on_lost()`` when the session went."""

    def __init__(
        self,
        store: KVStore,
        on_rung: Callable[[dict[str, Entry | None]], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.store = store
        self.layout = store.waiting
        self.on_rung = on_rung
        self.on_lost = on_lost
        self._lock = threading.Lock()
        self.session: str | None = None
        self.registered: dict[str, int] = {}  # key -> index of the last ring seen (0: none)
        self._forgotten: dict[str, int] = {}  # keys to clean up -> their ring's index
        self._cleanup_at: float | None = None
        self._renewal: Timer | None = None
        self._interrupt: Interrupt | None = None
        self._anchored = False
        self._listening = False  # the doorbell's query runs (not while nobody waits)
        self._pid = os.getpid()
        self.rings = 0  # rings seen, for tests and benchmarks

    # ------------------------------------------------------------------ registering

    def register(self, keys: list[str], on_read: Callable[[dict[str, Entry | None]], None]) -> None:
        """Register ``keys``, reading each in the same txn, in batches; each batch's entries
        (None: absent) go to ``on_read`` as soon as it is applied, so a later batch's failure
        costs the earlier ones nothing (they are registered, and their reads are the only
        ones until a ring or the safety net). Keys still registered (forgotten, not yet
        cleaned up) are kept, and read too."""
        if not self.store._get_or_empty:
            raise PushUnavailable("this Consul has no get-or-empty (older than 1.14)")
        session = self.session or self._open()
        with self._lock:
            for key in keys:
                if key in self._forgotten:
                    self.registered[key] = self._forgotten.pop(key)
        per_txn = max(1, (self.store.txn_ops - 1) // 2)
        for pos in range(0, len(keys), per_txn):
            on_read(self._register(session, keys[pos : pos + per_txn]))

    def _register(self, session: str, keys: list[str]) -> dict[str, Entry | None]:
        ops: list[dict[str, Any]] = []
        if not self._anchored:
            ops.append(rings.lock_op(self.layout.doorbell(session), session))
        for key in keys:
            ops.append(rings.lock_op(self.layout.registration(key, session), session))
            ops.append({"KV": {"Verb": "get-or-empty", "Key": key}})
        with self._lock:  # before the txn: a ring answered while it is on its way is news
            fresh = [key for key in keys if key not in self.registered]
            for key in fresh:
                self.registered[key] = 0
        try:
            answer = self._txn(ops)
        except BaseException:
            self._unregister(fresh)
            raise
        if not answer.applied:
            self._unregister(fresh)
            if any("invalid session" in e["What"] for e in answer.errors):
                self._lose(session)
                raise SessionLost(session)
            if any("get-or-empty" in e["What"] for e in answer.errors):
                raise PushUnavailable("this Consul has no get-or-empty (older than 1.14)")
            raise answer.error()
        self._anchor(session)
        wanted = set(keys)
        read = (r["KV"] for r in answer.results or () if r.get("KV", {}).get("Key") in wanted)
        found: dict[str, Entry | None] = dict.fromkeys(keys)
        found.update({e["Key"]: decoded(e) if e["CreateIndex"] else None for e in read})
        return found

    def _unregister(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self.registered.pop(key, None)

    def _txn(self, ops: list[dict[str, Any]]) -> TxnAnswer:
        try:
            return self.store.transport.txn(ops)
        except PermissionDenied as exc:
            raise PushUnavailable(f"the token may not register waits ({exc})") from exc
        except ConsulError as exc:
            if exc.status == 413 and len(ops) > LEGACY_TXN_OPS:
                # before Consul 1.14 a txn takes 64 operations, and has no get-or-empty
                self.store.txn_ops = LEGACY_TXN_OPS
                raise PushUnavailable("this Consul takes 64 txn operations (before 1.14)") from exc
            raise

    # ------------------------------------------------------------------ forgetting

    def forget(self, keys: set[str]) -> bool:
        """No waiter needs these keys any more: clean them up with the next batch. True when
        this started a batch (a round is then due at :meth:`cleanup_due`)."""
        with self._lock:
            for key in keys:
                if key in self.registered:
                    self._forgotten[key] = self.registered.pop(key)
            started = len(self._forgotten) >= CLEANUP_BATCH
            if self._forgotten and self._cleanup_at is None:
                self._cleanup_at = time.monotonic() + CLEANUP_DELAY
                started = True
        self.rest()  # if that was the last key waited on
        return started

    def cleanup_due(self) -> float | None:
        """When the forgotten keys are to be cleaned up (None: there are none)."""
        with self._lock:
            if len(self._forgotten) >= CLEANUP_BATCH:
                return 0.0
            return self._cleanup_at

    def clean_up(self) -> None:
        """Delete the forgotten keys' registrations and rings, in batches; a ring that moved
        since it was seen fails its ``delete-cas`` alone, and the doorbell shows it again."""
        with self._lock:
            forgotten, self._forgotten, self._cleanup_at = self._forgotten, {}, None
            session = self.session
        if session is None or not forgotten:
            return
        items = sorted(forgotten.items())
        per_txn = self.store.txn_ops // 2
        for pos in range(0, len(items), per_txn):
            try:
                self._delete(session, items[pos : pos + per_txn])
            except PushUnavailable:
                raise
            except Exception as exc:  # no waiter's business: tried again with the next batch
                logger.debug("consulresults: cleaning up waiting keys failed: %s", exc)
                self._retry_cleanup(session, items[pos:])
                return

    def _retry_cleanup(self, session: str, items: list[tuple[str, int]]) -> None:
        """Put keys whose clean-up failed back for the next batch. A ring seen meanwhile
        (the doorbell took the key for a stray) keeps its newer index: Raft's indexes only
        grow, and a ``delete-cas`` at the older one would fail for ever."""
        with self._lock:
            if self.session != session:
                return
            for key, index in items:
                if key not in self.registered:
                    self._forgotten[key] = max(index, self._forgotten.get(key, 0))
            self._cleanup_at = time.monotonic() + CLEANUP_DELAY

    def _delete(self, session: str, items: list[tuple[str, int]]) -> None:
        ops: list[dict[str, Any]] = []
        for key, index in items:
            ops.append({"KV": {"Verb": "delete", "Key": self.layout.registration(key, session)}})
            ring = self.layout.ring(session, key)
            ops.append({"KV": {"Verb": "delete-cas", "Key": ring, "Index": index}})
        for _ in range(2):
            answer = self._txn(ops)
            if answer.applied:
                return
            failing = {error["OpIndex"] for error in answer.errors}
            ops = [op for i, op in enumerate(ops) if i not in failing]
            if not ops:
                return

    # ------------------------------------------------------------------ the session

    def _open(self) -> str:
        name = session_name(self.store.prefix)
        try:
            session = create_session(self.store.transport, name, SESSION_TTL)
        except PermissionDenied as exc:
            raise PushUnavailable(f"the token may not create a waiting session ({exc})") from exc
        with self._lock:
            self.session, self._anchored = session, False
            self._renewal = BACKGROUND.call_later(SESSION_TTL / 2, lambda: self._renew(session))
            self._interrupt = Interrupt()
        self._pid = os.getpid()
        _OPEN.add(self)
        return session

    def _anchor(self, session: str) -> None:
        """The anchor exists now: from here on, its absence means the session is gone, so the
        doorbell's query may start (again, after a rest)."""
        with self._lock:
            if self.session != session or self._interrupt is None:
                return
            self._anchored = True
            if self._listening:
                return
            self._listening, interrupt = True, self._interrupt
        listener = threading.Thread(
            target=self._listen,
            args=(session, interrupt),
            name="consulresults-doorbell",
            daemon=True,
        )
        listener.start()

    def _renew(self, session: str) -> None:
        if self.session != session:
            return
        try:
            self.store.transport.request("PUT", f"/v1/session/renew/{session}", expect=(200,))
        except ConsulError as exc:
            if exc.status == 404:
                self._lose(session)
                return
            delay = 1.0
        except Exception:
            delay = 1.0  # an outage: try again soon, the TTL leaves time
        else:
            delay = SESSION_TTL / 2
        with self._lock:
            if self.session == session:
                self._renewal = BACKGROUND.call_later(delay, lambda: self._renew(session))

    def _lose(self, session: str) -> None:
        """The session is gone, and every registration with it."""
        with self._lock:
            if self.session != session:
                return
            self._stop_locked()
        logger.info("consulresults: waiting session %s lost: registering again", session)
        self.on_lost()

    def _stop_locked(self) -> None:
        self.session, self._listening = None, False
        self.registered.clear()
        self._forgotten.clear()
        self._cleanup_at = None
        if self._renewal is not None:
            self._renewal.cancel()
        if self._interrupt is not None:
            self._interrupt.fire()

    def close(self, timeout: float | None = None) -> None:
        """Destroy the session (its keys go with it) and stop the doorbell."""
        with self._lock:
            session = self.session
            self._stop_locked()
        if session is not None:
            path = f"/v1/session/destroy/{session}"
            try:
                self.store.transport.request("PUT", path, timeout=timeout)
            except Exception as exc:  # it lapses by itself within two TTLs
                logger.debug("consulresults: destroying waiting session %s: %s", session, exc)

    def rest(self) -> None:
        """If no key is registered, the doorbell's query stops, so its connection goes back to
        the budget (idle doorbells of a process's other prefixes would otherwise hold every
        connection a blocking read may take, and the service's thread would wait for one). The
        session stays; the next registration starts the query again, whose first answer lists
        every ring there is. A stray ring meanwhile is the session's to delete."""
        with self._lock:  # a registration marks its keys before its txn: never lost here
            if self.registered or not self._listening:
                return
            if self._interrupt is None:
                return
            self._listening, interrupt = False, self._interrupt
            self._interrupt = Interrupt()
        interrupt.fire()

    def registered_keys(self) -> set[str]:
        with self._lock:
            return set(self.registered)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not (self.registered or self._forgotten)

    # ------------------------------------------------------------------ the doorbell

    def _listen(self, session: str, interrupt: Interrupt) -> None:
        """The doorbell's thread: one blocking query after another while the session lives."""
        index, pause = 0, RETRY_PAUSE[0]
        seen: dict[str, int] = {}
        while self.session == session:
            try:
                listed, index = self.store.read_prefix_blocking(
                    self.layout.doorbell(session), index, DOORBELL_WAIT, "default", interrupt
                )
            except Interrupted:
                return
            except Exception as exc:
                logger.debug("consulresults: the doorbell's query failed: %s", exc)
                if interrupt.fired:
                    return
                time.sleep(pause)
                pause, index = min(RETRY_PAUSE[1], pause * 2), 0
                continue
            pause = RETRY_PAUSE[0]
            if not any(e["Key"] == self.layout.doorbell(session) for e in listed):
                self._lose(session)
                return
            try:
                self._answer(session, listed, seen)
            except Exception:  # the doorbell must outlive one bad answer; the net reads again
                logger.exception("consulresults: the doorbell failed to hand rings over")
                seen.clear()

    def _answer(self, session: str, listed: list[dict[str, Any]], seen: dict[str, int]) -> None:
        """Read the keys whose rings moved; rings of keys no longer registered are strays,
        cleaned up with the next batch."""
        rung: dict[str, int] = {}  # key -> the index its ring says it was written at
        with self._lock:
            for entry in listed:
                key = self.layout.rung(session, entry["Key"])
                if key is None or seen.get(key) == entry["ModifyIndex"]:
                    continue
                seen[key] = entry["ModifyIndex"]
                if key in self.registered:
                    self.registered[key] = entry["ModifyIndex"]
                    rung[key] = rings.ring_index(entry.get("Value"))
                else:
                    self._forgotten[key] = entry["ModifyIndex"]
                    if self._cleanup_at is None:
                        self._cleanup_at = time.monotonic() + CLEANUP_DELAY
            present = {self.layout.rung(session, e["Key"]) for e in listed}
            for key in [k for k in seen if k not in present]:
                del seen[key]  # deleted: a new ring of it is news, whatever its index
        if not rung:
            return
        self.rings += len(rung)
        try:
            entries = self._read_rung(rung)
        except Exception as exc:  # the safety net reads them soon
            logger.debug("consulresults: reading rung keys failed: %s", exc)
            return
        self.on_rung(entries)

    def _read_rung(self, rung: dict[str, int]) -> dict[str, Entry | None]:
        """The rung keys' entries. A read outside a writing txn may be answered by a server
        behind the ring (``stale`` reads, a deposed leader's): a key older than the index its
        ring carries is read again, a few times; what is still behind then is handed over as
        it is (an older state is nobody's news) and the safety net reads it later."""
        entries = self.store.entries(sorted(rung))
        for pause in LAGGING_READS:
            behind = [key for key, index in rung.items() if _older(entries.get(key), index)]
            if not behind:
                break
            time.sleep(pause)
            entries.update(self.store.entries(behind))
        return entries


def _older(entry: Entry | None, index: int) -> bool:
    """Whether ``entry`` is older than a write at ``index`` (absent: older than any)."""
    return index > 0 and (entry is None or entry["ModifyIndex"] < index)


def _close_all() -> None:
    """At exit: a process's waiting sessions go with it (else within two TTLs)."""
    for doorbell in list(_OPEN):
        if doorbell._pid == os.getpid():  # never a parent's, in a forked child
            doorbell.close(timeout=1.0)


atexit.register(_close_all)
