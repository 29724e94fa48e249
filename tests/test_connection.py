"""The transport on the wire: keep-alive connections, compressed answers, a restarted agent, and
failures raised as our exceptions that are also the ones Celery's built-in backend raises."""

from __future__ import annotations

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
    transport = transport_to(consul_server)
    consul_server.reset_counters()
    for _ in range(10):
        transport.request("GET", "/v1/status/leader")
    assert consul_server.counters()["connections"] == 1


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
