"""How long results live: an :class:`ExpiryPlan` per ``result_expires``, and the sessions that
carry it out.

Consul removes a key when the session holding it is invalidated (behaviour ``delete``), and
invalidates a session between TTL and 2xTTL after its last renewal. One session per process,
TTL and time window holds many results, so a first write costs one request instead of Celery's
built-in two (create a session, then write). Sessions carry no health checks and a lock delay of
0: a result goes because its time passed or an operator removed it, never because an agent had
a bad minute.

A session's TTL is ``expires + window``, so a result written at the end of the window still
lives ``expires``. Where that exceeds Consul's 24 h cap (Celery's default ``result_expires`` is
exactly 24 h), the TTL is ``expires`` itself and the process renews the session once, when its
window closes: results written in the window live at least ``expires`` if the process lives
that long, and at least ``expires - window`` if it dies inside the window. Longer expiries get
no session; their time is recorded in the key's ``Flags`` and enforced by a cleanup.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from . import forks
from .background import BACKGROUND, Timer
from .connection import Transport, is_transient

MAX_TTL = 86_400
MIN_TTL = 10
MAX_WINDOW = 300.0
MIN_WINDOW = 60.0  # below this, a new session a minute: renew one instead
RENEW_PATIENCE = 3600.0  # a renewal due now still has most of a (>= 24 h) TTL to land
EXIT_TIMEOUT = 2.0  # a process on its way out tries once, briefly

logger = logging.getLogger(__name__)


class CleanupNeeded(UserWarning):
    """Results under this expiry are removed only by a cleanup (celery beat, ``purge``)."""


_UNTIL = re.compile(r" until=(\d+) ")


@dataclass(frozen=True)
class ExpiryPlan:
    """How results that must live ``expires`` seconds are kept: a session TTL (renewed once
    when its window closes, or not at all), or Flags only."""

    expires: float | None
    session_ttl: int | None
    window: float
    renewed: bool = False

    @classmethod
    def for_expires(cls, expires: float | None, window: float | None = None) -> ExpiryPlan:
        """Sessions live TTL >= expires + window, so every result written during the window lives
        at least ``expires`` (the window shrinks to fit Consul's 24 h cap). Where not even
        ``MIN_WINDOW`` fits, the TTL is ``expires`` and the session is renewed when its window
        (at most ``MAX_WINDOW``) closes; past the cap itself, no session is used."""
        if not expires:
            return cls(None, None, 0.0)
        if window is None:
            window = min(MAX_WINDOW, max(1.0, expires / 4))
        ttl = max(MIN_TTL, math.ceil(expires))
        if ttl > MAX_TTL:
            return cls(expires, None, 0.0)
        room = MAX_TTL - expires
        if room >= min(window, MIN_WINDOW):
            window = min(window, room)
            return cls(expires, max(MIN_TTL, math.ceil(expires + window)), window)
        return cls(expires, ttl, min(window, MAX_WINDOW), renewed=True)

    def flags(self) -> int:
        """Unix time after which the result may be removed (0: never)."""
        return math.ceil(time.time() + self.expires) if self.expires else 0

    @property
    def removed_by_consul(self) -> bool:
        """Whether Consul removes these results by itself (no cleanup needed)."""
        return self.session_ttl is not None or not self.expires

    def describe(self) -> str:
        """The expiry mode and what removes results, for an operator (``doctor``)."""
        if not self.expires:
            return "None: results never expire; nothing removes them"
        if self.session_ttl is None:
            return (
                f"{self.expires:g} s: over Consul's 24 h session TTL, so expiry is recorded in "
                "Flags and only a cleanup removes results: run celery beat (it schedules "
                "celery.backend_cleanup daily) or `consul-results purge --expired` from cron"
            )
        note = " (raised to Consul's 10 s minimum)" if self.expires < MIN_TTL else ""
        if self.renewed:
            return (
                f"{self.expires:g} s{note}: sessions with TTL {self.session_ttl} s, renewed once "
                f"when their {self.window:g} s window closes; Consul deletes results 1-2x TTL "
                f"after that (at least {self.expires - self.window:g} s if the writing process "
                "dies inside the window); no cleanup needed"
            )
        return (
            f"{self.expires:g} s{note}: sessions with TTL {self.session_ttl} s; "
            "Consul deletes results within 2xTTL; no cleanup needed"
        )


def session_name(prefix: str, until: float = 0.0) -> str:
    """``consul-results:<host>:<pid> until=<unix time> prefix="<prefix>"``: the (JSON-quoted)
    prefix lets ``sessions gc`` and ``rm`` tell our sessions for one prefix from another's, and
    ``until`` says when the writing process stops handing the session out (its window, plus
    time for a write sent at its end), so that a session holding nothing *yet* is not taken
    for an idle one."""
    host = f"consul-results:{socket.gethostname()}:{os.getpid()}"
    return f"{host} until={math.ceil(until)} prefix={json.dumps(prefix)}"


def made_for(name: str, prefix: str) -> bool:
    """Whether a session name is one of ours for ``prefix`` (any host, any process)."""
    return name.startswith("consul-results:") and name.endswith(f" prefix={json.dumps(prefix)}")


def in_use(name: str, now: float) -> bool:
    """Whether one of our sessions may still be handed out to writers (names from releases
    before ``until`` existed: no)."""
    found = _UNTIL.search(name)
    return found is not None and int(found.group(1)) > now


def create_session(transport: Transport, name: str, ttl: int) -> str:
    """A session that deletes what it holds when it goes, with no checks and no lock delay."""
    body = {"name": name, "checks": [], "lockdelay": "0s", "behavior": "delete", "ttl": f"{ttl}s"}
    return cast(str, transport.request("PUT", "/v1/session/create", body=body).body["ID"])


class SessionPool:
    """This process's sessions, one per TTL, each used for writes during its window."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._transport = transport
        self.prefix = prefix
        self.reset()
        forks.reset_in_forked_child(self)  # sessions are never shared between processes

    def reset(self) -> None:
        self._lock = threading.Lock()  # held across a request: a fork may catch it held
        self._sessions: dict[tuple[int, bool], tuple[str, float]] = {}

    def get(self, plan: ExpiryPlan) -> str | None:
        """The session to write under now (None: the plan needs none)."""
        if plan.session_ttl is None:
            return None
        kind = (plan.session_ttl, plan.renewed)
        with self._lock:
            found = self._sessions.get(kind)
            now = time.monotonic()
            if found and now - found[1] < plan.window:
                return found[0]
            # a write sent at the window's end may take a connect and a read timeout to land
            landed = plan.window + 2 * self._transport.timeout
            name = session_name(self.prefix, until=time.time() + landed)
            session_id = create_session(self._transport, name, plan.session_ttl)
            self._sessions[kind] = (session_id, now)
        if plan.renewed:
            self._renew_later(session_id, landed)
        return session_id

    def _renew_later(
        self, session_id: str, delay: float, tries: int = 0, since: float | None = None
    ) -> None:
        first = time.monotonic() + delay if since is None else since
        timer = BACKGROUND.call_later(delay, lambda: self._renew_due(session_id, tries, first))
        _pending.add(session_id, timer, self)

    def _renew_due(self, session_id: str, tries: int, since: float) -> None:
        """One try on the background thread, which must not sleep through an outage (every
        waiter of the process relies on it): a transient failure is tried again later, by a
        new timer, for up to ``RENEW_PATIENCE`` (the TTL leaves hours for it)."""
        _pending.take(session_id)
        try:
            self._transport.request("PUT", f"/v1/session/renew/{session_id}")
        except Exception as exc:
            pause = min(60.0, 2.0 ** (tries + 1))
            if is_transient(exc) and time.monotonic() + pause - since < RENEW_PATIENCE:
                self._renew_later(session_id, pause, tries + 1, since)
            else:
                _renewal_failed(session_id, exc)

    def _renew_now(self, session_id: str) -> None:
        """One try, briefly (a process on its way out)."""
        path = f"/v1/session/renew/{session_id}"
        try:
            self._transport.request("PUT", path, timeout=EXIT_TIMEOUT)
        except Exception as exc:
            _renewal_failed(session_id, exc)

    def discard_if_invalid(self, session_id: str | None, errors: list[dict[str, Any]]) -> None:
        """Forget a session a txn reported invalid (expired, or destroyed by an operator)."""
        if not session_id or not any("invalid session" in e["What"] for e in errors):
            return
        with self._lock:
            for kind, found in list(self._sessions.items()):
                if found[0] == session_id:
                    del self._sessions[kind]


_POOLS: dict[tuple[object, ...], SessionPool] = {}
_POOLS_LOCK = forks.Lock()


def session_pool(transport: Transport, prefix: str) -> SessionPool:
    """The process's sessions for ``prefix`` on this agent (and token and datacenter): shared
    by every backend instance, as Celery makes one per thread, so a threaded worker creates one
    session per TTL and window, not one per thread."""
    key = (*transport.identity, prefix)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = SessionPool(transport, prefix)
        return pool


def _renewal_failed(session_id: str, exc: BaseException) -> None:
    logger.warning(
        "could not renew session %s (%s): results written under it may be removed up to its "
        "window early",
        session_id,
        exc,
    )


class _PendingRenewals:
    """The sessions this process is to renew when their window closes, each with its timer.
    A forked child starts with none: the timers did not follow it."""

    def __init__(self) -> None:
        self.reset()
        forks.reset_in_forked_child(self)

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[str, tuple[Timer, SessionPool]] = {}

    def add(self, session_id: str, timer: Timer, pool: SessionPool) -> None:
        with self._lock:
            self._timers[session_id] = (timer, pool)

    def take(self, session_id: str | None = None) -> list[tuple[str, Timer, SessionPool]]:
        """Remove and return one session's entry, or (``None``) all of them."""
        with self._lock:
            ids = list(self._timers) if session_id is None else [session_id]
            return [(sid, *self._timers.pop(sid)) for sid in ids if sid in self._timers]


_pending = _PendingRenewals()


def renew_pending() -> None:
    """Renew now every session this process was to renew when its window closes. A process
    that stops writes nothing more, so renewing early keeps the promise (what it wrote lives a
    TTL from now), where the timer would die with the process. Runs at exit, and on Celery's
    ``worker_process_shutdown`` (prefork children leave without running ``atexit``)."""
    for sid, timer, pool in _pending.take():
        timer.cancel()
        pool._renew_now(sid)


atexit.register(renew_pending)
