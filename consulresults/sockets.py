"""One keep-alive connection to an agent (over TCP, or a unix socket as Consul's ``unix://``
addresses): name lookup and connect within a timeout, TLS with the CA (a file, or a directory
of them as ``CONSUL_CAPATH``) and client certificate loaded once, and telling an agent's refusal
at accept from any other failure."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, cast

from .settings import ConsulSettings, SettingsError


class Late(TimeoutError):
    """A time-out of this module's own (not a socket's), with a message saying what was late."""


def _load_error(exc: OSError) -> str:
    """Why a certificate or key file could not be loaded, in words a user can act on (OpenSSL's
    own text, ``[SSL] PEM lib (_ssl.c:3905)``, says nothing about what is wrong with the file)."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "not PEM, or the key does not match").replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()


def tls_context(settings: ConsulSettings) -> ssl.SSLContext | None:
    """The TLS context for ``settings`` (None for plain http), with the CA and client
    certificate loaded now, so a wrong path or a file that is not PEM is one clear error at
    start-up rather than an OSError from deep inside the first request. A CA file, else a CA
    directory, holds the only CAs trusted, as with the Consul CLI's -ca-file and -ca-path;
    without either, the system's CAs are."""
    if settings.client_key and not settings.client_cert:
        raise SettingsError("a client key needs its client certificate (client_cert)")
    wanted = settings.ca_file or settings.ca_path or settings.client_cert
    if settings.scheme != "https" and not wanted:
        return None
    if settings.ca_path and not settings.ca_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nothing yet
        _load_ca_path(context, settings.ca_path)
    else:
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


def _load_ca_path(context: ssl.SSLContext, directory: str) -> None:
    """Trust every file under ``directory`` (recursively), each of which must hold PEM
    certificates, as Consul's go-rootcerts does: no OpenSSL hashed names needed (Python's own
    ``capath`` would want them, and silently skip other names)."""
    if os.path.isdir(directory):
        walked = os.walk(directory)
        files = sorted(os.path.join(root, name) for root, _, names in walked for name in names)
    else:  # go-rootcerts walks a lone file too
        files = [directory] if os.path.exists(directory) else []
    if not files:
        what = "holds no files" if os.path.isdir(directory) else "does not exist"
        raise SettingsError(
            f"cannot use the CA path {directory}: it {what} (expect a directory of PEM CA "
            "certificates)"
        )
    for path in files:
        try:
            with open(path, encoding="ascii") as handle:
                context.load_verify_locations(cadata=handle.read())
        except (OSError, ValueError) as exc:  # ssl.SSLError; UnicodeDecodeError: not PEM
            reason = _load_error(exc) if isinstance(exc, OSError) else "not PEM"
            raise SettingsError(
                f"cannot use {path} of the CA path {directory}: {reason} (every file there "
                "must hold PEM CA certificates)"
            ) from None


class Connection(http.client.HTTPConnection):
    """One keep-alive connection; with a TLS context, the name given is sent as SNI and checked
    in the certificate (the TLS server name, as the Consul CLI's -tls-server-name, else the
    host). With ``socket_path`` it dials that unix socket instead of host and port."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        server_name: str,
        socket_path: str | None = None,
    ) -> None:
        super().__init__(host, port)
        self._context = context
        self._server_name = server_name
        self._socket_path = socket_path
        # the Host header leaves the scheme's own port out, as Go's client does
        self.default_port = 443 if context is not None else 80
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
        if self._socket_path is not None:
            self.sock = _unix_connected(self._socket_path, timeout)
        else:
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


def _unix_connected(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def refused_at_accept(connection: Connection, exc: BaseException) -> bool:
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


class Interrupted(Exception):
    """A long request was cut short on purpose (:class:`Interrupt`)."""


class Interrupt:
    """Lets another thread cut a long request short (the waiting service's blocking read, when
    a new waiter needs a round now): its socket is shut down, so the read ends at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self.fired = False

    def attach(self, connection: Connection | None) -> None:
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
    def _shut(connection: Connection) -> None:
        if connection.sock is not None:
            with contextlib.suppress(OSError):  # already closed
                connection.sock.shutdown(socket.SHUT_RDWR)
