"""Consul Enterprise's namespace and admin partition, sent as Consul's client sends them, and
only when set: ``ns`` / ``partition`` query parameters on KV and session calls, ``Namespace`` /
``Partition`` fields in each txn KV operation.

Consul CE refuses a namespace or partition (400, "… are a Consul Enterprise feature") on the
endpoints that parse them, but ``/v1/txn`` parses neither and CE ignores the operations' fields:
a process whose first call is a txn would silently use the default namespace. So before its
first txn, a process checks the scope once with a KV read (:meth:`Scope.verify`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .exceptions import ConsulError

_SCOPED = ("/v1/kv/", "/v1/session/")
_VERIFIED: set[tuple[str, str, str]] = set()  # (endpoint, namespace, partition) checked
_VERIFIED_LOCK = threading.Lock()
PROBE_KEY = "/v1/kv/consul-results-namespace-check"


class Scope:
    """A transport's namespace and partition (either may be None: not sent)."""

    def __init__(self, endpoint: str, namespace: str | None, partition: str | None) -> None:
        self.namespace = namespace or None
        self.partition = partition or None
        self._key = (endpoint, namespace or "", partition or "")

    def __bool__(self) -> bool:
        return bool(self.namespace or self.partition)

    def params(self, path: str, params: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """``params`` with ``ns`` / ``partition`` added for a KV or session call."""
        if not self or not path.startswith(_SCOPED):
            return params
        named = {name for name, _ in params}
        extra = [(n, v) for n, v in (("ns", self.namespace), ("partition", self.partition)) if v]
        return params + [(n, v) for n, v in extra if n not in named]

    def ops(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Txn operations with the scope in each KV operation (Consul Enterprise reads it
        there; without it, an operation takes the token's namespace)."""
        if not self:
            return ops
        fields = {n: v for n, v in (("Namespace", self.namespace), ("Partition", self.partition))}
        fields = {n: v for n, v in fields.items() if v}
        return [{"KV": {**fields, **op["KV"]}} if "KV" in op else op for op in ops]

    def verify(self, read: Callable[[], object]) -> None:
        """Once per process and endpoint: ``read`` (a KV read in this scope) raises where Consul
        CE refuses the scope; else the txn that follows would silently go to the default one."""
        if not self:
            return
        with _VERIFIED_LOCK:
            if self._key in _VERIFIED:
                return
        read()
        with _VERIFIED_LOCK:
            _VERIFIED.add(self._key)

    def explained(self, error: ConsulError) -> ConsulError:
        """Consul CE's refusal of the scope, with what to do about it."""
        if not (self and error.status == 400 and "Enterprise feature" in error.text):
            return error
        return type(error)(400, f"{error.text} ({self.advice()})")

    def advice(self) -> str:
        named = " and ".join(
            f"{what} {value!r}"
            for what, value in (("namespace", self.namespace), ("partition", self.partition))
            if value
        )
        return (
            f"this Consul is not Consul Enterprise: unset the {named} (CONSUL_NAMESPACE, "
            "CONSUL_PARTITION, --namespace, --partition, consulresults_namespace…)"
        )
