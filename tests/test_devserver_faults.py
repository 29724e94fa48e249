"""Fault injection: errors, latency and connection resets, in-process and over the control API."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import Api


def test_fail_next_answers_the_chosen_error_then_recovers(consul_server, api, consul_prefix):
    consul_server.faults.fail_next(2, status=500, body="No cluster leader")
    first = api.put(f"/v1/kv/{consul_prefix}x", b"v")
    second = api.get(f"/v1/kv/{consul_prefix}x")
    assert [(r.status_code, r.text) for r in (first, second)] == [(500, "No cluster leader")] * 2
    assert api.get(f"/v1/kv/{consul_prefix}x").status_code == 404  # the failed PUT did nothing
    assert api.put(f"/v1/kv/{consul_prefix}x", b"v").json() is True


def test_fraction_of_requests_fail(consul_dev_server_factory):
    server = consul_dev_server_factory(fault_seed=7)
    server.faults.fail_fraction(0.25, status=429, body="")
    api = Api(server.url)
    statuses = [api.get("/v1/status/leader").status_code for _ in range(400)]
    failed = statuses.count(429)
    assert set(statuses) == {200, 429}
    assert 60 <= failed <= 140  # 25% of 400, far from 0 and from all
    assert server.faults.injected["error"] == failed


def test_latency_delays_matching_requests_only(consul_server, api, consul_prefix):
    consul_server.faults.delay(0.5, count=1, path_prefix="/v1/kv/")
    started = time.monotonic()
    api.get("/v1/status/leader")
    assert time.monotonic() - started < 0.5
    api.get(f"/v1/kv/{consul_prefix}slow")
    assert time.monotonic() - started >= 0.5
    with pytest.raises(requests.Timeout):
        consul_server.faults.delay(2.0, count=1)
        api.get(f"/v1/kv/{consul_prefix}slow", timeout=0.3)


def test_a_rule_can_let_the_first_requests_through(consul_server, api, consul_prefix):
    from consulresults.devserver import FaultRule

    third = FaultRule("error", count=1, after=2, status=403, path_prefix="/v1/kv/")
    consul_server.faults.add(third)
    statuses = [api.get(f"/v1/kv/{consul_prefix}x").status_code for _ in range(4)]
    assert statuses == [404, 404, 403, 404]


def test_reset_before_drops_the_request(consul_server, api, consul_prefix):
    consul_server.faults.reset(count=1, when="before")
    with pytest.raises(requests.ConnectionError):
        api.put(f"/v1/kv/{consul_prefix}r", b"v")
    assert api.entry(consul_prefix + "r") is None


def test_reset_after_applies_the_write_but_loses_the_answer(consul_server, api, consul_prefix):
    consul_server.faults.reset(count=1, when="after")
    with pytest.raises(requests.ConnectionError):
        api.put(f"/v1/kv/{consul_prefix}r", b"v")
    assert api.entry(consul_prefix + "r") is not None


def test_bad_fault_rules_are_refused():
    from consulresults.devserver import FaultRule

    with pytest.raises(ValueError, match="fault kind"):
        FaultRule("explode")
    with pytest.raises(ValueError, match="fraction"):
        FaultRule("error", fraction=2)
