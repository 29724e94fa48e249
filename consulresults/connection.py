"""The one place that talks HTTP to Consul, and the only place that turns its answers and its
failures into exceptions.

A :class:`Transport` sends requests on ``http.client`` over pooled keep-alive connections (a pool
per process, emptied after ``fork`` so prefork children never share a socket with their parent —
Celery issue #5605), with timeouts, TLS, and the ACL token in the ``X-Consul-Token`` header
(never in a URL, where proxies and logs keep it). It is built from resolved
:class:`~consulresults.settings.ConsulSettings`, never from python-consul2's environment handling.

Not ``requests``: importing it costs most of a CLI command's start-up. The failures raised are
still the classes code written for Celery's built-in backend catches (python-consul2's
``ConsulException``, requests' ``ConnectionError``...): see :mod:`consulresults.compat`, which
is imported only when a failure is raised.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from . import __version__, forks
from .settings import ConsulSettings, SettingsError

POOL_SIZE = 32
USER_AGENT = f"consul-results/{__version__}"
_CONSISTENT_READS = ("/v1/kv/", "/v1/session/info/", "/v1/session/list")
_E = TypeVar("_E", bound=BaseException)


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


def error_for(response: Response) -> ConsulError:
    """The exception for an answer the caller did not expect."""
    body = response.body
    text = body if isinstance(body, str) else json.dumps(body)
    if response.status == 403:
        return compatible(PermissionDenied)(403, text)
    return compatible(ConsulError)(response.status, text)


def _load_error(exc: OSError) -> str:
    """Why a certificate or key file could not be loaded, in words a user can act on (OpenSSL's
    own text, ``[SSL] PEM lib (_ssl.c:3905)``, says nothing about what is wrong with the file)."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "not PEM, or the key does not match").replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()


def tls_context(settings: ConsulSettings) -> ssl.SSLContext | None:
    """The TLS context for ``settings`` (None for plain http), with the CA and client
    certificate loaded now, so a wrong path or a file that is not PEM is one clear error at
    start-up rather than an OSError from deep inside the first request. A CA file is the only CA
    trusted, as with the Consul CLI's -ca-file; without one, the system's CAs are."""
    if settings.client_key and not settings.client_cert:
        raise SettingsError("a client key needs its client certificate (client_cert)")
    if settings.scheme != "https" and not (settings.ca_file or settings.client_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except OSError as exc:  # ssl.SSLError is one
        raise SettingsError(
            f"cannot use the CA file {settings.ca_file}: {_load_error(exc)} "
            "(expect a PEM file with the CA certificate)"
        ) from None
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert:
        try:
            # an empty pass phrase: OpenSSL would otherwise ask for one on the terminal and wait
            context.load_cert_chain(settings.client_cert, settings.client_key, lambda: b"")
        except OSError as exc:  # ssl.SSLError is one
            key = f" with key {settings.client_key}" if settings.client_key else ""
            raise SettingsError(
                f"cannot use the client certificate {settings.client_cert}{key}: "
                f"{_load_error(exc)} (expect PEM files: the certificate and its unencrypted key)"
            ) from None
    return context if settings.scheme == "https" else None


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection; with a TLS context, the name given is sent as SNI and checked
    in the certificate (the TLS server name, as the Consul CLI's -tls-server-name, else the
    host)."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext | None, server_name: str
    ) -> None:
        super().__init__(host, port)
        self._context = context
        self._server_name = server_name

    def connect(self) -> None:
        super().connect()
        if self._context is not None:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)

    def dropped(self) -> bool:
        """Closed by the server while idle: a readable idle socket has only EOF to read."""
        if self.sock is None:
            return True
        poller = select.poll()  # not select.select: it fails on descriptors over 1023
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))


