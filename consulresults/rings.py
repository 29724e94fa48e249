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
would wake nobody): it carries the written entry, with its value up to ``INLINE_MAX`` bytes, so
the waiter has the result without reading it.

This module knows names and operations only; the writer's side runs in
:meth:`consulresults.kv.KVStore.write`, the waiter's in :mod:`consulresults.doorbell`.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from .connection import PermissionDenied, Transport

logger = logging.getLogger(__name__)
WAITING_DIR = "consulresults-waiting"
INLINE_MAX = 8192  # a ring carries a written value up to this size
_ENTRY_FIELDS = ("CreateIndex", "ModifyIndex", "LockIndex", "Flags", "Session")
_NONCE = itertools.count()


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


def ring_value(written: dict[str, Any], data: bytes) -> bytes:
    """Never the same twice (the store's index, this process and a counter), and carrying the
    written entry, its value included when small, so that the waiter need not read it."""
    head = {name: written.get(name) for name in _ENTRY_FIELDS}
    head["Nonce"] = f"{os.getpid()}-{next(_NONCE)}"
    inline = len(data) <= INLINE_MAX
    head["Inline"] = inline
    return json.dumps(head).encode() + b"\n" + (data if inline else b"")


def rung_entry(key: str, value: bytes | None) -> dict[str, Any] | None:
    """The entry a ring carries (``Value`` the raw bytes), or None when the waiter must read
    it (a large value, or a ring it cannot parse)."""
    head_line, _, data = (value or b"").partition(b"\n")
    try:
        head = json.loads(head_line)
    except ValueError:
        return None
    if not isinstance(head, dict) or not head.get("Inline"):
        return None
    entry = {name: head.get(name) for name in _ENTRY_FIELDS}
    return {**entry, "Key": key, "Value": data or None}


_denied_logged = False


def ring(
    transport: Transport,
    layout: Layout,
    key: str,
    sessions: list[str],
    written: dict[str, Any],
    data: bytes,
) -> int:
    """Ring the doorbell of each waiting session after ``key`` was written (``written``: the
    write's result entry; ``data``: its value): one txn for them all; a session gone meanwhile
    fails its operation only, and the rest are sent again once. Returns how many rang. Never
    raises: the store has landed, and a waiter that misses a ring still finds the result
    through its safety net."""
    global _denied_logged
    value = ring_value(written, data)
    ops = [lock_op(layout.ring(s, key), s, value) for s in sessions]
    for _ in range(2):
        try:
            answer = transport.txn(ops)
        except PermissionDenied as exc:
            if not _denied_logged:
                _denied_logged = True
                logger.warning(
                    "consulresults: this token may not ring waiters' doorbells (%s): results "
                    "reach waiters of other processes through their safety net, within 5 s; "
                    "grant key:write on %s/",
                    exc,
                    layout.root,
                )
            return 0
        except Exception as exc:
            logger.debug("consulresults: ringing waiters of %s failed: %s", key, exc)
            return 0
        if answer.applied:
            return len(ops)
        failing = {error["OpIndex"] for error in answer.errors}
        ops = [op for i, op in enumerate(ops) if i not in failing]
        if not ops:
            return 0
    return 0
