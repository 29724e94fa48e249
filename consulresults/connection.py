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

import contextlib
import http.client
import ipaddress
import json
import random
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

from . import __version__, forks
from .background import BACKGROUND, Timer
from .deadline import clamp, passed
from .exceptions import ConsulError as ConsulError  # re-exported: the documented home
from .exceptions import ConsulTimeout as ConsulTimeout
from .exceptions import ConsulTLSError as ConsulTLSError
from .exceptions import ConsulUnreachable as ConsulUnreachable
from .exceptions import PermissionDenied as PermissionDenied
from .pressure import HostPressure
from .settings import ConsulSettings, SettingsError

MAX_AGE = 5.0  # a busy process gives its slot back this often: the agent's limit is shared
PRESSURE_COOLDOWN = 10.0
PRESSED_LEASE = 0.5  # under back-pressure, a connection serves requests for this long
PUSHBACK_TEXT = "Your IP is issuing too many concurrent connections"
# after a 429, the next try within this (uniformly), and within the second once the request has
# waited PUSHBACK_HURRY seconds: see pushback_delay
PUSHBACK_WAIT = (0.25, 0.1)
PUSHBACK_HURRY = 0.4
USER_AGENT = f"consul-results/{__version__}"
_CONSISTENT_READS = ("/v1/kv/", "/v1/session/info/", "/v1/session/list")
_E = TypeVar("_E", bound=BaseException)


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
        self.born = time.monotonic()
        self.answered = False  # an answer came on it: a reset is no longer the agent's refusal
        self.secured = False  # its TLS handshake completed

    @property
    def tls(self) -> bool:
        return self._context is not None

    def connect(self) -> None:
        """Connect within the timeout, name resolution included (which the socket's timeout
        does not bound: a slow resolver would otherwise outlast any deadline)."""
        timeout = cast(float, self.timeout)  # the transport sets it before connecting
        end = time.monotonic() + timeout  # the lookup and the connection share it
        addresses = _resolved(self.host, self.port, timeout)
        self.sock = _connected(addresses, self.port, max(0.001, end - time.monotonic()))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is not None:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)
            self.secured = True

    def dropped(self) -> bool:
        """Closed by the server while idle: a readable idle socket has only EOF to read."""
        if self.sock is None:
            return True
        poller = select.poll()  # not select.select: it fails on descriptors over 1023
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))


def _resolved(host: str, port: int, timeout: float) -> list[str]:
    """The addresses ``host`` resolves to, looked up on a helper thread so that the lookup ends
    within ``timeout`` (``socket.getaddrinfo`` takes no timeout of its own)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    found: list[Any] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(info[4][0] for info in infos)))
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=lookup, name="consulresults-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        raise Late(f"looking up {host} took over {timeout:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    return cast("list[str]", found[0])


def _connected(addresses: list[str], port: int, timeout: float) -> socket.socket:
    """A connection to the first of ``addresses`` that takes one (``localhost`` may be ::1
    first while the agent listens on 127.0.0.1 only), within ``timeout`` in all."""
    end = time.monotonic() + timeout
    failure: OSError = OSError(f"no address to connect to (port {port})")
    for address in addresses:
        try:
            return socket.create_connection((address, port), max(0.001, end - time.monotonic()))
        except OSError as exc:
            failure = exc
    raise failure


class Late(TimeoutError):
    """A time-out of this module's own (not a socket's), with a message saying what was late."""


class PoolExhausted(Late):
    """No connection of the budget came free within the request's timeout."""


