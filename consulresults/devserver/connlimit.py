"""Consul's limit on concurrent HTTP connections per client IP
(``limits.http_max_conns_per_client``: 200 by default, 0 for none).

Consul counts a connection from the moment it is accepted until it is closed, per client IP, and
loopback is an IP like any other: every process on a host shares the budget. A connection past the
limit is answered with a fixed 429, before any request is read from it, and closed. On a unix
socket the "client" is the peer's socket name (go-connlimit's key: ``unix/`` and the name), which
is empty for every client that did not bind one: all of them share the ``unix/`` bucket.

Here the listening socket does the counting: :class:`LimitedListener` is what asyncio accepts from,
so a connection is counted (or refused) before aiohttp, or a TLS handshake, ever sees it, and the
sockets it hands out give their slot back when asyncio closes them. Over HTTPS the refusal goes
through TLS, as Consul's does (its limit runs in the http.Server's ConnState hook, on the
``tls.NewListener`` connection, and the write of the 429 performs the handshake): a small thread
(:class:`TlsRefusal`) completes the handshake within a short deadline, writes the same 429 and
closes with a close_notify, so the client reads an ordinary HTTP answer. Counting relies on
asyncio's selector event loop calling ``accept()`` (Linux, macOS); Windows' proactor loop accepts
on its own and would not enforce the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

DEFAULT_LIMIT = 200
# Consul gives the handshake and the 429 a 10 ms write deadline; on a loaded machine (a test run)
# that turns the refusal into a reset, so a refused TLS connection gets 1 s here, all told.
TLS_REFUSAL_SECONDS = 1.0
# At most this many refused TLS connections are answered at once (a thread each); past them a
# refused connection is just closed, as a failed write would leave it in Consul.
TLS_REFUSAL_THREADS = 16
TOO_MANY_CONNECTIONS_TEXT = (
    b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"%s" % (len(TOO_MANY_CONNECTIONS_TEXT), TOO_MANY_CONNECTIONS_TEXT)
)


class ConnectionLimiter:
    """Open connections per client IP against the limit, with the peak and the refusals seen.

    Called from the server's loop (accept, close) and from any thread (stats, limit): hence the
    lock.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._limit = _checked(limit)
        self._open: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._refused: dict[str, int] = {}

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        """Applies to connections accepted from now on; open ones stay open, as on a reload."""
        checked = _checked(limit)
        with self._lock:
            self._limit = checked

    def acquire(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False, counted as refused, when over the limit."""
        with self._lock:
            count = self._open.get(ip, 0)
            if self._limit and count >= self._limit:
                self._refused[ip] = self._refused.get(ip, 0) + 1
                return False
            self._open[ip] = count + 1
            self._peak[ip] = max(self._peak.get(ip, 0), count + 1)
            return True

    def release(self, ip: str) -> None:
        with self._lock:
            count = self._open.get(ip, 0) - 1
            if count > 0:
                self._open[ip] = count
            else:
                self._open.pop(ip, None)

    def stats(self) -> dict[str, Any]:
        """``{"limit": N, "open": {ip: n}, "peak": {ip: n}, "refused": {ip: n}}``; an IP is in
        ``open`` only while it has connections, in ``peak`` once it has had one."""
        with self._lock:
            return {
                "limit": self._limit,
                "open": dict(self._open),
                "peak": dict(self._peak),
                "refused": dict(self._refused),
            }

    def reset_stats(self) -> None:
        """Forget the refusals, and start the peaks again from the connections open now."""
        with self._lock:
            self._peak = dict(self._open)
            self._refused.clear()


class LimitedListener(socket.socket):
    """A listening socket whose ``accept()`` applies ``limiter`` to each new connection."""

    limiter: ConnectionLimiter
    tls_refusal: TlsRefusal | None

    @classmethod
    def adopt(
        cls,
        sock: socket.socket,
        limiter: ConnectionLimiter,
        tls_refusal: TlsRefusal | None = None,
    ) -> LimitedListener:
        """``sock``'s listener; with ``tls_refusal`` (HTTPS) the 429 is written through TLS."""
        listener = cls(sock.family, sock.type, sock.proto, sock.detach())
        listener.limiter = limiter
        listener.tls_refusal = tls_refusal
        return listener

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection within the limit; those over it are refused on the way. Raises
        BlockingIOError when none is waiting, which tells asyncio to wait for the next one."""
        while True:
            conn, address = super().accept()
            ip = client_key(self.family, address)
            if self.limiter.acquire(ip):
                return CountedConnection.adopt(conn, partial(self.limiter.release, ip)), address
            if self.tls_refusal is not None:
                self.tls_refusal.refuse(conn)
            else:
                _refuse(conn)


def client_key(family: int, address: Any) -> str:
    """Whom a connection counts against: its IP, or on a unix socket ``unix/`` and the peer's
    socket name (empty unless the client bound one), as Consul's go-connlimit keys it."""
    if family == socket.AF_UNIX:
        return f"unix/{address if isinstance(address, str) else address.decode()}"
    return str(address[0])


class CountedConnection(socket.socket):
    """An accepted connection that gives its slot back when closed (asyncio closes the socket
    when the connection is lost, whoever ended it)."""

    _release: Callable[[], None] | None

    @classmethod
    def adopt(cls, sock: socket.socket, release: Callable[[], None]) -> CountedConnection:
        conn = cls(sock.family, sock.type, sock.proto, sock.detach())
        conn._release = release
        return conn

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        super().close()


def _refuse(conn: socket.socket) -> None:
    """Consul's answer past the limit: the raw 429, without reading the request, then close.
    A client gone already, or one that would not take its 180 bytes at once, is just closed."""
    with conn:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(TOO_MANY_CONNECTIONS)


class TlsRefusal:
    """Consul's answer past the limit over HTTPS: the TLS handshake, the 429 through TLS, a
    close_notify, then close, all within ``seconds``; done by a thread per connection (never on
    the server's loop), at most ``threads`` at once. The connection was counted as refused
    already and never as open: nothing here touches the limiter."""

    def __init__(
        self,
        context: ssl.SSLContext,
        seconds: float = TLS_REFUSAL_SECONDS,
        threads: int = TLS_REFUSAL_THREADS,
    ) -> None:
        self.context = context
        self.seconds = seconds
        self.threads = threads
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Refused connections being answered now (threads running)."""
        with self._lock:
            return self._busy

    def refuse(self, conn: socket.socket) -> bool:
        """Answer ``conn`` from a new thread and return True at once; or, when ``threads`` are
        busy already (or no thread can be started), close it and return False."""
        with self._lock:
            free = self._busy < self.threads
            if free:
                self._busy += 1
        if not free:
            conn.close()
            return False
        try:
            threading.Thread(
                target=self._answer, args=(conn,), name="consul-dev-server-429", daemon=True
            ).start()
        except RuntimeError:  # can't start new thread
            self._done()
            conn.close()
            return False
        return True

    def _answer(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            with conn, contextlib.suppress(OSError):  # ssl.SSLError and timeouts included
                conn.settimeout(self.seconds)  # bounds the whole handshake
                tls = self.context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )  # conn is detached now: tls is the one to close
                with tls:
                    tls.do_handshake()
                    tls.settimeout(max(deadline - time.monotonic(), 0.001))
                    tls.sendall(TOO_MANY_CONNECTIONS)
                    # the close_notify, without waiting for the client's (Go's Close() does not
                    # either): non-blocking, unwrap() sends it and stops at SSLWantReadError
                    tls.setblocking(False)
                    tls.unwrap()
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1


async def listen(
    host: str, port: int, limiter: ConnectionLimiter, ssl_context: ssl.SSLContext | None = None
) -> list[LimitedListener]:
    """Bound listening sockets for ``host``:``port``, one per address the host resolves to (as
    asyncio's ``create_server`` binds them). With ``ssl_context`` (the server's), connections past
    the limit get the 429 through TLS. Raises OSError, as binding does."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    addresses = dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos)
    tls_refusal = TlsRefusal(ssl_context) if ssl_context is not None else None
    listeners: list[LimitedListener] = []
    try:
        for family, address in addresses:
            sock = socket.create_server(address, family=family, backlog=BACKLOG)
            listeners.append(LimitedListener.adopt(sock, limiter, tls_refusal))
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def listen_unix(
    path: str, limiter: ConnectionLimiter, ssl_context: ssl.SSLContext | None = None
) -> LimitedListener:
    """A listening unix socket at ``path``, replacing a socket file left there (as Consul's
    agent does); any other file at ``path`` is an error, never removed. Raises OSError naming
    the path."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror or str(exc), path) from None
    tls_refusal = TlsRefusal(ssl_context) if ssl_context is not None else None
    return LimitedListener.adopt(sock, limiter, tls_refusal)


def listen_backlog() -> int:
    """The accept queue's length as Go's ``net.Listen`` (Consul's listener) chooses it: the
    kernel's ``somaxconn``. A shorter queue (Python's default is 128) overflows when hundreds of
    processes connect at once, and every SYN dropped costs its client a 1 s retransmit that
    Consul would not cause."""
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return max(1, min(int(limit.read()), 65535))
    except (OSError, ValueError):
        return socket.SOMAXCONN


BACKLOG = listen_backlog()


def _checked(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"--http-max-conns-per-client must be 0 (no limit) or more, not {limit}")
    return limit
