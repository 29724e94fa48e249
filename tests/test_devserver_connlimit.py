"""Consul's limit on concurrent HTTP connections per client IP (limits.http_max_conns_per_client):
the connection past it gets Consul's raw 429, before anything is read from it, and is closed.

Over real sockets. The tests that need a server with a given limit start their own (they skip
when CONSUL_HTTP_ADDR points at a real agent); the agent/self one runs on either.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import ssl
import time

import pytest
from conftest import Api, run_cli

from consulresults.devserver import DevServer, DevServerProcess, OptionError, build_server
from consulresults.devserver.connlimit import TlsRefusal
from consulresults.devserver.options import DevServerOptions
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

LOCAL = "127.0.0.1"
TOO_MANY_CONNECTIONS = (  # Consul's bytes, written out rather than imported
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 81\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)
dev_server_only = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors():
    """Each connection is two descriptors here (the server runs in this process): 250 of them
    need more than the 1024 some systems start with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------- helpers


def connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 GET on ``sock``: its status and body (the connection stays)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: consul\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length, head
    while len(body) < int(length[1]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return int(head.split()[1]), body


def accepted(server) -> socket.socket:
    """A new connection, proven accepted by a completed request on it."""
    sock = connect(server)
    assert get(sock, "/v1/status/leader")[0] == 200
    return sock


def wait_for_open(server, count: int) -> dict:
    """Poll the server's stats until ``count`` connections from 127.0.0.1 are open (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        stats = server.connection_stats()
        if stats["open"].get(LOCAL, 0) == count:
            return stats
        assert time.monotonic() < deadline, f"never {count} open: {stats}"
        time.sleep(0.005)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# ---------------------------------------------------------------------- the limit


def test_the_connection_past_the_limit_gets_consuls_429_then_eof(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=5)
    socks = [connect(server) for _ in range(5)]
    try:
        wait_for_open(server, 5)
        with connect(server) as sixth:
            assert read_to_eof(sixth) == TOO_MANY_CONNECTIONS
        for sock in socks:  # the five are served as before
            assert get(sock, "/v1/status/leader")[0] == 200
        stats = server.connection_stats()
        assert stats == {
            "limit": 5,
            "open": {LOCAL: 5},
            "peak": {LOCAL: 5},
            "refused": {LOCAL: 1},
        }
    finally:
        close_all(socks)
    assert wait_for_open(server, 0)["open"] == {}


def test_closing_a_connection_frees_its_slot(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=5)
    socks = [accepted(server) for _ in range(5)]
    try:
        with connect(server) as refused:
            assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
        socks.pop().close()
        wait_for_open(server, 4)
        socks.append(accepted(server))
        with connect(server) as refused:
            assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
        assert server.connection_stats()["refused"] == {LOCAL: 2}
    finally:
        close_all(socks)


def test_a_server_side_close_frees_the_slot_too(consul_dev_server_factory):
    """Connection: close, answered and closed by the server, is given back as well."""
    server = consul_dev_server_factory(http_max_conns_per_client=1)
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_to_eof(sock).startswith(b"HTTP/1.1 200 OK\r\n")
        wait_for_open(server, 0)
    assert server.connection_stats()["refused"] == {}


def test_zero_means_no_limit(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=0)
    socks = []
    try:
        for _ in range(250):
            socks.append(accepted(server))
        assert get(socks[0], "/v1/status/leader")[0] == 200  # the first is still served
        stats = server.connection_stats()
        assert stats["limit"] == 0
        assert stats["peak"] == {LOCAL: 250}
        assert stats["refused"] == {}
    finally:
        close_all(socks)


def test_the_default_is_consuls_200(consul_dev_server_factory):
    server = consul_dev_server_factory()
    socks = []
    try:
        for _ in range(200):
            socks.append(accepted(server))
        with connect(server) as refused:
            assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
        stats = server.connection_stats()
        assert stats["limit"] == 200
        assert (stats["peak"], stats["refused"]) == ({LOCAL: 200}, {LOCAL: 1})
    finally:
        close_all(socks)


def test_over_https_the_429_comes_through_tls_then_eof(consul_dev_server_factory, tmp_path):
    """As in Consul, whose limit applies to the TLS connection (the 429's write does the
    handshake): the refused client completes its handshake, reads exactly the 429 through TLS,
    then the server's close_notify (a bare TCP close would raise here: no ragged EOFs). The
    connection counts from accept, handshake or not, and a refused one never counts as open."""
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    server = consul_dev_server_factory(
        tls_cert=certs.server_cert, tls_key=certs.server_key, http_max_conns_per_client=1
    )
    client = ssl.create_default_context(cafile=certs.ca)
    with connect(server):  # no handshake yet: counted all the same
        wait_for_open(server, 1)
        for _ in range(2):
            with client.wrap_socket(
                connect(server), server_hostname=LOCAL, suppress_ragged_eofs=False
            ) as tls:
                assert read_to_eof(tls) == TOO_MANY_CONNECTIONS
        assert server.connection_stats() == {
            "limit": 1,
            "open": {LOCAL: 1},
            "peak": {LOCAL: 1},
            "refused": {LOCAL: 2},
        }
    wait_for_open(server, 0)
    with client.wrap_socket(connect(server), server_hostname=LOCAL) as tls:
        assert get(tls, "/v1/status/leader")[0] == 200
    assert server.connection_stats()["refused"] == {LOCAL: 2}


def test_over_https_a_refused_client_without_a_handshake_is_closed(
    consul_dev_server_factory, tmp_path
):
    """No plain-text 429 on an HTTPS port: a refused connection that never starts its handshake
    is closed when the refusal's deadline passes (TLS_REFUSAL_SECONDS), while the server goes on
    serving."""
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    server = consul_dev_server_factory(
        tls_cert=certs.server_cert, tls_key=certs.server_key, http_max_conns_per_client=1
    )
    client = ssl.create_default_context(cafile=certs.ca)
    with client.wrap_socket(connect(server), server_hostname=LOCAL) as tls:
        assert get(tls, "/v1/status/leader")[0] == 200
        with connect(server) as silent:
            assert get(tls, "/v1/status/leader")[0] == 200
            assert read_to_eof(silent) == b""
        assert server.connection_stats()["refused"] == {LOCAL: 1}
        assert get(tls, "/v1/status/leader")[0] == 200


def test_tls_refusals_run_on_a_few_threads_and_close_the_rest(tmp_path):
    """refuse() hands the connection to a thread and returns at once (the server's loop never
    waits on a handshake); with every thread busy, the next refused connection is just closed."""
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    refusal = TlsRefusal(context, seconds=30, threads=1)
    busy_peer, busy = socket.socketpair()
    closed_peer, closed = socket.socketpair()
    with busy_peer, closed_peer:
        assert refusal.refuse(busy)  # its thread waits for a ClientHello
        assert refusal.busy == 1
        assert not refusal.refuse(closed)
        closed_peer.settimeout(10)
        assert read_to_eof(closed_peer) == b""  # closed at once, nothing written
        busy_peer.shutdown(socket.SHUT_WR)  # no ClientHello ever: the handshake fails now
        busy_peer.settimeout(10)
        read_to_eof(busy_peer)  # whatever alert OpenSSL sends, then the close
    deadline = time.monotonic() + 10
    while refusal.busy:
        assert time.monotonic() < deadline, "the refusal's thread never ended"
        time.sleep(0.005)


# ---------------------------------------------------------------------- stats and control


def test_peak_refused_and_reset(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=3)
    socks = [accepted(server) for _ in range(3)]
    for _ in range(2):
        with connect(server) as refused:
            assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
    socks.pop().close()
    stats = wait_for_open(server, 2)
    assert (stats["peak"], stats["refused"]) == ({LOCAL: 3}, {LOCAL: 2})
    server.reset_connection_stats()
    assert server.connection_stats() == {
        "limit": 3,
        "open": {LOCAL: 2},
        "peak": {LOCAL: 2},  # the peak starts again from what is open
        "refused": {},
    }
    close_all(socks)
    wait_for_open(server, 0)
    server.reset_connection_stats()
    assert server.connection_stats() == {"limit": 3, "open": {}, "peak": {}, "refused": {}}


def test_the_control_endpoint_reads_resets_and_changes_the_limit(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=2)
    with accepted(server) as sock:
        status, body = get(sock, "/_dev/connections")
        assert status == 200
        assert json.loads(body) == {
            "limit": 2,
            "open": {LOCAL: 1},  # the asking connection itself
            "peak": {LOCAL: 1},
            "refused": {},
        }
        with accepted(server), connect(server) as refused:
            assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
        wait_for_open(server, 1)
        api = Api(server.url)
        assert api.put("/_dev/connections?limit=3").json()["limit"] == 3
        assert server.connection_stats()["limit"] == 3
        agent = api.get("/v1/agent/self").json()
        assert agent["DebugConfig"]["HTTPMaxConnsPerClient"] == 3
        stats = api.delete("/_dev/connections").json()
        assert stats["refused"] == {}
        assert stats["peak"] == {LOCAL: 2}  # this one and the Api's
        assert api.put("/_dev/connections?limit=-1").status_code == 400
        api.http.close()
    assert server.connection_stats()["limit"] == 3


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match="0 \\(no limit\\) or more, not -1"):
        DevServer(http_max_conns_per_client=-1)
    with pytest.raises(OptionError) as raised:
        build_server(DevServerOptions(port=0, http_max_conns_per_client=-1))
    assert str(raised.value) == (
        "invalid dev-server option: --http-max-conns-per-client must be 0 (no limit) or more, "
        "not -1"
    )


# ---------------------------------------------------------------------- agent/self and the CLI


def test_agent_self_reports_the_limit(consul_server, api):
    """Consul's DebugConfig.HTTPMaxConnsPerClient; the shared dev server keeps Consul's 200."""
    debug = api.get("/v1/agent/self").json()["DebugConfig"]
    limit = debug["HTTPMaxConnsPerClient"]
    assert isinstance(limit, int) and limit >= 0
    if consul_server.is_dev_server:
        assert limit == 200


def test_agent_self_reports_a_chosen_limit(consul_dev_server_factory):
    server = consul_dev_server_factory(http_max_conns_per_client=7)
    agent = Api(server.url).get("/v1/agent/self").json()
    assert agent["DebugConfig"]["HTTPMaxConnsPerClient"] == 7


@dev_server_only
def test_the_command_option_limits_a_child_process_and_reports_it():
    with DevServerProcess("--http-max-conns-per-client", "3") as server:
        assert server.connection_stats()["limit"] == 3
        with connect(server) as first:
            deadline = time.monotonic() + 10
            while json.loads(get(first, "/_dev/connections")[1])["open"] != {LOCAL: 1}:
                assert time.monotonic() < deadline, "the stats request's connection stays open"
                time.sleep(0.005)
            body = get(first, "/v1/agent/self")[1]
            assert json.loads(body)["DebugConfig"]["HTTPMaxConnsPerClient"] == 3
            with accepted(server), accepted(server) as third:
                assert json.loads(get(third, "/_dev/connections")[1])["open"] == {LOCAL: 3}
                with connect(server) as refused:
                    assert read_to_eof(refused) == TOO_MANY_CONNECTIONS
            stats = json.loads(get(first, "/_dev/connections")[1])
            assert (stats["peak"], stats["refused"]) == ({LOCAL: 3}, {LOCAL: 1})


@dev_server_only
def test_the_command_refuses_a_negative_limit():
    result = run_cli("dev-server", "--port", "0", "--http-max-conns-per-client", "-1", timeout=30)
    assert result.returncode == 2
    assert "--http-max-conns-per-client" in result.stderr
