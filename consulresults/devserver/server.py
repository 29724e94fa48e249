"""Running the dev server: in a background thread (tests, Python API), in the foreground (the
``dev-server`` command), or as a child process that a test can kill and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

from aiohttp import web

from .acl import AclConfig
from .api import VERSION, ConsulApi, Counters, ServerConfig
from .connlimit import BACKLOG, DEFAULT_LIMIT, ConnectionLimiter, listen, listen_unix
from .durations import parse_go_duration
from .faults import FaultInjector, FaultRule
from .persistence import DataDir
from .store import Store

TICK_SECONDS = 0.05
MAX_HEADER_BYTES = 1 << 20
TOMBSTONE_REAP_SECONDS = 10.0
# what a stop gives requests still running (blocking queries) before they are cut off: Consul's
# agent gives each HTTP server one second (Agent.ShutdownEndpoints)
SHUTDOWN_SECONDS = 1.0


class DevServer:
    """A Consul-compatible dev server: ``with DevServer() as server: ... server.url``.

    ``port=0`` picks a free port. ``session_ttl_min`` and ``session_ttl_multiplier`` let tests
    shorten TTL expiry (Consul's defaults are ``10s`` and 2). ``faults`` injects failures.
    ``http_max_conns_per_client`` limits concurrent connections per client IP as Consul does
    (default 200, 0 for no limit); :meth:`connection_stats` shows them. ``enterprise``
    accepts namespaces and partitions as Consul Enterprise does (without it they are refused as
    Consul CE refuses them). ``socket`` (a path, or Consul's ``unix:///path``) serves the same
    API on a unix socket too, with TLS if the TCP listener has it, its clients sharing one
    connection limit (``unix/``), as Consul's do.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        node_name: str = "consul-results-dev",
        datacenter: str = "dc1",
        acl: AclConfig | None = None,
        session_ttl_min: str = "10s",
        session_ttl_multiplier: float = 2.0,
        tombstone_ttl: str = "15m",
        data_dir: str | os.PathLike[str] | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        kv_max_value_size: int = 524_288,
        fault_seed: int | None = None,
        control: bool = True,
        consul_version: str = VERSION,
        http_max_conns_per_client: int = DEFAULT_LIMIT,
        enterprise: bool = False,
        socket: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.socket = None if socket is None else os.fspath(socket).removeprefix("unix://")
        self.config = ServerConfig(
            node_name=node_name,
            datacenter=datacenter,
            acl=acl or AclConfig(),
            kv_max_value_size=kv_max_value_size,
            control=control,
            version=consul_version,
            enterprise=enterprise,
        )
        if self.config.before_1_14:
            self.config.txn_max_ops = 64
        self.session_ttl_min_ns = parse_go_duration(session_ttl_min)
        self.session_ttl_multiplier = session_ttl_multiplier
        self.tombstone_ttl_s = parse_go_duration(tombstone_ttl) / 1e9
        self.data_dir = data_dir
        self.ssl_context = _server_ssl_context(tls_cert, tls_key, tls_ca)
        self.faults = FaultInjector(seed=fault_seed)
        self._counters = Counters()
        self.connections = ConnectionLimiter(http_max_conns_per_client)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._data: DataDir | None = None
        self.store: Store | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), the form CONSUL_HTTP_ADDR takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def socket_url(self) -> str | None:
        """``unix:///path`` (CONSUL_HTTP_ADDR's form) when serving on a unix socket too."""
        return None if self.socket is None else f"unix://{self.socket}"

    # ------------------------------------------------------------------ lifecycle (async)

    async def start_async(self) -> None:
        """Load state, bind the port (raising OSError if busy) and start the timers."""
        self.store = Store(
            self.config.node_name,
            self.session_ttl_min_ns,
            self.session_ttl_multiplier,
            self.tombstone_ttl_s,
            raft_writes=self._counters.raft,
        )
        if self.config.before_1_14:
            self.store.disabled_verbs.add("get-or-empty")
        if self.data_dir is not None:
            self._data = DataDir(self.data_dir)
            self._data.open(self.store)
        api = ConsulApi(self.store, self.config, self.faults, self._counters, self.connections)
        self._runner = web.AppRunner(
            api.make_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_SECONDS,
            # Consul (Go) accepts up to 1 MiB of request line and headers (max_header_bytes)
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await self._runner.setup()
        try:
            await self._listen(self._runner)
        except OSError:
            await self._runner.cleanup()
            raise
        self._ticker = asyncio.create_task(self._tick())

    async def _listen(self, runner: web.AppRunner) -> None:
        """Bind the port (and the socket), here rather than by aiohttp, so that connections
        are counted as they are accepted."""
        listeners = await listen(self.host, self.port, self.connections, self.ssl_context)
        self.port = listeners[0].getsockname()[1]
        if self.socket is not None:
            try:
                listeners.append(listen_unix(self.socket, self.connections, self.ssl_context))
            except OSError:
                for listener in listeners:
                    listener.close()
                raise
        for sock in listeners:
            await web.SockSite(runner, sock, ssl_context=self.ssl_context, backlog=BACKLOG).start()

    async def stop_async(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.socket is not None:  # as Go's listener, which removes its socket file
            with contextlib.suppress(OSError):
                os.unlink(self.socket)
        if self._data is not None:
            self._data.close()

    async def _tick(self) -> None:
        """Expire sessions whose TTL ran out, and reap old tombstones now and then."""
        since_reap = 0.0
        assert self.store is not None  # start_async() made it before starting this task
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.store.expire_sessions()
            since_reap += TICK_SECONDS
            if since_reap >= TOMBSTONE_REAP_SECONDS:
                self.store.reap_tombstones()
                since_reap = 0.0

    # ------------------------------------------------------------------ lifecycle (thread)

    def start(self) -> DevServer:
        """Start serving from a background thread; returns once requests are answered."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.start_async())
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop_async())
            _finish_tasks(self._loop)
            self._loop.close()

        self._thread = threading.Thread(target=run, name="consul-dev-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the server's loop (the store is not thread-safe) and return its result."""

        async def wrapper() -> object:
            return fn()

        loop = cast(asyncio.AbstractEventLoop, self._loop)  # set by start()
        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout=10)

    # ------------------------------------------------------------------ test helpers

    def counters(self) -> dict[str, int]:
        """Requests per endpoint (``kv.get``, ``kv.put``, ``txn``...), ``requests`` and
        ``connections`` (distinct TCP connections), and the writes a real Consul would put
        through Raft: ``raft.kv`` (KV PUT and DELETE), ``raft.session`` (create, destroy,
        invalidation), ``raft.txn.applied``, ``raft.txn.failed`` and their sum ``raft.writes``
        (not part of ``requests``), since start or the last reset."""
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        self._counters.reset()

    def connection_stats(self) -> dict[str, Any]:
        """Connections per client IP: ``{"limit": N, "open": {ip: n}, "peak": {ip: n},
        "refused": {ip: n}}`` (open now, most open at once, refused with the 429), since start or
        the last :meth:`reset_connection_stats`. Safe to call from any thread."""
        return self.connections.stats()

    def reset_connection_stats(self) -> None:
        """Forget the refusals and start the peaks again from the connections open now."""
        self.connections.reset_stats()

    def set_http_max_conns_per_client(self, limit: int) -> None:
        """Change the limit (0: none) for connections accepted from now on."""
        self.connections.limit = limit

    def set_node_health(self, healthy: bool) -> None:
        """Turn the node's serfHealth check critical (invalidating sessions that watch it)."""
        self.call(lambda: cast(Store, self.store).set_node_health(healthy))  # set by start()

    def reap_tombstones(self) -> int:
        """Reap every tombstone now, as if the tombstone TTL had passed (prefix indexes may then
        go back); returns how many went. ``DELETE /_dev/tombstones`` does the same."""
        return cast(int, self.call(lambda: cast(Store, self.store).reap_tombstones(max_age_s=0)))


def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a stop left running (requests cut off after SHUTDOWN_SECONDS) and let it end,
    as ``asyncio.run`` does, so that closing the loop destroys no pending task."""
    pending = asyncio.all_tasks(loop)
    if not pending:
        return
    for task in pending:
        task.cancel()

    async def ended() -> None:
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(ended())


async def serve_forever(server: DevServer, announce: Callable[[str], None]) -> None:
    """Run ``server`` in this process's loop until SIGINT or SIGTERM, then stop cleanly."""
    await server.start_async()
    announce(server.url if server.socket_url is None else f"{server.socket_url} and {server.url}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop_async()


def _server_ssl_context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext | None:
    """TLS when a certificate is given; with a CA too, clients must present a certificate."""
    if not cert:
        if key or ca:
            raise ValueError(
                "TLS needs --tls-cert (with --tls-key); --tls-key/--tls-ca alone do not enable it"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(
            f"cannot load --tls-cert {cert} / --tls-key {key}: {_load_error(exc)} (expect PEM "
            "files: the certificate and its unencrypted private key)"
        ) from None
    if ca:
        try:
            context.load_verify_locations(ca)
        except OSError as exc:
            raise ValueError(f"cannot load --tls-ca {ca}: {_load_error(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_error(exc: OSError) -> str:
    """Why a certificate or key file could not be loaded, in words a user can act on: OpenSSL's
    own text (``[SSL] PEM lib (_ssl.c:3905)``) says nothing about what is wrong with the file.

    The client side has its own copy, as the dev server imports nothing from the rest of
    :mod:`consulresults`.
    """
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "not PEM, or the key does not match").replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()


class RemoteFaults(FaultInjector):
    """Fault injection of a dev server in another process, through its control endpoint."""

    def __init__(self, control: ControlClient) -> None:
        super().__init__()
        self._control = control

    def add(self, rule: FaultRule) -> FaultRule:
        self._control.request("PUT", "/_dev/faults", asdict(rule))
        return rule

    def clear(self) -> None:
        self._control.request("DELETE", "/_dev/faults")

    def rules(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self._control.request("GET", "/_dev/faults")["rules"])


class ControlClient:
    """Calls a dev server's ``/_dev/`` endpoints (stdlib only, no connection reuse needed)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl_context = ssl_context

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as resp:
            return json.loads(resp.read())


class DevServerProcess:
    """``consul-results dev-server`` as a child process, for tests that kill and restart it.

    Same handle shape as :class:`DevServer` (``url``, ``address``, ``faults``, ``counters()``,
    ``connection_stats()``).
    A restart reuses the port and the ``--data-dir``, like an agent restarted in place.
    """

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = list(args)
        self.port = port
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> DevServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "consulresults",
            "dev-server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        assert self.process.stdout is not None  # stdout=PIPE
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"dev server did not start: {self._stderr.read().strip()}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.url)

    @property
    def faults(self) -> RemoteFaults:
        return RemoteFaults(self.control)

    def counters(self) -> dict[str, int]:
        """As :meth:`DevServer.counters` (``raft.*`` included), read from ``/_dev/counters``."""
        return cast("dict[str, int]", self.control.request("GET", "/_dev/counters"))

    def reset_counters(self) -> None:
        self.control.request("DELETE", "/_dev/counters")

    def set_node_health(self, healthy: bool) -> None:
        self.control.request("PUT", f"/_dev/node-health?healthy={str(healthy).lower()}")

    def reap_tombstones(self) -> int:
        """As :meth:`DevServer.reap_tombstones`."""
        return cast(int, self.control.request("DELETE", "/_dev/tombstones")["reaped"])

    def connection_stats(self) -> dict[str, Any]:
        """As :meth:`DevServer.connection_stats`; the request asking is one of the open ones."""
        return cast("dict[str, Any]", self.control.request("GET", "/_dev/connections"))

    def reset_connection_stats(self) -> None:
        self.control.request("DELETE", "/_dev/connections")

    def set_http_max_conns_per_client(self, limit: int) -> None:
        self.control.request("PUT", f"/_dev/connections?limit={limit}")

    def kill(self) -> None:
        """SIGKILL: no snapshot, no goodbye — what a crash or OOM kill does."""
        process = cast("subprocess.Popen[str]", self.process)  # set by start()
        process.kill()
        process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> DevServerProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> DevServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
