"""A caller's timeout is a deadline: ``get(timeout=T)`` and its kin end within T plus one
request timeout, whatever fails and however many retry layers it crosses. Failures are
injected at each layer (slow answers, 5xx under ``result_backend_always_retry``, resets that
look like the agent's connection limit, an answer that trickles in, a resolver that hangs) and
each call is timed: the bound is the promise (with a second of slack for a loaded machine)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager

import consul
import pytest
import requests
from celery import states
from celery.exceptions import TimeoutError
from conftest import backend_url, run_cli, wait_until

from consulresults import aio
from consulresults.connection import connect
from consulresults.devserver.faults import FaultRule
from consulresults.settings import resolve

REQUEST_TIMEOUT = 1.0
SLACK = 1.0
ALWAYS_RETRY = {
    "result_backend_always_retry": True,
    "result_backend_base_sleep_between_retries_ms": 10,
    "result_backend_max_sleep_between_retries_ms": 100,
}


@contextmanager
def ends_within(seconds: float):
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed <= seconds + REQUEST_TIMEOUT + SLACK, f"took {elapsed:.2f} s"


@pytest.fixture
def server(consul_dev_server_factory):
    return consul_dev_server_factory()


def app_on(make_app, server, **conf):
    return make_app(backend=backend_url(server, "deadline") + "?timeout=1", **conf)


def test_slow_answers(make_app, server):
    app = app_on(make_app, server)
    server.faults.delay(5.0)
    with ends_within(2.0), pytest.raises(TimeoutError) as raised:
        app.AsyncResult("slow").get(timeout=2)
    assert isinstance(raised.value.__cause__, requests.Timeout)  # the last failure, chained


def test_no_leader_under_always_retry(make_app, server):
    app = app_on(make_app, server, **ALWAYS_RETRY)
    server.faults.fail_fraction(1.0)  # 500 No cluster leader, for ever
    with ends_within(2.0), pytest.raises(TimeoutError) as raised:
        app.AsyncResult("leaderless").get(timeout=2)
    assert isinstance(raised.value.__cause__, consul.ConsulException)
    with ends_within(2.0), pytest.raises(TimeoutError):
        list(app.backend.get_many(["a", "b"], timeout=2))


def test_no_leader_while_waiting_under_always_retry(make_app, server):
    """The first read succeeds, then every round of the waiting service fails."""
    app = app_on(make_app, server, **ALWAYS_RETRY)
    server.faults.add(FaultRule("error", after=1))  # the first read passes, then none
    with ends_within(2.0), pytest.raises(TimeoutError) as raised:
        app.AsyncResult("w").get(timeout=2)
    assert isinstance(raised.value.__cause__, consul.ConsulException)


def test_waiting_without_a_timeout_stops_at_max_retries(make_app, server):
    """Under always_retry without a timeout, failed rounds count against
    result_backend_max_retries, as Celery's own reads do: the wait ends with the failure."""
    app = app_on(make_app, server, **ALWAYS_RETRY, result_backend_max_retries=2)
    server.faults.add(FaultRule("error", after=1))  # the first read passes, then none
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            app.AsyncResult("w").get()
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    with ends_within(5.0):
        waiter.start()
        waiter.join(5.0 + REQUEST_TIMEOUT + SLACK)
    assert len(raised) == 1 and isinstance(raised[0], consul.ConsulException), raised


def test_only_failed_rounds_in_a_row_count_against_max_retries(make_app, server):
    """Two outages of two failed rounds each, a good round between them: with
    result_backend_max_retries 2 the wait rides out both, as Celery's reads would."""
    app = app_on(make_app, server, **ALWAYS_RETRY, result_backend_max_retries=2)
    # a failed round is 5 failed requests (a read is tried 5 times): the first read passes, two
    # rounds fail, one read passes, two rounds fail
    server.faults.add(FaultRule("error", count=10, after=1))
    server.faults.add(FaultRule("error", count=10, after=2))
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(app.AsyncResult("twice").get(timeout=30))
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: server.faults.injected["error"] == 20 or outcome, 30, "both outages")
    app.backend.store_result("twice", 7, states.SUCCESS)
    waiter.join(30)
    assert outcome == [7]


