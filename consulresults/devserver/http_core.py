"""What every group of handlers shares: the server's configuration, its request counters, one
request as handlers see it (:class:`Call`), and :class:`ApiCore`'s helpers (query metadata,
blocking queries, bounded bodies, the request's namespace and partition)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from .acl import AclConfig, Authorizer
from .connlimit import ConnectionLimiter
from .faults import FaultInjector
from .model import RaftWrites, Scope
from .store import Store
from .wire import ApiError, QueryOptions, parse_scope

VERSION = "1.22.0"
DEFAULT_QUERY_TIME_NS = 300 * 1_000_000_000
MAX_QUERY_TIME_NS = 600 * 1_000_000_000
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
    enterprise: bool = False

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


class ApiCore:
    """The state and helpers the handler groups (KV, txn, sessions, agent, control) share."""

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

    def _notify(self) -> None:
        """Wake every blocking query; each re-runs its read and decides whether to return."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _scope(self, call: Call) -> Scope:
        """The request's namespace and partition, where Consul's handler parses them (its
        ``parseEntMeta``): KV and session endpoints; a CE server refuses any."""
        return parse_scope(call.request, self.config.enterprise)

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
