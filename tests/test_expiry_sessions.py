"""Celery's default ``result_expires`` (exactly 24 h, Consul's longest session TTL) expires
results by itself: sessions of TTL 24 h, renewed once by the live process when their window
closes. The dev server's TTL multiplier shrinks a day to a few seconds."""

from __future__ import annotations

import selectors
import subprocess
import sys
import time

from celery import Celery, states
from conftest import Api

DAY = 86_400


def day_lasts(factory, seconds: float):
    """A dev server on which a 24 h session's timer runs out after ``seconds``."""
    return factory(session_ttl_multiplier=seconds / DAY)


def exists(server, key: str) -> bool:
    from consulresults.client import ConsulClient
    from consulresults.connection import connect
    from consulresults.settings import resolve

    client = ConsulClient(connect(resolve(f"consulresults://{server.address}/", {})))
    return client.kv.get(key)[1] is not None


def unrenewed_twin(server, name: str) -> str:
    """A key held by a session of its own, made now with a TTL of 24 h and never renewed: it
    goes when a result stored earlier, in a session nobody renewed, would have gone. A test
    waits for it to go, not for the time that takes."""
    api = Api(server.url)
    session = api.session(TTL="86400s", Behavior="delete", LockDelay="0s", Checks=[])
    key = f"twins/{name}"
    assert api.put(f"/v1/kv/{key}?acquire={session}", b"twin").json() is True
    return key


def gone_within(server, key: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not exists(server, key):
            return True
        time.sleep(0.1)
    return False


def test_default_expiry_renews_once_when_the_window_closes(consul_dev_server_factory):
    server = day_lasts(consul_dev_server_factory, 6.0)
    app = Celery("expiry", set_as_current=False)  # Celery's default result_expires
    app.conf.update(
        result_backend=f"consulresults://{server.address}/exp",
        consulresults_session_window=1,  # renewed 1 s (+ the 1 s request timeout) after creation
        consulresults_timeout=1,
    )
    app.backend.store_result("renewed", 1, states.SUCCESS)
    twin = unrenewed_twin(server, "renewed")
    assert gone_within(server, twin, 15.0)
    assert exists(server, "exp/celery-task-meta-renewed")  # unrenewed, it went before its twin
    assert gone_within(server, "exp/celery-task-meta-renewed", 15.0)  # no cleanup ran
    app.close()


WRITER = """
import os, signal, time
from celery import Celery, states
app = Celery("writer")  # Celery's default result_expires
app.conf.update(result_backend="consulresults://{address}/exp", consulresults_session_window=30)
app.backend.store_result("{task_id}", 1, states.SUCCESS)
print(time.monotonic(), flush=True)
{then}
"""


def writer(server, task_id: str, then: str, on_stored=None) -> subprocess.CompletedProcess:
    """A process of its own that stores one result inside a 30 s window, then runs ``then``;
    ``on_stored()`` is called once the result is stored, while ``then`` runs."""
    script = WRITER.format(address=server.address, task_id=task_id, then=then)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            stored = selector.select(timeout=60) and process.stdout.readline()
        if stored and on_stored:
            on_stored()
        out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, (stored or "") + out, err)


def test_a_process_killed_inside_the_window_leaves_results_that_still_expire(
    consul_dev_server_factory,
):
    server = day_lasts(consul_dev_server_factory, 3.0)
    process = writer(server, "orphan", "os.kill(os.getpid(), signal.SIGKILL)")
    assert process.returncode == -9
    assert exists(server, "exp/celery-task-meta-orphan")
    assert gone_within(server, "exp/celery-task-meta-orphan", 15.0)


def test_a_process_leaving_inside_the_window_renews_on_its_way_out(consul_dev_server_factory):
    """A clean exit (a deploy, max_tasks_per_child) renews what the timer would have: the
    result then lives a TTL from the exit, not from the session's creation."""
    server = day_lasts(consul_dev_server_factory, 3.0)
    twins = []
    process = writer(
        server, "leaver", "time.sleep(2.0)", lambda: twins.append(unrenewed_twin(server, "leaver"))
    )
    assert process.returncode == 0, process.stderr
    assert gone_within(server, twins[0], 15.0)
    assert exists(server, "exp/celery-task-meta-leaver")  # unrenewed, it went before its twin
    assert gone_within(server, "exp/celery-task-meta-leaver", 15.0)
