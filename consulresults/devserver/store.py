"""The dev server's state: KV entries, sessions, indexes and tombstones, with Consul's semantics.

Everything here is synchronous and HTTP-free, so the rules of the reference
(``docs/consul-api.md``) live in one place: the HTTP layer only parses requests and
renders what this module returns. All state is touched from the server's event loop thread only.

Every mutation goes through :meth:`Store._write_entry` / :meth:`Store._write_session` inside a
:meth:`Store._transaction`, which keeps an undo log (so a failing ``/v1/txn`` rolls back), hands the
committed changes to the journal (persistence), wakes blocking queries and counts the write as one
Raft apply (:class:`RaftWrites`).
"""

from __future__ import annotations

import bisect
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeGuard, cast

from .durations import DurationError, format_go_duration, parse_go_duration

MAX_TTL_NS = 24 * 3600 * 1_000_000_000
MAX_LOCK_DELAY_S = 60.0
SERF_HEALTH = "serfHealth"


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


@dataclass
class TxnOp:
    """One KV operation of a ``/v1/txn`` request, already decoded."""

    verb: str
    key: str = ""
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


@dataclass
class Changes:
    """What one committed transaction changed, as handed to the journal."""

    entries: dict[str, Entry | None] = field(default_factory=dict)
    sessions: dict[str, Session | None] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries or self.sessions or self.tombstones)


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
    """Consul's per-table indexes; "kvs"/"tombstones"/"sessions" are all the dev server needs."""

    raft: int = 0
    kvs: int = 0
    tombstones: int = 0
    sessions: int = 0


