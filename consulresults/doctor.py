"""``consul-results doctor``: can results live here? Each check is one question asked of Consul,
reported (never raised) so that the next checks still run."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import batching, rings
from .connection import ConsulError, PermissionDenied, Transport
from .expiry import create_session
from .operations import ResultOperations
from .waiting import ROUND_SECONDS, SAFETY_NET


@dataclass
class Diagnosis:
    """One check: what was checked, whether it passed, and the detail or error. A check that
    is not ``required`` (pushed waiting) only warns when it fails: results work without it,
    waiting is slower."""

    name: str
    ok: bool
    detail: str
    error: BaseException | None = None
    required: bool = True


def diagnose(ops: ResultOperations) -> list[Diagnosis]:
    """Reach the agent, a leader, read and write the prefix, create sessions, whether both
    sides of pushed waiting may work with this token, and whether ``result_expires`` fits
    Consul's limits. Writes leave nothing behind: the probe key is set and deleted in one
    transaction, the probe sessions destroyed (with the keys the waiting one held)."""
    checks: list[tuple[str, Callable[[ResultOperations], str]]] = [
        ("reach the agent", _agent),
        ("a cluster leader", _leader),
        ("read the prefix", _read),
        ("write the prefix", _write),
        ("create sessions", _sessions),
        ("connection budget", _budget),
        ("group commit", _batching),
        ("scope and credentials", _credentials),
    ]
    found = []
    for name, check in checks:
        found.append(_run(name, check, ops))
        if name == "reach the agent" and not found[-1].ok:
            break
    else:
        found.extend(_pushed_waiting(ops))
    found.append(Diagnosis("result_expires", True, ops.expiry.describe()))
    return found


def _run(name: str, check: Callable[[ResultOperations], str], ops: ResultOperations) -> Diagnosis:
    try:
        return Diagnosis(name, True, check(ops))
    except Exception as exc:  # reported, never raised
        return Diagnosis(name, False, _first_line(exc), exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


CONSUL_DEFAULT_CONNS_PER_CLIENT = 200


def _budget(ops: ResultOperations) -> str:
    """What one process of this configuration may hold against the agent's per-client-IP
    limit, and so how many such processes one client IP (a host, a pod with its own IP,
    everything behind one NAT address) can run busy at once."""
    transport = ops.store.transport
    pool = transport.pool
    try:
        debug = transport.request("GET", "/v1/agent/self").body.get("DebugConfig") or {}
        limit, source = int(debug["HTTPMaxConnsPerClient"]), "the agent's limits"
    except (PermissionDenied, KeyError, TypeError, ValueError):
        limit = CONSUL_DEFAULT_CONNS_PER_CLIENT
        source = "Consul's default, assumed (reading it needs agent:read)"
    holds = (
        f"one process holds at most {pool.limit} connection(s) (max_connections), none after "
        f"{pool.idle_timeout:g} s idle"
    )
    if limit == 0:
        return f"{holds}; the agent sets no per-client-IP limit"
    return (
        f"{holds}; {limit} per client IP ({source}): at most {limit // pool.limit} such "
        "processes per host, pod IP or NAT address if all are busy at once, less what the "
        "host's other Consul clients use"
    )


def _batching(ops: ResultOperations) -> str:
    """Whether concurrent stores and reads share txns, within which limits, and what this
    process's batchers did so far (a worker's figures show in its own process: the bench)."""
    store = ops.store
    if not store.transport.batching:
        return "off (batching=false): every store and read is a request of its own"
    writes = store.writes
    done = batching.stats()
    return (
        f"on: beyond {writes.senders} concurrent senders, stores (and reads) queue and go out "
        f"together, up to {writes.max_ops} operations and {writes.max_body} bytes per txn; "
        f"this process: {done.get('batches', 0)} batch(es) of {done.get('members', 0)}, "
        f"{done.get('resent', 0)} sent again"
    )


def _credentials(ops: ResultOperations) -> str:
    """The namespace and partition, the token's and basic auth's sources (never their values)
    and the agent's default ACL policy where it sends it: what an operator checks first when
    results seem to be missing."""
    transport = ops.store.transport
    sources, scope = transport.sources, transport.scope
    parts = [
        f"{what} {value} ({sources.get(what, '?')})" if value else f"{what}: default"
        for what, value in (("namespace", scope.namespace), ("partition", scope.partition))
    ]
    if "token_file" in sources:
        parts.append(f"token read from a file ({sources['token_file']})")
    elif "token" in sources:
        parts.append(f"token given as a value ({sources['token']})")
    else:
        parts.append("no token (the agent's default token)")
    parts.append(
        f"basic auth ({sources['http_auth']})" if "http_auth" in sources else "no basic auth"
    )
    policy = transport.request("GET", "/v1/status/leader").headers.get(
        "X-Consul-Default-ACL-Policy"
    )
    if policy:
        parts.append(f"the agent's default ACL policy: {policy}")
    return "; ".join(parts)


def _agent(ops: ResultOperations) -> str:
    transport = ops.store.transport
    try:
        config = transport.request("GET", "/v1/agent/self").body["Config"]
    except PermissionDenied:  # the agent answered; its details need agent:read
        transport.request("GET", "/v1/status/leader")
        return f"{transport.base_uri} (its version and limits need agent:read)"
    return (
        f"{transport.base_uri}: Consul {config.get('Version', '?')}, "
        f"node {config.get('NodeName', '?')}"
    )


def _leader(ops: ResultOperations) -> str:
    leader = ops.store.transport.request("GET", "/v1/status/leader").body
    if not leader:
        raise ConsulError(500, "No cluster leader")
    return f"leader {leader}"


def _read(ops: ResultOperations) -> str:
    return f"{len(ops.store.list_keys())} key(s) under {ops.prefix or '(root)'}/"


def _write(ops: ResultOperations) -> str:
    probe = ops.store.key(f"consul-results-doctor-{uuid.uuid4().hex}")
    answer = ops.store.transport.txn(
        [
            {"KV": {"Verb": "set", "Key": probe, "Value": ""}},
            {"KV": {"Verb": "delete", "Key": probe}},
        ]
    )
    if not answer.applied:
        raise answer.error()
    return f"set and deleted {probe}"


def _sessions(ops: ResultOperations) -> str:
    transport = ops.store.transport
    session = create_session(transport, "consul-results:doctor", 10)
    transport.request("PUT", f"/v1/session/destroy/{session}")
    return "created and destroyed a 10 s session"


# ---------------------------------------------------------------------- pushed waiting


class NotPushed(Exception):
    """A side of pushed waiting cannot work with this token (or this Consul): what fails, what
    it costs, and what to grant. Its text is the check's whole detail."""


