"""What the ops CLI does to stored results: list, fetch, wait, delete, purge, force-expire,
count, and the sessions behind them. It works on the KV core (:mod:`consulresults.kv`) with a
decoder for result values, and needs no Celery: the CLI passes Celery's decoder only when it was
pointed at an app (``-A``)."""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from . import layout
from .answers import Hiding
from .codec import decode_meta
from .connection import ConsulError
from .consumer import ResultConsumer
from .deadline import after
from .expiry import ExpiryPlan, in_use, made_for
from .kv import Entry, KVStore, decoded
from .retry import RetryPolicy
from .runtimes import Runtimes

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RETRIED_AS, RETRIED_AT = "retried_as", "retried_at"  # the mark `retry --mark` adds to a meta
BLOCK_SECONDS = 10.0
ALL_KINDS = frozenset(layout.KINDS.values())
T = TypeVar("T")


def hiding_text(hiding: Hiding, prefix: str) -> str:
    """What a listing's :data:`~consulresults.answers.Hiding` means, for a warning line."""
    where = f"under {prefix or '(root)'}/"
    if hiding == "hidden":
        return f"the token's ACLs hid some results {where} from Consul's listing"
    return (
        "no token was sent and the agent's ACLs deny by default, so results "
        f"{where} may be hidden (Consul tells only a token what it hid)"
    )


class WaitTimeout(Exception):
    """The result was not ready within the time given."""


class WatchTooLarge(Exception):
    """The prefix holds more keys than a watch may move every round."""

    def __init__(self, keys: int) -> None:
        super().__init__(f"{keys} keys under the prefix")
        self.keys = keys


def _final(found: StoredResult) -> bool:
    """Nothing more to wait for: ready, or a value this app cannot read."""
    return found.meta is None or found.state in READY_STATES


@dataclass
class StoredResult:
    """One key under the prefix that names a Celery result, group or chord, with its metadata.

    ``meta`` is the decoded Celery meta, or None with ``error`` saying why it could not be read
    (another serializer, garbage, a chord counter).
    """

    key: str
    kind: str
    id: str
    value: bytes | None
    flags: int
    session: str
    create_index: int
    modify_index: int
    lock_index: int
    meta: dict[str, Any] | None = None
    error: str | None = None

    @property
    def state(self) -> str:
        return self.meta.get("status", "UNKNOWN") if self.meta else "UNREADABLE"

    @property
    def task_name(self) -> str | None:
        return self.meta.get("name") if self.meta else None

    @property
    def expires_at(self) -> float | None:
        """Unix time recorded with the key (Flags); None when it never expires or is unknown."""
        return float(self.flags) if self.flags else None

    @property
    def done_at(self) -> float | None:
        """``date_done`` as Unix time."""
        return self._meta_time("date_done")

    @property
    def started_at(self) -> float | None:
        """``date_started`` as Unix time: when the task's last attempt began, as this package's
        backend records it (Celery's built-in backend does not)."""
        return self._meta_time("date_started")

    @property
    def runtime(self) -> float | None:
        """Seconds from ``date_started`` to ``date_done`` (both the worker's clock); None when
        either is missing (not finished, or stored without a start)."""
        started, done = self.started_at, self.done_at
        return None if started is None or done is None else done - started

    def _meta_time(self, field: str) -> float | None:
        """A meta date as Unix time: ISO 8601 as Celery writes it (naive meaning UTC, as
        Celery 5.3 wrote it), or a datetime a serializer (yaml) gave back."""
        text = self.meta.get(field) if self.meta else None
        if not text:
            return None
        try:
            parsed = datetime.fromisoformat(str(text))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()

    @property
    def size(self) -> int:
        return len(self.value or b"")

    @property
    def retried_as(self) -> str | None:
        """The task id ``retry --mark`` re-sent this result as (claimed before sending)."""
        return self.meta.get(RETRIED_AS) if self.meta else None


