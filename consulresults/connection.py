"""The one place that builds HTTP clients for Consul.

A :class:`ConsulClient` is python-consul2's client with our transport underneath: pooled
keep-alive connections (a ``requests`` session per process, rebuilt after ``fork`` so prefork
children never share a socket with their parent — Celery issue #5605), timeouts, TLS, and the ACL
token in the ``X-Consul-Token`` header (never in a URL, where proxies and logs keep it). It is
built from resolved :class:`~consulresults.settings.ConsulSettings`, never from python-consul2's
environment handling.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import consul.base
import requests
from requests.adapters import HTTPAdapter

from .settings import ConsulSettings, SettingsError

POOL_SIZE = 32
_CONSISTENT_READS = ("/v1/kv/", "/v1/session/info/", "/v1/session/list")

_T = TypeVar("_T")


class ConsulError(consul.base.ConsulException):
    """An answer from Consul that is not what the request expected, with its HTTP status.

    A subclass of python-consul2's exception, so code written against it keeps working.
    """

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    @property
    def transient(self) -> bool:
        """Worth trying again: rate limited (429), or the servers are busy or leaderless (5xx)."""
        return self.status == 429 or 500 <= self.status < 600


class PermissionDenied(ConsulError, consul.base.ACLPermissionDenied):
    """The ACL token may not do this (a 403, or a "Permission denied" operation in a txn).
    Its text is Consul's own, as python-consul2 gives it."""

    def __str__(self) -> str:
        return self.text


