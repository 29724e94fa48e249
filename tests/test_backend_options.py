"""Every connection option of the backend, against dev servers configured to need it."""

from __future__ import annotations

import consul
import consul.base
import pytest
import requests
from celery import Celery, states

from consulresults.devserver import AclConfig, DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

pytestmark = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)


def backend_for(url: str, **conf):
    app = Celery("options", set_as_current=False)
    app.conf.update(result_backend=url, result_expires=3600, **conf)
    return app.backend


def test_tls_with_ca_and_client_certificate(tmp_path):
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    with DevServerProcess(
        "--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-ca", certs.ca
    ) as server:
        base = f"consulresults://{server.address}/tls?scheme=https"
        trusted = backend_for(
            f"{base}&ca_file={certs.ca}&client_cert={certs.client_cert}"
            f"&client_key={certs.client_key}"
        )
        trusted.store_result("tls", "secure", states.SUCCESS)
        assert trusted.get_task_meta("tls")["result"] == "secure"
        _, entry = trusted.client().kv.get("tls/celery-task-meta-tls")  # the documented client
        assert b"secure" in entry["Value"]
        settings_form = backend_for(
            f"{base}",
            consulresults_ca_file=certs.ca,
            consulresults_client_cert=certs.client_cert,
            consulresults_client_key=certs.client_key,
        )
        assert settings_form.get_task_meta("tls")["result"] == "secure"
        untrusted = backend_for(base)  # verify is on by default: the test CA is unknown
        with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
            untrusted.get_task_meta("tls")
        unverified = backend_for(
            f"{base}&verify=false&client_cert={certs.client_cert}&client_key={certs.client_key}"
        )  # not checking the server's certificate still presents ours
        assert unverified.get_task_meta("tls")["result"] == "secure"


def test_token_file_and_acl_denial(consul_dev_server_factory, tmp_path):
    rules = {"key_prefix": {"allowed/": "write"}, "session_prefix": {"": "write"}}
    server = consul_dev_server_factory(
        acl=AclConfig(enabled=True, default_policy="deny", tokens={"app-secret": rules})
    )
    token_file = tmp_path / "token"
    token_file.write_text("app-secret\n")
    allowed = backend_for(
        f"consulresults://{server.address}/allowed", consulresults_token_file=str(token_file)
    )
    allowed.store_result("ok", 1, states.SUCCESS)
    assert allowed.get_task_meta("ok")["result"] == 1
    _, entry = allowed.client().kv.get("allowed/celery-task-meta-ok")  # carries the token
    assert entry["Key"] == "allowed/celery-task-meta-ok"
    with pytest.raises(consul.base.ACLPermissionDenied):
        allowed.client().kv.get("elsewhere/x")
    outside = backend_for(
        f"consulresults://{server.address}/elsewhere", consulresults_token_file=str(token_file)
    )
    with pytest.raises(Exception, match="Permission denied") as denied:
        outside.store_result("no", 1, states.SUCCESS)
    assert "app-secret" not in str(denied.value)


def test_datacenter_and_consistency_are_sent(consul_dev_server_factory):
    server = consul_dev_server_factory(datacenter="east")
    good = backend_for(f"consulresults://{server.address}/dc?dc=east&consistency=consistent")
    good.store_result("dc", 1, states.SUCCESS)
    assert good.get_task_meta("dc")["result"] == 1
    stale = backend_for(f"consulresults://{server.address}/dc?consistency=stale")
    assert stale.get_task_meta("dc")["result"] == 1
    wrong = backend_for(f"consulresults://{server.address}/dc?dc=west")
    with pytest.raises(consul.base.ConsulException, match="500 No path to datacenter"):
        wrong.get_task_meta("dc")


def test_latency_over_the_timeout_is_retried_then_a_clear_error(consul_dev_server_factory):
    server = consul_dev_server_factory()
    backend = backend_for(f"consulresults://{server.address}/slow?timeout=0.3")
    backend.store_result("t", 1, states.SUCCESS)
    server.faults.delay(1.0, count=1)  # one spike: the read is retried and succeeds
    assert backend.get_task_meta("t", cache=False)["result"] == 1
    server.faults.delay(1.0)  # every request slow: a clear, retryable timeout
    with pytest.raises(requests.Timeout) as timed_out:
        backend.get(backend.get_key_for_task("t"))
    assert backend.exception_safe_to_retry(timed_out.value)
    server.faults.clear()
    assert backend.get_task_meta("t", cache=False)["result"] == 1  # recovered


def test_waits_follow_celerys_retry_policy_through_a_longer_outage(consul_dev_server_factory):
    """Celery retries get_task_meta under result_backend_always_retry but not waits and joins:
    ours do, so an outage longer than the read retries does not end a wait that had time."""
    server = consul_dev_server_factory()
    url = f"consulresults://{server.address}/outage"
    backend_for(url).store_result("done", 7, states.SUCCESS)
    backend_for(url).store_result("also", 8, states.SUCCESS)
    patient = backend_for(
        url,
        result_backend_always_retry=True,
        result_backend_base_sleep_between_retries_ms=1,
        result_backend_max_sleep_between_retries_ms=20,
    )
    server.faults.reset(count=12)  # more than the 4 quick read retries, twice over
    assert patient.wait_for("done", timeout=30)["result"] == 7
    server.faults.reset(count=12)
    assert dict(patient.get_many(["also"], timeout=30))["also"]["result"] == 8  # not cached
    # without the policy: the error, at once (not a reset: a fresh connection reset before any
    # answer is the agent's connection limit pushing back, which every request rides out)
    server.faults.fail_next(12)
    with pytest.raises(consul.ConsulException, match="No cluster leader"):
        backend_for(url).wait_for("done", timeout=30)


def test_tls_server_name_is_checked_instead_of_the_address(tmp_path):
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    with DevServerProcess("--tls-cert", certs.server_cert, "--tls-key", certs.server_key) as server:
        base = f"consulresults://{server.address}/sni?scheme=https&ca_file={certs.ca}"
        named = backend_for(f"{base}&tls_server_name=server.dc1.consul")
        named.store_result("sni", 1, states.SUCCESS)
        assert named.get_task_meta("sni")["result"] == 1
        wrong = backend_for(f"{base}&tls_server_name=other.dc9.consul")
        with pytest.raises(requests.exceptions.SSLError):
            wrong.get_task_meta("sni")
