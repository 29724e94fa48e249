"""The state every part of the :class:`~.store.Store` shares, and the one way to change it.

Every mutation goes through :meth:`StoreState._write_entry` / :meth:`StoreState._write_session`
inside a :meth:`StoreState._transaction`, which keeps an undo log (so a failing ``/v1/txn`` rolls
back), hands the committed changes to the journal (persistence), wakes blocking queries and
counts the write as one Raft apply (:class:`~.model.RaftWrites`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

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
    go_quote,
)


class StoreState:
    """In-memory Consul state for one node that is both server and agent: one Raft index, the
    sessions, and a :class:`~.model.Space` of KV state per scope (only the default one on CE)."""

    def __init__(
        self,
        node_name: str,
        session_ttl_min_ns: int = 10_000_000_000,
        ttl_multiplier: float = 2.0,
        tombstone_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        raft_writes: RaftWrites | None = None,
    ) -> None:
        self.node_name = node_name
        self.session_ttl_min_ns = session_ttl_min_ns
        self.ttl_multiplier = ttl_multiplier
        self.tombstone_ttl_s = tombstone_ttl_s
        self.clock = clock
        self.raft_writes = raft_writes or RaftWrites()
        self.node_healthy = True
        self.tables = Tables()
        self.spaces: dict[Scope, Space] = {DEFAULT_SCOPE: Space(DEFAULT_SCOPE)}
        self.sessions: dict[str, Session] = {}
        self.held: dict[str, set[str]] = {}
        self.on_commit: Callable[[Changes, Tables], None] = lambda changes, tables: None
        self.on_change: Callable[[], None] = lambda: None
        self.disabled_verbs: set[str] = set()
        self._undo: list[Callable[[], None]] | None = None
        self._changes: Changes | None = None

    def space(self, scope: Scope = DEFAULT_SCOPE) -> Space:
        """The scope's KV state, made empty on first use (every namespace and partition exists,
        unlike Consul Enterprise's, which must be created first)."""
        space = self.spaces.get(scope)
        if space is None:
            space = self.spaces[scope] = Space(scope)
        return space

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self, kind: str, failed_kind: str | None = None) -> Iterator[int]:
        """Allocate one Raft index for a write and commit or roll back everything done in it.

        The write is counted as ``kind`` in :attr:`raft_writes`, or as ``failed_kind`` (default:
        ``kind``) when it raises: a write that fails in the state store went through Raft too.
        """
        saved_tables = replace(self.tables)
        self._undo, self._changes = [], Changes()
        self.tables.raft += 1
        try:
            yield self.tables.raft
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            self.tables = replace(saved_tables, raft=saved_tables.raft + 1)
            self.raft_writes.add(failed_kind or kind)
            raise
        else:
            self.raft_writes.add(kind)
            changes = self._changes
            if changes:
                self.on_commit(changes, self.tables)
                self.on_change()
        finally:
            self._undo = self._changes = None

    def _log(self, undo: Callable[[], None], scope: Scope = DEFAULT_SCOPE) -> Changes:
        """Record how to undo one change of ``scope``; returns where to note it for the journal
        (the transaction's changes, or their part for another scope than the default)."""
        assert self._undo is not None and self._changes is not None  # in a _transaction
        self._undo.append(undo)
        if scope == DEFAULT_SCOPE:
            return self._changes
        return self._changes.spaces.setdefault(scope, Changes())

    def _write_entry(self, space: Space, key: str, entry: Entry | None, idx: int) -> None:
        """Store or delete one entry, recording undo, journal and table indexes."""
        old = space.entries.get(key)
        self._put_entry(space, key, entry)
        if entry is None:
            self._add_tombstone(space, key, idx)
        self._set_kvs_index(space, idx)
        self._log(lambda: self._put_entry(space, key, old), space.scope).entries[key] = entry

    def _set_kvs_index(self, space: Space, idx: int) -> None:
        old = space.kvs_index
        space.kvs_index = self.tables.kvs = idx
        self._log(lambda: setattr(space, "kvs_index", old), space.scope)

    def _put_entry(self, space: Space, key: str, entry: Entry | None) -> None:
        """Place or remove an entry, keeping the sorted keys and the session→keys index (by the
        lower-cased ID, as Consul's UUID index of the entries' Session matches any case)."""
        old = space.entries.pop(key, None)
        if old is not None and old.session:
            self.held.get(old.session.lower(), set()).discard(key)
        if entry is None:
            space.keys.remove(key)
            return
        space.entries[key] = entry
        space.keys.add(key)
        if entry.session:
            self.held.setdefault(entry.session.lower(), set()).add(key)

    def _add_tombstone(self, space: Space, key: str, idx: int) -> None:
        old, old_index = space.tombstones.get(key), space.tombstones_index
        self._put_tombstone(space, key, (idx, self.clock()))
        space.tombstones_index = self.tables.tombstones = idx

        def undo() -> None:
            self._put_tombstone(space, key, old)
            space.tombstones_index = old_index

        self._log(undo, space.scope).tombstones[key] = idx

    @staticmethod
    def _put_tombstone(space: Space, key: str, tomb: tuple[int, float] | None) -> None:
        if tomb is None:
            space.tombstones.pop(key, None)
            space.tombstone_keys.remove(key)
        else:
            space.tombstones[key] = tomb
            space.tombstone_keys.add(key)

    def _write_session(self, session_id: str, session: Session | None, idx: int) -> None:
        old = self.sessions.get(session_id)
        if session is None:
            del self.sessions[session_id]
        else:
            self.sessions[session_id] = session
        self.tables.sessions = idx
        self._log(lambda: self._restore_session(session_id, old)).sessions[session_id] = session

    def _restore_session(self, session_id: str, session: Session | None) -> None:
        if session is None:
            self.sessions.pop(session_id, None)
        else:
            self.sessions[session_id] = session

    # ------------------------------------------------------------------ shared checks

    def find_session(self, session_id: str, scope: Scope = DEFAULT_SCOPE) -> Session | None:
        """The session with this ID (any case) in ``scope``: a session of another namespace or
        partition is not found there, as in Consul Enterprise."""
        session = self.sessions.get(session_id.lower())
        return session if session is not None and session.scope == scope else None

    def _require_session(self, session: str, scope: Scope) -> None:
        if not session:
            raise StoreError(500, "raft apply failed: missing session")
        if self.find_session(session, scope) is None:
            raise StoreError(500, f"raft apply failed: invalid session {go_quote(session)}")

    def key_in_lock_delay(self, key: str, scope: Scope = DEFAULT_SCOPE) -> bool:
        space = self.space(scope)
        until = space.lock_delays.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del space.lock_delays[key]
            return False
        return True
