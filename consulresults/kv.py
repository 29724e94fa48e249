"""How results live in Consul's KV store: the protocol both faces (the Celery backend and the
CLI's operations) share.

- Reads are batched through ``/v1/txn`` (``get-or-empty``, up to 128 operations), falling back to
  64 operations and plain ``get`` on servers older than Consul 1.14.
- Every write is one txn that applies only if the key is still as last seen: ``check-not-exists``
  or ``check-index``, then ``lock`` under a session (or ``set``). Consul refuses ``?acquire`` on a
  key another session holds, so the previous holder is unlocked in the same txn. A refused write
  is read again and retried, never ignored (:meth:`KVStore.commit`).
- Every write also reads, in the same txn, who waits on the key (:mod:`consulresults.rings`),
  and rings those waiters' doorbells right after it lands.
- Waits are blocking queries: the answer comes as soon as the key changes.
- Idempotent reads retry transient failures a few times; see :mod:`consulresults.retry`.
- Writes and one-key reads made at once by many callers go out together while every
  connection is busy (group commit, :mod:`consulresults.batching`); a caller alone sends its own.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from . import layout, rings
from .answers import Hiding, denial
from .batching import Batcher, Member, batcher_for
from .connection import ConsulError, Interrupt, Response, Transport, TxnAnswer, is_transient
from .deadline import clamp
from .expiry import ExpiryPlan, session_pool
from .retry import RetryPolicy, doubling, full_jitter

MAX_VALUE_SIZE = 524_288
TXN_OPS = 128
LEGACY_TXN_OPS = 64
WRITE_PATIENCE = 60.0
CONFLICT_BACKOFF = (0.002, 0.25)
KNOWN_INDEXES = 4096
TXN_OVERHEAD = 1024  # a store's txn around its base64 value: keys, verbs, session, checks
READS = RetryPolicy(is_transient, doubling(0.05), max_retries=4)

Entry = dict[str, Any]  # a KV entry as Consul returns it, with ``Value`` already base64-decoded


class WriteConflict(Exception):
    """Other writers kept changing a key (or Consul kept failing) for longer than the patience."""


class ValueTooLarge(ValueError):
    """A value over Consul's ``kv_max_value_size``: refused before anything is sent."""


class _LostRace(Exception):
    """The key changed between the read and the write: read again."""


