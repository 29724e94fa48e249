"""The rate-limit fault: Consul's request-rate limiter (1.15+) and a client agent's
``limits.rpc_rate``, answered over real HTTP with nothing applied (docs/consul-api.md §1.5)."""

from __future__ import annotations

import pytest
from conftest import Api

from consulresults.devserver import FaultInjector, FaultRule
from consulresults.devserver.faults import RETRY_ELSEWHERE, RETRY_LATER

TEXT = "text/plain; charset=utf-8"


def test_as_the_leader_writes_get_503_and_reads_429(consul_server, api, consul_prefix):
    key = consul_prefix + "k"
    consul_server.faults.rate_limit(count=3)
    write = api.put(f"/v1/kv/{key}", b"v")
    read = api.get(f"/v1/kv/{key}")
    txn = api.put("/v1/txn", json=[{"KV": {"Verb": "set", "Key": key, "Value": "dg=="}}])
    assert (write.status_code, write.text, write.headers["Content-Type"]) == (
        503,
        RETRY_LATER,
        TEXT,
    )
    assert (read.status_code, read.text) == (429, RETRY_ELSEWHERE)
    assert (txn.status_code, txn.text) == (503, RETRY_LATER)
    assert api.entry(key) is None  # nothing was applied
    assert api.put(f"/v1/kv/{key}", b"v").json() is True  # the count is spent


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [("retry-elsewhere", 429, RETRY_ELSEWHERE), ("retry-later", 503, RETRY_LATER)],
)
def test_one_answer_for_every_request(consul_server, api, consul_prefix, answer, status, body):
    consul_server.faults.rate_limit(count=2, answer=answer)
    for response in (api.get(f"/v1/kv/{consul_prefix}k"), api.put(f"/v1/kv/{consul_prefix}k")):
        assert (response.status_code, response.text) == (status, body)
    assert api.entry(consul_prefix + "k") is None


def test_the_agents_rpc_rate_is_an_empty_429(consul_server, api, consul_prefix):
    consul_server.faults.rate_limit(count=2, answer="rpc-rate")
    refused = api.put(f"/v1/kv/{consul_prefix}k", b"v")
    status = api.get("/v1/status/leader")  # an RPC too, so limited
    assert (refused.status_code, refused.content) == (429, b"")
    assert "Content-Type" not in refused.headers
    assert status.status_code == 429
    assert api.entry(consul_prefix + "k") is None


def test_writes_only_and_exempt_endpoints(consul_server, api, consul_prefix):
    consul_server.faults.rate_limit(count=1, methods=["PUT", "DELETE"])
    assert api.get(f"/v1/kv/{consul_prefix}k").status_code == 404  # a read goes through
    assert api.put(f"/v1/kv/{consul_prefix}k", b"v").status_code == 503
    consul_server.faults.rate_limit(count=1)
    # Consul's server limiter exempts the status endpoints; /v1/agent/self makes no RPC
    assert api.get("/v1/status/leader").status_code == 200
    assert api.get("/v1/agent/self").status_code == 200
    assert api.get(f"/v1/kv/{consul_prefix}k").status_code == 429


def test_only_some_paths(consul_server, api, consul_prefix):
    consul_server.faults.rate_limit(count=1, path_prefix="/v1/txn")
    assert api.put(f"/v1/kv/{consul_prefix}k", b"v").json() is True
    assert api.put("/v1/txn", json=[]).status_code == 503


def test_a_duration_ends_the_rule():
    now = [100.0]
    faults = FaultInjector(clock=lambda: now[0])
    faults.rate_limit(duration=2.0)
    assert [r.kind for r in faults.pick("PUT", "/v1/kv/k")] == ["rate-limit"]
    now[0] = 101.9
    assert [r.kind for r in faults.pick("GET", "/v1/kv/k")] == ["rate-limit"]
    now[0] = 102.0
    assert faults.pick("PUT", "/v1/kv/k") == []
    assert faults.rules() == []  # gone, not just idle
    assert faults.injected["rate-limit"] == 2


def test_a_duration_rule_over_the_control_endpoint(consul_dev_server_factory):
    from consulresults.devserver import DevServerProcess

    with DevServerProcess() as process:
        process.faults.rate_limit(duration=600.0, answer="retry-elsewhere")
        api = Api(process.url)
        refused = api.put("/v1/kv/k", b"v")
        assert (refused.status_code, refused.text) == (429, RETRY_ELSEWHERE)
        assert process.faults.rules()[0]["duration"] == 600.0
        process.faults.clear()
        assert api.put("/v1/kv/k", b"v").json() is True


def test_bad_rate_limit_rules_are_refused():
    with pytest.raises(ValueError, match="fault answer must be one of"):
        FaultRule("rate-limit", answer="sometimes")
    with pytest.raises(ValueError, match="duration"):
        FaultRule("rate-limit", duration=0)
