"""One connection budget per process and agent: shared by every backend instance, waited for
past its maximum, never wholly taken by blocking reads, given back when idle, and riding out
the agent's per-client-IP limit (its 429 back-pressure) without an error."""

from __future__ import annotations

import socket
import threading

import pytest
from celery import states
from conftest import backend_url, wait_until

from consulresults.connection import connect
from consulresults.kv import KVStore
from consulresults.settings import resolve


def transport_for(server, **options):
    token = {"token": server.token} if getattr(server, "token", None) else {}
    return connect(resolve(f"consulresults://{server.address}/", {**token, **options}))


def concurrent_reads(transport, n: int) -> list[BaseException]:
    """``n`` threads reading one key at once; what failed."""
    errors: list[BaseException] = []

    def read() -> None:
        try:
            transport.request("GET", "/v1/kv/x", expect=(200, 404))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_backends_of_one_process_share_one_pool(make_app, consul_prefix):
    first, second = make_app(), make_app()
    assert first.backend.transport.pool is second.backend.transport.pool
    other = make_app(consulresults_max_connections=3)
    assert other.backend.transport.pool is not first.backend.transport.pool


def test_requests_past_the_budget_wait_for_a_connection(consul_dev_server_factory):
    server = consul_dev_server_factory()
    transport = transport_for(server, max_connections=2)
    server.faults.delay(0.2, count=20)
    server.reset_connection_stats()
    assert concurrent_reads(transport, 12) == []
    assert transport.pool.stats()["peak"] <= 2
    assert max(server.connection_stats()["peak"].values()) <= 2


def test_blocking_reads_never_take_the_last_connection(consul_server, consul_prefix):
    transport = transport_for(consul_server, max_connections=2, idle_timeout=7.25)
    store = KVStore(transport, consul_prefix.rstrip("/"))
    _, index = store.read_blocking(store.key("block"), 0, 0)
    waits = [
        threading.Thread(target=store.read_blocking, args=(store.key("block"), index, 30))
        for _ in range(2)
    ]
    for thread in waits:
        thread.start()
    wait_until(lambda: transport.pool.stats()["long"] == 1, 30, "one blocking read in flight")
    # the second blocking read waits for a connection; a plain read still gets one
    assert store.entry(store.key("other")) is None
    assert transport.pool.stats()["long"] == 1
    transport.request("PUT", f"/v1/kv/{store.key('block')}", body="x")  # ends the blocking reads
    for thread in waits:
        thread.join(60)
    assert transport.pool.stats()["peak"] <= 2


def test_idle_connections_are_closed(consul_server):
    transport = transport_for(consul_server, idle_timeout=0.2)
    transport.request("GET", "/v1/status/leader")
    assert transport.pool.stats()["open"] >= 1
    wait_until(lambda: transport.pool.stats()["open"] == 0, 30, "the idle connection closed")


THREADS_SCRIPT = """
import sys, threading, time
from celery import Celery, states
from consulresults.background import BACKGROUND

url, token = sys.argv[1], sys.argv[2] or None
apps = [Celery(set_as_current=False) for _ in range(5)]
for i, app in enumerate(apps):
    app.conf.update(result_backend=url, result_expires=3600, consulresults_token=token,
                    consulresults_idle_timeout=0.3)
    app.backend.store_result(f"thread-{i}", i, states.SUCCESS)  # a backend per app
    assert app.AsyncResult(f"thread-{i}").get(timeout=10) == i
names = [t.name for t in threading.enumerate()]
assert names.count("consulresults-background") == 1, names
deadline = time.monotonic() + 30
while BACKGROUND.alive():  # idle connections are closed, then nothing is left to do
    assert time.monotonic() < deadline, "the background thread stayed"
    time.sleep(0.05)
print([t.name for t in threading.enumerate()])
"""


def test_one_background_thread_gone_when_nothing_is_left_to_do(consul_server, consul_prefix):
    """Five backends (Celery makes one per thread) share one background thread, which goes once
    nothing is scheduled or waited on: no thread is left behind (in a fresh process, so that
    no other test's timers keep it)."""
    import subprocess
    import sys

    url = backend_url(consul_server, consul_prefix)
    done = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT, url, consul_server.token or ""],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['MainThread']"


