"""The dev server's state: KV entries, sessions, indexes and tombstones, with Consul's semantics.

Everything here is synchronous and HTTP-free, so the rules of the reference
(``docs/consul-api.md``) live in one place: the HTTP layer only parses requests and
renders what this module returns. All state is touched from the server's event loop thread only.

:class:`Store` is put together from one part per endpoint group: :mod:`.store_kv` (KV),
:mod:`.store_txn` (transactions), :mod:`.store_sessions` (sessions), on the shared state and
write machinery of :mod:`.state`; what it adds itself is the ``--data-dir`` snapshot and replay.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .model import (
    DEFAULT_SCOPE,
    Changes,
    Entry,
    RaftWrites,
    Scope,
    Session,
    StoreError,
    Tables,
    TxnOp,
    go_quote,
)
from .store_sessions import SessionStore
from .store_txn import READ_VERBS, TxnStore

__all__ = [
    "DEFAULT_SCOPE",
    "READ_VERBS",
    "Changes",
    "Entry",
    "RaftWrites",
    "Scope",
    "Session",
    "Store",
    "StoreError",
    "Tables",
    "TxnOp",
    "entry_from_record",
    "entry_to_record",
    "go_quote",
    "session_from_record",
    "session_to_record",
]


class Store(TxnStore, SessionStore):
    """In-memory Consul state for one node that is both server and agent."""

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready dump of the whole state (for --data-dir): the default scope's."""
        space = self.space()
        return {
            "tables": asdict(self.tables),
            "entries": [entry_to_record(e) for e in space.entries.values()],
            "sessions": [
                session_to_record(s) for s in self.sessions.values() if s.scope == DEFAULT_SCOPE
            ],
            "tombstones": {k: i for k, (i, _) in space.tombstones.items()},
        }

    def load(self, snapshot: dict[str, Any] | None, journal: list[dict[str, Any]]) -> None:
        """Restore from a snapshot and replay journal records written after it."""
        if snapshot:
            self.tables = Tables(**snapshot["tables"])
            for record in snapshot["entries"]:
                self._load_entry(record["Key"], record)
            for record in snapshot["sessions"]:
                self.sessions[record["id"]] = session_from_record(record)
            for key, idx in snapshot["tombstones"].items():
                self._load_tombstone(key, idx)
        for record in journal:
            self.tables = Tables(**record["tables"])
            for key, value in record["entries"].items():
                self._load_entry(key, value)
            for sid, value in record["sessions"].items():
                if value is None:
                    self.sessions.pop(sid, None)
                else:
                    self.sessions[sid] = session_from_record(value)
            for key, idx in record["tombstones"].items():
                self._load_tombstone(key, idx)
        space = self.space()
        space.kvs_index, space.tombstones_index = self.tables.kvs, self.tables.tombstones
        self.rearm_all()

    def _load_entry(self, key: str, record: dict[str, Any] | None) -> None:
        self._put_entry(self.space(), key, None if record is None else entry_from_record(record))

    def _load_tombstone(self, key: str, idx: int) -> None:
        self._put_tombstone(self.space(), key, (idx, self.clock()))


def entry_to_record(entry: Entry) -> dict[str, Any]:
    """Persisted form of an entry; the value as latin-1 text keeps bytes exact in JSON."""
    return {
        "Key": entry.key,
        "Value": None if entry.value is None else entry.value.decode("latin-1"),
        "Flags": entry.flags,
        "Session": entry.session,
        "LockIndex": entry.lock_index,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }


def entry_from_record(record: dict[str, Any]) -> Entry:
    value = record["Value"]
    return Entry(
        record["Key"],
        None if value is None else value.encode("latin-1"),
        record["Flags"],
        record["Session"],
        record["LockIndex"],
        record["CreateIndex"],
        record["ModifyIndex"],
    )


def session_to_record(session: Session) -> dict[str, Any]:
    record = asdict(session)
    record.pop("expires_at")
    record.pop("scope")  # only the default scope is saved
    return record


def session_from_record(record: dict[str, Any]) -> Session:
    return Session(**record)
