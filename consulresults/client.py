"""python-consul2's whole API (``kv``, ``session``, ``catalog``, ``health``...) on our
:class:`~consulresults.connection.Transport`: the client a backend's ``client()`` returns.

It has its own module because python-consul2 imports requests, which costs most of a CLI
command's start-up: only the Celery backend imports it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import consul.base

from .connection import Transport

_T = TypeVar("_T")

ENDPOINTS = {
    "acl": "ACL", "agent": "Agent", "catalog": "Catalog", "config": "Config",
    "connect": "Connect", "coordinate": "Coordinate", "discovery_chain": "DiscoveryChain",
    "event": "Event", "health": "Health", "kv": "KV", "operator": "Operator", "query": "Query",
    "session": "Session", "snapshot": "Snapshot", "status": "Status", "txn": "Txn",
}  # fmt: skip


class HTTPClient(consul.base.HTTPClient):
    """python-consul2's HTTP client interface, answered by our transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.scheme = transport.scheme
        self.base_uri = transport.base_uri
        self.timeout = transport.timeout

    def _call(
        self,
        method: str,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None,
        data: str | bytes | None,
        headers: Mapping[str, str] | None,
    ) -> _T:
        answer = self.transport.send(method, path, params, data, headers)
        return callback(
            consul.base.Response(answer.status, answer.headers, answer.text, answer.content)
        )

    def get(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._call("GET", callback, path, params, None, headers)

    def put(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._call("PUT", callback, path, params, data, headers)

    def delete(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        return self._call("DELETE", callback, path, params, data, headers)

    def post(
        self,
        callback: Callable[[Any], _T],
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        data: str | bytes | None = "",
    ) -> _T:
        return self._call("POST", callback, path, params, data, headers)


class ConsulClient(consul.Consul):
    """python-consul2's ``Consul``, as its own constructor would build it, on our transport.

    That constructor is not called on purpose: it reads ``CONSUL_HTTP_ADDR`` and
    ``CONSUL_HTTP_TOKEN`` and lets them override explicit arguments.
    """

    def __init__(self, transport: Transport) -> None:
        self.http = HTTPClient(transport)
        self.token = None  # the transport adds it as a header to every request
        self.scheme = transport.scheme
        self.dc = None  # the transport adds ``dc`` to every request
        self.consistency = transport.consistency
        with warnings.catch_warnings():  # "legacy ACL", "1.6.0+": warned at construction
            warnings.simplefilter("ignore", DeprecationWarning)
            for name, endpoint in ENDPOINTS.items():
                setattr(self, name, getattr(consul.base.Consul, endpoint)(self))