def decode_value(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def encode_value(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded(entry: dict[str, Any]) -> Entry:
    """An entry as Consul sends it, with its value base64-decoded."""
    return {**entry, "Value": decode_value(entry.get("Value"))}


@dataclass(frozen=True)
class KeyListing:
    """The keys a ``?keys`` listing gave, and what ACLs kept from it (``Response.hiding``)."""

    keys: list[str]
    hiding: Hiding | None


class KVStore:
    """Keys under one prefix on one Consul: batched reads, the CAS write loop, blocking reads."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self.transport = transport
        self.prefix = prefix
        self.sessions = session_pool(transport, prefix)
        self.waiting = rings.Layout(prefix)
        self.txn_ops = TXN_OPS
        self._get_or_empty = True
        self._known: OrderedDict[str, tuple[int, str, bool]] = OrderedDict()
        self._known_lock = threading.Lock()
        self.writes = self._batcher("write")
        self.reads = self._batcher("read", transport.consistency)

    def _batcher(self, *kind: str) -> Batcher:
        """The process's batcher of this kind for this agent and token: at most one sender per
        connection of the budget."""
        transport = self.transport
        identity = (*transport.identity, *kind)
        return batcher_for(identity, transport.pool.limit, transport.backpressure_patience)

    def key(self, name: str) -> str:
        """The full key for a Celery key name (``celery-task-meta-<id>``): escaped, prefixed."""
        return layout.full_key(self.prefix, name)

    # ------------------------------------------------------------------ reads

    def entry(self, key: str) -> Entry | None:
        """One entry (one request, or a share of a batch of reads), or None when absent."""
        return READS.call(lambda: self._entry_once(key))

    def _entry_once(self, key: str) -> Entry | None:
        if not (self.transport.batching and self._get_or_empty):
            return self._get(key)
        op = {"KV": {"Verb": "get-or-empty", "Key": key}}
        member = Member([op], frozenset([key]), lambda: self._get(key), self._send_reads)
        share = self.reads.run(member)
        if not isinstance(share, TxnAnswer):
            return cast("Entry | None", share)
        if not share.results:  # hidden by the ACLs, or no get-or-empty: its own GET tells
            if any("get-or-empty" in e["What"] for e in share.errors):
                self._get_or_empty = False
            return self._get(key)
        found = share.results[0]["KV"]
        return decoded(found) if found["CreateIndex"] else None

    def _get(self, key: str) -> Entry | None:
        response = self.transport.request("GET", f"/v1/kv/{key}", expect=(200, 404))
        return decoded(response.body[0]) if response.status == 200 else None

    def _send_reads(self, ops: list[dict[str, Any]]) -> TxnAnswer:
        return self.transport.txn_answer(ops, self.transport.read_params())

    def entries(self, keys: list[str]) -> dict[str, Entry | None]:
        """Entries (None when absent) for ``keys``, in order, batched through ``/v1/txn``."""
        found: dict[str, Entry | None] = dict.fromkeys(keys)
        pos = 0
        while pos < len(keys):
            batch = keys[pos : pos + self.txn_ops]
            read = self._read_batch if self._get_or_empty else self._read_batch_legacy
            # cast: mypy cannot infer the type of a lambda with default arguments
            results = READS.call(
                cast(
                    "Callable[[], dict[str, Entry | None] | None]",
                    lambda batch=batch, read=read: read(batch),
                )
            )
            if results is None:
                continue  # the server was older than it looked; retry this batch
            found.update(results)
            pos += len(batch)
        return found

    def _read_batch(self, keys: list[str]) -> dict[str, Entry | None] | None:
        """``get-or-empty`` echoes the op for a missing key (CreateIndex 0): that means absent."""
        try:
            answer = self.transport.txn([{"KV": {"Verb": "get-or-empty", "Key": k}} for k in keys])
        except ConsulError as exc:
            if exc.status == 413 and self.txn_ops > LEGACY_TXN_OPS:
                self.txn_ops = LEGACY_TXN_OPS  # before Consul 1.14: at most 64 operations
                return None
            raise
        if not answer.applied:
            if any("get-or-empty" in e["What"] for e in answer.errors):
                self._get_or_empty = False  # before Consul 1.14: no such verb
                return None
            raise answer.error()
        entries = (r["KV"] for r in answer.results or ())
        return {e["Key"]: decoded(e) if e["CreateIndex"] else None for e in entries}

    def _read_batch_legacy(self, keys: list[str]) -> dict[str, Entry | None]:
        """Before Consul 1.14 a missing key fails the whole txn, with every failing op reported,
        so a second txn without those keys gets the rest."""
        answer = self.transport.txn([{"KV": {"Verb": "get", "Key": k}} for k in keys])
        if answer.applied:
            return {r["KV"]["Key"]: decoded(r["KV"]) for r in answer.results or ()}
        missing = {keys[e["OpIndex"]] for e in answer.errors}
        present = [k for k in keys if k not in missing]
        found = self._read_batch_legacy(present) if present else {}
        return {**dict.fromkeys(missing), **found}

    def list_keys(self) -> list[str]:
        """Every key under the prefix (one ``?keys`` request)."""
        return self.key_listing().keys

    def key_listing(self) -> KeyListing:
        """Every key under the prefix the token may read (one ``?keys`` request), and whether
        ACLs hid others: Consul filters a list rather than refusing it."""
        head = f"{self.prefix}/" if self.prefix else ""
        response = READS.call(
            lambda: self.transport.request(
                "GET", f"/v1/kv/{head}", [("keys", "1")], expect=(200, 404)
            )
        )
        keys = response.body if response.status == 200 else []
        return KeyListing(keys, response.hiding(self.transport.sends_token))

    def read_blocking(
        self,
        key: str,
        index: int,
        wait: float,
        consistency: str | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[Entry | None, int]:
        """One blocking GET: the entry (None when absent) and the index to wait past next.

        With index 0 or no wait, it answers at once. ``interrupt`` lets another thread end it
        early (it then raises :class:`~consulresults.connection.Interrupted`)."""
        response, new_index = self._get_blocking(key, [], index, wait, consistency, interrupt)
        entry = decoded(response.body[0]) if response.status == 200 else None
        return entry, new_index

    def read_tree_blocking(
        self, index: int, wait: float
    ) -> tuple[list[dict[str, Any]], int, Hiding | None]:
        """Every entry under the prefix in one blocking GET (Consul has no other way to watch a
        prefix), values left base64-encoded so that only the ones a caller needs are decoded
        (:func:`decoded`); the index to wait past next; and whether ACLs hid entries."""
        head = f"{self.prefix}/" if self.prefix else ""
        response, new_index = self._get_blocking(head, [("recurse", "1")], index, wait)
        entries = response.body if response.status == 200 else []
        return entries, new_index, response.hiding(self.transport.sends_token)

    def read_prefix_blocking(
        self,
        prefix: str,
        index: int,
        wait: float,
        consistency: str | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Every entry under ``prefix`` (a byte prefix) in one blocking GET, values left
        base64-encoded; and the index to wait past next."""
        response, new_index = self._get_blocking(
            prefix, [("recurse", "1")], index, wait, consistency, interrupt
        )
        return (response.body if response.status == 200 else []), new_index

    def _get_blocking(
        self,
        key: str,
        params: list[tuple[str, str]],
        index: int,
        wait: float,
        consistency: str | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[Response, int]:
        wait = clamp(wait)  # a caller's deadline: never wait past it
        long = bool(index and wait > 0)
        if long:
            params = [*params, ("index", str(index)), ("wait", f"{max(1, int(wait * 1000))}ms")]
        # Consul adds up to wait/16 of jitter to a blocking read's wait
        timeout = wait * 1.1 + self.transport.timeout
        response = READS.call(
            lambda: self.transport.request(
                "GET",
                f"/v1/kv/{key}",
                params,
                timeout=timeout,
                expect=(200, 404),
                consistency=consistency,
                long=long,
                interrupt=interrupt,
            )
        )
        new_index = response.index
        if new_index < index:
            new_index = 0  # the index went backwards (snapshot restore, tombstone reaping)
        return response, new_index

    # ------------------------------------------------------------------ writes

    def write(
        self,
        key: str,
        data: bytes,
        plan: ExpiryPlan,
        keep: Callable[[bytes | None], bool] | None = None,
        final: bool = False,
    ) -> bool:
        """Write ``data`` at ``key`` under a session for ``plan``; False if ``keep(current
        value)`` said the stored value must stay (Celery never overwrites a SUCCESS).

        The first attempt assumes the key is as this process last saw it (absent, or at the
        index it last wrote), so it costs one request; after this process wrote a ``final``
        value, a guarded write reads first instead.
        """
        self._check_size(data)
        with self._known_lock:
            remembered = self._known.get(key)

        def decide(entry: Entry | None) -> bytes | None:
            return None if entry and keep and keep(entry["Value"]) else data

        guarded = bool(remembered and keep and remembered[2])
        first = None if guarded else (data, remembered[:2] if remembered else None)
        return self.commit(key, plan, decide, first, final)

    def _check_size(self, data: bytes) -> None:
        """Refuse a value Consul would refuse, before anything is sent: over its value limit,
        or, once the agent named its txn body limit, over that once base64-encoded (from
        about 393 KB at the default 512 KiB)."""
        encoded = 4 * math.ceil(len(data) / 3) + TXN_OVERHEAD
        limit = self.writes.body_limit
        if len(data) > MAX_VALUE_SIZE:
            raise _too_large(data, f"over Consul's {MAX_VALUE_SIZE}-byte value limit")
        if limit is not None and encoded > limit:
            raise _too_large(
                data,
                f"about {encoded} bytes once base64-encoded in a transaction, over the agent's "
                f"{limit}-byte txn_max_req_len",
            )

    def update(
        self,
        key: str,
        change: Callable[[bytes | None], bytes | None],
        plan: ExpiryPlan,
        create: bool = False,
    ) -> None:
        """Read-modify-write: ``change(current value)`` gives the new value (None: leave it).

        Every attempt re-reads the value, so a concurrent writer's change is never overwritten
        with a stale copy; a lost answer or a conflict just means reading again.
        """

        def decide(entry: Entry | None) -> bytes | None:
            if entry is None and not create:
                return None
            return change(entry["Value"] if entry else None)

        self.commit(key, plan, decide, retry_lost=True)

    def commit(
        self,
        key: str,
        plan: ExpiryPlan,
        decide: Callable[[Entry | None], bytes | None],
        first: tuple[bytes, tuple[int, str] | None] | None = None,
        final: bool = False,
        retry_lost: bool = False,
    ) -> bool:
        """The one write loop. Each attempt is one txn that applies only if the key is still as
        read; ``decide(current entry)`` gives what to write (None: write nothing, return False).
        ``first`` = (value, known state) skips the read for the first attempt. With
        ``retry_lost``, a lost answer or a transient failure is just another reason to read
        again (for writes whose ``decide`` can tell whether they landed); without it, they go
        to the caller (Celery retries stores under ``result_backend_always_retry``). Lost races
        back off with jitter, so many writers of one key (a chord's counter) all get through;
        the loop gives up after ``WRITE_PATIENCE`` seconds."""
        tries = 0

        def attempt() -> bool:
            nonlocal tries, first
            tries += 1
            known, first = first, None  # only the first attempt may skip the read
            if known is None:
                entry = self.entry(key)
                value = decide(entry)
                if value is None:
                    return False
                known = (value, (entry["ModifyIndex"], entry.get("Session", "")) if entry else None)
            return self._try_write(key, known[0], plan, known[1], final)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _LostRace) or (retry_lost and is_transient(exc))

        policy = RetryPolicy(retryable, full_jitter(*CONFLICT_BACKOFF), patience=WRITE_PATIENCE)
        try:
            return policy.call(attempt)
        except Exception as exc:
            if not retryable(exc):
                raise
            raise WriteConflict(
                f"could not write {key}: other writers kept changing it (or Consul kept "
                f"failing) for {WRITE_PATIENCE:g} s, {tries} attempts"
            ) from exc

    def _try_write(
        self, key: str, data: bytes, plan: ExpiryPlan, known: tuple[int, str] | None, final: bool
    ) -> bool:
        session = self.sessions.get(plan)
        ops = [rings.registrations_op(self.waiting, key)]
        ops += _write_ops(key, data, plan.flags(), session, known)
        try:
            answer = self._write_txn(ops, key)
        except ConsulError as exc:
            self._forget(key)  # a lost answer: the write loop reads again
            if exc.status == 413:  # too large for the agent alone: say so clearly
                self.writes.learn(exc.text, len(ops), len(json.dumps(ops)))
                raise _too_large(data, f"refused by Consul ({exc.text})") from exc
            raise
        except Exception:
            self._forget(key)
            raise
        if not answer.applied:
            self.sessions.discard_if_invalid(session, answer.errors)
            raise _LostRace(key)
        results = answer.results or []
        index = results[-1]["KV"]["ModifyIndex"]
        waiting = rings.waiting_sessions(self.waiting, key, results)
        if waiting:
            rings.ring(self.transport, self.waiting, key, waiting, index)
        with self._known_lock:
            self._known[key] = (index, session or "", final)
            self._known.move_to_end(key)
            while len(self._known) > KNOWN_INDEXES:
                self._known.popitem(last=False)
        return True

    def _write_txn(self, ops: list[dict[str, Any]], key: str) -> TxnAnswer:
        """One write txn, batched with the process's concurrent ones when batching is on."""
        if not self.transport.batching:
            return self.transport.txn(ops)
        registrations = (self.waiting.registrations_of(key),)
        member = Member(
            ops,
            frozenset([key]),
            lambda: self.transport.txn(ops),
            self.transport.txn_answer,
            prefixes=registrations,
        )
        answer = cast(TxnAnswer, self.writes.run(member))
        refused = denial(answer.errors)
        if refused is not None:
            raise refused
        return answer

    def replace_unchanged(self, key: str, data: bytes, flags: int, index: int) -> int | None:
        """Replace the value only if the key is still at ModifyIndex ``index`` (one txn ``cas``),
        with ``flags``; the key's session stays, as Consul keeps it on a write without acquire
        (its LockIndex is written as 0). The new ModifyIndex, or None when the key changed or
        went meanwhile. Unlike :meth:`commit`, nothing is retried: a change is the answer."""
        if len(data) > MAX_VALUE_SIZE:
            raise ValueTooLarge(f"{len(data)} bytes, over Consul's {MAX_VALUE_SIZE}-byte limit")
        self._forget(key)
        op = {
            "Verb": "cas",
            "Key": key,
            "Value": encode_value(data),
            "Flags": flags,
            "Index": index,
        }
        answer = self.transport.txn([{"KV": op}])
        if not answer.applied:
            return None
        return int((answer.results or [])[-1]["KV"]["ModifyIndex"])

    # ------------------------------------------------------------------ deletes

    def delete(self, key: str) -> bool:
        """Delete one key; Consul's answer (True: done, also when it was already gone)."""
        self._forget(key)
        return self.transport.request("DELETE", f"/v1/kv/{key}").body is True

    def delete_unchanged(self, pairs: list[tuple[str, int]]) -> TxnAnswer:
        """Delete each key only if it is still at the given ModifyIndex (delete-cas, one txn).
        If any was rewritten since it was read, nothing is deleted and the answer's errors name
        those operations (``OpIndex``)."""
        for key, _ in pairs:
            self._forget(key)
        return self.transport.txn(
            [{"KV": {"Verb": "delete-cas", "Key": k, "Index": i}} for k, i in pairs]
        )

    def _forget(self, key: str) -> None:
        with self._known_lock:
            self._known.pop(key, None)


def _too_large(data: bytes, why: str) -> ValueTooLarge:
    return ValueTooLarge(
        f"result is {len(data)} bytes, {why} (kv_max_value_size, txn_max_req_len): set "
        "result_compression (e.g. 'zlib', Celery 5.7+) or return less data"
    )


def _write_ops(
    key: str, data: bytes, flags: int, session: str | None, known: tuple[int, str] | None
) -> list[dict[str, Any]]:
    """check (absent, or unchanged since read) + unlock another holder + lock (or set)."""
    written = {"Key": key, "Value": encode_value(data), "Flags": flags}
    if known is None:
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "check-not-exists", "Key": key}}]
    else:
        index, holder = known
        ops = [{"KV": {"Verb": "check-index", "Key": key, "Index": index}}]
        if holder and holder != session:
            ops.append({"KV": {"Verb": "unlock", "Session": holder, **written}})
    if session:
        ops.append({"KV": {"Verb": "lock", "Session": session, **written}})
    elif not (known and known[1]):
        ops.append({"KV": {"Verb": "set", **written}})
    return ops
