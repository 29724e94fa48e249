"""Waiting under gevent's monkey-patching: greenlets share the waiting service and the budget.
Runs in its own process, since monkey-patching must come before every other import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import backend_url

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import sys, gevent
    from celery import Celery, states
    from consulresults.waiting import WAITING

    app = Celery(backend=sys.argv[1], set_as_current=False)
    app.conf.consulresults_token = sys.argv[2] or None
    ids = [f"green-{i}" for i in range(int(sys.argv[3]))]
    waits = [gevent.spawn(lambda i=i: app.AsyncResult(i).get(timeout=60)) for i in ids]
    while WAITING.watched_keys() < len(ids):
        gevent.sleep(0.01)
    for n, task_id in enumerate(ids):
        app.backend.store_result(task_id, n, states.SUCCESS)
    gevent.joinall(waits, timeout=60)
    assert [w.value for w in waits] == list(range(len(ids))), [w.exception for w in waits][:3]
    pool = app.backend.transport.pool
    print("peak", pool.stats()["peak"], "limit", pool.limit)
    """
)


def test_greenlets_wait_on_the_service(consul_server, consul_prefix):
    url = backend_url(consul_server, consul_prefix)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, consul_server.token or "", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, peak, _, limit = done.stdout.split()
    assert int(peak) <= int(limit)


BURST = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import sys, gevent
    from celery import Celery, states
    from consulresults import batching

    app = Celery(backend=sys.argv[1], set_as_current=False)
    app.conf.consulresults_token = sys.argv[2] or None
    ids = [f"burst-{i}" for i in range(int(sys.argv[3]))]
    app.backend.store_result("warm", 0, states.SUCCESS)
    stores = [gevent.spawn(app.backend.store_result, i, i, states.SUCCESS) for i in ids]
    gevent.joinall(stores, timeout=120)
    reads = [gevent.spawn(lambda i=i: app.backend.get_task_meta(i)["result"]) for i in ids]
    gevent.joinall(reads, timeout=120)
    assert all(s.successful() for s in stores), [s.exception for s in stores if s.exception][:3]
    assert [r.value for r in reads] == ids, [r.exception for r in reads if r.exception][:3]
    pool = app.backend.transport.pool
    print("batches", batching.stats()["batches"], "peak", pool.stats()["peak"], "limit", pool.limit)
    """
)


def test_a_thousand_greenlets_store_and_read_in_batches(consul_server, consul_prefix):
    """1,000 greenlets storing at once, then reading: none fails, they go out in batches, and
    the process never holds more connections than its budget."""
    url = backend_url(consul_server, consul_prefix)
    done = subprocess.run(
        [sys.executable, "-c", BURST, url, consul_server.token or "", "1000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, batches, _, peak, _, limit = done.stdout.split()
    assert int(batches) > 0
    assert int(peak) <= int(limit)
