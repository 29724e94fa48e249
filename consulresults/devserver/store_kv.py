"""The KV part of the :class:`~.store.Store`: ``/v1/kv`` reads and writes, and the entry
primitives (set, cas, lock, unlock, delete-tree) that transactions reuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from .model import DEFAULT_SCOPE, Entry, Scope, Space, StoreError
from .state import StoreState


class KvStore(StoreState):
    """KV entries of every scope, with Consul's indexes, locks and tombstones."""

    # ------------------------------------------------------------------ reads

    def kv_table_index(self, scope: Scope = DEFAULT_SCOPE) -> int:
        return self.space(scope).table_index

    def kv_get(self, key: str, scope: Scope = DEFAULT_SCOPE) -> tuple[Entry | None, int]:
        """The entry (or None) and the X-Consul-Index Consul would send for it."""
        space = self.space(scope)
        entry = space.entries.get(key)
        index = entry.modify_index if entry else space.table_index
        return entry, max(index, 1)

    def kv_list(self, prefix: str, scope: Scope = DEFAULT_SCOPE) -> tuple[list[Entry], int]:
        """Entries under a byte prefix and the prefix index (max of entries and tombstones)."""
        space = self.space(scope)
        entries = [space.entries[k] for k in space.keys.with_prefix(prefix)]
        if not prefix:
            return entries, max(space.table_index, 1)
        index = max((e.modify_index for e in entries), default=0)
        for key in space.tombstone_keys.with_prefix(prefix):
            index = max(index, space.tombstones[key][0])
        return entries, max(index or space.table_index, 1)

    # ------------------------------------------------------------------ writes

    def kv_put(
        self,
        key: str,
        value: bytes | None,
        flags: int = 0,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
        scope: Scope = DEFAULT_SCOPE,
    ) -> bool:
        """PUT /v1/kv/<key> with its variants; returns Consul's true/false answer."""
        if acquire is not None and self.key_in_lock_delay(key, scope):
            return False
        space = self.space(scope)
        with self._transaction("raft.kv") as idx:
            if acquire is not None:
                return self._lock(space, key, value, flags, acquire, idx)
            if release is not None:
                return self._unlock(space, key, value, flags, release, idx)
            if cas is not None and not self._cas_matches(space, key, cas):
                return False
            self._set(space, key, value, flags, idx)
            return True

    @staticmethod
    def _cas_matches(space: Space, key: str, index: int) -> bool:
        existing = space.entries.get(key)
        return existing is None if index == 0 else bool(existing and existing.modify_index == index)

    def _apply(self, space: Space, new: Entry, idx: int) -> Entry:
        """Write ``new`` unless it equals the stored entry; return what is stored afterwards."""
        existing = space.entries.get(new.key)
        if new.same_content(existing):
            return existing
        new.create_index = existing.create_index if existing else idx
        new.modify_index = idx
        self._write_entry(space, new.key, new, idx)
        return new

    def _set(self, space: Space, key: str, value: bytes | None, flags: int, idx: int) -> Entry:
        existing = space.entries.get(key)
        session = existing.session if existing else ""
        return self._apply(space, Entry(key, value or None, flags, session, scope=space.scope), idx)

    def _lock(
        self, space: Space, key: str, value: bytes | None, flags: int, session: str, idx: int
    ) -> bool:
        """Acquire: raises for a missing/unknown session, False when another session holds it."""
        self._require_session(session, space.scope)
        existing = space.entries.get(key)
        if existing and existing.session and existing.session != session:
            return False
        if existing and existing.session == session:
            lock_index = existing.lock_index
        else:
            lock_index = (existing.lock_index if existing else 0) + 1
        entry = Entry(key, value or None, flags, session, lock_index, scope=space.scope)
        self._apply(space, entry, idx)
        return True

    def _unlock(
        self, space: Space, key: str, value: bytes | None, flags: int, session: str, idx: int
    ) -> bool:
        if not session:
            raise StoreError(500, "raft apply failed: missing session")
        existing = space.entries.get(key)
        if existing is None or existing.session != session:
            return False
        entry = Entry(key, value or None, flags, "", existing.lock_index, scope=space.scope)
        self._apply(space, entry, idx)
        return True

    def kv_delete(
        self, key: str, recurse: bool = False, cas: int | None = None, scope: Scope = DEFAULT_SCOPE
    ) -> bool:
        """DELETE /v1/kv/<key>; true for a missing key, as Consul answers."""
        space = self.space(scope)
        with self._transaction("raft.kv") as idx:
            if recurse:
                self._delete_tree(space, key, idx)
                return True
            existing = space.entries.get(key)
            if existing is None:
                return True
            if cas is not None and existing.modify_index != cas:
                return False
            self._write_entry(space, key, None, idx)
            return True

    def _delete_tree(self, space: Space, prefix: str, idx: int) -> None:
        """Delete every key with the byte prefix; one tombstone at the prefix, none for the root."""
        doomed = list(space.keys.with_prefix(prefix))
        for key in doomed:
            old = space.entries[key]
            self._put_entry(space, key, None)
            # cast: mypy cannot infer the type of a lambda with default arguments
            undo = cast("Callable[[], None]", lambda k=key, e=old: self._put_entry(space, k, e))
            self._log(undo, space.scope).entries[key] = None
        if doomed:
            self._set_kvs_index(space, idx)
            if prefix:
                self._add_tombstone(space, prefix, idx)

    def reap_tombstones(self, max_age_s: float | None = None) -> int:
        """Forget tombstones older than ``max_age_s`` (default: the tombstone TTL; 0: all of
        them); return how many. Prefix indexes may then go back. Like Consul's reaping, this
        wakes no blocking query (its watches are on the entries, not on the tombstones)."""
        age = self.tombstone_ttl_s if max_age_s is None else max_age_s
        cutoff = self.clock() - age
        reaped = 0
        for space in self.spaces.values():
            doomed = [k for k, (_, t) in space.tombstones.items() if t <= cutoff]
            for key in doomed:
                self._put_tombstone(space, key, None)
            reaped += len(doomed)
        return reaped
