"""Consul's limit on concurrent HTTP connections per client IP
(``limits.http_max_conns_per_client``: 200 by default, 0 for none).

Consul counts a connection from the moment it is accepted until it is closed, per client IP, and
loopback is an IP like any other: every process on a host shares the budget. A connection past the
limit is answered with a fixed 429, before anything is read from it, and closed.

Here the listening socket does the counting: :class:`LimitedListener` is what asyncio accepts from,
so a connection is counted (or refused) before aiohttp, or a TLS handshake, ever sees it, and the
sockets it hands out give their slot back when asyncio closes them. Over HTTPS the refusal is the
same plain-text 429 written on the raw TCP connection, which the client reads as a failed handshake.
Counting relies on asyncio's selector event loop calling ``accept()`` (Linux, macOS); Windows'
proactor loop accepts on its own and would not enforce the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

DEFAULT_LIMIT = 200
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

    @classmethod
    def adopt(cls, sock: socket.socket, limiter: ConnectionLimiter) -> LimitedListener:
        listener = cls(sock.family, sock.type, sock.proto, sock.detach())
        listener.limiter = limiter
        return listener

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection within the limit; those over it are refused on the way. Raises
        BlockingIOError when none is waiting, which tells asyncio to wait for the next one."""
        while True:
            conn, address = super().accept()
            ip = str(address[0])
            if self.limiter.acquire(ip):
                return CountedConnection.adopt(conn, partial(self.limiter.release, ip)), address
            _refuse(conn)


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


async def listen(host: str, port: int, limiter: ConnectionLimiter) -> list[LimitedListener]:
    """Bound listening sockets for ``host``:``port``, one per address the host resolves to (as
    asyncio's ``create_server`` binds them). Raises OSError, as binding does."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    addresses = dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos)
    listeners: list[LimitedListener] = []
    try:
        for family, address in addresses:
            sock = socket.create_server(address, family=family)
            listeners.append(LimitedListener.adopt(sock, limiter))
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _checked(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"--http-max-conns-per-client must be 0 (no limit) or more, not {limit}")
    return limit
