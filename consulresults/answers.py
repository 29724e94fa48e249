"""Consul's answers as the transport hands them on: the decoded response, a txn's answer,
and which failures are transient. No I/O here."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .exceptions import ConsulError, ConsulTimeout, ConsulUnreachable, PermissionDenied

_E = TypeVar("_E", bound=BaseException)

# What a list endpoint's answer says of the entries ACLs kept from it: ``hidden``, Consul said
# the request's token hid some; ``maybe``, no token was sent to an agent that denies by default,
# and Consul never says what the anonymous token was kept from.
Hiding = Literal["hidden", "maybe"]


def compatible(cls: type[_E]) -> type[_E]:
    """The class to raise for ``cls``: also the python-consul2 or requests exception that
    Celery's built-in backend raises for the same failure."""
    from .compat import COMPATIBLE

    return COMPATIBLE[cls]  # type: ignore[return-value]


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away by itself: a lost connection, a time-out, a 429 or 5xx.
    Every retry decision in the package asks this one question."""
    if isinstance(exc, (ConsulUnreachable, ConsulTimeout)):
        return True
    return isinstance(exc, ConsulError) and exc.transient


RATE_LIMITED = b"rate limit exceeded"


def rate_limited(status: int, content: bytes) -> bool:
    """Consul's rate limiter refused the request before applying it: 429 or 503 with a text
    starting "rate limit exceeded" (1.15+'s request limits: "… try again later or against a
    different server", "… for operation that can only be performed by the leader…"), or the
    agent's own ``limits.rpc_rate``, a 429 with an empty body. No other 5xx says nothing was
    applied."""
    text = content.strip().lower()
    return (status in (429, 503) and text.startswith(RATE_LIMITED)) or (status == 429 and not text)


@dataclass
class Response:
    """Status, headers and decoded JSON (or the text, or None) of one Consul answer."""

    status: int
    headers: http.client.HTTPMessage  # case-insensitive, as HTTP headers are
    body: Any

    @property
    def index(self) -> int:
        """``X-Consul-Index``: what a blocking query waits past."""
        return int(self.headers.get("X-Consul-Index", 0))

    def hiding(self, token_sent: bool) -> Hiding | None:
        """What ACLs kept from this list answer (KV ``?keys``/``?recurse``, session lists):
        ``X-Consul-Results-Filtered-By-ACLs`` is sent only when a token (the request's, or the
        agent's default) hid entries; without a token, only the agent's default policy says
        that some may be hidden."""
        if self.headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            return "hidden"
        policy = self.headers.get("X-Consul-Default-ACL-Policy", "").lower()
        return "maybe" if not token_sent and policy == "deny" else None


@dataclass
class Answer:
    """One answer as received: status, headers and the (decompressed) body bytes."""

    status: int
    headers: http.client.HTTPMessage
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


@dataclass
class TxnAnswer:
    """A ``/v1/txn`` answer: ``results`` when it applied, else the operations' ``errors``."""

    results: list[dict[str, Any]] | None
    errors: list[dict[str, Any]]

    @property
    def applied(self) -> bool:
        return self.results is not None

    def error(self) -> ConsulError:
        """A refusal the caller cannot recover from, as Consul answered it."""
        return compatible(ConsulError)(409, json.dumps({"Errors": self.errors}))


def denial(errors: list[dict[str, Any]]) -> PermissionDenied | None:
    """A txn refused by the ACLs: Consul reports it inside the 409 too, and it is no conflict."""
    for error in errors:
        if error["What"].startswith("Permission denied"):
            return compatible(PermissionDenied)(403, error["What"])
    return None


def error_for(response: Response) -> ConsulError:
    """The exception for an answer the caller did not expect."""
    body = response.body
    text = body if isinstance(body, str) else json.dumps(body)
    if response.status == 403:
        return compatible(PermissionDenied)(403, text)
    return compatible(ConsulError)(response.status, text)
