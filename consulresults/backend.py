"""Celery result backend that keeps task, group and chord state in Consul's KV store.

Select it with ``result_backend = "consulresults://[TOKEN@]host[:8500]/prefix?option=value"``.
It is a drop-in replacement for ``celery.backends.consul.ConsulBackend``: same keys, so each reads
the other's results. This module is only the adapter between Celery's key/value backend and the
KV core (:mod:`consulresults.kv`), which owns how results live in Consul:

- Every write is one ``/v1/txn`` that checks and writes atomically; a SUCCESS is never
  overwritten, and a refused write is never ignored.
- Sessions are reused (:mod:`consulresults.expiry`): one per process, TTL and time window, so a
  first write is one request and results vanish only when their TTL has passed.
- Expiry beyond what sessions can express (over 24 h, or ``None``) is recorded in the key's
  ``Flags`` and enforced by :meth:`ConsulBackend.cleanup`.
- ``mget`` is batched through ``/v1/txn``; waits are served by the process's one waiting
  service (:mod:`consulresults.celery_waiting`), over two connections however many wait.
- Chords count their header without a counter key (:mod:`consulresults.chords`): a part costs
  one request, and the part that completes the header has every result, so no worker ever
  waits on a join.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, TypeVar, cast

import consul
from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import BackendStoreError, ImproperlyConfigured
from celery.signals import task_prerun, worker_process_shutdown
from celery.utils.log import get_logger
from celery.utils.time import get_exponential_backoff_interval
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.objects import cached_property

from . import (
    compat,  # noqa: F401 -- Celery finds a stored exception's class in sys.modules
    rings,
)
from .celery_chords import ChordMixin
from .celery_waiting import WaitingMixin
from .chords import ChordStore
from .client import ConsulClient
from .connection import connect, is_transient
from .consumer import ResultConsumer
from .deadline import clamp, passed
from .expiry import MIN_TTL, CleanupNeeded, ExpiryPlan, renew_pending
from .kv import KVStore, ValueTooLarge, WriteConflict
from .operations import ALL_KINDS, ResultFilter, ResultOperations, hiding_text
from .retry import RetryPolicy
from .settings import OPTIONS, ConsulSettings, SettingsError, resolve

logger = get_logger(__name__)
worker_process_shutdown.connect(
    lambda **_: renew_pending(), weak=False, dispatch_uid="consulresults.renew_pending"
)
_T = TypeVar("_T")
# where a running task's request (Celery's Context, one per attempt) keeps when it began
_STARTED = "consulresults_date_started"


class ConsulWriteConflict(BackendStoreError):
    """Other writers kept changing a key (or Consul kept failing) for longer than the write
    loop's patience (60 s)."""


