"""The HTTP API: routing as Go's ServeMux does it, fault injection, and the handlers of each
endpoint group (:mod:`.http_kv`, :mod:`.http_txn`, :mod:`.http_sessions`, :mod:`.http_agent`,
:mod:`.http_control`) put together as one :class:`ConsulApi`.

Handlers parse and validate the request in Consul's order, check ACLs, call the
:class:`~.store.Store` and render with :mod:`.wire`. Requests are counted per endpoint and pass
through fault injection before they reach a handler. The ``/_dev/`` control endpoints (counters,
faults, node health, connections, tombstone reaping) are the dev server's own and are neither
counted nor faulted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from .acl import AclNotFound, PermissionDenied
from .faults import FaultRule
from .http_agent import AgentHandlers
from .http_control import ControlHandlers
from .http_core import VERSION, Call, Counters, ServerConfig
from .http_kv import KvHandlers
from .http_sessions import SessionHandlers
from .http_txn import TxnHandlers
from .model import StoreError
from .wire import parse_query_options, request_secret, text_response

__all__ = ["VERSION", "Call", "ConsulApi", "Counters", "ServerConfig"]

GZIP_MIN_SIZE = 1400  # the gziphandler default Consul uses
NOT_V1 = "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
NOT_FOUND = "Invalid URL path: not a recognized HTTP API endpoint\n"

Handler = Callable[["ConsulApi", Call], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    path: str
    prefix: bool
    methods: tuple[str, ...]
    handler: Handler
    name: str


class ConsulApi(KvHandlers, TxnHandlers, SessionHandlers, AgentHandlers, ControlHandlers):
    """The aiohttp application for one dev server."""

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        path = unquote(raw_path, errors="replace")
        if raw_path.startswith("/_dev/") and self.config.control:
            return await self._control(request, raw_path)
        self._count_connection(request)
        if not path.isprintable():
            return self._finish(web.Response(status=400))
        cleaned = _clean_path(path)
        if cleaned != path:
            return self._redirect(request, cleaned)
        route = _route(path)
        if route is None:
            if path.rstrip("/") in {r.path.rstrip("/") for r in ROUTES if r.prefix}:
                return self._redirect(request, path + "/")
            self.counters.incr("other")
            return self._finish(text_response(404, NOT_FOUND if "/v1/" in path else NOT_V1))
        multi = len(route.methods) > 1
        self.counters.incr(f"{route.name}.{request.method.lower()}" if multi else route.name)
        return _gzipped(request, self._finish(await self._handle(request, route, path)))

    def _count_connection(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None and transport not in self._seen_transports:
            self._seen_transports.add(transport)
            self.counters.incr("connections")

    async def _handle(self, request: web.Request, route: Route, path: str) -> web.StreamResponse:
        allow = "OPTIONS," + ",".join(route.methods)
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": allow})
        if request.method not in route.methods:
            return text_response(405, f"method {request.method} not allowed", {"Allow": allow})
        fired = self.faults.pick(request.method, path)
        for rule in fired:
            if rule.kind == "latency":
                await asyncio.sleep(rule.seconds)
        for rule in fired:
            refusal = _refusal(rule, request.method)
            if refusal is not None:
                return refusal
            if rule.kind == "reset" and rule.when == "before":
                return _reset_connection(request)
        response = await self._call_handler(request, route, path)
        if any(r.kind == "reset" and r.when == "after" for r in fired):
            return _reset_connection(request)
        return response

    async def _call_handler(
        self, request: web.Request, route: Route, path: str
    ) -> web.StreamResponse:
        try:
            options = parse_query_options(request.query, self.config.datacenter)
            secret = request_secret(request)
            authz = self.config.acl.authorizer(secret, self.config.node_name)
            call = Call(
                request,
                path[len(route.path) :],
                options,
                authz,
                secret or self.config.acl.default_token,
            )
            return await route.handler(self, call)
        except StoreError as exc:
            return text_response(exc.status, exc.text)
        except (PermissionDenied, AclNotFound) as exc:
            return text_response(403, str(exc))

    def _redirect(self, request: web.Request, location: str) -> web.StreamResponse:
        query = request.query_string
        target = location + ("?" + query if query else "")
        return self._finish(web.Response(status=301, headers={"Location": target}))

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["X-Consul-Default-Acl-Policy"] = self.config.acl.default_policy
        response.headers["Vary"] = "Accept-Encoding"
        return response


def _refusal(rule: FaultRule, method: str) -> web.Response | None:
    """What an ``error`` or ``rate-limit`` rule answers instead of the request (None: the rule
    answers nothing itself)."""
    if rule.kind == "error":
        return text_response(rule.status, rule.body)
    if rule.kind == "rate-limit":
        status, body = rule.rate_limit_answer(method)
        return text_response(status, body)
    return None


def _route(path: str) -> Route | None:
    for route in ROUTES:
        if path == route.path or (route.prefix and path.startswith(route.path)):
            return route
    return None


def _gzipped(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Compressed as Consul's API compresses: gzip when the client accepts it and the body is at
    least GZIP_MIN_SIZE bytes."""
    body = getattr(response, "body", None)
    accepted = "gzip" in request.headers.get("Accept-Encoding", "")
    if accepted and isinstance(body, bytes) and len(body) >= GZIP_MIN_SIZE:
        response.enable_compression(web.ContentCoding.gzip)
    return response


def _clean_path(path: str) -> str:
    """Go's path.Clean as ServeMux applies it (keeping a trailing slash)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _reset_connection(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection with an RST (SO_LINGER 0), as a crashed peer or proxy would."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if transport is not None:
        transport.abort()
    raise ConnectionResetError("connection reset by fault injection")


ROUTES = [
    Route("/v1/kv/", True, ("GET", "PUT", "DELETE"), ConsulApi.kv, "kv"),
    Route("/v1/txn", False, ("PUT",), ConsulApi.txn, "txn"),
    Route("/v1/session/create", False, ("PUT",), ConsulApi.session_create, "session.create"),
    Route("/v1/session/destroy/", True, ("PUT",), ConsulApi.session_destroy, "session.destroy"),
    Route("/v1/session/renew/", True, ("PUT",), ConsulApi.session_renew, "session.renew"),
    Route("/v1/session/info/", True, ("GET",), ConsulApi.session_info, "session.info"),
    Route("/v1/session/node/", True, ("GET",), ConsulApi.session_node, "session.node"),
    Route("/v1/session/list", False, ("GET",), ConsulApi.session_list, "session.list"),
    Route("/v1/status/leader", False, ("GET",), ConsulApi.status_leader, "status.leader"),
    Route("/v1/status/peers", False, ("GET",), ConsulApi.status_peers, "status.peers"),
    Route("/v1/agent/self", False, ("GET",), ConsulApi.agent_self, "agent.self"),
]