def test_an_old_connection_is_not_kept(consul_server, monkeypatch):
    from consulresults import pool

    transport = transport_for(consul_server, idle_timeout=6.5)
    monkeypatch.setattr(pool, "MAX_AGE", 0.0)
    transport.request("GET", "/v1/status/leader")
    assert transport.pool.stats()["idle"] == 0  # closed when given back


def test_a_request_that_ends_past_the_age_leaves_the_close_to_the_agent(
    consul_dev_server_factory, monkeypatch
):
    """A blocking read that starts young and ends old: the connection is kept, and its next
    request asks the agent to close it, so the TIME_WAIT is the agent's, not ours. (An agent of
    its own: on the shared one, another test's refusals would put this process under pressure,
    where the connection is given back at once.)"""
    from consulresults import pool

    server = consul_dev_server_factory()
    transport = transport_for(server)
    key = "/v1/kv/aged"
    transport.request("PUT", key, body="x")
    index = transport.request("GET", key).index
    monkeypatch.setattr(pool, "MAX_AGE", 0.3)
    fresh = transport_for(server, max_connections=3)  # a pool of its own, none open
    fresh.request("GET", key, params=[("index", str(index)), ("wait", "1s")], long=True)
    assert fresh.pool.stats()["idle"] == 1  # older than MAX_AGE now, but not closed by us
    answer = fresh.request("GET", key)
    assert answer.headers.get("Connection", "").lower() == "close"
    assert fresh.pool.stats()["idle"] == 0


def hold_connections(server, n: int) -> list[socket.socket]:
    """``n`` idle connections from this IP, each counted by the server."""
    held = [socket.create_connection((server.host, server.port)) for _ in range(n)]
    wait_until(lambda: server.connection_stats()["open"].get("127.0.0.1", 0) >= n, 30, "held")
    return held


def test_a_store_rides_out_the_agents_connection_limit(
    consul_dev_server_factory, make_app, monkeypatch
):
    """Over the agent's per-IP limit, a new connection is answered 429 and closed: nothing was
    applied, so the store waits (random waits, pushback_delay) until a slot frees, with no
    result_backend_always_retry and no error."""
    server = consul_dev_server_factory(http_max_conns_per_client=3)
    app = make_app(backend=backend_url(server, "limited"), consulresults_idle_timeout=5.75)
    held = hold_connections(server, 3)
    stored = threading.Event()
    errors: list[BaseException] = []

    def store() -> None:
        try:
            app.backend.store_result("limited-1", 1, states.SUCCESS)
            stored.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=store)
    thread.start()
    wait_until(
        lambda: server.connection_stats()["refused"].get("127.0.0.1", 0) >= 2, 30, "refusals"
    )
    assert not stored.is_set()
    held.pop().close()
    thread.join(60)
    assert errors == [] and stored.is_set()
    assert app.backend.get_task_meta("limited-1")["result"] == 1
    pool = app.backend.transport.pool
    assert pool.stats()["cap"] < pool.limit  # the process uses fewer for a while
    assert pool.pressed()
    from consulresults import pool as pools

    monkeypatch.setattr(pools, "PRESSED_LEASE", 0.0)
    app.backend.get_task_meta("limited-1")  # its lease is over: the agent closes it
    assert pool.stats()["idle"] == 0  # a slot held only while a request is in flight
    for sock in held:
        sock.close()


def test_every_process_of_the_host_feels_a_refusal(
    consul_dev_server_factory, monkeypatch, tmp_path
):
    """The processes holding the agent's slots never see its 429: a refused one tells them (a
    file of this user's), so they give their slots back after a short lease too."""
    import tempfile

    from consulresults import connection, pool

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the pressure file: not /tmp's

    server = consul_dev_server_factory(http_max_conns_per_client=2)
    holder = transport_for(server, max_connections=3)  # another pool, as another process's
    refused = transport_for(server, max_connections=2, backpressure_patience=0.5)
    holder.request("GET", "/v1/status/leader")
    assert not holder.pool.pressed() and holder.pool.stats()["idle"] == 1
    held = hold_connections(server, 1)  # the agent is now full
    with pytest.raises(connection.ConsulError) as failure:
        refused.request("GET", "/v1/status/leader")
    assert failure.value.status == 429
    assert holder.pool.pressed()
    monkeypatch.setattr(pool, "PRESSED_LEASE", 0.0)
    holder.request("GET", "/v1/status/leader")  # its lease is over: the agent closes it
    assert holder.pool.stats()["idle"] == 0
    for sock in held:
        sock.close()


