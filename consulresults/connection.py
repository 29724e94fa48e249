"""The one place that talks HTTP to Consul, and the only place that turns its answers and its
failures into exceptions.

A :class:`Transport` sends requests on ``http.client`` over the process's connection budget
(:mod:`consulresults.pool`: a pool per process and agent, emptied after ``fork`` so prefork
children never share a socket with their parent — Celery issue #5605; its connections:
:mod:`consulresults.sockets`), with timeouts, TLS, and the ACL token in the ``X-Consul-Token``
header (never in a URL, where proxies and logs keep it); answers: :mod:`consulresults.answers`.
It is built from resolved :class:`~consulresults.settings.ConsulSettings`, never from
python-consul2's environment handling.

Not ``requests``: importing it costs most of a CLI command's start-up. The failures raised are
still the classes code written for Celery's built-in backend catches (python-consul2's
``ConsulException``, requests' ``ConnectionError``...): see :mod:`consulresults.compat`, which
is imported only when a failure is raised.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from . import __version__
from .answers import Answer as Answer  # re-exported: the transport's documented names
from .answers import Response as Response
from .answers import TxnAnswer as TxnAnswer
from .answers import compatible as compatible
from .answers import denial, rate_limited
from .answers import error_for as error_for
from .answers import is_transient as is_transient
from .background import BACKGROUND
from .deadline import clamp, passed
from .exceptions import ConsulError as ConsulError  # re-exported: the documented home
from .exceptions import ConsulTimeout as ConsulTimeout
from .exceptions import ConsulTLSError as ConsulTLSError
from .exceptions import ConsulUnreachable as ConsulUnreachable
from .exceptions import PermissionDenied as PermissionDenied
from .pool import pool_for, pushback_delay
from .settings import ConsulSettings
from .sockets import Connection, Late, refused_at_accept
from .sockets import Interrupt as Interrupt  # re-exported: the transport's documented names
from .sockets import Interrupted as Interrupted
from .tenancy import PROBE_KEY, Scope

PUSHBACK_TEXT = "Your IP is issuing too many concurrent connections"
USER_AGENT = f"consul-results/{__version__}"
_CONSISTENT_READS = ("/v1/kv/", "/v1/session/info/", "/v1/session/list")


class BackPressure(Exception):
    """The agent refused a new connection: this client IP is over the agent's limit of
    concurrent connections (``limits.http_max_conns_per_client``). Nothing was applied."""


class RateLimited(BackPressure):
    """Consul's rate limiter refused the request (:func:`~.answers.rate_limited`): nothing was
    applied, so it is sent again within the same patience as the agent's connection limit."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(status, text)
        self.status, self.text = status, text


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
        self.batching = settings.batching
        self._token = token
        self._authorization = settings.authorization
        self._path_prefix = settings.path_prefix
        self._datacenter = settings.datacenter
        self.scope = Scope(settings.endpoint, settings.namespace, settings.partition)
        self.sources = settings.sources  # where each setting came from (doctor)
        self.pool = pool_for(settings)
        # transports that may answer for each other (the waiting service batches their keys);
        # the pool is per endpoint: socket or host and port, address path, basic auth
        self.identity = (
            id(self.pool),
            token,
            settings.datacenter,
            settings.namespace,
            settings.partition,
        )

    @property
    def sends_token(self) -> bool:
        """Whether requests carry a token: Consul reports ACL-filtered lists only then."""
        return bool(self._token)

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

        When the agent refuses the connection (over its per-client-IP limit) or Consul's rate
        limiter refuses the request, nothing was applied: the request is sent again after a
        random wait (:func:`pushback_delay`, :func:`_rate_delay`), for up to
        ``backpressure_patience`` seconds, whatever the request."""
        if passed():
            raise compatible(ConsulTimeout)(
                f"{method} {path} was not sent to Consul at {self.base_uri}: the caller's "
                "deadline had passed"
            )
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", **(headers or {})}
        if self._token:
            headers["X-Consul-Token"] = self._token
        if self._authorization:
            headers["Authorization"] = self._authorization
        params = list(params or [])
        if self._datacenter and not any(name == "dc" for name, _ in params):
            params.append(("dc", self._datacenter))
        params = self.scope.params(path, params)
        if self.scope and path == "/v1/txn" and data:  # python-consul2's txn calls too
            data = self._scoped_txn(data)
        query = f"?{urlencode(params)}" if params else ""
        request = _Request(
            method,
            path,
            quote(self._path_prefix + path, safe="/:") + query,
            data.encode() if isinstance(data, str) else data,
            headers,
            timeout or self.timeout,
            long,
            interrupt,
        )
        began = time.monotonic()
        give_up = began + clamp(self.backpressure_patience)
        tries = 0
        while True:
            try:
                return self._send_once(request)
            except BackPressure as exc:
                tries += 1
                waited = time.monotonic() - began
                limited = isinstance(exc, RateLimited)
                delay = _rate_delay(tries) if limited else pushback_delay(waited)
                if time.monotonic() + delay >= give_up:
                    time.sleep(max(0.0, give_up - time.monotonic()))  # give up when due
                    raise self._refused(exc) from exc
                time.sleep(delay)

    def _scoped_txn(self, data: str | bytes) -> str:
        """A txn body with the namespace and partition in each operation, once the scope was
        checked (Consul CE ignores both in a txn: :mod:`consulresults.tenancy`)."""
        self.scope.verify(lambda: self.request("GET", PROBE_KEY, expect=(200, 403, 404)))
        return json.dumps(self.scope.ops(json.loads(data)))

    def _refused(self, exc: BackPressure) -> ConsulError:
        """Past the patience: the refusal, naming the limits to look at."""
        patience = f"{self.backpressure_patience:g} s"
        if isinstance(exc, RateLimited):
            return compatible(ConsulError)(
                exc.status,
                f"{exc.text or 'rate limit exceeded'} (Consul's rate limiter at {self.base_uri} "
                f"refused requests for {patience}: see the servers' limits.request_limits and "
                "the agent's limits.rpc_rate)",
            )
        return compatible(ConsulError)(
            429,
            f"{PUSHBACK_TEXT} (the agent at {self.base_uri} refused connections for {patience}: "
            "see its limits http_max_conns_per_client, and this process's max_connections)",
        )

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
        # a burst beyond the budget queues for as long as the patience (and the caller's
        # deadline) allows, not one request timeout: nothing fails for being busy
        connection = self.pool.take(long, time.monotonic() + clamp(self.backpressure_patience))
        try:
            response, content = self._talk(connection, request, self.pool.last_use(connection))
        except BaseException as exc:
            self.pool.discard(connection, long)
            if refused_at_accept(connection, exc):
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
        if rate_limited(response.status, content):
            raise RateLimited(response.status, content.decode("utf-8", errors="replace").strip())
        return Answer(response.status, response.headers, content)

    @staticmethod
    def _talk(
        connection: Connection, request: _Request, last: bool
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
            raise self.scope.explained(error_for(response))
        return response

    def txn(self, ops: list[dict[str, Any]]) -> TxnAnswer:
        """Apply ``ops`` atomically. A 409 is an answer (the checks failed), unless an operation
        was denied by the ACLs (:func:`~consulresults.answers.denial`)."""
        answer = self.txn_answer(ops)
        refused = denial(answer.errors)
        if refused is not None:
            raise refused
        return answer

    def txn_answer(
        self, ops: list[dict[str, Any]], params: list[tuple[str, str]] | None = None
    ) -> TxnAnswer:
        """``ops`` applied atomically, or every failing operation's error, ACL denials too (a
        batch's members each take their own: :mod:`consulresults.batching`)."""
        response = self.request("PUT", "/v1/txn", params, body=ops, expect=(200, 409))
        if response.status == 200:
            return TxnAnswer(response.body["Results"] or [], [])
        if not isinstance(response.body, dict) or "Errors" not in response.body:
            raise error_for(response)  # not Consul's answer (a proxy's?): no conflict to retry
        return TxnAnswer(None, response.body["Errors"])

    def read_params(self) -> list[tuple[str, str]]:
        """The read consistency as query parameters (a read-only txn honours them as a GET)."""
        return [] if self.consistency == "default" else [(self.consistency, "1")]


def _rate_delay(tries: int) -> float:
    """After a rate limiter's refusal: full jitter, doubling from 50 ms to at most 1 s (the
    limiter refills per second; hurrying would only spend its tokens)."""
    return random.uniform(0, min(1.0, 0.05 * 2 ** (tries - 1)))


def connect(settings: ConsulSettings) -> Transport:
    """The transport for ``settings``: the token is read (and checked) here, once."""
    return Transport(settings, settings.resolved_token())
