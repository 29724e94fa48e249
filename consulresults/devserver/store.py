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
    Space,
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
    "changes_record",
    "entry_from_record",
    "entry_to_record",
    "go_quote",
    "session_from_record",
    "session_to_record",
]


class Store(TxnStore, SessionStore):
    """In-memory Consul state for one node that is both server and agent."""

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready dump of the whole state (for --data-dir): the default scope's entries
        at the top level (the layout before scopes), every other scope's in ``spaces``."""
        others = [s for scope, s in self.spaces.items() if scope != DEFAULT_SCOPE]
        return {
            "tables": asdict(self.tables),
            **_space_snapshot(self.space()),
            "sessions": [session_to_record(s) for s in self.sessions.values()],
            "spaces": [{**asdict(s.scope), **_space_snapshot(s)} for s in others],
        }

    def load(self, snapshot: dict[str, Any] | None, journal: list[dict[str, Any]]) -> None:
        """Restore from a snapshot and replay journal records written after it."""
        if snapshot:
            self.tables = Tables(**snapshot["tables"])
            for part in [snapshot, *snapshot.get("spaces", ())]:
                self._load_space(self._space_of(part), part)
            for record in snapshot["sessions"]:
                self.sessions[record["id"]] = session_from_record(record)
        for record in journal:
            self.tables = Tables(**record["tables"])
            for part in [record, *record.get("spaces", ())]:
                self._replay(self._space_of(part), part)
            for sid, value in record["sessions"].items():
                if value is None:
                    self.sessions.pop(sid, None)
                else:
                    self.sessions[sid] = session_from_record(value)
        self.rearm_all()

    def _space_of(self, part: dict[str, Any]) -> Space:
        """The space a snapshot or journal part is about (no scope named: the default)."""
        if "namespace" not in part:
            return self.space()
        return self.space(Scope(partition=part["partition"], namespace=part["namespace"]))

    def _load_space(self, space: Space, part: dict[str, Any]) -> None:
        for record in part["entries"]:
            self._put_entry(space, record["Key"], entry_from_record(record, space.scope))
        for key, idx in part["tombstones"].items():
            self._put_tombstone(space, key, (idx, self.clock()))
        indexes = part.get("indexes") or [self.tables.kvs, self.tables.tombstones]
        space.kvs_index, space.tombstones_index = indexes

    def _replay(self, space: Space, part: dict[str, Any]) -> None:
        """One journal record's changes of one space; its table indexes are the record's, as
        the write that changed the space moved them."""
        for key, record in part["entries"].items():
            entry = None if record is None else entry_from_record(record, space.scope)
            self._put_entry(space, key, entry)
        for key, idx in part["tombstones"].items():
            self._put_tombstone(space, key, (idx, self.clock()))
        if part["entries"]:
            space.kvs_index = self.tables.kvs
        if part["tombstones"]:
            space.tombstones_index = self.tables.tombstones


def _space_snapshot(space: Space) -> dict[str, Any]:
    return {
        "entries": [entry_to_record(e) for e in space.entries.values()],
        "tombstones": {k: i for k, (i, _) in space.tombstones.items()},
        "indexes": [space.kvs_index, space.tombstones_index],
    }


def changes_record(changes: Changes) -> dict[str, Any]:
    """One journal line's content for ``changes`` (without the tables): the default scope's
    entries and tombstones at the top level, every other scope's in ``spaces``."""
    record: dict[str, Any] = {
        **_space_changes(changes),
        "sessions": {
            k: None if s is None else session_to_record(s) for k, s in changes.sessions.items()
        },
    }
    if changes.spaces:
        record["spaces"] = [
            {**asdict(scope), **_space_changes(part)} for scope, part in changes.spaces.items()
        ]
    return record


def _space_changes(changes: Changes) -> dict[str, Any]:
    return {
        "entries": {
            k: None if e is None else entry_to_record(e) for k, e in changes.entries.items()
        },
        "tombstones": changes.tombstones,
    }


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


def entry_from_record(record: dict[str, Any], scope: Scope = DEFAULT_SCOPE) -> Entry:
    value = record["Value"]
    return Entry(
        record["Key"],
        None if value is None else value.encode("latin-1"),
        record["Flags"],
        record["Session"],
        record["LockIndex"],
        record["CreateIndex"],
        record["ModifyIndex"],
        scope,
    )


def session_to_record(session: Session) -> dict[str, Any]:
    record = asdict(session)  # the scope as {"partition": …, "namespace": …}
    record.pop("expires_at")
    return record


def session_from_record(record: dict[str, Any]) -> Session:
    """A saved session; one saved before scopes existed is of the default scope."""
    fields = dict(record)
    scope = fields.pop("scope", None)
    return Session(**fields, scope=DEFAULT_SCOPE if scope is None else Scope(**scope))
