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

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from .connection import Transport, is_transient
from .retry import RetryPolicy

MAX_TTL = 86_400
MIN_TTL = 10
MAX_WINDOW = 300.0
RENEW_PATIENCE = 3600.0  # a renewal due now still has most of a (>= 24 h) TTL to land

logger = logging.getLogger(__name__)


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
        at least ``expires``; past Consul's 24 h cap the TTL is ``expires`` and the session is
        renewed when its window closes; past the cap itself, no session is used."""
        if not expires:
            return cls(None, None, 0.0)
        if window is None:
            window = min(MAX_WINDOW, max(1.0, expires / 4))
        ttl = max(MIN_TTL, math.ceil(expires))
        if ttl > MAX_TTL:
            return cls(expires, None, 0.0)
        if expires + window <= MAX_TTL:
            return cls(expires, max(MIN_TTL, math.ceil(expires + window)), window)
        return cls(expires, ttl, window, renewed=True)

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


def session_name(prefix: str) -> str:
    """``consul-results:<host>:<pid> prefix="<prefix>"``: the (JSON-quoted) prefix in the name
    lets ``sessions gc`` and ``rm`` tell our sessions for one prefix from another's."""
    return f"consul-results:{socket.gethostname()}:{os.getpid()} prefix={json.dumps(prefix)}"


def made_for(name: str, prefix: str) -> bool:
    """Whether a session name is one of ours for ``prefix`` (any host, any process)."""
    return name.startswith("consul-results:") and name.endswith(f" prefix={json.dumps(prefix)}")


def create_session(transport: Transport, name: str, ttl: int) -> str:
    """A session that deletes what it holds when it goes, with no checks and no lock delay."""
    body = {"name": name, "checks": [], "lockdelay": "0s", "behavior": "delete", "ttl": f"{ttl}s"}
    return cast(str, transport.request("PUT", "/v1/session/create", body=body).body["ID"])


class SessionPool:
    """This process's sessions, one per TTL, each used for writes during its window."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        self._sessions: dict[tuple[int, bool], tuple[str, float, int]] = {}
        self.prefix = prefix

    def get(self, plan: ExpiryPlan) -> str | None:
        """The session to write under now (None: the plan needs none). A forked child makes
        its own, so sessions are never shared between processes."""
        if plan.session_ttl is None:
            return None
        kind = (plan.session_ttl, plan.renewed)
        with self._lock:
            found = self._sessions.get(kind)
            now = time.monotonic()
            if found and found[2] == os.getpid() and now - found[1] < plan.window:
                return found[0]
            name = session_name(self.prefix)
            session_id = create_session(self._transport, name, plan.session_ttl)
            self._sessions[kind] = (session_id, now, os.getpid())
        if plan.renewed:
            # after the window, and after a write sent at its very end has had time to land
            self._renew_later(session_id, plan.window + self._transport.timeout)
        return session_id

    def _renew_later(self, session_id: str, delay: float) -> None:
        timer = threading.Timer(delay, self._renew, (session_id,))
        timer.daemon = True
        timer.start()

    def _renew(self, session_id: str) -> None:
        """Renew once; an outage is retried (the TTL leaves hours for it), a failure logged."""
        policy = RetryPolicy(is_transient, lambda n: min(60.0, 2.0**n), patience=RENEW_PATIENCE)
        path = f"/v1/session/renew/{session_id}"
        try:
            policy.call(lambda: self._transport.request("PUT", path))
        except Exception as exc:
            logger.warning(
                "could not renew session %s (%s): results written under it may be removed up "
                "to its window early",
                session_id,
                exc,
            )

    def discard_if_invalid(self, session_id: str | None, errors: list[dict[str, Any]]) -> None:
        """Forget a session a txn reported invalid (expired, or destroyed by an operator)."""
        if not session_id or not any("invalid session" in e["What"] for e in errors):
            return
        with self._lock:
            for kind, found in list(self._sessions.items()):
                if found[0] == session_id:
                    del self._sessions[kind]