class ConsulBackend(WaitingMixin, ChordMixin, KeyValueStoreBackend):
    """Consul KV result backend: atomic writes, reused sessions, batched reads, blocking waits."""

    consul = consul  # python-consul2, as on Celery's built-in backend
    supports_native_join = True
    implements_incr = True
    supports_failure_expires = True
    supports_result_compression = True
    key_t = str

    def __init__(
        self,
        *args: Any,
        url: str | None = None,
        overrides: Mapping[str, object] | None = None,
        **kwargs: Any,
    ) -> None:
        """``overrides`` (the CLI's connection flags) beat the app's ``consulresults_*``
        settings, which beat the URL, which beats the ``CONSUL_*`` environment."""
        super().__init__(*args, url=url, **kwargs)
        conf = self.app.conf
        explicit = {name: conf.get(f"consulresults_{name}") for name in OPTIONS}
        try:
            self.settings: ConsulSettings = resolve(url, explicit, overrides=overrides)
            self.transport = connect(self.settings)
        except SettingsError as exc:
            raise ImproperlyConfigured(f"consulresults backend: {exc}") from None
        self._overrides = dict(overrides or {})
        self._client = ConsulClient(self.transport)
        self.store = KVStore(self.transport, self.settings.prefix)
        self.chords = ChordStore(self.store)
        self.prefix = self.settings.prefix
        _warn_if_token_in_user_part(url)
        if "http_auth=" in (url or "").partition("?")[2] or explicit.get("http_auth"):
            warnings.warn(
                "`celery report` prints basic auth given in result_backend's query or the "
                "consulresults_http_auth setting: set CONSUL_HTTP_AUTH in the environment instead",
                UserWarning,
                stacklevel=2,
            )
        self.expires = self.prepare_expires(kwargs.get("expires"), type=float)
        failure = conf.get("result_failure_expires")
        self.failure_expires = (
            self.expires if failure is None else self.prepare_expires(failure, type=float)
        )
        self.expiry = self._plan(self.expires)
        self._wait_policy = self._retry_policy()
        self.result_consumer = ResultConsumer(self.store, self._wait_policy)
        for setting, plan in self._expiry_plans.items():
            if not plan.removed_by_consul:
                _warn_nothing_removes(setting, plan)
                break

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
        """True when Consul removes every result by itself (Celery's default of one day
        included); False, for expiries over Consul's 24 h session TTL, makes celery beat
        schedule ``celery.backend_cleanup``, which removes results whose expiry has passed."""
        return all(plan.removed_by_consul for plan in self._expiry_plans.values())

    @cached_property
    def _expiry_plans(self) -> dict[str, ExpiryPlan]:
        """The plan of each expiry setting in force (failures and chords may expire
        differently); made once, so that a setting's warning is given once."""
        return {
            "result_expires": self.expiry,
            "result_failure_expires": self._plan_for_state(states.FAILURE),
            "result_chord_expires": self._plan(self.chord_expires),
        }

    @property
    def consistency(self) -> str:
        """The read consistency mode: ``consistent`` (the default, as Celery's built-in
        backend), ``default`` or ``stale``."""
        return self.settings.consistency

    @property
    def path(self) -> str | None:
        """The prefix in front of every key, the URL's path (None: the root), as on Celery's
        built-in backend."""
        return self.prefix or None

    def client(self) -> ConsulClient:
        """A python-consul2 client on this backend's connection: address, token, TLS,
        datacenter and consistency included, over the same pooled keep-alive sockets."""
        return self._client

    def as_uri(self, include_password: bool = False) -> str:
        """The backend URL without the token, whatever ``include_password`` says."""
        return self.settings.redacted_url()

    def __reduce__(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> tuple[Any, ...]:
        extra = {"url": self.url, "expires": self.expires}
        if self._overrides:
            extra["overrides"] = self._overrides
        return cast("tuple[Any, ...]", super().__reduce__(args, dict(kwargs or {}, **extra)))

    def operations(self) -> ResultOperations:
        """The CLI's operations on this backend's results, decoded as this app decodes them."""
        return ResultOperations(self.store, self.expiry, self.decode_result, self._wait_policy)

    def _date_now(self) -> str:
        """Now as this Celery version writes ``date_done``: naive UTC in 5.3, aware UTC in
        5.4-5.6, the app's timezone from 5.7 on. Asking Celery, rather than copying one of
        them, keeps ``date_started`` and ``date_done`` on the same clock and in the same format
        whichever version runs the worker."""
        meta = self._get_result_meta(None, states.SUCCESS, None, None)
        return cast(str, meta["date_done"])

    def _date_started(self, request: Any, task_id: str, state: str) -> str | None:
        """When the attempt whose request this is began (``task_prerun``); None for another
        task's id (a task may store another's result) or a request that did not run here (the
        worker's parent stores a lost child's failure with its own). A STARTED write, just
        after the signal, records the start if the signal came before this module was loaded:
        a worker started with --quiet loads its backend only with its first task."""
        if request is None or getattr(request, "id", None) != task_id:
            return None
        if state == states.STARTED and not hasattr(request, _STARTED):
            setattr(request, _STARTED, self._date_now())
        return getattr(request, _STARTED, None)

    def _key(self, name: str | bytes) -> str:
        return self.store.key(bytes_to_str(name))

    # ------------------------------------------------------------------ reads

    def get(self, key: str | bytes) -> bytes | None:
        entry = self.store.entry(self._key(key))
        return entry["Value"] if entry else None

    def mget(self, keys: list[str | bytes]) -> list[bytes | None]:
        """Values for many keys in as few requests as the server's txn limit allows."""
        names = [self._key(k) for k in keys]
        entries = self.store.entries(names)
        return [e["Value"] if (e := entries[n]) else None for n in names]

    # ------------------------------------------------------------------ writes

    def set(self, key: str | bytes, value: bytes | str) -> bool:
        """Write ``key`` under the result expiry; True (a write that fails raises)."""
        self._write(self._key(key), value, self.expiry)
        return True

    def _set_with_state(self, key: str | bytes, value: bytes | str, state: str) -> None:
        self._write(self._key(key), value, self._plan_for_state(state))

    def _plan_for_state(self, state: str) -> ExpiryPlan:
        """Failed tasks may expire differently (Celery 5.7's ``result_failure_expires``)."""
        if state == states.FAILURE and self.failure_expires != self.expires:
            return self._plan(self.failure_expires)
        return self.expiry

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store atomically, never over a SUCCESS (Celery's guard, without its race)."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        if (started := self._date_started(request, meta["task_id"], state)) is not None:
            meta["date_started"] = started
        # waiters act on ready states only: no ring for the others (rings.silent)
        ringing = rings.silent() if state not in states.READY_STATES else nullcontext()
        try:
            with ringing:
                self._write(
                    self._key(self.get_key_for_task(task_id)),
                    self.encode(meta),
                    self._plan_for_state(state),
                    keep=self._is_success,
                    final=state == states.SUCCESS,
                )
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _write(
        self,
        key: str,
        value: bytes | str,
        plan: ExpiryPlan,
        keep: Callable[[bytes | None], bool] | None = None,
        final: bool = False,
    ) -> None:
        try:
            self.store.write(key, str_to_bytes(value), plan, keep, final)
        except ValueTooLarge as exc:
            raise BackendStoreError(str(exc)) from exc
        except WriteConflict as exc:
            raise ConsulWriteConflict(str(exc)) from exc

    def _update(
        self,
        key: str,
        change: Callable[[bytes | None], bytes | None],
        plan: ExpiryPlan,
        create: bool = False,
    ) -> None:
        try:
            self.store.update(key, change, plan, create)
        except WriteConflict as exc:
            raise ConsulWriteConflict(str(exc)) from exc

    def _is_success(self, value: bytes | None) -> bool:
        if not value:
            return False
        try:
            return cast(bool, self.decode_result(value).get("status") == states.SUCCESS)
        except Exception:  # not a result we can read: nothing to protect
            return False

    def delete(self, key: str | bytes) -> bool:
        """Delete ``key``; True when Consul acknowledged it (also for a key already gone)."""
        return self.store.delete(self._key(key))

    # ------------------------------------------------------------------ waiting
    # (wait_for, get_many: celery_waiting.WaitingMixin)

    def _retrying(self, fn: Callable[..., _T], *args: Any) -> _T:
        return self._wait_policy.call(lambda: fn(*args))

    def _retry_policy(self) -> RetryPolicy:
        """Celery's retry policy (``result_backend_always_retry`` and its back-off settings) for
        the reads Celery does not wrap itself: waits and joins (``get()``, chord joins, the
        CLI's ``get --wait -A``). Without it, an outage longer than the read retries ends a wait
        that had time left."""

        def delay(retries: int) -> float:
            return (
                cast(
                    float,
                    get_exponential_backoff_interval(
                        self.base_sleep_between_retries_ms,
                        retries,
                        self.max_sleep_between_retries_ms,
                        True,
                    ),
                )
                / 1000
            )

        def log(exc: BaseException, retries: int) -> None:
            logger.warning("Consul read failed (%s); retrying (%d so far)", exc, retries)

        return RetryPolicy(
            lambda exc: bool(self.always_retry) and self.exception_safe_to_retry(exc),
            delay,
            max_retries=self.max_retries,
            on_retry=log,
        )

    # ------------------------------------------------------------------ maintenance

    def cleanup(self) -> int:
        """Delete results, groups and chord counters whose recorded expiry (Flags) has passed;
        return how many. Celery beat runs it as ``celery.backend_cleanup``. Only keys that name
        a Celery result are considered, and one rewritten meanwhile is kept (delete-cas). When
        the token's ACLs hid keys from the listing (or no token meets a deny-by-default agent),
        a warning says so: those results stay, and Consul would not say it."""
        expired = ResultFilter(expired=True, kinds=ALL_KINDS)
        operations = self.operations()
        deleted = operations.purge(expired).deleted
        if operations.hidden is not None:  # what the token may not read stays, unsaid by Consul
            logger.warning(
                "cleanup: %s: expired results hidden from it were not deleted",
                hiding_text(operations.hidden, self.store.prefix),
            )
        return deleted

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Transient failures Celery may retry (``result_backend_always_retry``): lost
        connections, timeouts, 429 and 5xx answers such as "No cluster leader"; none once the
        caller's deadline has passed. Celery's own retry loop (``_ensure_retryable``: the
        parent check of ``get()``, ``get_task_meta``) knows no deadline, and under its default
        endless ``result_backend_max_retries`` would outlive ``get(timeout=T)``."""
        return is_transient(exc) and not passed()

    def _sleep(self, amount: float) -> None:
        """Celery's pause between two tries of its retry loop, never past the caller's
        deadline: the try at the deadline is then the last."""
        time.sleep(clamp(amount))


def _note_start(task: Any = None, **_: Any) -> None:
    """``task_prerun``: keep when this attempt began on its request, for every write of its
    result (STARTED, progress, RETRY, the outcome) to store as ``date_started``.

    The signal is sent in the process and thread that runs the task, in every pool (prefork
    child, thread, solo, gevent), whether or not ``task_track_started`` is on, once per attempt
    (a retry is a new request). The time lives on the request, which Celery drops when the
    attempt ends, so nothing is kept per task and nothing needs clearing; it is written with
    the result, so it costs no Consul request."""
    backend = getattr(task, "backend", None)
    if isinstance(backend, ConsulBackend):
        setattr(task.request, _STARTED, backend._date_now())


task_prerun.connect(_note_start, weak=False, dispatch_uid="consulresults.date_started")


def _warn_nothing_removes(setting: str, plan: ExpiryPlan) -> None:
    """Results Consul will not remove pile up unless something runs a cleanup: say so at
    start-up, naming what can."""
    warnings.warn(
        f"{setting}={plan.expires:g}s is over Consul's 24 h session TTL: only a cleanup removes "
        "these results. Run celery beat (it schedules celery.backend_cleanup daily) or "
        f"`consul-results purge --expired` from cron, or set {setting} to 86400 or less",
        CleanupNeeded,
        stacklevel=4,
    )


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