class _Probe:
    """What the two pushed-waiting checks share: a short-lived waiting session (None until
    created, or when it may not be), the result key it registers on (never written) and the
    waiting keys' names. :meth:`close` destroys the session, and every key it holds with it."""

    TTL = 10

    def __init__(self, ops: ResultOperations) -> None:
        self.transport: Transport = ops.store.transport
        self.layout = ops.store.waiting
        self.root = self.layout.root
        self.key = ops.store.key(f"consul-results-doctor-{uuid.uuid4().hex}")
        self.session: str | None = None

    def open(self) -> str:
        self.session = create_session(self.transport, "consul-results-waiting:doctor", self.TTL)
        return self.session

    def close(self) -> None:
        if self.session is None:
            return
        # should it fail, the session lapses by itself within two TTLs, and its keys go then
        with contextlib.suppress(Exception):
            self.transport.request("PUT", f"/v1/session/destroy/{self.session}")
        self.session = None

    def grant(self, access: str, where: str) -> str:
        """``key:<access>`` on ``<root>/<where>``, with its ACL rule."""
        path = f"{self.root}/{where}"
        return f'key:{access} on {path} (key_prefix "{path}" {{ policy = "{access}" }})'


def _pushed_waiting(ops: ResultOperations) -> list[Diagnosis]:
    """The waiter's side, then the writer's, with one probe session destroyed in any case."""
    probe = _Probe(ops)
    try:
        return [
            _run_waiting("pushed waiting (waiter)", _waiter, probe),
            _run_waiting("pushed waiting (writer)", _writer, probe),
        ]
    finally:
        probe.close()


def _run_waiting(name: str, check: Callable[[_Probe], str], probe: _Probe) -> Diagnosis:
    try:
        return Diagnosis(name, True, check(probe), required=False)
    except NotPushed as exc:
        return Diagnosis(name, False, str(exc), exc, required=False)
    except Exception as exc:  # reported, never raised
        return Diagnosis(name, False, _first_line(exc), exc, required=False)


def _polls(failed: str, grant: str) -> NotPushed:
    return NotPushed(
        f"{failed}: waiters with this token poll every {ROUND_SECONDS:g} s ({ROUND_SECONDS:g} s "
        f"latency) instead of being pushed results; grant {grant}"
    )


