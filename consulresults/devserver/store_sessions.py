"""The sessions part of the :class:`~.store.Store`: create, destroy, renew, TTL expiry and
invalidation (releasing or deleting the keys a session holds, with lock-delay)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from .durations import DurationError, format_go_duration, parse_go_duration
from .model import DEFAULT_SCOPE, SERF_HEALTH, Scope, Session, StoreError
from .state import StoreState

MAX_TTL_NS = 24 * 3600 * 1_000_000_000
MAX_LOCK_DELAY_S = 60.0


class SessionStore(StoreState):
    """Sessions of every scope on the dev server's one node (registered in every partition)."""

    def session_create(self, spec: dict[str, Any], scope: Scope = DEFAULT_SCOPE) -> str:
        """Create a session from a decoded request body (field names already lower-cased)."""
        session = self._session_from_spec(spec, scope)
        with self._transaction("raft.session") as idx:
            self._validate_session_checks(session)
            session.create_index = session.modify_index = idx
            self._write_session(session.id, session, idx)
            self._arm(session)
        return session.id

    def _session_from_spec(self, spec: dict[str, Any], scope: Scope) -> Session:
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
            scope=scope,
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

    def session_destroy(self, session_id: str, scope: Scope = DEFAULT_SCOPE) -> None:
        """Destroy (no-op for unknown ids): release or delete its keys, apply lock-delay."""
        session = self.find_session(session_id, scope)
        if session is None:
            return
        with self._transaction("raft.session") as idx:
            self._invalidate(session, idx)

    def _invalidate(self, session: Session, idx: int) -> None:
        space = self.space(session.scope)
        held = [space.entries[k] for k in sorted(self.held.pop(session.id, ()))]
        delay = min(session.lock_delay_ns / 1e9, MAX_LOCK_DELAY_S)
        for entry in held:
            if session.behavior == "delete":
                self._write_entry(space, entry.key, None, idx)
            else:
                released = replace(entry, session="", modify_index=idx)
                self._write_entry(space, entry.key, released, idx)
            if delay > 0:
                space.lock_delays[entry.key] = self.clock() + delay
        self._write_session(session.id, None, idx)

    def session_renew(self, session_id: str, scope: Scope = DEFAULT_SCOPE) -> Session | None:
        session = self.find_session(session_id, scope)
        if session is not None:
            self._arm(session)
        return session

    def session_get(self, session_id: str, scope: Scope = DEFAULT_SCOPE) -> Session | None:
        return self.find_session(session_id, scope)

    def session_list(self, node: str | None = None, scope: Scope = DEFAULT_SCOPE) -> list[Session]:
        sessions = sorted(
            (s for s in self.sessions.values() if s.scope == scope), key=lambda s: s.id
        )
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
