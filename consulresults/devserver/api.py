"""The HTTP API: routing as Go's ServeMux does it, and one handler per Consul endpoint.

Handlers parse and validate the request in Consul's order, check ACLs, call the :class:`Store`
and render with :mod:`.wire`. Requests are counted per endpoint and pass through fault injection
before they reach a handler. The ``/_dev/`` control endpoints (counters, faults, node health,
connections, tombstone reaping) are the dev server's own and are neither counted nor faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web

from .acl import AclConfig, AclNotFound, Authorizer, PermissionDenied
from .connlimit import ConnectionLimiter
from .faults import FaultInjector, FaultRule
from .store import Entry, RaftWrites, Session, Store, StoreError, TxnOp, go_quote
from .wire import (
    ApiError,
    QueryOptions,
    conflicting_flags,
    decode_base64,
    entry_json,
    json_response,
    parse_query_options,
    parse_uint64,
    request_secret,
    session_json,
    text_response,
)

VERSION = "1.22.0"
DEFAULT_QUERY_TIME_NS = 300 * 1_000_000_000
MAX_QUERY_TIME_NS = 600 * 1_000_000_000
GZIP_MIN_SIZE = 1400  # the gziphandler default Consul uses
NOT_V1 = "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
NOT_FOUND = "Invalid URL path: not a recognized HTTP API endpoint\n"
KV_SIZE_HINT = (
    "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
)
TXN_SIZE_HINT = "See https://www.consul.io/docs/agent/config/config-files#txn_max_req_len."
_KV_FIELDS = {
    f.lower(): f
    for f in ("Verb", "Key", "Value", "Flags", "Index", "Session", "Namespace", "Partition")
}
_TXN_KINDS = {"kv": "KV", "node": "Node", "service": "Service", "check": "Check"}
_R = TypeVar("_R")


@dataclass
class ServerConfig:
    """Everything that shapes how the dev server answers (defaults are Consul's)."""

    node_name: str = "consul-results-dev"
    datacenter: str = "dc1"
    acl: AclConfig = field(default_factory=AclConfig)
    kv_max_value_size: int = 524_288
    txn_max_req_len: int = 524_288
    txn_max_ops: int = 128
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    leader_addr: str = "127.0.0.1:8300"
    control: bool = True
    version: str = VERSION

    @property
    def before_1_14(self) -> bool:
        """Consul before 1.14 allowed 64 txn operations and had no get-or-empty verb."""
        major, minor = (int(p) for p in self.version.split(".")[:2])
        return (major, minor) < (1, 14)


class Counters:
    """Requests per endpoint, TCP connections seen and the store's Raft writes (``raft.*``, from
    :class:`RaftWrites`, kept apart from ``requests``), readable while the server runs."""

    def __init__(self, raft: RaftWrites | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.raft = raft or RaftWrites()

    def incr(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        counts["requests"] = sum(v for k, v in counts.items() if k != "connections")
        counts.update(self.raft.snapshot())
        return counts

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
        self.raft.reset()


@dataclass
class Call:
    """One request as the handlers see it: decoded path remainder, options and authorizer."""

    request: web.Request
    rest: str
    options: QueryOptions
    authz: Authorizer
    secret: str | None

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query


Handler = Callable[["ConsulApi", Call], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    path: str
    prefix: bool
    methods: tuple[str, ...]
    handler: Handler
    name: str


class ConsulApi:
    """The aiohttp application for one dev server."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        faults: FaultInjector,
        counters: Counters,
        connections: ConnectionLimiter | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.faults = faults
        self.counters = counters
        self.connections = connections or ConnectionLimiter()
        self._changed = asyncio.Event()
        self._seen_transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        store.on_change = self._notify

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.dispatch)
        return app

    def _notify(self) -> None:
        """Wake every blocking query; each re-runs its read and decides whether to return."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ dispatch

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
        route = self._route(path)
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
            if rule.kind == "error":
                return text_response(rule.status, rule.body)
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

    def _route(self, path: str) -> Route | None:
        for route in ROUTES:
            if path == route.path or (route.prefix and path.startswith(route.path)):
                return route
        return None

    def _redirect(self, request: web.Request, location: str) -> web.StreamResponse:
        query = request.query_string
        target = location + ("?" + query if query else "")
        return self._finish(web.Response(status=301, headers={"Location": target}))

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["X-Consul-Default-Acl-Policy"] = self.config.acl.default_policy
        response.headers["Vary"] = "Accept-Encoding"
        return response

    # ------------------------------------------------------------------ helpers

    def _meta(self, index: int, call: Call, filtered: bool = False) -> dict[str, str]:
        headers = {
            "X-Consul-Index": str(max(index, 1)),
            "X-Consul-Knownleader": "true",
            "X-Consul-Lastcontact": "0",
            "X-Consul-Query-Backend": "blocking-query",
        }
        if filtered and call.secret:
            headers["X-Consul-Results-Filtered-By-Acls"] = "true"
        return headers

    async def _blocking(
        self, call: Call, query: Callable[[], tuple[_R, int, bool]]
    ) -> tuple[_R, int, bool]:
        """Run ``query`` as a Consul blocking query; returns its last (result, index, found).

        Returns when the index passes the client's, or at the wait time. A result that is "not
        found" twice in a row keeps waiting (Consul ≥ 1.12), so unrelated writes do not end it.
        """
        result, index, found = query()
        if call.options.index == 0:
            return result, index, found
        wait_ns = call.options.wait_ns or DEFAULT_QUERY_TIME_NS
        wait = min(wait_ns, MAX_QUERY_TIME_NS) / 1e9
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + random.uniform(0, wait / 16)
        min_index = call.options.index
        previously_not_found = False
        while True:
            if found and index > min_index:
                break
            if not found:
                if previously_not_found:
                    min_index = max(min_index, index)
                elif index > min_index:
                    break
            previously_not_found = not found
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
            result, index, found = query()
        return result, index, found

    async def _read_body(
        self,
        request: web.Request,
        limit: int,
        too_large: Callable[[int], str],
        streamed_too_large: str,
    ) -> bytes:
        """Refuse by Content-Length before reading, and cap bodies sent without one."""
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, too_large(request.content_length))
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, streamed_too_large)
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ KV

    async def kv(self, call: Call) -> web.StreamResponse:
        handler = {"GET": self.kv_get, "PUT": self.kv_put, "DELETE": self.kv_delete}
        return await handler[call.request.method](call)

    async def kv_get(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        if "keys" in query:
            return await self._kv_keys(call, key, query.get("separator", query.get("seperator")))
        if "recurse" in query:
            return await self._kv_recurse(call, key)
        if not key:
            raise ApiError(400, "Missing key name")
        call.authz.require(call.authz.key_read(key), "key:read", key)

        def read() -> tuple[Entry | None, int, bool]:
            entry, index = self.store.kv_get(key)
            return entry, index, entry is not None

        entry, index, _ = await self._blocking(call, read)
        headers = self._meta(index, call)
        if entry is None:
            return web.Response(status=404, headers=headers)
        if "raw" in query:
            headers.update(
                {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
            )
            return web.Response(body=entry.value or b"", headers=headers, content_type="text/plain")
        return json_response([entry_json(entry)], call.options.pretty, headers=headers)

    def _readable(self, call: Call, prefix: str) -> tuple[list[Entry], int, bool]:
        entries, index = self.store.kv_list(prefix)
        visible = [e for e in entries if call.authz.key_read(e.key)]
        return visible, index, len(visible) != len(entries)

    async def _kv_recurse(self, call: Call, prefix: str) -> web.StreamResponse:
        def read() -> tuple[tuple[list[Entry], bool], int, bool]:
            visible, index, filtered = self._readable(call, prefix)
            return (visible, filtered), index, True

        (entries, filtered), index, _ = await self._blocking(call, read)
        headers = self._meta(index, call, filtered)
        if not entries:
            return web.Response(status=404, headers=headers)
        return json_response([entry_json(e) for e in entries], call.options.pretty, headers=headers)

    async def _kv_keys(self, call: Call, prefix: str, separator: str | None) -> web.StreamResponse:
        def read() -> tuple[tuple[list[Entry], bool], int, bool]:
            visible, index, filtered = self._readable(call, prefix)
            return (visible, filtered), index, True

        (entries, filtered), index, _ = await self._blocking(call, read)
        keys: list[str] = []
        for entry in entries:
            key = entry.key
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
            if not keys or keys[-1] != key:
                keys.append(key)
        headers = self._meta(index, call, filtered)
        if not keys and prefix:
            return web.Response(status=404, headers=headers)
        return json_response(keys, call.options.pretty, headers=headers)

    async def kv_put(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        if not key:
            raise ApiError(400, "Missing key name")
        if sum(flag in query for flag in ("cas", "acquire", "release")) > 1:
            raise conflicting_flags(query)
        flags = parse_uint64(query["flags"]) if "flags" in query else 0
        cas = parse_uint64(query["cas"]) if "cas" in query else None
        limit = self.config.kv_max_value_size
        body = await self._read_body(
            call.request,
            limit,
            lambda n: f"Request body({n} bytes) too large, max size: {limit} bytes. {KV_SIZE_HINT}",
            f"Request body too large, max size: {limit} bytes. {KV_SIZE_HINT}",
        )
        call.authz.require(call.authz.key_write(key), "key:write", key)
        ok = self.store.kv_put(
            key, body, flags, cas=cas, acquire=query.get("acquire"), release=query.get("release")
        )
        return json_response(ok)

    async def kv_delete(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        recurse = "recurse" in query
        if not key and not recurse:
            raise ApiError(400, "Missing key name")
        if recurse and "cas" in query:
            raise conflicting_flags(query)
        cas = parse_uint64(query["cas"]) if "cas" in query else None
        if recurse:
            call.authz.require(call.authz.key_write_prefix(key), "key:write", key)
        else:
            call.authz.require(call.authz.key_write(key), "key:write", key)
        return json_response(self.store.kv_delete(key, recurse=recurse, cas=cas))

    # ------------------------------------------------------------------ transactions

    async def txn(self, call: Call) -> web.StreamResponse:
        limit = max(self.config.txn_max_req_len, self.config.kv_max_value_size)
        body = await self._read_body(
            call.request,
            limit,
            lambda n: (
                f"Request body({n} bytes) too large, max size: {limit} bytes. {TXN_SIZE_HINT}"
            ),
            f"Request body too large, max size: {limit} bytes. {TXN_SIZE_HINT}",
        )
        ops = self._decode_txn(body)
        errors = self._txn_acl_errors(call.authz, ops) + self.store.txn_precheck(ops)
        if errors:
            return _txn_failure(sorted(errors))
        if self.store.txn_is_read_only(ops):
            results, errors = self.store.txn_read(ops)
        else:
            results, errors = self.store.txn_write(ops)
        if errors:
            return _txn_failure(errors)
        visible = [{"KV": entry_json(e)} for e in results if call.authz.key_read(e.key)]
        body_json: dict[str, Any] = {"Results": visible, "Errors": None}
        headers = None
        if self.store.txn_is_read_only(ops):
            body_json.update(
                {
                    "Index": 0,
                    "LastContact": 0,
                    "KnownLeader": True,
                    "ConsistencyLevel": "",
                    "NotModified": False,
                    "Backend": 0,
                    "ResultsFilteredByACLs": len(visible) != len(results),
                }
            )
            headers = {"X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        return json_response(body_json, call.options.pretty, headers=headers)

    def _decode_txn(self, body: bytes) -> list[TxnOp]:
        try:
            raw_ops = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Failed to parse body: {exc}") from None
        if raw_ops is None:
            raw_ops = []
        if not isinstance(raw_ops, list) or not all(isinstance(o, dict) for o in raw_ops):
            raise ApiError(
                400, "Failed to parse body: json: cannot unmarshal into Go value of type api.TxnOps"
            )
        if len(raw_ops) > self.config.txn_max_ops:
            raise ApiError(
                413,
                f"Transaction contains too many operations "
                f"({len(raw_ops)} > {self.config.txn_max_ops})",
            )
        return [self._decode_op(raw) for raw in raw_ops]

    def _decode_op(self, raw: dict[str, Any]) -> TxnOp:
        kinds = {}
        for name, value in raw.items():
            kind = _TXN_KINDS.get(name.lower())
            if kind is None:
                raise ApiError(400, f'Failed to parse body: json: unknown field "{name}"')
            if value is not None:
                kinds[kind] = value
        if list(kinds) != ["KV"]:
            raise StoreError(
                500, "the consul-results dev server supports only KV operations in transactions"
            )
        fields = {}
        for name, value in kinds["KV"].items():
            canonical = _KV_FIELDS.get(name.lower())
            if canonical is None:
                raise ApiError(400, f'Failed to parse body: json: unknown field "{name}"')
            fields[canonical] = value
        value = decode_base64(fields["Value"]) if fields.get("Value") else None
        if value is not None and len(value) > self.config.kv_max_value_size:
            raise ApiError(
                413,
                f"Value for key {go_quote(fields.get('Key') or '')} is too large "
                f"({len(value)} > {self.config.kv_max_value_size} bytes)",
            )
        return TxnOp(
            verb=fields.get("Verb") or "",
            key=fields.get("Key") or "",
            value=value,
            flags=int(fields.get("Flags") or 0),
            index=int(fields.get("Index") or 0),
            session=fields.get("Session") or "",
        )

    @staticmethod
    def _txn_acl_errors(authz: Authorizer, ops: list[TxnOp]) -> list[tuple[int, str]]:
        errors = []
        for i, op in enumerate(ops):
            if op.verb in ("get", "get-tree", "get-or-empty"):
                continue
            if op.verb in ("check-index", "check-session"):
                allowed, permission = authz.key_read(op.key), "key:read"
            elif op.verb == "delete-tree":
                allowed, permission = authz.key_write_prefix(op.key), "key:write"
            else:
                allowed, permission = authz.key_write(op.key), "key:write"
            if not allowed:
                errors.append((i, str(authz.denial(permission, op.key))))
        return errors

    # ------------------------------------------------------------------ sessions

    async def session_create(self, call: Call) -> web.StreamResponse:
        body = await call.request.read()
        spec = {}
        if body:
            try:
                decoded = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"Request decode failed: {exc}") from None
            if not isinstance(decoded, dict):
                raise ApiError(400, "Request decode failed: expected a JSON object")
            spec = {k.lower(): v for k, v in decoded.items()}
        node = spec.get("node") or self.config.node_name
        call.authz.require(call.authz.session_write(node), "session:write", node)
        return json_response({"ID": self.store.session_create(spec)}, call.options.pretty)

    def _session_id(self, call: Call) -> str:
        if not call.rest:
            raise ApiError(400, "Missing session")
        return call.rest

    async def session_destroy(self, call: Call) -> web.StreamResponse:
        session = self.store.session_get(self._session_id(call))
        if session is not None:
            call.authz.require(
                call.authz.session_write(session.node), "session:write", session.node
            )
            self.store.session_destroy(session.id)
        return json_response(True)

    async def session_renew(self, call: Call) -> web.StreamResponse:
        session_id = self._session_id(call)
        session = self.store.session_get(session_id)
        if session is None:
            raise ApiError(404, f"Session id '{session_id}' not found")
        call.authz.require(call.authz.session_write(session.node), "session:write", session.node)
        self.store.session_renew(session.id)
        return json_response([session_json(session)], call.options.pretty)

    async def _session_read(
        self, call: Call, select: Callable[[], list[Session]]
    ) -> web.StreamResponse:
        def read() -> tuple[list[Session], int, bool]:
            sessions = select()
            return sessions, self.store.session_index, bool(sessions)

        sessions, index, _ = await self._blocking(call, read)
        visible = [s for s in sessions if call.authz.session_read(s.node)]
        headers = self._meta(index, call, len(visible) != len(sessions))
        return json_response(
            [session_json(s) for s in visible], call.options.pretty, headers=headers
        )

    async def session_info(self, call: Call) -> web.StreamResponse:
        session_id = self._session_id(call)
        return await self._session_read(
            call, lambda: [s for s in [self.store.session_get(session_id)] if s]
        )

    async def session_list(self, call: Call) -> web.StreamResponse:
        return await self._session_read(call, self.store.session_list)

    async def session_node(self, call: Call) -> web.StreamResponse:
        if not call.rest:
            raise ApiError(400, "Missing node name")
        return await self._session_read(call, lambda: self.store.session_list(call.rest))

    # ------------------------------------------------------------------ status and agent

    async def status_leader(self, call: Call) -> web.StreamResponse:
        return json_response(self.config.leader_addr, call.options.pretty)

    async def status_peers(self, call: Call) -> web.StreamResponse:
        return json_response([self.config.leader_addr], call.options.pretty)

    async def agent_self(self, call: Call) -> web.StreamResponse:
        node = self.config.node_name
        call.authz.require(call.authz.agent_read(node), "agent:read", node)
        return json_response(self._agent_self_body(), call.options.pretty)

    def _agent_self_body(self) -> dict[str, Any]:
        cfg = self.config
        host, _, port = cfg.leader_addr.rpartition(":")
        return {
            "Config": {
                "Datacenter": cfg.datacenter,
                "PrimaryDatacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "NodeID": cfg.node_id,
                "Revision": "consul-results",
                "Server": True,
                "Version": cfg.version,
                "BuildDate": datetime(2025, 10, 1, tzinfo=timezone.utc).isoformat(),
            },
            "DebugConfig": {
                "Datacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "ACLsEnabled": cfg.acl.enabled,
                "ACLResolverSettings": {"ACLDefaultPolicy": cfg.acl.default_policy},
                "SessionTTLMin": f"{self.store.session_ttl_min_ns / 1e9:g}s",
                "HTTPMaxConnsPerClient": self.connections.limit,
            },
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": {
                "Name": cfg.node_name,
                "Addr": host,
                "Port": 8301,
                "Tags": {
                    "dc": cfg.datacenter,
                    "role": "consul",
                    "port": port,
                    "build": cfg.version,
                },
                "Status": 1,
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 4,
            },
            "Stats": {
                "consul": {
                    "leader": "true",
                    "leader_addr": cfg.leader_addr,
                    "server": "true",
                    "bootstrap": "true",
                    "known_datacenters": "1",
                },
                "agent": {"check_monitors": "0", "services": "0", "checks": "0"},
            },
            "Meta": {"consul-network-segment": ""},
        }

    # ------------------------------------------------------------------ control endpoints

    async def _control(self, request: web.Request, path: str) -> web.StreamResponse:
        """The dev server's own endpoints for tests and benchmarks (see the README)."""
        method = request.method
        try:
            if path == "/_dev/counters":
                if method == "DELETE":
                    self.counters.reset()
                return json_response(self.counters.snapshot())
            if path == "/_dev/faults":
                if method == "PUT":
                    self.faults.add(FaultRule(**json.loads(await request.read())))
                elif method == "DELETE":
                    self.faults.clear()
                return json_response(
                    {"rules": self.faults.rules(), "injected": self.faults.injected}
                )
            if path == "/_dev/tombstones" and method == "DELETE":
                return json_response({"reaped": self.store.reap_tombstones(max_age_s=0)})
            if path == "/_dev/node-health" and method == "PUT":
                self.store.set_node_health(request.query.get("healthy", "true") == "true")
                return json_response(self.store.node_healthy)
            if path == "/_dev/connections":
                if method == "PUT" and "limit" in request.query:
                    self.connections.limit = int(request.query["limit"])
                elif method == "DELETE":
                    self.connections.reset_stats()
                return json_response(self.connections.stats())
        except (TypeError, ValueError) as exc:
            return text_response(400, f"bad control request: {exc}")
        return text_response(404, "unknown control endpoint\n")


def _txn_failure(errors: list[tuple[int, str]]) -> web.Response:
    return json_response(
        {"Results": None, "Errors": [{"OpIndex": i, "What": what} for i, what in errors]},
        status=409,
    )


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
