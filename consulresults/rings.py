"""The keys of pushed waiting, shared by the two sides: a waiting process *registers* the keys
it waits on, and a writer that stores one of them *rings* the waiter's doorbell.

Under the prefix, in a directory no result, group or chord key can take
(:func:`consulresults.layout.parse_key` never names it)::

    consulresults-waiting/r/<key>/<session>   a registration: <session> waits on <key>
    consulresults-waiting/d/<session>         the doorbell's anchor (its prefix is never empty)
    consulresults-waiting/d/<session>/<key>   a ring: <key> was written

``<key>`` is the result's key relative to the prefix (already escaped). Every key here is held
by the waiting session (behaviour ``delete``), so a waiter that dies leaves nothing once its
session is gone. The writer rings with ``lock`` naming the waiter's session (Consul checks only
that it exists and the token's ``key:write``): a ring for a waiter that is gone fails instead of
leaving a key behind. Each ring's value is new (Consul skips a write that changes nothing, and
would wake nobody). A ring names the written key and carries no result: the waiter reads it,
so the right to ring (``key:write`` on the doorbells, which every waiter has) cannot forge one.

This module holds the names, the operations, what a ring carries (:func:`ring_value`,
:func:`ring_index`), which stores ring (:func:`silent`) and the process's ring sender
(:data:`RINGER`); a store asks for its rings in :meth:`consulresults.kv.KVStore.write`, and the
waiter's side runs in :mod:`consulresults.doorbell`.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from . import forks
from .connection import PermissionDenied, Transport

logger = logging.getLogger(__name__)
WAITING_DIR = "consulresults-waiting"
BATCH_OPS = 64
IDLE_SECONDS = 5.0  # the ringer's thread ends after this long without rings
_NONCE = itertools.count()
_SILENT: ContextVar[bool] = ContextVar("consulresults_silent", default=False)


class Layout:
    """The waiting keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self._head = f"{prefix}/" if prefix else ""
        self.root = f"{self._head}{WAITING_DIR}"

    def relative(self, key: str) -> str:
        return key[len(self._head) :] if key.startswith(self._head) else key

    def absolute(self, relative: str) -> str:
        return f"{self._head}{relative}"

    def registrations_of(self, key: str) -> str:
        """The prefix under which every registration of ``key`` lies (``get-tree`` reads it)."""
        return f"{self.root}/r/{self.relative(key)}/"

    def registration(self, key: str, session: str) -> str:
        return f"{self.registrations_of(key)}{session}"

    def doorbell(self, session: str) -> str:
        """The doorbell's anchor, and the prefix its blocking query watches."""
        return f"{self.root}/d/{session}"

    def ring(self, session: str, key: str) -> str:
        return f"{self.doorbell(session)}/{self.relative(key)}"

    def rung(self, session: str, ring: str) -> str | None:
        """The result key a ring key is for (None for the anchor)."""
        head = f"{self.doorbell(session)}/"
        return self.absolute(ring[len(head) :]) if ring.startswith(head) else None


def registrations_op(layout: Layout, key: str) -> dict[str, Any]:
    """The ``get-tree`` a writer's store txn carries: in the same Raft-ordered txn as the store,
    so a registration applied before it is seen, and one applied after it reads the result."""
    return {"KV": {"Verb": "get-tree", "Key": layout.registrations_of(key)}}


def waiting_sessions(layout: Layout, key: str, results: Iterable[dict[str, Any]]) -> list[str]:
    """The sessions registered on ``key``, from a store txn's results."""
    head = layout.registrations_of(key)
    found = (r["KV"]["Key"] for r in results if "KV" in r)
    return sorted({k[len(head) :] for k in found if k.startswith(head) and len(k) > len(head)})


def lock_op(key: str, session: str, value: bytes = b"") -> dict[str, Any]:
    return {
        "KV": {
            "Verb": "lock",
            "Key": key,
            "Session": session,
            "Value": base64.b64encode(value).decode(),
        }
    }


def ring_value(index: int) -> bytes:
    """Never the same twice: the written index, this process and a counter. A ring carries no
    result: the waiter reads the key, so a token that may only ring cannot forge one."""
    return f"{index} {os.getpid()} {next(_NONCE)}".encode()


