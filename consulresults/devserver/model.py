"""The dev server's records and their small helpers: KV entries, sessions, txn operations, the
per-(partition, namespace) KV space, table indexes, Raft write counts and Consul's error texts.

Kept apart from the :class:`~.store.Store` so that its parts (KV, txn, sessions, snapshots) and
the HTTP layer share one definition of each record.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

SERF_HEALTH = "serfHealth"


@dataclass(frozen=True)
class Scope:
    """A (partition, namespace) pair: Consul Enterprise keeps keys and sessions of each apart;
    Consul CE (and the dev server without ``--enterprise``) has only the default one."""

    partition: str = "default"
    namespace: str = "default"


DEFAULT_SCOPE = Scope()


class RaftWrites:
    """The writes a real Consul would put through Raft, by kind (``raft.kv``, ``raft.session``,
    ``raft.txn.applied``, ``raft.txn.failed``; ``raft.writes`` is their sum in a snapshot).

    One per :meth:`Store._transaction`, whether it changed anything or failed in the state
    store; what Consul refuses before Raft (ACLs, lock delay, ``Must provide key``) and what it
    serves without Raft (reads, read-only txns, session renewals) never gets here. Incremented on
    the server's loop, read from any thread.
    """

    KINDS = ("raft.txn.applied", "raft.txn.failed", "raft.kv", "raft.session")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        counts["raft.writes"] = sum(counts.values())
        return counts

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self.KINDS, 0)


class StoreError(Exception):
    """An error Consul answers with a status code and a plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Entry:
    """One KV entry (Consul's ``structs.DirEntry``)."""

    key: str
    value: bytes | None
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0
    scope: Scope = DEFAULT_SCOPE

    def same_content(self, other: Entry | None) -> TypeGuard[Entry]:
        """Consul skips writes whose result equals the stored entry (no new ModifyIndex)."""
        return other is not None and (self.value, self.flags, self.session, self.lock_index) == (
            other.value,
            other.flags,
            other.session,
            other.lock_index,
        )


@dataclass
class Session:
    """One session (Consul's ``structs.Session``); ``expires_at`` is its TTL timer (not saved)."""

    id: str
    name: str = ""
    node: str = ""
    lock_delay_ns: int = 15_000_000_000
    behavior: str = "release"
    ttl: str = ""
    node_checks: list[str] = field(default_factory=lambda: [SERF_HEALTH])
    service_checks: list[dict[str, Any]] | None = None
    checks: list[str] | None = None
    create_index: int = 0
    modify_index: int = 0
    ttl_ns: int = 0
    expires_at: float | None = None
    scope: Scope = DEFAULT_SCOPE


@dataclass
class TxnOp:
    """One KV operation of a ``/v1/txn`` request, already decoded."""

    verb: str
    key: str = ""
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""
    scope: Scope = DEFAULT_SCOPE


@dataclass
class Changes:
    """What one committed transaction changed, as handed to the journal: the default scope's
    entries and tombstones, every session (each knows its scope), and in ``spaces`` the entries
    and tombstones of each other scope."""

    entries: dict[str, Entry | None] = field(default_factory=dict)
    sessions: dict[str, Session | None] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    spaces: dict[Scope, Changes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries or self.sessions or self.tombstones or self.spaces)


class TxnFailed(Exception):
    """Raised inside a transaction to roll it back; carries (op index, message) pairs."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class SortedKeys:
    """Keys in byte order (UTF-8 order equals code point order) with fast prefix scans."""

    def __init__(self) -> None:
        self._keys: list[str] = []

    def add(self, key: str) -> None:
        pos = bisect.bisect_left(self._keys, key)
        if pos == len(self._keys) or self._keys[pos] != key:
            self._keys.insert(pos, key)

    def remove(self, key: str) -> None:
        pos = bisect.bisect_left(self._keys, key)
        if pos < len(self._keys) and self._keys[pos] == key:
            del self._keys[pos]

    def with_prefix(self, prefix: str) -> Iterator[str]:
        pos = bisect.bisect_left(self._keys, prefix)
        keys = self._keys
        while pos < len(keys) and keys[pos].startswith(prefix):
            yield keys[pos]
            pos += 1


@dataclass
class Tables:
    """Consul's per-table indexes; "kvs"/"tombstones"/"sessions" are all the dev server needs
    (``kvs`` and ``tombstones`` over every scope; each :class:`Space` has its own too)."""

    raft: int = 0
    kvs: int = 0
    tombstones: int = 0
    sessions: int = 0


class Space:
    """The KV state of one scope: entries, tombstones, lock delays and their table indexes, so
    listings, missing-key indexes and blocking queries of one namespace ignore the others."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.entries: dict[str, Entry] = {}
        self.keys = SortedKeys()
        self.tombstones: dict[str, tuple[int, float]] = {}
        self.tombstone_keys = SortedKeys()
        self.lock_delays: dict[str, float] = {}
        self.kvs_index = 0
        self.tombstones_index = 0

    @property
    def table_index(self) -> int:
        return max(self.kvs_index, self.tombstones_index)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` (and ``%#v``) writes a string, as Consul's error texts quote keys,
    sessions and verbs: in double quotes, with Go's escapes for quotes, backslashes and what
    ``unicode.IsPrint`` rejects."""
    return '"' + "".join(_go_quoted_char(char) for char in text) + '"'


def _go_quoted_char(char: str) -> str:
    if char in _GO_ESCAPES:
        return _GO_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clone(entry: Entry) -> Entry:
    """Write results carry the stored entry without its value."""
    return replace(entry, value=None)
