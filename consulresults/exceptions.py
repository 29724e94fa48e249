"""The failures of talking to Consul, defined once, importing nothing of the package: the
transport (:mod:`consulresults.connection`) raises them, and :mod:`consulresults.compat`
subclasses each as the python-consul2 or requests class Celery's built-in backend raises. Also
the failures of the Celery app's broker as ``retry`` and ``--orphaned`` meet them."""

from __future__ import annotations

from typing import Any


class ConsulError(Exception):
    """An answer from Consul that is not what the request expected, with its HTTP status.
    Raised as python-consul2's ``ConsulException`` too (:mod:`consulresults.compat`)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.status, self.text)  # pickled as built, not as its message

    @property
    def transient(self) -> bool:
        """Worth trying again: rate limited (429), or the servers are busy or leaderless (5xx)."""
        return self.status == 429 or 500 <= self.status < 600


class PermissionDenied(ConsulError):
    """The ACL token may not do this (a 403, or a "Permission denied" operation in a txn).
    Its text is Consul's own, as python-consul2 gives it."""

    def __str__(self) -> str:
        return self.text


class ConsulUnreachable(OSError):
    """No answer: the connection was refused, reset or closed, or the name did not resolve.
    ``reason`` says which in a few words; ``address`` is the agent's URL."""

    def __init__(self, message: str = "", address: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason


class ConsulTLSError(ConsulUnreachable):
    """The TLS handshake failed (an untrusted certificate, a missing client certificate...)."""


class ConsulTimeout(OSError):
    """Consul took longer than the timeout; the message says which agent, which request and
    what to do."""


class BrokerUnavailable(Exception):
    """The Celery app's broker is down or refuses us (``retry``, ``--orphaned``: exit 69)."""


class CannotTell(Exception):
    """No worker answered the broadcast of ``--orphaned``: a dead worker and a silent one look
    the same (exit 4)."""
