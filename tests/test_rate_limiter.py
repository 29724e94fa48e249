"""Consul's rate limiter (1.15+) and the agent's ``limits.rpc_rate`` answer before applying
anything: their 429 and 503 are back-pressure, ridden out within ``backpressure_patience`` by
stores (without ``result_backend_always_retry``) and reads alike; no other 5xx is."""

from __future__ import annotations

import pytest
from celery import states
from conftest import backend_url

from consulresults.connection import ConsulError


@pytest.fixture
def server(consul_dev_server_factory):
    return consul_dev_server_factory()


@pytest.mark.parametrize("answer", ["leader", "retry-elsewhere", "retry-later", "rpc-rate"])
def test_a_store_rides_out_the_rate_limiter(server, make_app, answer):
    app = make_app(backend=backend_url(server, f"limited-{answer}"))
    app.backend.store_result("warm", 0, states.SUCCESS)
    server.faults.rate_limit(count=3, answer=answer, methods=["PUT"])
    app.backend.store_result("through", 1, states.SUCCESS)
    assert server.faults.injected["rate-limit"] == 3
    assert app.backend.get_task_meta("through", cache=False)["result"] == 1


def test_a_read_rides_out_the_rate_limiter(server, make_app):
    app = make_app(backend=backend_url(server, "limited-read"))
    app.backend.store_result("there", 5, states.SUCCESS)
    server.faults.rate_limit(count=8, answer="retry-elsewhere", methods=["GET"])
    assert app.backend.get_task_meta("there", cache=False)["result"] == 5
    assert server.faults.injected["rate-limit"] == 8


def test_past_the_patience_the_rate_limiter_is_named(server, make_app):
    app = make_app(backend=backend_url(server, "limited-long") + "?backpressure_patience=0.3")
    app.backend.store_result("warm", 0, states.SUCCESS)
    server.faults.rate_limit(answer="leader", methods=["PUT"])
    with pytest.raises(Exception, match="rate limiter") as caught:
        app.backend.store_result("refused", 1, states.SUCCESS)
    cause = caught.value if isinstance(caught.value, ConsulError) else caught.value.__cause__
    assert isinstance(cause, ConsulError) and cause.status == 503


def test_another_5xx_to_a_write_is_not_taken_for_nothing_applied(server, make_app):
    app = make_app(backend=backend_url(server, "limited-500"))
    app.backend.store_result("warm", 0, states.SUCCESS)
    server.faults.fail_next(1, 500, "No cluster leader", path_prefix="/v1/txn")
    with pytest.raises(Exception, match="No cluster leader"):
        app.backend.store_result("failed", 1, states.SUCCESS)
