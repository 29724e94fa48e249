"""How a chord's header is counted in Consul without a hot counter key.

Consul has no atomic increment: a counter that every header part rewrites is a compare-and-swap
race that 200 parts finishing together lose over and over. Here each part writes a key of its
own, and the transaction that writes it also reads the part's *bucket* (header task ids are
spread over 16 buckets by CRC-32), so the part whose write completes a bucket knows it. Under
``<prefix>/chord-unlock-<group id>/``:

- ``chord``: the chord's record (which buckets hold parts), written at apply time;
  it stays as a tombstone once the body was sent, so a late duplicate of a part does nothing.
- ``b<k>``: the ids of the header tasks in bucket ``k``, written at apply time.
- ``b<k>/<task id>``: one part's state and result, written by the part (one txn that also reads
  ``b<k>`` and ``b<k>/``).
- ``done/<k>``: written once (``check-not-exists``) by the part that completed bucket ``k``, in a
  txn that also reads ``done/``: the part that completes the last bucket fires the body.

A part costs one request; the 16 bucket completers one more each; the part that fires the body
two more (gather every result, then clean up). Every decision is made from what a txn read, and
"completed it" means "my key has the highest CreateIndex of a complete set", so a retry after a
lost answer, or a redelivered task, reaches the same decision as the first try: the body fires
exactly once. The chord's keys are held by sessions for ``result_chord_expires``, so a chord whose
header never completes disappears by itself.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Any, cast

from . import layout
from .connection import TxnAnswer, is_transient
from .expiry import ExpiryPlan
from .kv import Entry, KVStore, decode_value, encode_value
from .retry import RetryPolicy, doubling

BUCKETS = 16
PATIENCE = 30.0
START_BATCH_BYTES = 300_000  # a txn body may be 512 KiB at most


class ChordUnknown(Exception):
    """No record of this chord: it was applied by an earlier release (or has expired)."""


class _TryAgain(Exception):
    """The session a txn wrote under has gone, or a concurrent change won: try again."""


def bucket_of(task_id: str) -> int:
    return zlib.crc32(task_id.encode()) % BUCKETS


class ChordStore:
    """The chords under one prefix: start one, record a part, gather the header, finish."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self._retry = RetryPolicy(
            lambda exc: is_transient(exc) or isinstance(exc, _TryAgain),
            doubling(0.05),
            patience=PATIENCE,
        )

    def base(self, group_id: str) -> str:
        return self.store.key(layout.CHORD_PREFIX + group_id)

    # ------------------------------------------------------------------ apply time

    def start(self, group_id: str, task_ids: Iterable[str], plan: ExpiryPlan) -> None:
        """Record a chord about to be sent: which buckets hold parts, and their task ids (one
        txn, more for headers too large for one). Anything left by an earlier run of the same
        group id (a re-applied chord) goes first. The header is sent only after this returns."""
        buckets: dict[int, list[str]] = {}
        for task_id in task_ids:
            buckets.setdefault(bucket_of(task_id), []).append(task_id)
        base = self.base(group_id)
        record = {"v": 2, "buckets": sorted(buckets)}
        writes = {f"{base}/chord": record} | {f"{base}/b{k}": ids for k, ids in buckets.items()}
        batch = [{"KV": {"Verb": "delete-tree", "Key": f"{base}/"}}]
        for key, value in writes.items():
            op = self._put(key, json.dumps(value).encode(), plan)
            if batch and _size(batch) + _size([op]) > START_BATCH_BYTES:
                # cast: mypy cannot infer the type of a lambda with default arguments
                self._retry.call(
                    cast("Callable[[], bool]", lambda batch=batch: self._apply(batch, plan))
                )
                batch = []
            batch.append(op)
        self._retry.call(lambda: self._apply(batch, plan))

    def add(self, group_id: str, task_id: str, plan: ExpiryPlan) -> None:
        """Count one more task in the header (``Task.add_to_chord``). Its bucket may already be
        complete: its completion mark goes in the same txn, so the bucket completes again only
        once the new task has reported too."""
        base, k = self.base(group_id), bucket_of(task_id)

        def attempt() -> None:
            found = self._read([f"{base}/chord", f"{base}/b{k}"])
            record = found.get(f"{base}/chord")
            if record is None:
                raise ChordUnknown(group_id)
            bucket = found.get(f"{base}/b{k}")
            ids = json.loads(bucket["Value"]) if bucket else []
            info = json.loads(record["Value"])
            info["buckets"] = sorted({*info["buckets"], k})
            ops = [
                _check(f"{base}/chord", record),
                _check(f"{base}/b{k}", bucket),
                *_released([record, bucket], self.store.sessions.get(plan)),
                self._put(f"{base}/chord", json.dumps(info).encode(), plan),
                self._put(f"{base}/b{k}", json.dumps([*ids, task_id]).encode(), plan),
                {"KV": {"Verb": "delete", "Key": f"{base}/done/{k}"}},
            ]
            if not self._apply(ops, plan, conflicts_ok=True):
                raise _TryAgain(group_id)  # raced another add: read again

        self._retry.call(attempt)

    # ------------------------------------------------------------------ part returns

    def record_part(self, group_id: str, task_id: str, value: bytes, plan: ExpiryPlan) -> bool:
        """Store this part; True when this part completed the header and must fire the body.
        Raises :class:`ChordUnknown` when the chord has no record (an earlier release's)."""
        base, k = self.base(group_id), bucket_of(task_id)
        members = f"{base}/b{k}"
        mine = f"{members}/{layout.escape(task_id)}"
        reads = [
            {"KV": {"Verb": "get", "Key": members}},
            {"KV": {"Verb": "get-tree", "Key": f"{members}/"}},
        ]

        def attempt() -> dict[str, Entry] | None:
            part = self._put(mine, value, plan)
            answer = self._txn([reads[0], part, reads[1]], plan)
            if answer.applied:
                return _by_key(answer.results)
            if any(not _expected_refusal(e["What"]) for e in answer.errors):
                raise answer.error()
            return None  # no bucket (finished, unknown) or another process holds our key

        seen = self._retry.call(attempt)
        if seen is None:
            seen = self._retry.call(lambda: self._read_txn(reads))
            if members not in seen:
                return self._finished_or_unknown(group_id)
        ids = json.loads(seen[members]["Value"])
        parts = {k: e for k, e in seen.items() if k.startswith(f"{members}/")}
        if not _completes(mine, parts, {f"{members}/{layout.escape(i)}" for i in ids}):
            return False
        return self._complete_bucket(group_id, k, plan)

    def _complete_bucket(self, group_id: str, k: int, plan: ExpiryPlan) -> bool:
        """Mark bucket ``k`` complete; True when that completed the last bucket."""
        base, nonce = self.base(group_id), uuid.uuid4().hex
        mark = f"{base}/done/{k}"
        reads = [
            {"KV": {"Verb": "get", "Key": f"{base}/chord"}},
            {"KV": {"Verb": "get-tree", "Key": f"{base}/done/"}},
        ]

        def attempt() -> dict[str, Entry]:
            ops = [{"KV": {"Verb": "check-not-exists", "Key": mark}}]
            answer = self._txn([*ops, self._put(mark, nonce.encode(), plan), *reads], plan)
            return _by_key(answer.results) if answer.applied else self._read_txn(reads)

        seen = self._retry.call(attempt)
        if f"{base}/chord" not in seen or seen.get(mark, {}).get("Value") != nonce.encode():
            return False  # another copy of this part marked it (a redelivered task)
        record = json.loads(seen[f"{base}/chord"]["Value"])
        marks = {key: e for key, e in seen.items() if key.startswith(f"{base}/done/")}
        expected = {f"{base}/done/{b}" for b in record.get("buckets", ())}
        return _completes(mark, marks, expected)

    def _finished_or_unknown(self, group_id: str) -> bool:
        if self._read([f"{self.base(group_id)}/chord"]):
            return False  # the body was sent already, or this task is no part of the header
        raise ChordUnknown(group_id)

    # ------------------------------------------------------------------ the body's side

    def gather(self, group_id: str, group_key: str) -> tuple[list[bytes], Entry | None]:
        """Every recorded part's value, and the header's saved GroupResult entry (one
        request)."""
        base = self.base(group_id)
        reads = [
            {"KV": {"Verb": "get-tree", "Key": f"{base}/b"}},
            {"KV": {"Verb": "get-tree", "Key": group_key}},
        ]
        seen = self._retry.call(lambda: self._read_txn(reads))
        parts = [
            entry["Value"] or b""
            for key, entry in seen.items()
            if key.startswith(f"{base}/b") and key.count("/") > base.count("/") + 1
        ]
        return parts, seen.get(group_key)

    def finish(self, group_id: str, plan: ExpiryPlan) -> None:
        """Drop the parts and marks; the record stays as a tombstone until the chord expires."""
        base = self.base(group_id)
        tombstone = json.dumps({"v": 2, "done": True, "buckets": []}).encode()
        ops = [
            {"KV": {"Verb": "delete-tree", "Key": f"{base}/b"}},
            {"KV": {"Verb": "delete-tree", "Key": f"{base}/done/"}},
            {"KV": {"Verb": "delete", "Key": f"{base}/chord"}},
            self._put(f"{base}/chord", tombstone, plan),
        ]
        self._retry.call(lambda: self._apply(ops, plan))

    # ------------------------------------------------------------------ txn plumbing

    def _put(self, key: str, value: bytes, plan: ExpiryPlan) -> dict[str, Any]:
        """A write held by this process's session for ``plan`` (its id is filled in per try)."""
        written = {"Key": key, "Value": encode_value(value), "Flags": plan.flags()}
        return {"KV": {"Verb": "set", **written}}

    def _txn(self, ops: list[dict[str, Any]], plan: ExpiryPlan) -> TxnAnswer:
        session = self.store.sessions.get(plan)
        if session:
            ops = [_held(op, session) for op in ops]
        answer = self.store.transport.txn(ops)
        if not answer.applied and any("invalid session" in e["What"] for e in answer.errors):
            self.store.sessions.discard_if_invalid(session, answer.errors)
            raise _TryAgain(session)
        return answer

    def _apply(
        self, ops: list[dict[str, Any]], plan: ExpiryPlan, conflicts_ok: bool = False
    ) -> bool:
        answer = self._txn(ops, plan)
        if not answer.applied and not conflicts_ok:
            raise answer.error()
        return answer.applied

    def _read_txn(self, ops: list[dict[str, Any]]) -> dict[str, Entry]:
        """Read-only txn; a ``get`` of a missing key just leaves it out."""
        answer = self.store.transport.txn(ops)
        if answer.applied:
            return _by_key(answer.results)
        missing = {e["OpIndex"] for e in answer.errors if "doesn't exist" in e["What"]}
        if len(missing) < len(answer.errors):
            raise answer.error()
        rest = [op for i, op in enumerate(ops) if i not in missing]
        return self._read_txn(rest) if rest else {}

    def _read(self, keys: list[str]) -> dict[str, Entry]:
        return {k: e for k, e in self.store.entries(keys).items() if e is not None}