@dataclass
class ResultFilter:
    """What ``ls``/``purge`` select; every condition given must hold."""

    states: frozenset[str] = frozenset()
    task_globs: tuple[str, ...] = ()
    older_than: float | None = None
    newer_than: float | None = None
    expired: bool = False
    no_session: bool = False
    kinds: frozenset[str] = frozenset({"task"})
    include_unreadable: bool = False
    retried: bool | None = None  # marked by `retry --mark` (True), not marked (False), either

    def matches(self, result: StoredResult, now: float) -> bool:
        if result.kind not in self.kinds:
            return False
        if result.kind == "task" and result.meta is None and not self.include_unreadable:
            return False  # named like a result, but we cannot tell what it is
        if self.states and result.state not in self.states:
            return False
        if self.task_globs and not any(
            fnmatch.fnmatchcase(result.task_name or "", g) for g in self.task_globs
        ):
            return False
        done = result.done_at  # parsed once: this runs for every result listed
        when = done if done is not None else result.started_at
        if self.older_than is not None and (when is None or when >= self.older_than):
            return False
        if self.newer_than is not None and (when is None or when <= self.newer_than):
            return False
        if self.retried is not None and (result.retried_as is not None) != self.retried:
            return False
        if self.expired and not (result.expires_at and result.expires_at <= now):
            return False
        return not (self.no_session and result.session)


@dataclass
class PurgeReport:
    """What a purge (or a dry run) found and did; deleted + skipped + failed <= matched."""

    matched: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    dry_run: bool = False
    in_flight: int = 0  # deletions sent but not yet answered: if the purge stops, in doubt


