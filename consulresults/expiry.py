"""How long results live: an :class:`ExpiryPlan` per ``result_expires``, and the sessions that
carry it out.

Consul removes a key when the session holding it is invalidated (behaviour ``delete``), and
invalidates a session between TTL and 2xTTL after its last renewal. One session per process,
TTL and time window holds many results, so a first write costs one request instead of Celery's
built-in two (create a session, then write). Sessions carry no health checks and a lock delay of
0: a result goes because its time passed or an operator removed it, never because an agent had
a bad minute. Expiries beyond Consul's 24 h TTL cap get no session; their time is recorded in
the key's ``Flags`` and enforced by a cleanup.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass

from .connection import Transport

MAX_TTL = 86_400
MIN_TTL = 10
MAX_WINDOW = 300.0


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

    def describe(self) -> str:
        """What this plan means for an operator (``doctor``)."""
        if not self.expires:
            return "None: results never expire"
        if self.session_ttl is None:
            return (
                f"{self.expires:g} s: over what sessions allow, so expiry is recorded in Flags; "
                "run celery beat (backend_cleanup) or `purge --expired`"
            )
        note = " (raised to Consul's 10 s minimum)" if self.expires < MIN_TTL else ""
        return (
            f"{self.expires:g} s{note}: sessions with TTL {self.session_ttl} s; "
            "Consul deletes results within 2xTTL"
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
    return transport.request("PUT", "/v1/session/create", body=body).body["ID"]


class SessionPool:
    """This process's sessions, one per TTL, each used for writes during its window."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        self._sessions: dict[int, tuple[str, float, int]] = {}
        self.prefix = prefix

    def get(self, plan: ExpiryPlan) -> str | None:
        """The session to write under now (None: the plan needs none). A forked child makes
        its own, so sessions are never shared between processes."""
        if plan.session_ttl is None:
            return None
        with self._lock:
            found = self._sessions.get(plan.session_ttl)
            now = time.monotonic()
            if found and found[2] == os.getpid() and now - found[1] < plan.window:
                return found[0]
            name = session_name(self.prefix)
            session_id = create_session(self._transport, name, plan.session_ttl)
            self._sessions[plan.session_ttl] = (session_id, now, os.getpid())
            return session_id

    def discard_if_invalid(self, session_id: str | None, errors: list[dict]) -> None:
        """Forget a session a txn reported invalid (expired, or destroyed by an operator)."""
        if not session_id or not any("invalid session" in e["What"] for e in errors):
            return
        with self._lock:
            for ttl, found in list(self._sessions.items()):
                if found[0] == session_id:
                    del self._sessions[ttl]