class _Pool:
    """The connection budget of this process for one agent: at most ``max_connections`` open
    (in use or idle), shared by every transport built with the same address, TLS and budget.

    - A request past the budget waits for a connection to come free, within its timeout.
    - Long requests (blocking reads) may hold all connections but one, so stores, renewals and
      short reads always have one.
    - Idle connections are closed after ``idle_timeout`` (by the background thread), and a
      connection's first request past ``MAX_AGE`` asks the agent to close it, so a busy process
      gives its slots back now and then (the socket's TIME_WAIT is the agent's) and an idle one
      holds none.
    - After the agent refused a connection (back-pressure), the budget is halved for
      ``PRESSURE_COOLDOWN`` seconds. While this process or another of the host was refused
      lately (:mod:`consulresults.pressure`), a connection serves requests for
      ``PRESSED_LEASE`` only, and the process waits a random while (as long as a refused one
      would) before it opens the next: the slot it gave back goes to a process that was
      waiting for one, not back to itself, so every process gets its turn.
    """

    def __init__(self, settings: ConsulSettings) -> None:
        self._context = tls_context(settings)
        self._host, self._port = settings.host, settings.port
        self._server_name = settings.tls_server_name or settings.host
        self.limit = settings.max_connections
        self.idle_timeout = settings.idle_timeout
        self._host_pressure = HostPressure(self._host, self._port, PRESSURE_COOLDOWN)
        self.reset()
        forks.reset_in_forked_child(self)  # the idle sockets would be the parent's

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._idle: list[tuple[_Connection, float]] = []  # (connection, when it became idle)
        self._open = 0  # in use or idle
        self._long = 0  # in use by long requests
        self.peak = 0
        self._cap = self.limit
        self._calm_at = 0.0  # when a cap lowered by back-pressure is restored
        self._turn_at = 0.0  # no new connection before, once one was given back under pressure
        self._reaper: Timer | None = None

    def take(self, long: bool, deadline: float) -> _Connection:
        """A connection (idle, or new and not yet connected), waiting for one until
        ``deadline`` (monotonic) if the budget is spent."""
        with self._cond:
            while True:
                connection = self._grant(long)
                if connection is not None:
                    return connection
                now = time.monotonic()
                if now >= deadline:
                    raise PoolExhausted(
                        f"all {self._cap} connections of this process's budget stayed busy"
                    )
                turn = self._turn_at if now < self._turn_at else deadline  # else: a notify
                self._cond.wait(min(deadline, turn) - now)

    def _grant(self, long: bool) -> _Connection | None:
        now = time.monotonic()
        if now >= self._calm_at:
            self._cap = self.limit
        if long and self._long >= self._cap - 1:
            return None
        connection = self._reuse()
        if connection is None and self._open < self._cap and now >= self._turn_at:
            self._open += 1
            self.peak = max(self.peak, self._open)
            connection = _Connection(self._host, self._port, self._context, self._server_name)
        if connection is not None and long:
            self._long += 1
        return connection

    def _reuse(self) -> _Connection | None:
        while self._idle:
            connection, _ = self._idle.pop()
            if not connection.dropped():
                return connection
            self._close(connection)
        return None

    def give_back(self, connection: _Connection, long: bool) -> None:
        """A connection whose answer was read in full: kept idle, or closed if it is too old,
        the agent is pushing back, or the budget shrank meanwhile."""
        with self._cond:
            self._long -= long
            now = time.monotonic()
            # one past MAX_AGE is kept: its next request asks the agent to close it (the
            # TIME_WAIT is then the agent's); under pressure its slot is given back now
            lease_over = self.pressed() and now - connection.born >= PRESSED_LEASE
            if self._open <= self._cap and not lease_over:
                self._idle.append((connection, now))
                self._schedule_reaper(self.idle_timeout)
            else:
                self._release(connection)
            self._cond.notify_all()

    def discard(self, connection: _Connection, long: bool) -> None:
        """A connection that failed, was interrupted or that the server closes: under pressure,
        the next one waits its turn."""
        with self._cond:
            self._long -= long
            self._release(connection)
            self._cond.notify_all()

    def _release(self, connection: _Connection) -> None:
        """Close ``connection``; if it served requests under pressure, its slot is another
        process's turn: this one waits as long as a refused process would."""
        self._close(connection)
        if connection.answered and self.pressed():
            self._turn_at = time.monotonic() + pushback_delay(0.0)

    def pushed_back(self) -> None:
        """The agent refused a connection: use fewer for a while, and give idle ones back."""
        self._host_pressure.refused()
        with self._cond:
            self._cap = max(min(2, self.limit), self._cap // 2)
            self._calm_at = time.monotonic() + PRESSURE_COOLDOWN
            while self._idle:
                self._close(self._idle.pop()[0])

    def pressed(self) -> bool:
        """Whether the agent pushed this process or another of the host back lately."""
        now = time.monotonic()
        return now < self._calm_at or now < self._host_pressure.felt()

    def last_use(self, connection: _Connection) -> bool:
        """Whether a request on ``connection`` should be its last: it is older than a busy
        process may hold a slot (``MAX_AGE``, or ``PRESSED_LEASE`` under pressure). The agent
        is asked to close it (``Connection: close``), so the TIME_WAIT is the agent's."""
        age = time.monotonic() - connection.born
        return age >= MAX_AGE or (age >= PRESSED_LEASE and self.pressed())

    def stats(self) -> dict[str, int]:
        """Open, idle and long-held connections, the budget now and at most, and the peak."""
        with self._cond:
            return {
                "open": self._open,
                "idle": len(self._idle),
                "long": self._long,
                "cap": self._cap,
                "limit": self.limit,
                "peak": self.peak,
            }

    def _close(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1

    def _schedule_reaper(self, delay: float) -> None:
        if self._reaper is None:
            self._reaper = BACKGROUND.call_later(delay, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back for the rest."""
        with self._cond:
            self._reaper = None
            expiry = time.monotonic() - self.idle_timeout
            expired = [entry for entry in self._idle if entry[1] <= expiry]
            self._idle = [entry for entry in self._idle if entry[1] > expiry]
            for connection, _ in expired:
                self._close(connection)
            if self._idle:
                self._schedule_reaper(self._idle[0][1] - expiry)
            self._cond.notify_all()


_POOLS: dict[tuple[Any, ...], _Pool] = {}
_POOLS_LOCK = forks.Lock()


def pool_for(settings: ConsulSettings) -> _Pool:
    """The process's pool for this agent, TLS set-up and budget (made on first use)."""
    key = (
        settings.scheme,
        settings.host,
        settings.port,
        settings.ca_file,
        settings.client_cert,
        settings.client_key,
        settings.tls_server_name,
        settings.verify,
        settings.max_connections,
        settings.idle_timeout,
    )
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _Pool(settings)
        return pool


def pushback_delay(waited: float) -> float:
    """How long to wait before trying again after the agent refused a connection, ``waited``
    seconds into the request. The agent's slots go to whichever process asks first when one
    comes free, so this is a lottery among the waiting processes: a flat random wait (no
    exponential growth, which would make the unlucky ones ask ever less often) under 250 ms,
    and under 100 ms once a request has waited 400 ms, so those that waited longest win
    more often and the slowest waits stay short. A refusal costs the agent little."""
    usual, hurried = PUSHBACK_WAIT
    return random.uniform(0, hurried if waited >= PUSHBACK_HURRY else usual)


class BackPressure(Exception):
    """The agent refused a new connection: this client IP is over the agent's limit of
    concurrent connections (``limits.http_max_conns_per_client``). Nothing was applied."""


class Interrupted(Exception):
    """A long request was cut short on purpose (:class:`Interrupt`)."""


class Interrupt:
    """Lets another thread cut a long request short (the waiting service's blocking read, when
    a new waiter needs a round now): its socket is shut down, so the read ends at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: _Connection | None = None
        self.fired = False

    def attach(self, connection: _Connection | None) -> None:
        with self._lock:
            self._connection = connection
            if connection is not None and self.fired:
                self._shut(connection)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._connection is not None:
                self._shut(self._connection)

    @staticmethod
    def _shut(connection: _Connection) -> None:
        if connection.sock is not None:
            with contextlib.suppress(OSError):  # already closed
                connection.sock.shutdown(socket.SHUT_RDWR)


def _refused_at_accept(connection: _Connection, exc: BaseException) -> bool:
    """Whether a failure is the agent refusing the connection as it accepted it (it writes its
    429 and closes, before reading anything; over TLS after the handshake, with a 10 ms
    deadline): a fresh connection reset or closed before any answer, or a TLS handshake cut
    short. A handshake that failed otherwise (plain HTTP, a certificate) is no refusal, nor is
    a TLS connection closed after its handshake: an agent that wants a client certificate
    does that."""
    if connection.answered or isinstance(exc, ssl.SSLCertVerificationError):
        return False
    if connection.tls and connection.secured:
        return False
    # over TLS Consul answers the 429 through TLS after the handshake: a handshake cut short (EOF
    # or reset) is the same refusal, a handshake that met something else (plain HTTP) is not
    return isinstance(
        exc,
        (
            ConnectionResetError,
            BrokenPipeError,
            http.client.RemoteDisconnected,
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
        ),
    )


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


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    target: str  # the path, quoted, with its query
    body: bytes | None
    headers: dict[str, str]
    timeout: float
    long: bool
    interrupt: Interrupt | None


class Transport:
    """Consul's HTTP API: the token, datacenter and read consistency on every request, answers
    decoded, and the failures raised as this module's exceptions."""

    def __init__(self, settings: ConsulSettings, token: str | None) -> None:
        self.scheme = settings.scheme
        self.base_uri = settings.base_url
        self.timeout = settings.timeout
        self.consistency = settings.consistency
        self.backpressure_patience = settings.backpressure_patience
        self._token = token
        self._datacenter = settings.datacenter
        self.pool = pool_for(settings)
        # transports that may answer for each other (the waiting service batches their keys)
        self.identity = (id(self.pool), token, settings.datacenter)

    def send(
        self,
        method: str,
        path: str,
        params: Iterable[tuple[str, Any]] | None = None,
        data: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        long: bool = False,
        interrupt: Interrupt | None = None,
    ) -> Answer:
        """One request as given (python-consul2's calls come through here too). ``long`` marks a
        blocking read, which may not take the budget's last connection. None is sent once the
        caller's deadline has passed (:mod:`consulresults.deadline`).

        When the agent refuses the connection (over its per-client-IP limit), nothing was
        applied: the request is sent again after a random wait (:func:`pushback_delay`), for up to
        ``backpressure_patience`` seconds, whatever the request."""
        if passed():
            raise compatible(ConsulTimeout)(
                f"{method} {path} was not sent to Consul at {self.base_uri}: the caller's "
                "deadline had passed"
            )
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", **(headers or {})}
        if self._token:
            headers["X-Consul-Token"] = self._token
        params = list(params or [])
        if self._datacenter and not any(name == "dc" for name, _ in params):
            params.append(("dc", self._datacenter))
        request = _Request(
            method,
            path,
            quote(path, safe="/:") + (f"?{urlencode(params)}" if params else ""),
            data.encode() if isinstance(data, str) else data,
            headers,
            timeout or self.timeout,
            long,
            interrupt,
        )
        began = time.monotonic()
        give_up = began + clamp(self.backpressure_patience)
        while True:
            try:
                return self._send_once(request)
            except BackPressure as exc:
                delay = pushback_delay(time.monotonic() - began)
                if time.monotonic() + delay >= give_up:
                    time.sleep(max(0.0, give_up - time.monotonic()))  # give up when due
                    raise compatible(ConsulError)(
                        429,
                        f"{PUSHBACK_TEXT} (the agent at {self.base_uri} refused connections for "
                        f"{self.backpressure_patience:g} s: see its limits "
                        "http_max_conns_per_client, and this process's max_connections)",
                    ) from exc
                time.sleep(delay)

    def _send_once(self, request: _Request) -> Answer:
        method, path, timeout = request.method, request.path, request.timeout
        try:
            return self._exchange(request)
        except TimeoutError as exc:  # Late ones too
            raise compatible(ConsulTimeout)(
                f"Consul at {self.base_uri} did not answer {method} {path} within {timeout:g} s "
                f"({f'{exc}; ' if isinstance(exc, Late) else ''}if it is just slow, "
                "raise the backend's timeout option, e.g. ?timeout=30)"
            ) from exc
        except (OSError, http.client.HTTPException, zlib.error) as exc:
            failure = ConsulTLSError if isinstance(exc, ssl.SSLError) else ConsulUnreachable
            reason = _reason(exc)
            raise compatible(failure)(
                f"cannot reach Consul at {self.base_uri} ({method} {path}): {reason}",
                self.base_uri,
                reason,
            ) from exc

    def _exchange(self, request: _Request) -> Answer:
        long = request.long
        connection = self.pool.take(long, time.monotonic() + clamp(request.timeout))
        try:
            response, content = self._talk(connection, request, self.pool.last_use(connection))
        except BaseException as exc:
            self.pool.discard(connection, long)
            if _refused_at_accept(connection, exc):
                self.pool.pushed_back()
                raise BackPressure() from exc
            raise
        if response.status == 429 and content.startswith(PUSHBACK_TEXT.encode()):
            self.pool.discard(connection, long)
            self.pool.pushed_back()
            raise BackPressure()
        connection.answered = True
        if response.will_close:
            self.pool.discard(connection, long)
        else:
            self.pool.give_back(connection, long)
        if response.headers.get("Content-Encoding") == "gzip":
            content = zlib.decompress(content, 16 + zlib.MAX_WBITS)
        return Answer(response.status, response.headers, content)

    @staticmethod
    def _talk(
        connection: _Connection, request: _Request, last: bool
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send ``request`` and read the whole answer within its timeout: the socket's timeout
        bounds each receive, and a watchdog on the background thread cuts an answer that
        trickles in for longer (its socket is shut down). The background thread's own
        requests (the waiting service's reads) have the socket's timeout only."""
        timeout, interrupt = request.timeout, request.interrupt
        watchdog = Interrupt()
        # not on the background thread itself, which is the one that would fire it
        timer = (
            None
            if BACKGROUND.on_thread()
            else BACKGROUND.call_later(timeout, watchdog.fire, urgent=True)
        )
        try:
            connection.timeout = timeout
            if connection.sock is None:
                connection.connect()  # a socket to shut down before the request may block
            connection.sock.settimeout(timeout)
            watchdog.attach(connection)
            if interrupt is not None:
                interrupt.attach(connection)
            headers = request.headers
            if last:
                headers = {**headers, "Connection": "close"}
            connection.request(request.method, request.target, body=request.body, headers=headers)
            response = connection.getresponse()
            return response, response.read()
        except BaseException as exc:
            if interrupt is not None and interrupt.fired:
                raise Interrupted() from exc
            if watchdog.fired and not isinstance(exc, TimeoutError):
                raise TimeoutError("timed out") from exc  # as the socket's own time-out
            raise
        finally:
            if timer is not None:
                timer.cancel()
            watchdog.attach(None)  # a watchdog firing late must not cut the next request
            if interrupt is not None:
                interrupt.attach(None)

    def request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: object = None,
        timeout: float | None = None,
        expect: tuple[int, ...] = (200,),
        consistency: str | None = None,
        long: bool = False,
        interrupt: Interrupt | None = None,
    ) -> Response:
        """One request; an answer whose status is not in ``expect`` raises :class:`ConsulError`.
        Reads use the configured consistency unless ``consistency`` says otherwise."""
        data = None if body is None else json.dumps(body)
        params = list(params or [])
        mode = consistency or self.consistency
        if method == "GET" and path.startswith(_CONSISTENT_READS) and mode != "default":
            params.append((mode, "1"))
        answer = self.send(
            method, path, params, data, timeout=timeout, long=long, interrupt=interrupt
        )
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
