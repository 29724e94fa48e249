"""Celery result backend that keeps task, group and chord state in Consul's KV store.

Select it with ``result_backend = "consulresults://[TOKEN@]host[:8500]/prefix?option=value"``.
It is a drop-in replacement for ``celery.backends.consul.ConsulBackend``: same keys, so each reads
the other's results. What it does differently, and why:

- Every write is one ``/v1/txn`` that checks and writes atomically: ``check-not-exists`` (or
  ``check-index`` against the last index this process wrote) followed by ``lock`` under a session.
  Consul refuses ``?acquire`` on a key another session holds, so the previous holder is unlocked
  in the same transaction; a SUCCESS is never overwritten, and a refused write is never ignored.
- Sessions are reused: one per process, TTL and time window, with no health checks and lock-delay 0,
  so a first write is one request and results vanish only when their TTL has passed.
- Expiry beyond what sessions can express (over 24 h, or ``None``) is recorded in the key's
  ``Flags`` (a Unix time) and enforced by :meth:`ConsulBackend.cleanup`.
- ``mget`` is batched through ``/v1/txn``; ``wait_for`` uses Consul blocking queries.
"""

from __future__ import annotations

import base64
import fnmatch
import itertools
import json
import math
import os
import random
import socket
import threading
import time
import uuid
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import consul.base
import requests
from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import BackendStoreError, ImproperlyConfigured, TimeoutError
from celery.utils.log import get_logger
from celery.utils.time import get_exponential_backoff_interval
from kombu.utils.encoding import bytes_to_str

from . import layout
from .connection import ConsulClient, RawResponse, connect
from .settings import ConsulSettings, SettingsError, resolve

logger = get_logger(__name__)

MAX_VALUE_SIZE = 524_288
MAX_TTL = 86_400
MIN_TTL = 10
MAX_WINDOW = 300.0
TXN_OPS = 128
LEGACY_TXN_OPS = 64
WRITE_PATIENCE = 60.0
CONFLICT_BACKOFF = (0.002, 0.25)
READ_RETRIES = 4
READ_BACKOFF = 0.05
KNOWN_INDEXES = 4096
BLOCK_SECONDS = 10.0
CELERY_SETTINGS = (
    "address",
    "prefix",
    "token",
    "token_file",
    "scheme",
    "ca_file",
    "client_cert",
    "client_key",
    "tls_server_name",
    "verify",
    "datacenter",
    "consistency",
    "timeout",
    "session_window",
)


class ConsulWriteConflict(BackendStoreError):
    """Other writers kept changing a key while this process tried to write it."""


@dataclass(frozen=True)
class ExpiryPlan:
    """How results that must live ``expires`` seconds are kept: a session TTL, or Flags only."""

    expires: float | None
    session_ttl: int | None
    window: float

    @classmethod
    def for_expires(cls, expires: float | None, window: float | None = None) -> ExpiryPlan:
        """Sessions live TTL ≥ expires + window, so every result written during the window lives
        at least ``expires``; when that does not fit Consul's 24 h cap, no session is used."""
        if not expires:
            return cls(None, None, 0.0)
        if window is None:
            window = min(MAX_WINDOW, max(1.0, expires / 4))
        window = min(window, MAX_TTL - expires)
        if window < 1.0:
            return cls(expires, None, 0.0)
        return cls(expires, max(MIN_TTL, math.ceil(expires + window)), window)

    def flags(self) -> int:
        """Unix time after which the result may be removed (0: never)."""
        return math.ceil(time.time() + self.expires) if self.expires else 0


def session_name(prefix: str) -> str:
    """``consul-results:<host>:<pid> prefix="<prefix>"``: the (JSON-quoted) prefix in the name
    lets ``sessions gc`` and ``rm`` tell our sessions for one prefix from another's."""
    return f"consul-results:{socket.gethostname()}:{os.getpid()} prefix={json.dumps(prefix)}"


def made_for(name: str, prefix: str) -> bool:
    """Whether a session name is one of ours for ``prefix`` (any host, any process)."""
    return name.startswith("consul-results:") and name.endswith(f" prefix={json.dumps(prefix)}")


