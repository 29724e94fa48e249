"""Fault injection: make the dev server misbehave the way a real cluster does on a bad day.

A fault is a :class:`FaultRule`; rules are consulted in order for every request under ``/v1/``.
The same rule objects are used from Python (``server.faults.add(...)``), from the
``dev-server --fault-*`` options and over the control endpoint (``PUT /_dev/faults``), so a test can
steer a server running in another process exactly like one in its own.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("error", "latency", "reset", "rate-limit")
# Consul's server request-rate limiter (1.15+, agent/consul/rate/handler.go): ErrRetryElsewhere
# becomes a 429, ErrRetryLater (a write on the leader) a 503, each with the error as its body;
# a client agent's own limits.rpc_rate is a 429 with an empty body (agent/http.go).
RETRY_ELSEWHERE = "rate limit exceeded, try again later or against a different server"
RETRY_LATER = (
    "rate limit exceeded for operation that can only be performed by the leader, try again later"
)
RATE_LIMIT_ANSWERS = ("leader", "retry-elsewhere", "retry-later", "rpc-rate")


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
    - ``rate-limit``: refuse the request as Consul's rate limiters do, applying nothing;
      ``answer`` says which: ``leader`` (the dev server is the leader: a write, any method but
      GET, gets the 503 ``RETRY_LATER``, a read the 429 ``RETRY_ELSEWHERE``), ``retry-elsewhere``
      or ``retry-later`` (that answer for every request), ``rpc-rate`` (a client agent's
      ``limits.rpc_rate``: a 429 with an empty body). ``/v1/agent/`` is never limited (no RPC),
      nor ``/v1/status/`` by the server's limiter (Consul exempts it).

    ``duration`` (seconds) ends any rule that long after it was added, whatever is left of its
    ``count``: "refuse everything for 2 s".
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
    duration: float | None = None
    answer: str = "leader"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.when not in ("before", "after"):
            raise ValueError("fault 'when' must be 'before' or 'after'")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fault fraction must be between 0 and 1")
        if self.answer not in RATE_LIMIT_ANSWERS:
            raise ValueError(
                f"fault answer must be one of {RATE_LIMIT_ANSWERS}, not {self.answer!r}"
            )
        if self.duration is not None and self.duration <= 0:
            raise ValueError("fault duration must be a positive number of seconds")
        self.methods = [m.upper() for m in self.methods]

    def matches(self, method: str, path: str) -> bool:
        if self.kind == "rate-limit" and not self._rate_limited(path):
            return False
        return path.startswith(self.path_prefix) and (not self.methods or method in self.methods)

    def _rate_limited(self, path: str) -> bool:
        if path.startswith("/v1/agent/"):
            return False
        return self.answer == "rpc-rate" or not path.startswith("/v1/status/")

    def rate_limit_answer(self, method: str) -> tuple[int, str]:
        """The status and body a ``rate-limit`` rule answers ``method`` with."""
        if self.answer == "rpc-rate":
            return 429, ""
        if self.answer == "retry-later" or (self.answer == "leader" and method != "GET"):
            return 503, RETRY_LATER
        return 429, RETRY_ELSEWHERE


class FaultInjector:
    """The server's active rules, safe to change from any thread while requests run."""

    def __init__(
        self, seed: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._clock = clock
        self._ends: dict[int, float] = {}  # id(rule) -> when a rule with a duration ends
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
            if rule.duration is not None:
                self._ends[id(rule)] = self._clock() + rule.duration
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._ends.clear()

    def _drop(self, rule: FaultRule) -> None:
        self._rules.remove(rule)
        self._ends.pop(id(rule), None)

    def _ended(self, rule: FaultRule) -> bool:
        end = self._ends.get(id(rule))
        return end is not None and self._clock() >= end

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def pick(self, method: str, path: str) -> list[FaultRule]:
        """The rules that fire for this request (at most one of each kind), consuming counts."""
        fired: dict[str, FaultRule] = {}
        with self._lock:
            for rule in list(self._rules):
                if self._ended(rule):
                    self._drop(rule)
                    continue
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
                        self._drop(rule)
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

    def rate_limit(
        self,
        duration: float | None = None,
        count: int | None = None,
        answer: str = "leader",
        methods: list[str] | None = None,
        path_prefix: str = "/v1/",
    ) -> FaultRule:
        """Refuse matching requests as Consul's rate limiter does, for ``duration`` seconds or
        ``count`` requests (see :class:`FaultRule` for the ``answer`` forms)."""
        rule = FaultRule(
            "rate-limit",
            count=count,
            duration=duration,
            answer=answer,
            methods=methods or [],
            path_prefix=path_prefix,
        )
        return self.add(rule)