class Store:
    """In-memory Consul state for one node that is both server and agent."""

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
        self.entries: dict[str, Entry] = {}
        self.keys = SortedKeys()
        self.tombstones: dict[str, tuple[int, float]] = {}
        self.tombstone_keys = SortedKeys()
        self.sessions: dict[str, Session] = {}
        self.held: dict[str, set[str]] = {}
        self.lock_delays: dict[str, float] = {}
        self.on_commit: Callable[[Changes, Tables], None] = lambda changes, tables: None
        self.on_change: Callable[[], None] = lambda: None
        self.disabled_verbs: set[str] = set()
        self._undo: list[Callable[[], None]] | None = None
        self._changes: Changes | None = None

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

    def _write_entry(self, key: str, entry: Entry | None, idx: int) -> None:
        """Store or delete one entry, recording undo, journal and table indexes."""
        old = self.entries.get(key)
        self._put_entry(key, entry)
        if entry is None:
            self._add_tombstone(key, idx)
        self.tables.kvs = idx
        assert self._undo is not None and self._changes is not None  # in a _transaction
        self._undo.append(lambda: self._put_entry(key, old))
        self._changes.entries[key] = entry

    def _put_entry(self, key: str, entry: Entry | None) -> None:
        """Place or remove an entry, keeping the sorted keys and the session→keys index (by the
        lower-cased ID, as Consul's UUID index of the entries' Session matches any case)."""
        old = self.entries.pop(key, None)
        if old is not None and old.session:
            self.held.get(old.session.lower(), set()).discard(key)
        if entry is None:
            self.keys.remove(key)
            return
        self.entries[key] = entry
        self.keys.add(key)
        if entry.session:
            self.held.setdefault(entry.session.lower(), set()).add(key)

    def _add_tombstone(self, key: str, idx: int) -> None:
        old = self.tombstones.get(key)
        self._put_tombstone(key, (idx, self.clock()))
        self.tables.tombstones = idx
        assert self._undo is not None and self._changes is not None  # in a _transaction
        self._undo.append(lambda: self._put_tombstone(key, old))
        self._changes.tombstones[key] = idx

    def _put_tombstone(self, key: str, tomb: tuple[int, float] | None) -> None:
        if tomb is None:
            self.tombstones.pop(key, None)
            self.tombstone_keys.remove(key)
        else:
            self.tombstones[key] = tomb
            self.tombstone_keys.add(key)

    def _write_session(self, session_id: str, session: Session | None, idx: int) -> None:
        old = self.sessions.get(session_id)
        if session is None:
            del self.sessions[session_id]
        else:
            self.sessions[session_id] = session
        self.tables.sessions = idx
        assert self._undo is not None and self._changes is not None  # in a _transaction
        self._undo.append(lambda: self._restore_session(session_id, old))
        self._changes.sessions[session_id] = session

    def _restore_session(self, session_id: str, session: Session | None) -> None:
        if session is None:
            self.sessions.pop(session_id, None)
        else:
            self.sessions[session_id] = session

    # ------------------------------------------------------------------ KV reads

    @property
    def kv_table_index(self) -> int:
        return max(self.tables.kvs, self.tables.tombstones)

    def kv_get(self, key: str) -> tuple[Entry | None, int]:
        """The entry (or None) and the X-Consul-Index Consul would send for it."""
        entry = self.entries.get(key)
        index = entry.modify_index if entry else self.kv_table_index
        return entry, max(index, 1)

    def kv_list(self, prefix: str) -> tuple[list[Entry], int]:
        """Entries under a byte prefix and the prefix index (max of entries and tombstones)."""
        entries = [self.entries[k] for k in self.keys.with_prefix(prefix)]
        if not prefix:
            return entries, max(self.kv_table_index, 1)
        index = max((e.modify_index for e in entries), default=0)
        for key in self.tombstone_keys.with_prefix(prefix):
            index = max(index, self.tombstones[key][0])
        return entries, max(index or self.kv_table_index, 1)

    # ------------------------------------------------------------------ KV writes

    def kv_put(
        self,
        key: str,
        value: bytes | None,
        flags: int = 0,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool:
        """PUT /v1/kv/<key> with its variants; returns Consul's true/false answer."""
        if acquire is not None and self.key_in_lock_delay(key):
            return False
        with self._transaction("raft.kv") as idx:
            if acquire is not None:
                return self._lock(key, value, flags, acquire, idx)
            if release is not None:
                return self._unlock(key, value, flags, release, idx)
            if cas is not None and not self._cas_matches(key, cas):
                return False
            self._set(key, value, flags, idx)
            return True

    def _cas_matches(self, key: str, index: int) -> bool:
        existing = self.entries.get(key)
        return existing is None if index == 0 else bool(existing and existing.modify_index == index)

    def _apply(self, new: Entry, idx: int) -> Entry:
        """Write ``new`` unless it equals the stored entry; return what is stored afterwards."""
        existing = self.entries.get(new.key)
        if new.same_content(existing):
            return existing
        new.create_index = existing.create_index if existing else idx
        new.modify_index = idx
        self._write_entry(new.key, new, idx)
        return new

    def _set(self, key: str, value: bytes | None, flags: int, idx: int) -> Entry:
        existing = self.entries.get(key)
        session = existing.session if existing else ""
        return self._apply(Entry(key, value or None, flags, session, 0), idx)

    def _lock(self, key: str, value: bytes | None, flags: int, session: str, idx: int) -> bool:
        """Acquire: raises for a missing/unknown session, False when another session holds it."""
        self._require_session(session)
        existing = self.entries.get(key)
        if existing and existing.session and existing.session != session:
            return False
        if existing and existing.session == session:
            lock_index = existing.lock_index
        else:
            lock_index = (existing.lock_index if existing else 0) + 1
        self._apply(Entry(key, value or None, flags, session, lock_index), idx)
        return True

    def _unlock(self, key: str, value: bytes | None, flags: int, session: str, idx: int) -> bool:
        if not session:
            raise StoreError(500, "raft apply failed: missing session")
        existing = self.entries.get(key)
        if existing is None or existing.session != session:
            return False
        self._apply(Entry(key, value or None, flags, "", existing.lock_index), idx)
        return True

    def _require_session(self, session: str) -> None:
        if not session:
            raise StoreError(500, "raft apply failed: missing session")
        if session.lower() not in self.sessions:
            raise StoreError(500, f"raft apply failed: invalid session {go_quote(session)}")

    def key_in_lock_delay(self, key: str) -> bool:
        until = self.lock_delays.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del self.lock_delays[key]
            return False
        return True

    def kv_delete(self, key: str, recurse: bool = False, cas: int | None = None) -> bool:
        """DELETE /v1/kv/<key>; true for a missing key, as Consul answers."""
        with self._transaction("raft.kv") as idx:
            if recurse:
                self._delete_tree(key, idx)
                return True
            existing = self.entries.get(key)
            if existing is None:
                return True
            if cas is not None and existing.modify_index != cas:
                return False
            self._write_entry(key, None, idx)
            return True

    def _delete_tree(self, prefix: str, idx: int) -> None:
        """Delete every key with the byte prefix; one tombstone at the prefix, none for the root."""
        doomed = list(self.keys.with_prefix(prefix))
        for key in doomed:
            old = self.entries[key]
            self._put_entry(key, None)
            assert self._undo is not None and self._changes is not None  # in a _transaction
            # cast: mypy cannot infer the type of a lambda with default arguments
            self._undo.append(
                cast("Callable[[], None]", lambda k=key, e=old: self._put_entry(k, e))
            )
            self._changes.entries[key] = None
        if doomed:
            self.tables.kvs = idx
            if prefix:
                self._add_tombstone(prefix, idx)

    # ------------------------------------------------------------------ transactions API

    def txn_is_read_only(self, ops: list[TxnOp]) -> bool:
        return all(op.verb in READ_VERBS for op in ops)

    def txn_precheck(self, ops: list[TxnOp]) -> list[tuple[int, str]]:
        """Errors Consul finds before Raft: missing keys and lock-delay (ACLs are the caller's)."""
        errors = []
        for i, op in enumerate(ops):
            if not op.key and op.verb != "delete-tree":
                errors.append((i, "Must provide key"))
            elif op.verb == "lock" and self.key_in_lock_delay(op.key):
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
            return handler(self, op, idx, results)
        except StoreError as exc:
            return exc.text.removeprefix("raft apply failed: ")

    def _op_set(self, op: TxnOp, idx: int, results: list[Entry]) -> None:
        results.append(_clone(self._set(op.key, op.value, op.flags, idx)))

    def _op_cas(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        if not self._cas_matches(op.key, op.index):
            return f"failed to set key {go_quote(op.key)}, index is stale"
        return self._op_set(op, idx, results)  # type: ignore[func-returns-value]  # None: no error

    def _op_lock(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        if not self._lock(op.key, op.value, op.flags, op.session, idx):
            return f"failed to lock key {go_quote(op.key)}, lock is already held"
        results.append(_clone(self.entries[op.key]))
        return None

    def _op_unlock(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        if not self._unlock(op.key, op.value, op.flags, op.session, idx):
            return (
                f"failed to unlock key {go_quote(op.key)}, lock isn't held, "
                "or is held by another session"
            )
        results.append(_clone(self.entries[op.key]))
        return None

    def _op_get(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        entry = self.entries.get(op.key)
        if entry is None:
            return f"key {go_quote(op.key)} doesn't exist"
        results.append(entry)
        return None

    def _op_get_or_empty(self, op: TxnOp, idx: int, results: list[Entry]) -> None:
        entry = self.entries.get(op.key)
        if entry is None:
            entry = Entry(op.key, None, op.flags, op.session, 0, 0, op.index)
        results.append(entry)

    def _op_get_tree(self, op: TxnOp, idx: int, results: list[Entry]) -> None:
        results.extend(self.entries[k] for k in self.keys.with_prefix(op.key))

    def _op_check_index(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        entry = self.entries.get(op.key)
        if entry is None:
            return f"failed to check index, key {go_quote(op.key)} doesn't exist"
        if entry.modify_index != op.index:
            return (
                f"failed index check for key {go_quote(op.key)}, current modify index "
                f"{entry.modify_index} != {op.index}"
            )
        results.append(_clone(entry))
        return None

    def _op_check_session(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        entry = self.entries.get(op.key)
        if entry is None:
            return f"failed to check session, key {go_quote(op.key)} doesn't exist"
        if entry.session != op.session:
            return (
                f"failed session check for key {go_quote(op.key)}, current session "
                f"{go_quote(entry.session)} != {go_quote(op.session)}"
            )
        results.append(_clone(entry))
        return None

    def _op_check_not_exists(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        return f"key {go_quote(op.key)} exists" if op.key in self.entries else None

    def _op_delete(self, op: TxnOp, idx: int, results: list[Entry]) -> None:
        if op.key in self.entries:
            self._write_entry(op.key, None, idx)

    def _op_delete_cas(self, op: TxnOp, idx: int, results: list[Entry]) -> str | None:
        entry = self.entries.get(op.key)
        if entry is None:
            return None
        if entry.modify_index != op.index:
            return f"failed to delete key {go_quote(op.key)}, index is stale"
        self._write_entry(op.key, None, idx)
        return None

    def _op_delete_tree(self, op: TxnOp, idx: int, results: list[Entry]) -> None:
        self._delete_tree(op.key, idx)

    # ------------------------------------------------------------------ sessions

    def session_create(self, spec: dict[str, Any]) -> str:
        """Create a session from a decoded request body (field names already lower-cased)."""
        session = self._session_from_spec(spec)
        with self._transaction("raft.session") as idx:
            self._validate_session_checks(session)
            session.create_index = session.modify_index = idx
            self._write_session(session.id, session, idx)
            self._arm(session)
        return session.id

    def _session_from_spec(self, spec: dict[str, Any]) -> Session:
        node_checks = spec.get("nodechecks", [SERF_HEALTH])
        checks = spec.get("checks", [SERF_HEALTH])
        node_checks_sent = "nodechecks" in spec
        if not checks:
            node_checks, checks = [], None
        elif checks == [SERF_HEALTH] or (node_checks_sent and not node_checks):
            checks = None
        behavior = spec.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise StoreError(500, f"Invalid Behavior setting '{behavior}'")
        ttl = spec.get("ttl") or ""
        return Session(
            id=str(uuid.uuid4()),
            name=spec.get("name") or "",
            node=spec.get("node") or self.node_name,
            lock_delay_ns=_lock_delay_ns(spec.get("lockdelay", "15s")),
            behavior=behavior,
            ttl=ttl,
            node_checks=list(node_checks or []),
            service_checks=spec.get("servicechecks"),
            checks=list(checks) if checks else None,
            ttl_ns=self._ttl_ns(ttl),
        )

    def _ttl_ns(self, ttl: str) -> int:
        if not ttl:
            return 0
        try:
            ns = parse_go_duration(ttl)
        except DurationError as exc:
            raise StoreError(500, f"Session TTL '{ttl}' invalid: {exc}") from None
        if ns != 0 and not self.session_ttl_min_ns <= ns <= MAX_TTL_NS:
            raise StoreError(
                500,
                f"Invalid Session TTL '{ns}', must be between "
                f"[{format_go_duration(self.session_ttl_min_ns)}={format_go_duration(MAX_TTL_NS)}]",
            )
        return ns

    def _validate_session_checks(self, session: Session) -> None:
        check: object  # a check's name (str), then a service check (dict)
        if session.node.lower() != self.node_name.lower():
            raise StoreError(500, "apply failed: Missing node registration")
        for check in [*session.node_checks, *(session.checks or [])]:
            if check != SERF_HEALTH:
                raise StoreError(500, f"apply failed: Missing check '{check}' registration")
            if not self.node_healthy:
                raise StoreError(500, f"apply failed: Check '{check}' is in critical state")
        for check in session.service_checks or []:
            raise StoreError(
                500, f"apply failed: Missing check '{check.get('ID', '')}' registration"
            )

    def _arm(self, session: Session) -> None:
        """(Re)start the TTL timer at TTL x multiplier, as Consul's leader does."""
        if session.ttl_ns:
            session.expires_at = self.clock() + session.ttl_ns * self.ttl_multiplier / 1e9

    def rearm_all(self) -> None:
        """After a restart, like a new leader: every TTL timer starts again from now."""
        for session in self.sessions.values():
            self._arm(session)

    def session_destroy(self, session_id: str) -> None:
        """Destroy (no-op for unknown ids): release or delete its keys, apply lock-delay."""
        if session_id.lower() not in self.sessions:
            return
        with self._transaction("raft.session") as idx:
            self._invalidate(self.sessions[session_id.lower()], idx)

    def _invalidate(self, session: Session, idx: int) -> None:
        held = [self.entries[k] for k in sorted(self.held.pop(session.id, ()))]
        delay = min(session.lock_delay_ns / 1e9, MAX_LOCK_DELAY_S)
        for entry in held:
            if session.behavior == "delete":
                self._write_entry(entry.key, None, idx)
            else:
                self._write_entry(entry.key, replace(entry, session="", modify_index=idx), idx)
            if delay > 0:
                self.lock_delays[entry.key] = self.clock() + delay
        self._write_session(session.id, None, idx)

    def session_renew(self, session_id: str) -> Session | None:
        session = self.sessions.get(session_id.lower())
        if session is not None:
            self._arm(session)
        return session

    def session_get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id.lower())

    def session_list(self, node: str | None = None) -> list[Session]:
        sessions = sorted(self.sessions.values(), key=lambda s: s.id)
        if node is None:
            return sessions
        return [s for s in sessions if s.node.lower() == node.lower()]

    @property
    def session_index(self) -> int:
        return max(self.tables.sessions, 1)

    def expire_sessions(self) -> int:
        """Invalidate every session whose TTL timer has run out; return how many."""
        now = self.clock()
        due = [
            s for s in self.sessions.values() if s.expires_at is not None and s.expires_at <= now
        ]
        for session in due:
            with self._transaction("raft.session") as idx:
                self._invalidate(session, idx)
        return len(due)

    def set_node_health(self, healthy: bool) -> None:
        """Flip serfHealth; turning critical invalidates every session that watches it, all in
        one Raft write at one index (Consul's ``ensureCheckTxn`` deletes them with the check's
        update)."""
        self.node_healthy = healthy
        watching = [
            s
            for s in self.sessions.values()
            if SERF_HEALTH in s.node_checks or SERF_HEALTH in (s.checks or [])
        ]
        if healthy or not watching:
            return
        with self._transaction("raft.session") as idx:
            for session in watching:
                self._invalidate(session, idx)

    def reap_tombstones(self, max_age_s: float | None = None) -> int:
        """Forget tombstones older than ``max_age_s`` (default: the tombstone TTL; 0: all of
        them); return how many. Prefix indexes may then go back. Like Consul's reaping, this
        wakes no blocking query (its watches are on the entries, not on the tombstones)."""
        age = self.tombstone_ttl_s if max_age_s is None else max_age_s
        cutoff = self.clock() - age
        doomed = [k for k, (_, t) in self.tombstones.items() if t <= cutoff]
        for key in doomed:
            self._put_tombstone(key, None)
        return len(doomed)

    # ------------------------------------------------------------------ persistence support

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready dump of the whole state (for --data-dir)."""
        return {
            "tables": asdict(self.tables),
            "entries": [entry_to_record(e) for e in self.entries.values()],
            "sessions": [session_to_record(s) for s in self.sessions.values()],
            "tombstones": {k: i for k, (i, _) in self.tombstones.items()},
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
        self.rearm_all()

    def _load_entry(self, key: str, record: dict[str, Any] | None) -> None:
        self._put_entry(key, None if record is None else entry_from_record(record))

    def _load_tombstone(self, key: str, idx: int) -> None:
        self._put_tombstone(key, (idx, self.clock()))


READ_VERBS = frozenset(
    {"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"}
)
_TXN_VERBS: dict[str, Callable[[Store, TxnOp, int, list[Entry]], str | None]] = {
    "set": Store._op_set,
    "cas": Store._op_cas,
    "lock": Store._op_lock,
    "unlock": Store._op_unlock,
    "get": Store._op_get,
    "get-or-empty": Store._op_get_or_empty,
    "get-tree": Store._op_get_tree,
    "check-index": Store._op_check_index,
    "check-session": Store._op_check_session,
    "check-not-exists": Store._op_check_not_exists,
    "delete": Store._op_delete,
    "delete-cas": Store._op_delete_cas,
    "delete-tree": Store._op_delete_tree,
}


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


def _clone(entry: Entry) -> Entry:
    """Write results carry the stored entry without its value."""
    return replace(entry, value=None)


def _lock_delay_ns(raw: object) -> int:
    """Numbers are nanoseconds, strings Go durations; anything under 1000 ns means seconds."""
    if isinstance(raw, str):
        try:
            ns = parse_go_duration(raw)
        except DurationError as exc:
            raise StoreError(400, f"Request decode failed: {exc}") from None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        ns = int(raw)
    else:
        raise StoreError(400, "Request decode failed: LockDelay must be a duration")
    return ns * 1_000_000_000 if 0 < ns < 1000 else ns


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
    return record


def session_from_record(record: dict[str, Any]) -> Session:
    return Session(**record)