class ResultOperations:
    """The operations on results under one prefix. ``expiry`` is the plan the app's
    ``result_expires`` gets (for ``doctor``); ``decode`` turns a stored value into Celery's meta
    dict; ``retry`` wraps waits (an app's ``result_backend_always_retry`` policy).

    Consul filters a list by the token's ACLs rather than refusing it, so every listing's
    :data:`~consulresults.answers.Hiding` is kept in ``hidden`` (``hidden`` beats ``maybe``)
    and handed to ``on_hidden`` when it first appears or grows: a caller says that what it
    shows is partial."""

    def __init__(
        self,
        store: KVStore,
        expiry: ExpiryPlan,
        decode: Callable[[bytes], dict[str, Any]] = decode_meta,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.store = store
        self.expiry = expiry
        self.decode = decode
        self.retry = retry
        self.hidden: Hiding | None = None
        self.keys_hidden = False  # a key listing was filtered: idle sessions are not provable
        self.on_hidden: Callable[[Hiding], None] | None = None

    @property
    def prefix(self) -> str:
        return self.store.prefix

    def _saw(self, hiding: Hiding | None, keys: bool = False) -> None:
        """Keep what ACLs kept from a listing; tell ``on_hidden`` when it is new or worse."""
        if hiding is None:
            return
        # "maybe" (no token, a deny-by-default agent) may hide keys too: no session is idle then
        self.keys_hidden = self.keys_hidden or (keys and hiding in ("hidden", "maybe"))
        if self.hidden == "hidden" or hiding == self.hidden:
            return
        self.hidden = hiding
        if self.on_hidden is not None:
            self.on_hidden(hiding)

    def iter_results(self, kinds: frozenset[str] = frozenset({"task"})) -> Iterator[StoredResult]:
        """Every result, group or chord key under the prefix, in key order, read in batches.

        One ``?keys`` listing, then ``/v1/txn`` reads of at most the server's operation limit,
        so memory holds the key names and one batch, whatever the number of results. Keys that
        are not Celery's (other applications', other prefixes') are never returned.
        """
        listing = self.store.key_listing()
        self._saw(listing.hiding, keys=True)
        parsed = [
            p
            for p in (layout.parse_key(self.prefix, k) for k in listing.keys)
            if p is not None and p.kind in kinds
        ]
        size = self.store.txn_ops
        for pos in range(0, len(parsed), size):
            chunk = parsed[pos : pos + size]
            entries = self.store.entries([p.key for p in chunk])
            for item in chunk:
                entry = entries[item.key]
                if entry is not None:
                    yield self._stored(item, entry)

    def matching(self, selection: ResultFilter) -> Iterator[StoredResult]:
        """The results ``selection`` picks, as :meth:`iter_results` reads them."""
        now = time.time()
        return (r for r in self.iter_results(selection.kinds) if selection.matches(r, now))

    def _stored(self, parsed: layout.ParsedKey, entry: Entry) -> StoredResult:
        value = entry["Value"]
        result = StoredResult(
            parsed.key,
            parsed.kind,
            parsed.id,
            value,
            entry["Flags"],
            entry.get("Session", ""),
            entry["CreateIndex"],
            entry["ModifyIndex"],
            entry["LockIndex"],
        )
        if parsed.kind != "task":
            return result
        try:
            result.meta = self.decode(value) if value else None
            if result.meta is None:
                result.error = "empty value"
        except Exception as exc:  # garbage or a serializer this app does not accept
            result.error = f"cannot decode: {type(exc).__name__}: {exc}"[:200]
        return result

    def _task_key(self, task_id: str) -> layout.ParsedKey:
        return layout.ParsedKey(self.store.key(f"{layout.TASK_PREFIX}{task_id}"), "task", task_id)

    def fetch(self, task_id: str) -> StoredResult | None:
        """One result with its Consul metadata (one request); None when there is none."""
        parsed = self._task_key(task_id)
        entry = self.store.entry(parsed.key)
        return None if entry is None else self._stored(parsed, entry)

    def wait(self, task_id: str, timeout: float | None = None) -> StoredResult:
        """The task's result once it is ready (or unreadable); :class:`WaitTimeout` after
        ``timeout`` seconds (None: as long as it takes; 0: one read). Served by the process's
        waiting service, with one last read at the deadline."""
        parsed = self._task_key(task_id)
        deadline = after(timeout)
        late = f"task {task_id} was not ready within {timeout:g} s" if timeout is not None else ""
        found: list[StoredResult] = []

        def changed(key: str, entry: Entry) -> bool:
            stored = self._stored(parsed, entry)
            if _final(stored):
                found.append(stored)
                subscription.notify()
            return _final(stored)

        subscription = ResultConsumer(self.store, self.retry).subscribe(changed)
        try:
            with subscription:
                subscription.begin([parsed.key], deadline)
                while not found:
                    if subscription.expired(deadline, lambda: [parsed.key]):
                        raise WaitTimeout(late) from subscription.last_error
                    if not found:
                        subscription.drain_events(deadline)
        except WaitTimeout:
            raise
        except Exception as exc:
            if not (deadline and time.monotonic() >= deadline):
                raise
            raise WaitTimeout(late) from exc
        return found[0]

    def watch(
        self, selection: ResultFilter, min_interval: float = 1.0, max_keys: int | None = None
    ) -> Iterator[list[StoredResult]]:
        """Batches of the results stored or changed since the watch began that ``selection``
        picks: one batch per round, each round one Consul blocking query on the prefix.

        Consul answers a blocking query on a prefix with the whole prefix, so a round compares
        each key's ModifyIndex with the last round's and decodes only those that moved; rounds
        start at least ``min_interval`` apart, so a busy prefix costs one request per interval,
        however many results are written in it. Past ``max_keys`` keys under the prefix it
        raises :class:`WatchTooLarge` instead: each round would move them all."""
        seen: dict[str, int] | None = None
        index = 0
        while True:
            started = time.monotonic()
            entries, index, hiding = self._waiting(
                self.store.read_tree_blocking, index, BLOCK_SECONDS
            )
            self._saw(hiding, keys=True)
            if max_keys is not None and len(entries) > max_keys:
                raise WatchTooLarge(len(entries))
            changed = [
                e for e in entries if seen is not None and seen.get(e["Key"]) != e["ModifyIndex"]
            ]
            seen = {e["Key"]: e["ModifyIndex"] for e in entries}
            yield [r for r in self._results(changed) if selection.matches(r, time.time())]
            time.sleep(max(0.0, started + min_interval - time.monotonic()))

    def _results(self, entries: list[dict[str, Any]]) -> Iterator[StoredResult]:
        for entry in entries:
            parsed = layout.parse_key(self.prefix, entry["Key"])
            if parsed is not None and parsed.kind == "task":
                yield self._stored(parsed, decoded(entry))

    def _waiting(self, read: Callable[..., T], *args: object) -> T:
        """``read(*args)`` for a wait, under the app's retry policy when there is one."""
        return self.retry.call(lambda: read(*args)) if self.retry else read(*args)

    def session_info(self, session_id: str) -> dict[str, Any] | None:
        """The session behind a result (TTL, behaviour, node...), or None once it is gone."""
        response = self.store.transport.request("GET", f"/v1/session/info/{session_id}")
        return cast("dict[str, Any] | None", (response.body or [None])[0])

    def sessions(self, held: Counter[str] | None = None) -> list[dict[str, Any]]:
        """All sessions the agent knows, each with ``Held``: how many keys under the prefix it
        holds (results of this backend and of Celery's built-in one alike). ``held``: those
        counts, when the caller has read every key already."""
        if held is None:
            held = Counter(r.session for r in self.iter_results(ALL_KINDS) if r.session)
        transport = self.store.transport
        listed = transport.request("GET", "/v1/session/list")
        self._saw(listed.hiding(transport.sends_token))
        return [dict(s, Held=held.get(s["ID"], 0)) for s in listed.body or []]

    def idle_sessions(
        self, among: set[str] | None = None, listed: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Result sessions that hold nothing any more, and provably nothing elsewhere either:
        ours made for this prefix (the name says so) holding no key under it and no longer
        handed out to writers (the name says until when), and Celery
        built-in ones (named after the one key they were made for) not holding that key here.
        ``listed``: :meth:`sessions`, when the caller has it already. None at all when the
        token's ACLs hid keys under the prefix: a session may hold one of those (destroying it
        would delete it)."""
        idle, now = [], time.time()
        listed = self.sessions() if listed is None else listed
        if self.keys_hidden:
            return []
        for session in listed:
            if session["Held"] or (among is not None and session["ID"] not in among):
                continue
            name = session.get("Name") or ""
            if made_for(name, self.prefix):
                if not in_use(name, now):  # else a writer may be about to put a result in it
                    idle.append(session)
            elif layout.parse_key(self.prefix, self.store.key(name)) is not None:
                idle.append(session)  # built-in: its key under this prefix is not held by it
        return idle

    def destroy_session(self, session_id: str) -> None:
        """Invalidate a session now: Consul applies its behaviour (ours: delete what it holds)."""
        self.store.transport.request("PUT", f"/v1/session/destroy/{session_id}")

    def delete_results(
        self,
        results: Iterable[StoredResult],
        dry_run: bool = False,
        max_delete: int | None = None,
        on_batch: Callable[[PurgeReport], None] | None = None,
        report: PurgeReport | None = None,
    ) -> PurgeReport:
        """Delete in ``/v1/txn`` batches with delete-cas: a result rewritten since it was read
        is skipped, not deleted. Stops after ``max_delete`` deletions. The report is filled in
        batch by batch, so a caller that passes its own still knows what was done when the run
        stops midway (an interrupt from ``on_batch``, Consul going away)."""
        report = report or PurgeReport()
        report.dry_run = dry_run
        batch: list[StoredResult] = []
        for result in results:
            if max_delete is not None and report.matched >= max_delete:
                break
            report.matched += 1
            if dry_run:
                continue
            batch.append(result)
            if len(batch) == self.store.txn_ops:
                self._delete_batch(batch, report)
                batch = []
                if on_batch:
                    on_batch(report)
        if batch:
            self._delete_batch(batch, report)
        if on_batch:
            on_batch(report)
        return report

    def _delete_batch(self, batch: list[StoredResult], report: PurgeReport) -> None:
        """One delete-cas txn; if some results were rewritten meanwhile, they are skipped and
        the rest is sent once more. The report is exact at every step, should the run stop."""
        pairs = [(r.key, r.modify_index) for r in batch]
        report.in_flight = len(pairs)
        answer = self.store.delete_unchanged(pairs)
        if answer.applied:
            report.deleted += len(pairs)
        else:
            stale = {e["OpIndex"] for e in answer.errors}
            report.skipped += len(stale)
            rest = [pair for i, pair in enumerate(pairs) if i not in stale]
            report.in_flight = len(rest)
            if rest and self._delete_rest(rest):
                report.deleted += len(rest)
            else:
                report.failed += len(rest)
        report.in_flight = 0

    def _delete_rest(self, pairs: list[tuple[str, int]]) -> bool:
        """The second try of a batch: a refusal or an error answer counts as failed (the purge
        goes on); only a lost connection stops it."""
        try:
            return self.store.delete_unchanged(pairs).applied
        except ConsulError:
            return False

    def purge(
        self,
        selection: ResultFilter,
        dry_run: bool = False,
        max_delete: int | None = None,
        on_batch: Callable[[PurgeReport], None] | None = None,
        report: PurgeReport | None = None,
    ) -> PurgeReport:
        """Delete every result under the prefix that ``selection`` matches (see
        :meth:`delete_results`). Running it again after it stopped midway finishes the job."""
        chosen = self.matching(selection)
        return self.delete_results(chosen, dry_run, max_delete, on_batch, report)

    def expire_now(self, task_id: str) -> bool:
        """Force-expire one result: it is removed now, as its expiry would remove it."""
        found = self.fetch(task_id)
        if found is None:
            return False
        return self.delete_results([found]).deleted == 1

    def stats(self) -> dict[str, Any]:
        """Counts by state and task, bytes, oldest/newest, results held by no session whose
        expiry has passed (only a cleanup removes them), results without expiry, sessions
        holding results and sessions holding nothing, and per task name the finished results
        and their runtimes (:mod:`consulresults.runtimes`) (one listing, batched reads, one
        session list)."""
        by_state: Counter[str] = Counter()
        by_task: Counter[str] = Counter()
        held: Counter[str] = Counter()
        total = size = no_expiry = expired = 0
        done = []
        runtimes = Runtimes()
        now = time.time()
        for result in self.iter_results(ALL_KINDS):
            if result.session:
                held[result.session] += 1
            if result.kind != "task":
                continue
            total += 1
            size += result.size
            by_state[result.state] += 1
            by_task[result.task_name or "(unknown)"] += 1
            no_expiry += not result.flags and not result.session
            # held by a session: Consul removes it, 1-2x TTL after its Flags time (not late)
            expired += bool(not result.session and result.expires_at and result.expires_at <= now)
            if result.done_at:
                done.append(result.done_at)
            if result.state in READY_STATES:
                runtimes.add(result.task_name or "(unknown)", result.runtime)
        listed = self.sessions(held)
        return {
            "results": total,
            "bytes": size,
            "by_state": dict(by_state),
            "by_task": dict(by_task),
            "sessions": sum(1 for s in listed if s["Held"]),
            "idle_sessions": len(self.idle_sessions(listed=listed)),
            "without_expiry": no_expiry,
            "expired_not_removed": expired,
            "oldest": min(done, default=None),
            "newest": max(done, default=None),
            "runtimes": runtimes.summary(),
        }
