"""A small reverse proxy for tests: it records every request's path and headers, passes those
under its path prefix on to the upstream agent (prefix stripped, as Consul's client expects of
an API gateway), and, given ``auth``, answers 401 to any request without that basic auth."""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class RecordingProxy:
    """``with RecordingProxy("127.0.0.1:8500", prefix="/consul") as proxy: proxy.address``"""

    def __init__(
        self, upstream: str, prefix: str = "", auth: str | None = None, port: int = 0
    ) -> None:
        self.upstream = upstream
        self.prefix = prefix
        self.auth = auth  # the whole Authorization header required, e.g. "Basic dTpw"
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as an agent answers

    def _forward(self) -> None:
        proxy: RecordingProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy.record(Seen(self.command, self.path, dict(self.headers.items())))
        if proxy.auth is not None and self.headers.get("Authorization") != proxy.auth:
            return self._answer(401, {"WWW-Authenticate": 'Basic realm="consul"'}, b"auth\n")
        if not self.path.startswith(proxy.prefix + "/v1/"):
            return self._answer(404, {}, b"not under the proxy's path\n")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
            upstream.request(
                self.command, self.path[len(proxy.prefix) :], body=body, headers=headers
            )
            response = upstream.getresponse()
            content = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            self._answer(response.status, kept, content)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_PUT = do_DELETE = do_POST = _forward

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads :attr:`RecordingProxy.seen` instead."""