class ConsulTimeout(requests.Timeout):
    """Consul took longer than the timeout: says which agent, which request and what to do
    (requests' own message names only a connection pool)."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away by itself: a lost connection, a time-out, a 429 or 5xx.
    Every retry decision in the package asks this one question."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    return isinstance(exc, ConsulError) and exc.transient


@dataclass
class Response:
    """Status, headers and decoded JSON (or the text, or None) of one Consul answer."""

    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def index(self) -> int:
        """``X-Consul-Index``: what a blocking query waits past."""
        return int(self.headers.get("X-Consul-Index", 0))


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
        return ConsulError(409, json.dumps({"Errors": self.errors}))


def error_for(response: Response) -> ConsulError:
    """The exception for an answer the caller did not expect."""
    body = response.body
    text = body if isinstance(body, str) else json.dumps(body)
    if response.status == 403:
        return PermissionDenied(403, text)
    return ConsulError(response.status, text)


class _Adapter(HTTPAdapter):
    """Keep-alive pool; with a TLS server name, it is sent as SNI and checked in the
    certificate instead of the host name (as the Consul CLI's -tls-server-name does)."""

    def __init__(self, tls_server_name: str | None) -> None:
        self._tls_server_name = tls_server_name
        super().__init__(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._tls_server_name:
            kwargs.update(
                server_hostname=self._tls_server_name, assert_hostname=self._tls_server_name
            )
        super().init_poolmanager(*args, **kwargs)


def _load_error(exc: OSError) -> str:
    """Why a certificate or key file could not be loaded, in words a user can act on (OpenSSL's
    own text, ``[SSL] PEM lib (_ssl.c:3905)``, says nothing about what is wrong with the file)."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "not PEM, or the key does not match").replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()


def check_tls_files(settings: ConsulSettings) -> None:
    """Load the CA and client certificate now, so a wrong path or a file that is not PEM is one
    clear error at start-up rather than an OSError from deep inside the first request."""
    if settings.client_key and not settings.client_cert:
        raise SettingsError("a client key needs its client certificate (client_cert)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # empty: loads no system CAs
    if settings.ca_file:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except OSError as exc:  # ssl.SSLError is one
            raise SettingsError(
                f"cannot use the CA file {settings.ca_file}: {_load_error(exc)} "
                "(expect a PEM file with the CA certificate)"
            ) from None
    if settings.client_cert:
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key)
        except OSError as exc:  # ssl.SSLError is one
            key = f" with key {settings.client_key}" if settings.client_key else ""
            raise SettingsError(
                f"cannot use the client certificate {settings.client_cert}{key}: "
                f"{_load_error(exc)} (expect PEM files: the certificate and its unencrypted key)"
            ) from None


class Transport(consul.base.HTTPClient):
    """python-consul2's HTTP client interface over a fork-safe, pooled ``requests`` session."""

    def __init__(self, settings: ConsulSettings, token: str | None) -> None:
        check_tls_files(settings)
        verify: bool | str = (settings.ca_file or True) if settings.verify else False
        cert = (settings.client_cert, settings.client_key) if settings.client_cert else None
        super().__init__(
            settings.host, settings.port, settings.scheme, verify, cert, settings.timeout
        )
        self.base_uri = settings.base_url
        self._token = token
        self._datacenter = settings.datacenter
        self.consistency = settings.consistency
        self._tls_server_name = settings.tls_server_name
        self._lock = threading.Lock()
        self._pid = -1
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        """This process's session; a forked child builds its own instead of reusing sockets."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    session = requests.Session()
                    adapter = _Adapter(self._tls_server_name)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.trust_env = False  # CONSUL_* settings are resolved elsewhere
                    self._session, self._pid = session, os.getpid()
        assert self._session is not None  # set (before _pid) by this process, just above or earlier
        return self._session

    def _send(
        self,
        method: str,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> _T:
        headers = dict(headers or {})
        if self._token:
            headers["X-Consul-Token"] = self._token
        params = list(params or [])
        if self._datacenter and not any(name == "dc" for name, _ in params):
            params.append(("dc", self._datacenter))
        timeout = timeout or self.timeout
        try:
            response = self.session.request(
                method,
                self.uri(path, params),
                data=data,
                headers=headers,
                verify=self.verify,
                cert=self.cert,
                timeout=timeout,
            )
        except requests.Timeout as exc:
            raise ConsulTimeout(
                f"Consul at {self.base_uri} did not answer {method} {path} within {timeout:g} s "
                "(if it is just slow, raise the backend's timeout option, e.g. ?timeout=30)"
            ) from exc
        response.encoding = "utf-8"
        return callback(
            consul.base.Response(
                response.status_code, response.headers, response.text, response.content
            )
        )

    def get(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._send("GET", callback, path, params, headers=headers)

    def put(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._send("PUT", callback, path, params, data, headers)

    def delete(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._send("DELETE", callback, path, params, data, headers)

    def post(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        data: str | bytes | None = "",
    ) -> _T:
        return self._send("POST", callback, path, params, data, headers)

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

        def decoded(answer: consul.base.Response) -> Response:
            try:
                value = json.loads(answer.body) if answer.body else None
            except ValueError:
                value = answer.body
            return Response(answer.code, answer.headers, value)

        response = self._send(method, decoded, path, params, data, timeout=timeout)
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
                raise PermissionDenied(403, error["What"])
        return TxnAnswer(None, errors)


ENDPOINTS = {
    "acl": "ACL", "agent": "Agent", "catalog": "Catalog", "config": "Config",
    "connect": "Connect", "coordinate": "Coordinate", "discovery_chain": "DiscoveryChain",
    "event": "Event", "health": "Health", "kv": "KV", "operator": "Operator", "query": "Query",
    "session": "Session", "snapshot": "Snapshot", "status": "Status", "txn": "Txn",
}  # fmt: skip


class ConsulClient(consul.Consul):
    """python-consul2's whole API (``kv``, ``session``, ``catalog``, ``health``...) on our
    transport, as its own constructor would build it.

    That constructor is not called on purpose: it reads ``CONSUL_HTTP_ADDR`` and
    ``CONSUL_HTTP_TOKEN`` and lets them override explicit arguments.
    """

    def __init__(self, transport: Transport) -> None:
        self.http = transport
        self.token = None  # the transport adds it as a header to every request
        self.scheme = transport.scheme
        self.dc = None  # the transport adds ``dc`` to every request
        self.consistency = transport.consistency
        with warnings.catch_warnings():  # "legacy ACL", "1.6.0+": warned at construction
            warnings.simplefilter("ignore", DeprecationWarning)
            for name, endpoint in ENDPOINTS.items():
                setattr(self, name, getattr(consul.base.Consul, endpoint)(self))


def connect(settings: ConsulSettings) -> Transport:
    """The transport for ``settings``: the token is read (and checked) here, once."""
    return Transport(settings, settings.resolved_token())