def test_back_pressure_past_its_patience_is_a_clear_429(consul_dev_server_factory):
    import consul

    server = consul_dev_server_factory(http_max_conns_per_client=2)
    held = hold_connections(server, 2)
    transport = transport_for(server, backpressure_patience=0.3)
    with pytest.raises(consul.ConsulException, match="429 Your IP is issuing too many") as err:
        transport.request("GET", "/v1/status/leader")
    assert "http_max_conns_per_client" in str(err.value)
    assert err.value.status == 429
    for sock in held:
        sock.close()


def test_https_to_a_plain_http_agent_is_no_back_pressure(consul_dev_server_factory):
    """A TLS handshake that meets plain HTTP is a configuration error, said at once: not the
    agent's connection limit, ridden out for backpressure_patience."""
    import time

    import requests

    server = consul_dev_server_factory()  # plain HTTP
    url = f"consulresults://{server.address}/?scheme=https&backpressure_patience=60"
    transport = connect(resolve(url, {}))
    started = time.monotonic()
    with pytest.raises(requests.exceptions.SSLError):
        transport.request("GET", "/v1/status/leader")
    assert time.monotonic() - started < 30


def test_those_refused_longest_ask_most_often():
    """A refused request tries again within 250 ms, and within 100 ms once it has waited 400 ms:
    no exponential growth that would make the unlucky ask ever less often."""
    from consulresults.connection import pushback_delay

    early = [pushback_delay(0.0) for _ in range(2000)]
    late = [pushback_delay(0.4) for _ in range(2000)]
    assert min(early) >= 0 and max(early) <= 0.25 and max(early) > 0.1
    assert min(late) >= 0 and max(late) <= 0.1
    assert max(pushback_delay(25.0) for _ in range(2000)) <= 0.1


def test_a_burst_beyond_the_budget_queues_instead_of_failing(consul_dev_server_factory):
    """200 callers on 2 connections, each request 50 ms at the server: the last one waits
    about 5 s for its turn, far past its 1 s request timeout, and still gets it (the queue is
    bounded by the patience, not by one request timeout)."""
    server = consul_dev_server_factory()
    transport = transport_for(server, max_connections=2, timeout=1)
    server.faults.delay(0.05, count=200)
    assert concurrent_reads(transport, 200) == []
    assert transport.pool.stats()["peak"] <= 2


def test_connections_go_to_requests_in_arrival_order(consul_dev_server_factory):
    """Two connections (the least), a slow agent: requests queued one after another get them in
    that order (a connection given back wakes the first in the queue, not whoever is
    quickest)."""
    server = consul_dev_server_factory()
    transport = transport_for(server, max_connections=2)
    server.faults.delay(0.05, count=20)
    served: list[int] = []

    def read(n: int) -> None:
        transport.request("GET", "/v1/kv/order", expect=(200, 404))
        served.append(n)

    def arrived(stats: dict[str, int]) -> int:
        return stats["open"] - stats["idle"] + stats["queued"] + len(served)

    threads = []
    for n in range(10):
        threads.append(threading.Thread(target=read, args=(n,)))
        threads[-1].start()
        # the next one arrives once this one holds the connection or waits in the queue
        wait_until(lambda n=n: arrived(transport.pool.stats()) >= n + 1, 30, f"request {n} in")
    for thread in threads:
        thread.join(60)
    # two at a time: each pair finishes before the next pair, in whichever order within it
    assert [sorted(served[i : i + 2]) for i in range(0, 10, 2)] == [
        [i, i + 1] for i in range(0, 10, 2)
    ]
