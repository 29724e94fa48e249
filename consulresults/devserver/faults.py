"""Fault injection: make the dev server misbehave the way a real cluster does on a bad day.

A fault is a :class:`FaultRule`; rules are consulted in order for every request under ``/v1/``.
The same rule objects are used from Python (``server.faults.add(...)``), from the
``dev-server --fault-*`` options and over the control endpoint (``PUT /_dev/faults``), so a test can
steer a server running in another process exactly like one in its own.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("error", "latency", "reset")


@dataclass
class FaultRule:
    """One kind of misbehaviour, applied to the next ``count`` matching requests or to a
    ``fraction`` of them (neither: every matching request until cleared), once the first
    ``after`` matching requests have gone through untouched (to hit the third step of a
    sequence, say).

    - ``error``: answer ``status`` with ``body`` instead of handling the request.
    - ``latency``: wait ``seconds`` before handling it.
    - ``reset``: drop the TCP connection with a reset; ``when="before"`` drops it without handling
      the request, ``when="after"`` applies the request and then drops the answer (the nastiest
      case for a client: the write happened, but it cannot know).
    """

    kind: str
    count: int | None = None
    fraction: float | None = None
    status: int = 500
    body: str = "No cluster leader"
    seconds: float = 0.0
    when: str = "before"
    path_prefix: str = "/v1/"
    methods: list[str] = field(default_factory=list)
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.when not in ("before", "after"):
            raise ValueError("fault 'when' must be 'before' or 'after'")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fault fraction must be between 0 and 1")
        self.methods = [m.upper() for m in self.methods]

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and (not self.methods or method in self.methods)


class FaultInjector:
    """The server's active rules, safe to change from any thread while requests run."""

    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def pick(self, method: str, path: str) -> list[FaultRule]:
        """The rules that fire for this request (at most one of each kind), consuming counts."""
        fired: dict[str, FaultRule] = {}
        with self._lock:
            for rule in list(self._rules):
                if rule.kind in fired or not rule.matches(method, path):
                    continue
                if rule.after > 0:
                    rule.after -= 1
                    continue
                if rule.fraction is not None and self._random.random() >= rule.fraction:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                fired[rule.kind] = rule
                self.injected[rule.kind] += 1
        return list(fired.values())

    # Convenience wrappers for the common cases.

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        body: str = "No cluster leader",
        path_prefix: str = "/v1/",
    ) -> FaultRule:
        return self.add(
            FaultRule("error", count=n, status=status, body=body, path_prefix=path_prefix)
        )

    def fail_fraction(
        self,
        fraction: float,
        status: int = 500,
        body: str = "No cluster leader",
        path_prefix: str = "/v1/",
    ) -> FaultRule:
        return self.add(
            FaultRule("error", fraction=fraction, status=status, body=body, path_prefix=path_prefix)
        )

    def delay(
        self,
        seconds: float,
        count: int | None = None,
        fraction: float | None = None,
        path_prefix: str = "/v1/",
    ) -> FaultRule:
        return self.add(
            FaultRule(
                "latency", count=count, fraction=fraction, seconds=seconds, path_prefix=path_prefix
            )
        )

    def reset(
        self,
        count: int | None = None,
        fraction: float | None = None,
        when: str = "before",
        path_prefix: str = "/v1/",
    ) -> FaultRule:
        return self.add(
            FaultRule("reset", count=count, fraction=fraction, when=when, path_prefix=path_prefix)
        )