class _Pool:
    """Idle connections of this process, the most recently used first."""

    def __init__(self, settings: ConsulSettings) -> None:
        self._context = tls_context(settings)
        self._host, self._port = settings.host, settings.port
        self._server_name = settings.tls_server_name or settings.host
        self.reset()
        forks.reset_in_forked_child(self)  # the idle sockets would be the parent's

    def reset(self) -> None:
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def take(self) -> _Connection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if not connection.dropped():
                    return connection
                connection.close()
        return _Connection(self._host, self._port, self._context, self._server_name)

    def give_back(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(connection)
                return
        connection.close()


def _reason(exc: BaseException) -> str:
    """A failure to get an answer, in a few words."""
    if isinstance(exc, zlib.error):
        return "a garbled compressed answer"
    text = str(exc).lower()
    for known, reason in (
        ("certificate required", "Consul requires a client certificate"),
        ("certificate verify failed", "certificate verify failed"),
        ("without response", "closed without an answer"),
        ("no route to host", "no route to host"),
    ):
        if known in text:
            return reason
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "name or service not known"
    return str(exc) or type(exc).__name__


class Transport:
    """Consul's HTTP API: the token, datacenter and read consistency on every request, answers
    decoded, and the failures raised as this module's exceptions."""

    def __init__(self, settings: ConsulSettings, token: str | None) -> None:
        self.scheme = settings.scheme
        self.base_uri = settings.base_url
        self.timeout = settings.timeout
        self.consistency = settings.consistency
        self._token = token
        self._datacenter = settings.datacenter
        self._pool = _Pool(settings)

    def send(
        self,
        method: str,
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request as given (python-consul2's calls come through here too)."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", **(headers or {})}
        if self._token:
            headers["X-Consul-Token"] = self._token
        params = list(params or [])
        if self._datacenter and not any(name == "dc" for name, _ in params):
            params.append(("dc", self._datacenter))
        target = quote(path, safe="/:") + (f"?{urlencode(params)}" if params else "")
        body = data.encode() if isinstance(data, str) else data
        timeout = timeout or self.timeout
        try:
            return self._exchange(method, target, body, headers, timeout)
        except TimeoutError as exc:
            raise compatible(ConsulTimeout)(
                f"Consul at {self.base_uri} did not answer {method} {path} within {timeout:g} s "
                "(if it is just slow, raise the backend's timeout option, e.g. ?timeout=30)"
            ) from exc
        except (OSError, http.client.HTTPException, zlib.error) as exc:
            failure = ConsulTLSError if isinstance(exc, ssl.SSLError) else ConsulUnreachable
            reason = _reason(exc)
            raise compatible(failure)(
                f"cannot reach Consul at {self.base_uri} ({method} {path}): {reason}",
                self.base_uri,
                reason,
            ) from exc

    def _exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> Answer:
        connection = self._pool.take()
        try:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._pool.give_back(connection)
        if response.headers.get("Content-Encoding") == "gzip":
            content = zlib.decompress(content, 16 + zlib.MAX_WBITS)
        return Answer(response.status, response.headers, content)

    def request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: object = None,
        timeout: float | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Response:
        """One request; an answer whose status is not in ``expect`` raises :class:`ConsulError`."""
        data = None if body is None else json.dumps(body)
        params = list(params or [])
        if method == "GET" and path.startswith(_CONSISTENT_READS) and self.consistency != "default":
            params.append((self.consistency, "1"))
        answer = self.send(method, path, params, data, timeout=timeout)
        try:
            value = json.loads(answer.content) if answer.content else None
        except ValueError:
            value = answer.text
        response = Response(answer.status, answer.headers, value)
        if response.status not in expect:
            raise error_for(response)
        return response

    def txn(self, ops: list[dict[str, Any]]) -> TxnAnswer:
        """Apply ``ops`` atomically. A 409 is an answer (the checks failed), unless an operation
        was denied by the ACLs: Consul reports that inside the 409 too, and it is no conflict."""
        response = self.request("PUT", "/v1/txn", body=ops, expect=(200, 409))
        if response.status == 200:
            return TxnAnswer(response.body["Results"] or [], [])
        if not isinstance(response.body, dict) or "Errors" not in response.body:
            raise error_for(response)  # not Consul's answer (a proxy's?): no conflict to retry
        errors = response.body["Errors"]
        for error in errors:
            if error["What"].startswith("Permission denied"):
                raise compatible(PermissionDenied)(403, error["What"])
        return TxnAnswer(None, errors)


def connect(settings: ConsulSettings) -> Transport:
    """The transport for ``settings``: the token is read (and checked) here, once."""
    return Transport(settings, settings.resolved_token())
