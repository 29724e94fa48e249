"""The transport on the wire: keep-alive connections, compressed answers, a restarted agent, and
failures raised as our exceptions that are also the ones Celery's built-in backend raises."""

from __future__ import annotations

from pathlib import Path

import consul.base
import pytest
import requests

from consulresults.connection import (
    ConsulError,
    ConsulTimeout,
    ConsulUnreachable,
    PermissionDenied,
    Transport,
    connect,
)
from consulresults.settings import resolve


def transport_to(server, **options) -> Transport:
    options.setdefault("token", server.token)
    return connect(resolve(f"consulresults://{server.address}/", options))


def test_requests_share_one_keep_alive_connection(consul_server):
    transport = transport_to(consul_server, max_connections=3)  # a pool of its own: no old
    transport.request("GET", "/v1/status/leader")  # connection in it; it has a fresh one now
    consul_server.reset_counters()
    for _ in range(10):
        transport.request("GET", "/v1/status/leader")
    assert consul_server.counters().get("connections", 0) == 0


def test_compressed_answers_are_decoded(consul_server, consul_prefix, api):
    value = bytes(range(256)) * 64  # 16 kB: Consul compresses answers of 1,400 bytes or more
    api.put(f"/v1/kv/{consul_prefix}big", value)
    answer = transport_to(consul_server).send("GET", f"/v1/kv/{consul_prefix}big", [("raw", "1")])
    assert answer.content == value


def test_a_restarted_agent_is_reconnected_to(consul_dev_server_factory):
    first = consul_dev_server_factory()
    transport = transport_to(first)
    transport.request("GET", "/v1/status/leader")  # leaves an idle pooled connection
    first.stop()
    again = consul_dev_server_factory(port=first.port)
    assert transport.request("GET", "/v1/status/leader").status == 200
    assert again.counters()["connections"] == 1


def test_nothing_listening_is_unreachable_and_a_requests_connection_error():
    transport = connect(resolve("consulresults://127.0.0.1:9/", {"token": "s3cret-token"}))
    with pytest.raises(ConsulUnreachable) as failure:
        transport.request("GET", "/v1/status/leader")
    assert isinstance(failure.value, requests.ConnectionError)
    assert (failure.value.reason, failure.value.address) == (
        "connection refused",
        "http://127.0.0.1:9",
    )
    assert "s3cret" not in str(failure.value)


def test_a_slow_answer_is_a_timeout_and_a_requests_timeout(consul_server):
    consul_server.faults.delay(2.0, count=1, path_prefix="/v1/status/")
    with pytest.raises(ConsulTimeout) as failure:
        transport_to(consul_server, timeout=0.3).request("GET", "/v1/status/leader")
    assert isinstance(failure.value, requests.Timeout)
    assert "did not answer GET /v1/status/leader within 0.3 s" in str(failure.value)


def test_unexpected_answers_are_python_consul2_exceptions(consul_server, consul_prefix):
    consul_server.faults.fail_next(1, status=500, body="No cluster leader")
    transport = transport_to(consul_server)
    with pytest.raises(ConsulError) as failure:
        transport.request("GET", f"/v1/kv/{consul_prefix}x")
    assert isinstance(failure.value, consul.base.ConsulException)
    assert (failure.value.status, failure.value.transient) == (500, True)
    consul_server.faults.fail_next(1, status=403, body="Permission denied")
    with pytest.raises(PermissionDenied) as denied:
        transport.request("GET", f"/v1/kv/{consul_prefix}x")
    assert isinstance(denied.value, consul.base.ACLPermissionDenied)


def test_an_ipv6_agent(consul_dev_server_factory):
    server = consul_dev_server_factory(host="::1")
    assert server.address == f"[::1]:{server.port}"
    transport = transport_to(server)
    assert transport.base_uri == f"http://[::1]:{server.port}"
    assert transport.request("GET", "/v1/status/leader").status == 200


def test_failures_pickle_as_they_were_raised():
    """Celery pickles exceptions (the pickle serializer, billiard's queues): status, text,
    reason and both class families survive."""
    import pickle

    from consulresults.connection import compatible

    for failure in (
        compatible(ConsulError)(500, "No cluster leader"),
        compatible(PermissionDenied)(403, "Permission denied"),
        compatible(ConsulUnreachable)("no answer", "http://h:8500", "connection refused"),
    ):
        copy = pickle.loads(pickle.dumps(failure))
        assert (type(copy), copy.args, vars(copy)) == (type(failure), failure.args, vars(failure))
        assert str(copy) == str(failure)


def test_a_garbled_compressed_answer_is_a_failure_to_reach_consul():
    """A proxy (or a broken agent) answering gzip that is not: one line, retried as transient."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Garbled(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not gzip!")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        transport = connect(resolve(f"consulresults://127.0.0.1:{server.server_port}/", {}))
        with pytest.raises(ConsulUnreachable) as failure:
            transport.request("GET", "/v1/status/leader")
        assert failure.value.reason == "a garbled compressed answer"
    finally:
        server.shutdown()


def test_an_encrypted_client_key_is_refused_at_once(tmp_path):
    """OpenSSL would ask for the pass phrase on a terminal and wait there."""
    from certs import make_ca_and_certs
    from cryptography.hazmat.primitives import serialization

    from consulresults.settings import SettingsError

    certs = make_ca_and_certs(tmp_path)
    key = serialization.load_pem_private_key(Path(certs.client_key).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    options = {"client_cert": certs.client_cert, "client_key": str(encrypted)}
    with pytest.raises(SettingsError, match="its unencrypted key"):
        connect(resolve("consulresults://127.0.0.1:8501/?scheme=https", options))