def test_resets_like_the_connection_limit(make_app, server):
    """A fresh connection reset before any answer is the agent's connection limit: ridden out
    for backpressure_patience (30 s), but never past the caller's deadline."""
    app = app_on(make_app, server)
    server.faults.reset(fraction=1.0)
    with ends_within(2.0), pytest.raises(TimeoutError) as raised:
        app.AsyncResult("reset").get(timeout=2)
    assert "429" in str(raised.value.__cause__)


def test_aio_get_under_always_retry(make_app, server):
    app = app_on(make_app, server, **ALWAYS_RETRY)
    server.faults.fail_fraction(1.0)
    with ends_within(1.0), pytest.raises(TimeoutError):
        asyncio.run(aio.get(app.AsyncResult("aio"), timeout=1))


def test_cli_get_wait_timeout(server):
    server.faults.delay(5.0)
    url = backend_url(server, "deadline") + "?timeout=1"
    started = time.monotonic()
    done = run_cli("get", "x", "--backend-url", url, "--wait", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert done.returncode == 75, done.stderr
    assert elapsed <= 2 + REQUEST_TIMEOUT + SLACK + 1.0  # + the command's start-up


def trickling_server() -> tuple[socket.socket, threading.Event]:
    """An HTTP server that sends an answer's headers, then one body byte every 0.2 s: each
    receive is quick, the answer never ends within a timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: 100000\r\n\r\n")
        while not stop.wait(0.2):
            try:
                conn.sendall(b" ")
            except OSError:
                break
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, stop


def test_an_answer_that_trickles_in_is_cut_at_the_request_timeout():
    listener, stop = trickling_server()
    port = listener.getsockname()[1]
    transport = connect(resolve(f"consulresults://127.0.0.1:{port}/?timeout=1", {}))
    try:
        with ends_within(0.0), pytest.raises(requests.Timeout):
            transport.request("GET", "/v1/status/leader")
    finally:
        stop.set()
        listener.close()


def test_a_hanging_resolver_is_cut_at_the_request_timeout(monkeypatch):
    """getaddrinfo has no timeout of its own; a resolver that hangs (mocked: it cannot be made
    to hang otherwise here) must not outlast the request timeout."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "consul.slow-dns.test":
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    transport = connect(resolve("consulresults://consul.slow-dns.test:8500/?timeout=1", {}))
    try:
        with ends_within(0.0), pytest.raises(requests.Timeout, match="looking up"):
            transport.request("GET", "/v1/status/leader")
    finally:
        release.set()


def test_the_parent_check_under_always_retry_ends_at_the_deadline(make_app, server):
    """A failed result's get() reads its parents once more (to raise a failed parent's error,
    as Celery does). Under always_retry with Celery's endless result_backend_max_retries,
    that read's retries end at the caller's deadline when Consul fails meanwhile."""
    app = app_on(make_app, server, **ALWAYS_RETRY)
    backend = app.backend
    backend.store_result("failed-child", ValueError("child"), states.FAILURE)
    parent = backend._key(backend.get_key_for_task("pending-parent"))
    # the parent check before the wait passes, the one after it fails for ever
    server.faults.add(FaultRule("error", after=1, path_prefix=f"/v1/kv/{parent}"))
    child = app.AsyncResult("failed-child", parent=app.AsyncResult("pending-parent"))
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            child.get(timeout=2)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    with ends_within(2.0):
        waiter.start()
        waiter.join(2.0 + REQUEST_TIMEOUT + SLACK)
    assert len(raised) == 1 and isinstance(raised[0], TimeoutError), raised
    assert isinstance(raised[0].__cause__, consul.ConsulException)
