"""The transaction part of the :class:`~.store.Store`: ``/v1/txn``'s KV verbs, run in one Raft
write (or as a read, without one), each in its operation's scope."""

from __future__ import annotations

from collections.abc import Callable

from .model import Entry, Space, StoreError, TxnFailed, TxnOp, clone, go_quote
from .store_kv import KvStore

READ_VERBS = frozenset(
    {"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"}
)


class TxnStore(KvStore):
    """Runs decoded txn operations with Consul's checks, results and error texts."""

    def txn_is_read_only(self, ops: list[TxnOp]) -> bool:
        return all(op.verb in READ_VERBS for op in ops)

    def txn_precheck(self, ops: list[TxnOp]) -> list[tuple[int, str]]:
        """Errors Consul finds before Raft: missing keys and lock-delay (ACLs are the caller's)."""
        errors = []
        for i, op in enumerate(ops):
            if not op.key and op.verb != "delete-tree":
                errors.append((i, "Must provide key"))
            elif op.verb == "lock" and self.key_in_lock_delay(op.key, op.scope):
                errors.append((i, f"failed to lock key {go_quote(op.key)} due to lock delay"))
        return errors

    def txn_read(self, ops: list[TxnOp]) -> tuple[list[Entry], list[tuple[int, str]]]:
        """Run a read-only transaction (no Raft index, no journal)."""
        results: list[Entry] = []
        errors: list[tuple[int, str]] = []
        for i, op in enumerate(ops):
            error = self._txn_op(op, 0, results)
            if error:
                errors.append((i, error))
        return results, errors

    def txn_write(self, ops: list[TxnOp]) -> tuple[list[Entry], list[tuple[int, str]]]:
        """Run ops in order in one Raft transaction; any failure rolls everything back."""
        results: list[Entry] = []
        try:
            with self._transaction("raft.txn.applied", "raft.txn.failed") as idx:
                errors = []
                for i, op in enumerate(ops):
                    error = self._txn_op(op, idx, results)
                    if error:
                        errors.append((i, error))
                if errors:
                    raise TxnFailed(errors)
        except TxnFailed as failed:
            return [], failed.errors
        return results, []

    def _txn_op(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        """Apply one op; append its result entries; return an error text or None."""
        handler = _TXN_VERBS.get(op.verb) if op.verb not in self.disabled_verbs else None
        if handler is None:
            return f"unknown KV verb {go_quote(op.verb)}"
        try:
            return handler(self, op, self.space(op.scope), idx, results)
        except StoreError as exc:
            return exc.text.removeprefix("raft apply failed: ")

    def _op_set(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> None:
        results.append(clone(self._set(space, op.key, op.value, op.flags, idx)))

    def _op_cas(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> str | None:
        if not self._cas_matches(space, op.key, op.index):
            return f"failed to set key {go_quote(op.key)}, index is stale"
        self._op_set(op, space, idx, results)
        return None

    def _op_lock(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> str | None:
        if not self._lock(space, op.key, op.value, op.flags, op.session, idx):
            return f"failed to lock key {go_quote(op.key)}, lock is already held"
        results.append(clone(space.entries[op.key]))
        return None

    def _op_unlock(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> str | None:
        if not self._unlock(space, op.key, op.value, op.flags, op.session, idx):
            return (
                f"failed to unlock key {go_quote(op.key)}, lock isn't held, "
                "or is held by another session"
            )
        results.append(clone(space.entries[op.key]))
        return None

    def _op_get(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> str | None:
        entry = space.entries.get(op.key)
        if entry is None:
            return f"key {go_quote(op.key)} doesn't exist"
        results.append(entry)
        return None

    def _op_get_or_empty(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> None:
        entry = space.entries.get(op.key)
        if entry is None:
            entry = Entry(op.key, None, op.flags, op.session, 0, 0, op.index, space.scope)
        results.append(entry)

    def _op_get_tree(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> None:
        results.extend(space.entries[k] for k in space.keys.with_prefix(op.key))

    def _op_check_index(
        self, op: TxnOp, space: Space, idx: int, results: list[Entry]
    ) -> str | None:
        entry = space.entries.get(op.key)
        if entry is None:
            return f"failed to check index, key {go_quote(op.key)} doesn't exist"
        if entry.modify_index != op.index:
            return (
                f"failed index check for key {go_quote(op.key)}, current modify index "
                f"{entry.modify_index} != {op.index}"
            )
        results.append(clone(entry))
        return None

    def _op_check_session(
        self, op: TxnOp, space: Space, idx: int, results: list[Entry]
    ) -> str | None:
        entry = space.entries.get(op.key)
        if entry is None:
            return f"failed to check session, key {go_quote(op.key)} doesn't exist"
        if entry.session != op.session:
            return (
                f"failed session check for key {go_quote(op.key)}, current session "
                f"{go_quote(entry.session)} != {go_quote(op.session)}"
            )
        results.append(clone(entry))
        return None

    def _op_check_not_exists(
        self, op: TxnOp, space: Space, idx: int, results: list[Entry]
    ) -> str | None:
        return f"key {go_quote(op.key)} exists" if op.key in space.entries else None

    def _op_delete(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> None:
        if op.key in space.entries:
            self._write_entry(space, op.key, None, idx)

    def _op_delete_cas(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> str | None:
        entry = space.entries.get(op.key)
        if entry is None:
            return None
        if entry.modify_index != op.index:
            return f"failed to delete key {go_quote(op.key)}, index is stale"
        self._write_entry(space, op.key, None, idx)
        return None

    def _op_delete_tree(self, op: TxnOp, space: Space, idx: int, results: list[Entry]) -> None:
        self._delete_tree(space, op.key, idx)


_TXN_VERBS: dict[str, Callable[[TxnStore, TxnOp, Space, int, list[Entry]], str | None]] = {
    "set": TxnStore._op_set,
    "cas": TxnStore._op_cas,
    "lock": TxnStore._op_lock,
    "unlock": TxnStore._op_unlock,
    "get": TxnStore._op_get,
    "get-or-empty": TxnStore._op_get_or_empty,
    "get-tree": TxnStore._op_get_tree,
    "check-index": TxnStore._op_check_index,
    "check-session": TxnStore._op_check_session,
    "check-not-exists": TxnStore._op_check_not_exists,
    "delete": TxnStore._op_delete,
    "delete-cas": TxnStore._op_delete_cas,
    "delete-tree": TxnStore._op_delete_tree,
}