class SessionPool:
    """This process's sessions, one per TTL, each used for writes during its window."""

    def __init__(self, client: ConsulClient, prefix: str) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._sessions: dict[int, tuple[str, float, int]] = {}
        self.prefix = prefix

    def get(self, plan: ExpiryPlan) -> str | None:
        if plan.session_ttl is None:
            return None
        with self._lock:
            found = self._sessions.get(plan.session_ttl)
            now = time.monotonic()
            if found and found[2] == os.getpid() and now - found[1] < plan.window:
                return found[0]
            session_id = self._client.session.create(
                name=session_name(self.prefix),
                behavior="delete",
                ttl=plan.session_ttl,
                lock_delay=0,
                checks=[],
            )
            self._sessions[plan.session_ttl] = (session_id, now, os.getpid())
            return session_id

    def discard_if_invalid(self, session_id: str | None, errors: list[dict] | None) -> None:
        """Forget a session a txn reported invalid (expired, or destroyed by an operator)."""
        if not session_id or not any("invalid session" in e["What"] for e in errors or ()):
            return
        with self._lock:
            for ttl, found in list(self._sessions.items()):
                if found[0] == session_id:
                    del self._sessions[ttl]


@dataclass
class WriteOutcome:
    written: bool
    index: int = 0
    errors: list[dict] | None = None


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
    meta: dict | None = None
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
        """``date_done`` as Unix time (Celery writes ISO 8601, naive meaning UTC)."""
        text = self.meta.get("date_done") if self.meta else None
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
        when = result.done_at
        if self.older_than is not None and (when is None or when >= self.older_than):
            return False
        if self.newer_than is not None and (when is None or when <= self.newer_than):
            return False
        if self.expired and not (result.expires_at and result.expires_at <= now):
            return False
        return not (self.no_session and result.session)


@dataclass
class Diagnosis:
    """One ``doctor`` check: what was checked, whether it passed, and the detail or error."""

    name: str
    ok: bool
    detail: str
    error: BaseException | None = None


@dataclass
class PurgeReport:
    """What a purge (or a dry run) found and did; deleted + skipped + failed <= matched."""

    matched: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    dry_run: bool = False
    in_flight: int = 0  # deletions sent but not yet answered: if the purge stops, in doubt