def _waiter(probe: _Probe) -> str:
    """A waiting session, and one registration txn as :mod:`consulresults.doorbell` sends it:
    the doorbell's anchor and a registration locked with it, the key read (``get-or-empty``)."""
    keys = probe.grant("write", "")
    try:
        session = probe.open()
    except PermissionDenied:
        grant = 'session:write on this agent\'s node (session_prefix "" { policy = "write" })'
        raise _polls("the token may not create a waiting session", f"{grant} and {keys}") from None
    ops = [
        rings.lock_op(probe.layout.doorbell(session), session),
        rings.lock_op(probe.layout.registration(probe.key, session), session),
        {"KV": {"Verb": "get-or-empty", "Key": probe.key}},
    ]
    try:
        answer = probe.transport.txn(ops)
    except PermissionDenied:
        failed = f"the token may not lock a registration and a doorbell under {probe.root}/"
        raise _polls(failed, keys) from None
    if not answer.applied:
        if any("get-or-empty" in error["What"] for error in answer.errors):
            raise NotPushed(
                f"this Consul has no get-or-empty (older than 1.14): waiters poll every "
                f"{ROUND_SECONDS:g} s ({ROUND_SECONDS:g} s latency); upgrade Consul to 1.14 or "
                "later for pushed results"
            )
        raise answer.error()
    return (
        f"created a waiting session and locked a registration and a doorbell under "
        f"{probe.root}/ with it: waiters with this token are pushed results"
    )


def _writer(probe: _Probe) -> str:
    """What a store does for its waiters: read the key's registrations (``get-tree`` in its
    writing txn), then ring each waiter's doorbell (``lock`` naming the waiter's session)."""
    failed, grants = [], []
    if not _reads_registrations(probe):
        failed.append(
            f"a get-tree of {probe.root}/r/ returns nothing to this token (Consul leaves out, "
            "silently, what a token may not read), so its writers see no waiter"
        )
        grants.append(probe.grant("read", "r/"))
    if not _rings(probe):
        failed.append(f"the token may not ring doorbells under {probe.root}/d/")
        grants.append(probe.grant("write", "d/"))
    if failed:
        raise NotPushed(
            f"{'; '.join(failed)}: results this token's writers store reach other processes' "
            f"waiters only through their {SAFETY_NET:g} s safety net; grant {' and '.join(grants)}"
        )
    return (
        f"a writing txn's get-tree of {probe.root}/r/ returned a registration and a doorbell "
        "rang: results stored with this token are pushed to waiters"
    )


def _reads_registrations(probe: _Probe) -> bool:
    """Whether a ``get-tree`` of a key's registrations in a writing txn returns them. Consul
    filters what the token may not read out of a txn's answer without a word (consul-api.md
    §11.3), so the probe locks a registration and reads the tree in the same txn: the
    registration comes back twice (the lock's answer and the tree's) when readable. A token
    that may not write one is asked about reading a registration instead (a single-key GET:
    403 when denied, 404 when missing, §6)."""
    session = probe.session
    if session is not None:
        registration = probe.layout.registration(probe.key, session)
        ops = [
            rings.lock_op(registration, session),
            rings.registrations_op(probe.layout, probe.key),
        ]
        try:
            answer = probe.transport.txn(ops)
        except PermissionDenied:
            pass  # may not write registrations: may it read them?
        else:
            if not answer.applied:
                raise answer.error()
            found = [r for r in answer.results or () if r.get("KV", {}).get("Key") == registration]
            return len(found) == 2
    registration = probe.layout.registration(probe.key, session or str(uuid.uuid4()))
    try:
        probe.transport.request("GET", f"/v1/kv/{registration}", expect=(200, 404))
    except PermissionDenied:
        return False
    return True


def _rings(probe: _Probe) -> bool:
    """Whether the token may ring a doorbell: a ``lock`` of a ring key naming the probe's
    session (held by it, so it goes with the session). Without a session, one that does not
    exist is named: Consul checks the ACL before anything runs (consul-api.md §4.4), so
    ``invalid session`` (§11.1) means allowed, and nothing is written."""
    session = probe.session or str(uuid.uuid4())
    op = rings.lock_op(probe.layout.ring(session, probe.key), session, b"consul-results doctor")
    try:
        answer = probe.transport.txn([op])
    except PermissionDenied:
        return False
    if answer.applied or any("invalid session" in e["What"] for e in answer.errors):
        return True
    raise answer.error()