def ring_index(value: str | None) -> int:
    """The written index a ring carries (``value`` as Consul lists it, base64), 0 when it
    carries none this module can read (another writer's)."""
    try:
        return int(base64.b64decode(value or "").split(b" ", 1)[0])
    except ValueError:  # binascii.Error included
        return 0


class Ringer:
    """Sends the process's rings from a thread of its own, so that a store returns as soon as
    it has landed: rings queued while one txn is on its way go out together in the next (group
    commit, nothing waits to fill a batch), a later ring of a key replacing an earlier one. The
    thread starts when needed and ends when idle; a forked child starts with an empty queue.
    Rings still queued when a process dies are lost: its waiters read those results at their
    next safety-net round."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: dict[tuple[Any, ...], tuple[Transport, dict[str, dict[str, Any]]]] = {}
        self._thread: threading.Thread | None = None
        self._sending = False  # a txn taken from the queue is on its way
        self.sent = 0  # ring txns sent, for tests and benchmarks

    def submit(self, transport: Transport, ops: list[dict[str, Any]]) -> None:
        with self._cond:
            queued = self._queue.setdefault(transport.identity, (transport, {}))[1]
            for op in ops:
                queued[op["KV"]["Key"]] = op
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="consulresults-rings", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()  # the thread, not a flush waiting on the same condition

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_SECONDS)
                if not self._queue:
                    self._thread = None
                    return
                queue, self._queue, self._sending = self._queue, {}, True
            try:
                for transport, ops in queue.values():
                    for batch in _batches(list(ops.values())):
                        self.sent += 1
                        send(transport, batch)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to be sent, the txn on its way
        included (a process on its way out); whether it was."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._queue or self._sending), timeout)


def _batches(ops: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Ops in txns of at most ``BATCH_OPS`` operations."""
    return [ops[pos : pos + BATCH_OPS] for pos in range(0, len(ops), BATCH_OPS)]


@contextmanager
def silent() -> Iterator[None]:
    """Within this block a store rings no doorbell: it writes a state no waiter acts on
    (Celery's STARTED, RETRY, a task's own progress states). Waiters wait for ready states,
    and Celery's key/value backends refuse ``get(on_message=...)``, the one reader of the
    others; a ring for them would cost a ring txn and a read per waiting process, and its key
    would sit in the doorbell's every answer until the key is done with."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


def ring(
    transport: Transport,
    layout: Layout,
    key: str,
    sessions: list[str],
    index: int,
) -> None:
    """Ring the doorbell of each waiting session after ``key`` was written at ``index``, from
    the process's ringer (unless :func:`silent`)."""
    if _SILENT.get():
        return
    value = ring_value(index)
    RINGER.submit(transport, [lock_op(layout.ring(s, key), s, value) for s in sessions])


_denied_logged = False


def send(transport: Transport, ops: list[dict[str, Any]]) -> int:
    """One txn of rings; a session gone meanwhile fails its operation only, and the rest are
    sent again once. Returns how many rang. Never raises: the stores have landed, and a waiter
    that misses a ring still finds the result through its safety net."""
    global _denied_logged
    for _ in range(2):
        try:
            answer = transport.txn(ops)
        except PermissionDenied as exc:
            if not _denied_logged:
                _denied_logged = True
                doorbells = ops[0]["KV"]["Key"].rsplit("/d/", 1)[0] + "/d/"
                logger.warning(
                    "consulresults: this token may not ring waiters' doorbells (%s): results "
                    "reach waiters of other processes through their safety net, within 5 s; "
                    "grant key:write on %s",
                    exc,
                    doorbells,
                )
            return 0
        except Exception as exc:
            logger.debug("consulresults: ringing waiters failed: %s", exc)
            return 0
        if answer.applied:
            return len(ops)
        failing = {error["OpIndex"] for error in answer.errors}
        ops = [op for i, op in enumerate(ops) if i not in failing]
        if not ops:
            return 0
    return 0


RINGER = Ringer()
atexit.register(lambda: RINGER.flush(1.0))
