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
from collections.abc import Callable
from dataclasses import dataclass

import consul.base
import requests
from requests.adapters import HTTPAdapter

from .settings import ConsulSettings, SettingsError
from .tlsfiles import load_error

POOL_SIZE = 32


class ConsulTimeout(requests.Timeout):
    """Consul took longer than the timeout: says which agent, which request and what to do
    (requests' own message names only a connection pool)."""


@dataclass
class RawResponse:
    """Status, headers and decoded JSON (or None) of one Consul answer."""

    status: int
    headers: dict
    body: object


class _Adapter(HTTPAdapter):
    """Keep-alive pool; with a TLS server name, it is sent as SNI and checked in the
    certificate instead of the host name (as the Consul CLI's -tls-server-name does)."""

    def __init__(self, tls_server_name: str | None) -> None:
        self._tls_server_name = tls_server_name
        super().__init__(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        if self._tls_server_name:
            kwargs.update(
                server_hostname=self._tls_server_name, assert_hostname=self._tls_server_name
            )
        super().init_poolmanager(*args, **kwargs)


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
                f"cannot use the CA file {settings.ca_file}: {load_error(exc)} "
                "(expect a PEM file with the CA certificate)"
            ) from None
    if settings.client_cert:
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key)
        except OSError as exc:  # ssl.SSLError is one
            key = f" with key {settings.client_key}" if settings.client_key else ""
            raise SettingsError(
                f"cannot use the client certificate {settings.client_cert}{key}: "
                f"{load_error(exc)} (expect PEM files: the certificate and its unencrypted key)"
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
        return self._session

    def _send(
        self,
        method: str,
        callback: Callable,
        path: str,
        params=None,
        data=None,
        headers=None,
        timeout: float | None = None,
    ):
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

    def get(self, callback, path, params=None, headers=None):
        return self._send("GET", callback, path, params, headers=headers)

    def put(self, callback, path, params=None, data="", headers=None):
        return self._send("PUT", callback, path, params, data, headers)

    def delete(self, callback, path, params=None, data="", headers=None):
        return self._send("DELETE", callback, path, params, data, headers)

    def post(self, callback, path, params=None, headers=None, data=""):
        return self._send("POST", callback, path, params, data, headers)

    def raw(
        self, method: str, path: str, params=None, body: object = None, timeout: float | None = None
    ) -> RawResponse:
        """A request whose status the caller interprets (txn 409s, blocking reads)."""
        data = None if body is None else json.dumps(body)

        def callback(response):
            try:
                decoded = json.loads(response.body) if response.body else None
            except ValueError:
                decoded = response.body
            return RawResponse(response.code, response.headers, decoded)

        return self._send(method, callback, path, params, data, timeout=timeout)


class ConsulClient(consul.base.Consul):
    """python-consul2's API (``kv``, ``session``, ``txn``, ``status``, ``agent``) on our transport.

    The base constructor is not called on purpose: it reads ``CONSUL_HTTP_ADDR`` and
    ``CONSUL_HTTP_TOKEN`` and lets them override explicit arguments.
    """

    def __init__(self, settings: ConsulSettings) -> None:
        token = settings.resolved_token()
        self.settings = settings
        self.http = Transport(settings, token)
        self.token = None  # the transport adds it as a header to every request
        self.scheme = settings.scheme
        self.dc = None  # the transport adds ``dc`` to every request
        self.consistency = settings.consistency
        self.kv = consul.base.Consul.KV(self)
        self.session = consul.base.Consul.Session(self)
        self.txn = consul.base.Consul.Txn(self)
        self.status = consul.base.Consul.Status(self)
        self.agent = consul.base.Consul.Agent(self)


def connect(settings: ConsulSettings) -> ConsulClient:
    return ConsulClient(settings)