def _size(ops: list[dict[str, Any]]) -> int:
    return len(json.dumps(ops))


def _held(op: dict[str, Any], session: str) -> dict[str, Any]:
    """A ``set`` becomes a ``lock`` under ``session``, so the key goes when the session does."""
    kv = op["KV"]
    if kv["Verb"] != "set":
        return op
    return {"KV": {**kv, "Verb": "lock", "Session": session}}


def _released(entries: list[Entry | None], session: str | None) -> list[dict[str, Any]]:
    """Unlocks of what another process's session holds (the process that applied the chord,
    for ``add_to_chord`` in a worker): Consul refuses a ``lock`` on a key another session
    holds, so the holder lets go in the same txn, as :meth:`KVStore.write` does."""
    return [
        {
            "KV": {
                "Verb": "unlock",
                "Key": entry["Key"],
                "Session": entry["Session"],
                "Value": encode_value(entry["Value"] or b""),
                "Flags": entry["Flags"],
            }
        }
        for entry in entries
        if entry and entry.get("Session") and entry["Session"] != session
    ]


def _expected_refusal(what: str) -> bool:
    return "doesn't exist" in what or "lock is already held" in what


def _check(key: str, entry: Entry | None) -> dict[str, Any]:
    if entry is None:
        return {"KV": {"Verb": "check-not-exists", "Key": key}}
    return {"KV": {"Verb": "check-index", "Key": key, "Index": entry["ModifyIndex"]}}


def _by_key(results: list[dict[str, Any]] | None) -> dict[str, Entry]:
    """Txn results by key, values decoded; a later result for a key replaces an earlier one
    (a write's echo has no value, the read after it has)."""
    found: dict[str, Entry] = {}
    for result in results or ():
        entry = result["KV"]
        found[entry["Key"]] = {**entry, "Value": decode_value(entry.get("Value"))}
    return found


def _completes(mine: str, present: dict[str, Entry], expected: set[str]) -> bool:
    """Whether the set is complete and ``mine`` is the key whose creation completed it."""
    if not expected or not expected <= present.keys() or mine not in expected:
        return False
    last = max(expected, key=lambda key: present[key]["CreateIndex"])
    return last == mine
