"""``consul-results doctor``: can results live here? Each check is one question asked of Consul,
reported (never raised) so that the next checks still run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .connection import ConsulError, PermissionDenied
from .expiry import create_session
from .operations import ResultOperations


@dataclass
class Diagnosis:
    """One check: what was checked, whether it passed, and the detail or error."""

    name: str
    ok: bool
    detail: str
    error: BaseException | None = None


def diagnose(ops: ResultOperations) -> list[Diagnosis]:
    """Reach the agent, a leader, read and write the prefix, create sessions, and whether
    ``result_expires`` fits Consul's limits. Writes leave nothing behind: the probe key is set
    and deleted in one transaction, the probe session destroyed."""
    checks: list[tuple[str, Callable[[ResultOperations], str]]] = [
        ("reach the agent", _agent),
        ("a cluster leader", _leader),
        ("read the prefix", _read),
        ("write the prefix", _write),
        ("create sessions", _sessions),
        ("connection budget", _budget),
    ]
    found = []
    for name, check in checks:
        try:
            found.append(Diagnosis(name, True, check(ops)))
        except Exception as exc:  # reported, never raised
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            found.append(Diagnosis(name, False, text, exc))
            if name == "reach the agent":
                break
    found.append(Diagnosis("result_expires", True, ops.expiry.describe()))
    return found


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