class ConsulBackend(KeyValueStoreBackend):
    """Consul KV result backend: atomic writes, reused sessions, batched reads, blocking waits."""

    supports_native_join = True
    implements_incr = True
    supports_failure_expires = True
    supports_result_compression = True
    key_t = str

    def __init__(self, *args, url: str | None = None, **kwargs) -> None:
        super().__init__(*args, url=url, **kwargs)
        conf = self.app.conf
        explicit = {name: conf.get(f"consulresults_{name}") for name in CELERY_SETTINGS}
        try:
            self.settings: ConsulSettings = resolve(url, explicit)
            self.client = connect(self.settings)
        except SettingsError as exc:
            raise ImproperlyConfigured(f"consulresults backend: {exc}") from None
        self.prefix = self.settings.prefix
        _warn_if_token_in_user_part(url)
        self.expires = self.prepare_expires(kwargs.get("expires"), type=float)
        failure = conf.get("result_failure_expires")
        self.failure_expires = (
            self.expires if failure is None else self.prepare_expires(failure, type=float)
        )
        self.expiry = self._plan(self.expires)
        self.session_pool = SessionPool(self.client, self.prefix)
        self._known: OrderedDict[str, tuple[int, str, bool]] = OrderedDict()
        self._known_lock = threading.Lock()
        self._txn_ops = TXN_OPS
        self._get_or_empty = True

    def _plan(self, expires: float | None) -> ExpiryPlan:
        if expires and expires < MIN_TTL:
            warnings.warn(
                f"result_expires={expires:g}s is below Consul's 10 s session minimum: results "
                "will live at least 10 s",
                UserWarning,
                stacklevel=3,
            )
        return ExpiryPlan.for_expires(expires, self.settings.session_window)

    @property
    def supports_autoexpire(self) -> bool:
        """True when Consul expires results by itself; False makes celery beat schedule
        ``celery.backend_cleanup``, which removes results whose recorded expiry has passed."""
        return self.expiry.session_ttl is not None or not self.expires

    def as_uri(self, include_password: bool = False) -> str:
        """The backend URL without the token, whatever ``include_password`` says."""
        return self.settings.redacted_url()

    def __reduce__(self, args=(), kwargs=None):
        return super().__reduce__(args, dict(kwargs or {}, url=self.url, expires=self.expires))

    # ------------------------------------------------------------------ keys

    def _key(self, name: str | bytes) -> str:
        return layout.full_key(self.prefix, bytes_to_str(name))

    def _remember(self, key: str, index: int, session: str, is_success: bool = False) -> None:
        """Keep the index this process last wrote, so its next write needs no read."""
        with self._known_lock:
            self._known[key] = (index, session, is_success)
            self._known.move_to_end(key)
            while len(self._known) > KNOWN_INDEXES:
                self._known.popitem(last=False)

    def _forget_index(self, key: str) -> None:
        with self._known_lock:
            self._known.pop(key, None)

    # ------------------------------------------------------------------ reads

    def _read(self, fn: Callable, *args, **kwargs):
        """Run an idempotent read, retrying transient failures (lost connections, time-outs,
        429, 5xx) a few times with back-off: repeating a read can never do harm, and Celery's
        own retries do not cover every read (chord restores, blocking waits, counters)."""
        for attempt in range(READ_RETRIES + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == READ_RETRIES or not self.exception_safe_to_retry(exc):
                    raise
                time.sleep(READ_BACKOFF * 2**attempt)

    def get(self, key: str | bytes) -> bytes | None:
        entry = self._entry(self._key(key))
        return entry["Value"] if entry else None

    def _entry(self, key: str) -> dict | None:
        return self._read(self.client.kv.get, key)[1]

    def mget(self, keys: list) -> list[bytes | None]:
        """Values for many keys in as few requests as the server's txn limit allows."""
        names = [self._key(k) for k in keys]
        entries = self._read_entries(names)
        return [_decode_value(entries[n]["Value"]) if entries[n] else None for n in names]

    def _read_entries(self, names: list[str]) -> dict[str, dict | None]:
        """KV entries (or None when absent) for ``names``, in order, batched through /v1/txn."""
        found: dict[str, dict | None] = dict.fromkeys(names)
        pos = 0
        while pos < len(names):
            batch = names[pos : pos + self._txn_ops]
            if self._get_or_empty:
                results = self._read(self._read_batch, batch)
                if results is None:
                    continue  # the server was older than it looked; retry this batch
            else:
                results = self._read(self._read_batch_legacy, batch)
            found.update(results)
            pos += len(batch)
        return found

    def _read_batch(self, names: list[str]) -> dict[str, dict | None] | None:
        """``get-or-empty`` echoes the op for a missing key (CreateIndex 0): that means absent."""
        response = self._txn([{"KV": {"Verb": "get-or-empty", "Key": n}} for n in names])
        if response.status == 200:
            entries = (r["KV"] for r in response.body["Results"])
            return {e["Key"]: e if e["CreateIndex"] else None for e in entries}
        if self._degrade_for(response):
            return None
        raise _txn_error(response)

    def _read_batch_legacy(self, names: list[str]) -> dict[str, dict | None]:
        """Before Consul 1.14 there is no get-or-empty: a missing key fails the whole txn, with
        every failing op reported, so a second txn without those keys gets the rest."""
        response = self._txn([{"KV": {"Verb": "get", "Key": n}} for n in names])
        if response.status == 200:
            return {r["KV"]["Key"]: r["KV"] for r in response.body["Results"]}
        if response.status != 409:
            raise _txn_error(response)
        missing = {names[e["OpIndex"]] for e in response.body["Errors"]}
        present = [n for n in names if n not in missing]
        found = self._read_batch_legacy(present) if present else {}
        return {**dict.fromkeys(missing), **found}

    def _degrade_for(self, response: RawResponse) -> bool:
        """Adapt to a pre-1.14 server (64 ops, no get-or-empty); True if the call may be retried."""
        text = json.dumps(response.body)
        if response.status == 413 and self._txn_ops > LEGACY_TXN_OPS:
            self._txn_ops = LEGACY_TXN_OPS
            return True
        if response.status == 409 and "get-or-empty" in text:
            self._get_or_empty = False
            return True
        return False

    def _txn(self, ops: list[dict]) -> RawResponse:
        return self.client.http.raw("PUT", "/v1/txn", body=ops)

    # ------------------------------------------------------------------ writes

    def set(self, key: str | bytes, value: bytes | str) -> None:
        self._write(self._key(key), value, self.expiry)

    def _set_with_state(self, key, value, state) -> None:
        self._write(self._key(key), value, self._plan_for_state(state))

    def _plan_for_state(self, state: str) -> ExpiryPlan:
        """Failed tasks may expire differently (Celery 5.7's ``result_failure_expires``)."""
        if state == states.FAILURE and self.failure_expires != self.expires:
            return self._plan(self.failure_expires)
        return self.expiry

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        """Store atomically, never over a SUCCESS (Celery's guard, without its race)."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        try:
            self._write(
                self._key(self.get_key_for_task(task_id)),
                self.encode(meta),
                self._plan_for_state(state),
                keep_success=True,
                is_success=state == states.SUCCESS,
            )
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _write(
        self,
        key: str,
        value: bytes | str,
        plan: ExpiryPlan,
        keep_success: bool = False,
        is_success: bool = False,
    ) -> bool:
        """Write ``value`` at ``key`` under a session for ``plan``; False if a SUCCESS was kept.

        The first attempt assumes the key is as this process last saw it (absent, or at the
        index it last wrote), so it costs one request; after this process wrote a SUCCESS, a
        guarded write reads first instead.
        """
        data = value.encode() if isinstance(value, str) else value
        if len(data) > MAX_VALUE_SIZE:
            raise BackendStoreError(
                f"result is {len(data)} bytes, over Consul's {MAX_VALUE_SIZE}-byte value limit "
                "(kv_max_value_size): set result_compression (e.g. 'zlib') or return less data"
            )
        with self._known_lock:
            remembered = self._known.get(key)

        def decide(entry: dict | None) -> bytes | None:
            if entry and keep_success and self._is_success(entry["Value"]):
                return None
            return data

        guarded = bool(remembered and keep_success and remembered[2])
        first = None if guarded else (data, remembered[:2] if remembered else None)
        return self._commit(key, plan, decide, first, is_success)

    def _commit(
        self,
        key: str,
        plan: ExpiryPlan,
        decide: Callable[[dict | None], bytes | None],
        first: tuple[bytes, tuple[int, str] | None] | None = None,
        is_success: bool = False,
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
        attempt = first
        deadline = time.monotonic() + WRITE_PATIENCE
        for tries in itertools.count(1):
            try:
                if attempt is None:
                    entry = self._entry(key)
                    value = decide(entry)
                    if value is None:
                        return False
                    known = (entry["ModifyIndex"], entry.get("Session", "")) if entry else None
                    attempt = (value, known)
                session = self.session_pool.get(plan)
                outcome = self._try_write(key, attempt[0], plan.flags(), session, attempt[1])
                if outcome.written:
                    self._remember(key, outcome.index, session or "", is_success)
                    return True
                self.session_pool.discard_if_invalid(session, outcome.errors)
            except Exception as exc:
                if not (retry_lost and self.exception_safe_to_retry(exc)):
                    raise
            if time.monotonic() >= deadline:
                raise ConsulWriteConflict(
                    f"could not write {key}: other writers kept changing it (or Consul kept "
                    f"failing) for {WRITE_PATIENCE:g} s, {tries} attempts"
                )
            time.sleep(_backoff(tries))
            attempt = None

    def _try_write(
        self, key: str, data: bytes, flags: int, session: str | None, known: tuple[int, str] | None
    ) -> WriteOutcome:
        value = base64.b64encode(data).decode()
        ops: list[dict] = []
        if known is None:
            ops.append({"KV": {"Verb": "check-not-exists", "Key": key}})
        else:
            index, holder = known
            ops.append({"KV": {"Verb": "check-index", "Key": key, "Index": index}})
            if holder and holder != session:
                ops.append(
                    {
                        "KV": {
                            "Verb": "unlock",
                            "Key": key,
                            "Session": holder,
                            "Value": value,
                            "Flags": flags,
                        }
                    }
                )
        if session:
            ops.append(
                {
                    "KV": {
                        "Verb": "lock",
                        "Key": key,
                        "Session": session,
                        "Value": value,
                        "Flags": flags,
                    }
                }
            )
        elif not (known and known[1]):
            ops.append({"KV": {"Verb": "set", "Key": key, "Value": value, "Flags": flags}})
        response = self._txn(ops)
        if response.status == 200:
            return WriteOutcome(True, response.body["Results"][-1]["KV"]["ModifyIndex"])
        if response.status == 409 and not _denied(response):
            return WriteOutcome(False, errors=response.body["Errors"])
        raise _txn_error(response)

    def _is_success(self, value: bytes | None) -> bool:
        if not value:
            return False
        try:
            return self.decode_result(value).get("status") == states.SUCCESS
        except Exception:  # not a result we can read: nothing to protect
            return False

    def delete(self, key: str | bytes) -> None:
        full = self._key(key)
        self._forget_index(full)
        self.client.kv.delete(full)

    # ------------------------------------------------------------------ counters and expiry

    def incr(self, key: str | bytes) -> int:
        """Atomically add one and return the new count; safe to repeat after a lost answer.

        The counter remembers the last writers' nonces: if the answer to our write was lost, the
        next read shows whether it landed, so a chord part is never counted twice.
        """
        nonce = uuid.uuid4().hex[:16]
        outcome: dict[str, int] = {}

        def add_one(value: bytes | None) -> bytes | None:
            count, recent = _parse_counter(value)
            if nonce in recent:  # our earlier attempt landed
                outcome["count"] = count - (len(recent) - 1 - recent.index(nonce))
                return None
            outcome["count"] = count + 1
            return json.dumps({"count": count + 1, "recent": [*recent, nonce][-1000:]}).encode()

        self._update(self._key(key), add_one, self._plan(self.chord_expires), create=True)
        return outcome["count"]

    def expire(self, key: str | bytes, value: float | int | None) -> None:
        """Make ``key`` live ``value`` more seconds from now (0/None: no expiry)."""
        self._update(self._key(key), lambda current: current or b"", self._plan(value or None))

    def _update(self, key: str, change, plan: ExpiryPlan, create: bool = False) -> None:
        """Read-modify-write: ``change(current value)`` gives the new value (None: leave it).

        Every attempt re-reads the value, so a concurrent writer's change is never overwritten
        with a stale copy; a lost answer or a conflict just means reading again.
        """

        def decide(entry: dict | None) -> bytes | None:
            if entry is None and not create:
                return None
            return change(entry["Value"] if entry else None)

        self._commit(key, plan, decide, retry_lost=True)

    # ------------------------------------------------------------------ waiting

    def wait_for(self, task_id, timeout=None, interval=0.5, no_ack=True, on_interval=None):
        """Wait with Consul blocking queries: the answer comes as soon as the result is stored."""
        self._ensure_not_eager()
        cached = self._cache.get(task_id)
        if cached and cached["status"] in states.READY_STATES:
            return cached
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self._key(self.get_key_for_task(task_id))
        index = 0
        while True:
            wait = self._block_time(deadline, on_interval)
            meta, index = self._with_retry_policy(self._read_blocking, key, index, wait)
            if meta["status"] in states.READY_STATES:
                if meta["status"] == states.SUCCESS:
                    self._cache[task_id] = meta
                return meta
            if on_interval:
                on_interval()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("The operation timed out.")

    def _with_retry_policy(self, fn: Callable, *args):
        """Celery's retry policy (``result_backend_always_retry`` and its back-off settings) for
        the reads Celery does not wrap itself: waits and joins (``get()``, chord joins). Without
        it, an outage longer than the read retries ends a wait that had time left."""
        retries = 0
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                retryable = self.always_retry and self.exception_safe_to_retry(exc)
                if not retryable or retries >= self.max_retries:
                    raise
                retries += 1
                logger.warning("Consul read failed (%s); retrying (%d so far)", exc, retries)
                time.sleep(
                    get_exponential_backoff_interval(
                        self.base_sleep_between_retries_ms,
                        retries,
                        self.max_sleep_between_retries_ms,
                        True,
                    )
                    / 1000
                )

    @staticmethod
    def _block_time(deadline: float | None, on_interval) -> float:
        wait = 1.0 if on_interval else BLOCK_SECONDS
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        return wait

    def _get_raw(self, key: str, params: list, timeout: float) -> RawResponse:
        response = self.client.http.raw("GET", f"/v1/kv/{key}", params, timeout=timeout)
        if response.status not in (200, 404):
            raise consul.base.ConsulException(f"{response.status} {response.body}")
        return response

    def _read_blocking(self, key: str, index: int, wait: float) -> tuple[dict, int]:
        """One blocking GET: the decoded meta (PENDING when absent) and the index to wait past."""
        params = (
            [("index", str(index)), ("wait", f"{max(1, int(wait * 1000))}ms")]
            if index and wait > 0
            else []
        )
        response = self._read(self._get_raw, key, params, wait * 1.1 + self.settings.timeout)
        new_index = int(response.headers.get("X-Consul-Index", 0))
        if new_index < index:
            new_index = 0  # the index went backwards (snapshot restore, tombstone reaping)
        if response.status == 404:
            return {"status": states.PENDING, "result": None}, new_index
        return self.decode_result(_decode_value(response.body[0]["Value"])), new_index

    def get_many(
        self,
        task_ids,
        timeout=None,
        interval=0.5,
        no_ack=True,
        on_message=None,
        on_interval=None,
        max_iterations=None,
        READY_STATES=states.READY_STATES,
    ):
        """Like Celery's, but between rounds it blocks on a pending key instead of sleeping."""
        ids = set(task_ids)
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield bytes_to_str(task_id), cached
        deadline = None if timeout is None else time.monotonic() + timeout
        iterations = 0
        while ids:
            keys = list(ids)
            values = self._with_retry_policy(self.mget, [self.get_key_for_task(k) for k in keys])
            ready = self._mget_to_results(values, keys, READY_STATES)
            self._cache.update(ready)
            ids.difference_update(ready)
            for task_id, meta in ready.items():
                if on_message is not None:
                    on_message(meta)
                yield bytes_to_str(task_id), meta
            if not ids:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Operation timed out ({timeout})")
            if on_interval:
                on_interval()
            waiting_on = self._key(self.get_key_for_task(next(iter(ids))))
            _, index = self._with_retry_policy(self._read_blocking, waiting_on, 0, 0)
            wait = self._block_time(deadline, True)
            self._with_retry_policy(self._read_blocking, waiting_on, index, wait)
            iterations += 1
            if max_iterations and iterations >= max_iterations:
                break

    # ------------------------------------------------------------------ maintenance

    def cleanup(self) -> int:
        """Delete results, groups and chord counters whose recorded expiry (Flags) has passed;
        return how many. Celery beat runs it as ``celery.backend_cleanup``. Only keys that name
        a Celery result are considered, and one rewritten meanwhile is kept (delete-cas)."""
        expired = ResultFilter(expired=True, kinds=frozenset(layout.KINDS.values()))
        return self.purge(expired).deleted

    # ------------------------------------------------------------------ operations (the CLI's)

    def iter_results(self, kinds: frozenset[str] = frozenset({"task"})) -> Iterator[StoredResult]:
        """Every result, group or chord key under the prefix, in key order, read in batches.

        One ``?keys`` listing, then ``/v1/txn`` reads of at most the server's operation limit,
        so memory holds the key names and one batch, whatever the number of results. Keys that
        are not Celery's (other applications', other prefixes') are never returned.
        """
        parsed = [
            p
            for p in (layout.parse_key(self.prefix, k) for k in self._list_keys())
            if p is not None and p.kind in kinds
        ]
        size = self._txn_ops
        for pos in range(0, len(parsed), size):
            chunk = parsed[pos : pos + size]
            entries = self._read_entries([p.key for p in chunk])
            for item in chunk:
                entry = entries[item.key]
                if entry is not None:
                    yield self._stored(item, entry, _decode_value(entry["Value"]))

    def _list_keys(self) -> list[str]:
        head = f"{self.prefix}/" if self.prefix else ""
        response = self._read(self.client.http.raw, "GET", f"/v1/kv/{head}", [("keys", "1")])
        if response.status == 404:
            return []
        if response.status != 200:
            raise _txn_error(response)
        return response.body

    def _stored(self, parsed: layout.ParsedKey, entry: dict, value: bytes | None) -> StoredResult:
        """A result from its KV entry; ``value`` already decoded (txn and kv.get differ)."""
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
            result.meta = self.decode_result(value) if value else None
            if result.meta is None:
                result.error = "empty value"
        except Exception as exc:  # garbage or a serializer this app does not accept
            result.error = f"cannot decode: {type(exc).__name__}: {exc}"[:200]
        return result

    def fetch(self, task_id: str) -> StoredResult | None:
        """One result with its Consul metadata (one request); None when there is none."""
        key = self._key(self.get_key_for_task(task_id))
        entry = self._entry(key)
        if entry is None:
            return None
        return self._stored(layout.ParsedKey(key, "task", task_id), entry, entry["Value"])

    def session_info(self, session_id: str) -> dict | None:
        """The session behind a result (TTL, behaviour, node...), or None once it is gone."""
        _, info = self.client.session.info(session_id)
        return info

    def sessions(self) -> list[dict]:
        """All sessions the agent knows, each with ``Held``: how many keys under the prefix it
        holds (results of this backend and of Celery's built-in one alike)."""
        held = Counter(
            r.session for r in self.iter_results(frozenset(layout.KINDS.values())) if r.session
        )
        _, listed = self.client.session.list()
        return [dict(s, Held=held.get(s["ID"], 0)) for s in listed or []]

    def idle_sessions(self, among: set[str] | None = None) -> list[dict]:
        """Result sessions that hold nothing any more, and provably nothing elsewhere either:
        ours made for this prefix (the name says so) holding no key under it, and Celery
        built-in ones (named after the one key they were made for) not holding that key here."""
        idle = []
        for session in self.sessions():
            if session["Held"] or (among is not None and session["ID"] not in among):
                continue
            name = session.get("Name") or ""
            if made_for(name, self.prefix):
                idle.append(session)
            elif layout.parse_key(self.prefix, self._key(name)) is not None:
                idle.append(session)  # built-in: its key under this prefix is not held by it
        return idle

    def destroy_session(self, session_id: str) -> None:
        """Invalidate a session now: Consul applies its behaviour (ours: delete what it holds)."""
        self.client.session.destroy(session_id)

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
            if len(batch) == self._txn_ops:
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
        ops = [{"KV": {"Verb": "delete-cas", "Key": r.key, "Index": r.modify_index}} for r in batch]
        report.in_flight = len(ops)
        response = self._txn(ops)
        if response.status == 200:
            report.deleted += len(batch)
        elif response.status == 409 and not _denied(response):
            stale = {e["OpIndex"] for e in response.body["Errors"]}
            report.skipped += len(stale)
            rest = [op for i, op in enumerate(ops) if i not in stale]
            report.in_flight = len(rest)
            if rest and self._txn(rest).status == 200:
                report.deleted += len(rest)
            else:
                report.failed += len(rest)
        else:
            raise _txn_error(response)
        report.in_flight = 0
        for result in batch:
            self._forget_index(result.key)

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
        now = time.time()
        chosen = (r for r in self.iter_results(selection.kinds) if selection.matches(r, now))
        return self.delete_results(chosen, dry_run, max_delete, on_batch, report)

    def expire_now(self, task_id: str) -> bool:
        """Force-expire one result: it is removed now, as its expiry would remove it."""
        found = self.fetch(task_id)
        if found is None:
            return False
        return self.delete_results([found]).deleted == 1

    def stats(self) -> dict:
        """Counts by state and task, bytes, oldest/newest, sessions, results without expiry."""
        by_state: Counter = Counter()
        by_task: Counter = Counter()
        sessions: set[str] = set()
        total = size = no_expiry = 0
        done = []
        for result in self.iter_results():
            total += 1
            size += result.size
            by_state[result.state] += 1
            by_task[result.task_name or "(unknown)"] += 1
            no_expiry += not result.flags and not result.session
            if result.session:
                sessions.add(result.session)
            if result.done_at:
                done.append(result.done_at)
        return {
            "results": total,
            "bytes": size,
            "by_state": dict(by_state),
            "by_task": dict(by_task),
            "sessions": len(sessions),
            "without_expiry": no_expiry,
            "oldest": min(done, default=None),
            "newest": max(done, default=None),
        }

    def diagnose(self) -> list[Diagnosis]:
        """Can this backend work here? Reach the agent, a leader, read and write the prefix,
        create sessions, and whether ``result_expires`` fits Consul's limits. Writes leave
        nothing behind: the probe key is set and deleted in one transaction."""
        checks = [
            ("reach the agent", self._check_agent),
            ("a cluster leader", self._check_leader),
            ("read the prefix", self._check_read),
            ("write the prefix", self._check_write),
            ("create sessions", self._check_sessions),
        ]
        found = []
        for name, check in checks:
            try:
                found.append(Diagnosis(name, True, check()))
            except Exception as exc:  # reported, never raised: the next checks still run
                found.append(
                    Diagnosis(
                        name,
                        False,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                        exc,
                    )
                )
                if name == "reach the agent":
                    break
        found.append(self._check_expiry())
        return found

    def _check_agent(self) -> str:
        info = self.client.agent.self()
        return (
            f"{self.settings.base_url}: Consul {info['Config'].get('Version', '?')}, node "
            f"{info['Config'].get('NodeName', '?')}"
        )

    def _check_leader(self) -> str:
        leader = self.client.status.leader()
        if not leader:
            raise consul.base.ConsulException("500 No cluster leader")
        return f"leader {leader}"

    def _check_read(self) -> str:
        return f"{len(self._list_keys())} key(s) under {self.prefix or '(root)'}/"

    def _check_write(self) -> str:
        probe = self._key(f"consul-results-doctor-{uuid.uuid4().hex}")
        response = self._txn(
            [
                {"KV": {"Verb": "set", "Key": probe, "Value": ""}},
                {"KV": {"Verb": "delete", "Key": probe}},
            ]
        )
        if response.status != 200:
            raise _txn_error(response)
        return f"set and deleted {probe}"

    def _check_sessions(self) -> str:
        session = self.client.session.create(
            name="consul-results:doctor", ttl=10, lock_delay=0, checks=[], behavior="delete"
        )
        self.client.session.destroy(session)
        return "created and destroyed a 10 s session"

    def _check_expiry(self) -> Diagnosis:
        plan = self.expiry
        if not self.expires:
            return Diagnosis("result_expires", True, "None: results never expire")
        if plan.session_ttl is None:
            return Diagnosis(
                "result_expires",
                True,
                f"{self.expires:g} s: over what sessions "
                "allow, so expiry is recorded in Flags; run celery beat "
                "(backend_cleanup) or `purge --expired`",
            )
        note = " (raised to Consul's 10 s minimum)" if self.expires < MIN_TTL else ""
        return Diagnosis(
            "result_expires",
            True,
            f"{self.expires:g} s{note}: sessions with TTL "
            f"{plan.session_ttl} s; Consul deletes results within 2xTTL",
        )

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Transient failures Celery may retry (``result_backend_always_retry``): lost
        connections, timeouts, 429 and 5xx answers such as "No cluster leader"."""
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
        if isinstance(exc, consul.base.ConsulException):
            status = str(exc)[:3]
            return status == "429" or (status.isdigit() and status.startswith("5"))
        return False


def _warn_if_token_in_user_part(url: str | None) -> None:
    """``celery report`` masks a URL's password but prints its user part, where a token given as
    ``consulresults://TOKEN@host`` sits; say so once, with the ways that keep it hidden."""
    if url and "://" in url:
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        credentials = netloc.rpartition("@")[0]
        if credentials and ":" not in credentials:
            warnings.warn(
                "the Consul token is in the user part of result_backend, which `celery report` "
                "prints: write consulresults://:TOKEN@host (masked), or use "
                "consulresults_token_file / CONSUL_HTTP_TOKEN_FILE",
                UserWarning,
                stacklevel=4,
            )


def _backoff(tries: int) -> float:
    """Full-jitter exponential back-off: writers that lost a race to the same key (chord parts
    finishing together) spread out instead of colliding again in lock-step."""
    low, cap = CONFLICT_BACKOFF
    return random.uniform(0, min(cap, low * 2**tries))


def _decode_value(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def _parse_counter(value: bytes | None) -> tuple[int, list[str]]:
    if not value:
        return 0, []
    try:
        data = json.loads(value)
        return int(data["count"]), list(data.get("recent", []))
    except (ValueError, TypeError, KeyError):
        return int(value), []  # a plain counter


def _denied(response: RawResponse) -> str | None:
    """The first "Permission denied" of a txn's errors (ACLs deny per operation, with a 409)."""
    if response.status != 409 or not isinstance(response.body, dict):
        return None
    for error in response.body.get("Errors") or ():
        if error["What"].startswith("Permission denied"):
            return error["What"]
    return None


def _txn_error(response: RawResponse) -> consul.base.ConsulException:
    """A txn answer that is neither success nor a conflict, as python-consul2 would raise it."""
    denied = _denied(response)
    if denied:
        return consul.base.ACLPermissionDenied(denied)
    text = response.body if isinstance(response.body, str) else json.dumps(response.body)
    if response.status == 403:
        return consul.base.ACLPermissionDenied(text)
    return consul.base.ConsulException(f"{response.status} {text}")
