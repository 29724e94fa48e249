"""Faults (issue 5): ~10% of Consul requests fail while a real worker runs tasks.

500 "No cluster leader", 429, and connection resets before and after the request is applied.
With result_backend_always_retry on worker and client: every result readable, correct and final,
and a chord's body runs exactly once. CI runs 150 tasks; ``scripts/test -m slow`` runs 10,000.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from celery import Celery, chord, states
from conftest import celery_worker, log_lines, wait_until, worker_idle

from consulresults.devserver import DevServerProcess, FaultRule
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP),
]
RETRY = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": 50,
    "result_backend_base_sleep_between_retries_ms": 5,
    "result_backend_max_sleep_between_retries_ms": 200,
}


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param(150, id="reduced-150"),
        pytest.param(10_000, id="full-10000", marks=pytest.mark.slow),
    ],
)
def test_results_survive_ten_percent_faults(tmp_path, tasks):
    with DevServerProcess("--fault-seed", "11") as server:
        url = f"consulresults://{server.address}/faulty"
        with celery_worker(url, tmp_path, conf=RETRY) as app:
            faults = server.faults
            faults.add(FaultRule("error", fraction=0.04, status=500, body="No cluster leader"))
            faults.add(FaultRule("error", fraction=0.03, status=429, body=""))
            faults.add(FaultRule("reset", fraction=0.015, when="before"))
            faults.add(FaultRule("reset", fraction=0.015, when="after"))
            results = [app.send_task("e2e.add", (i, i)) for i in range(tasks)]
            header = [app.signature("e2e.add", (i, 0)) for i in range(20)]
            body = chord(header)(app.signature("e2e.tsum"))
            values = [r.get(timeout=300) for r in results]
            total = body.get(timeout=300)
            injected = server.control.request("GET", "/_dev/faults")["injected"]
            faults.clear()
            assert values == [2 * i for i in range(tasks)]
            assert total == sum(range(20))
            for r in results:
                assert app.backend.get_task_meta(r.id, cache=False)["status"] == states.SUCCESS
            worker_idle(app)  # a second body, if any part sent one, has run by now
            bodies = list(Path(app.mark_dir).glob("body-*"))
            assert [p.read_text() for p in bodies] == [str(sum(range(20)))]
            retries = app.log.read_text().count("Retrying")
            keys = requests.get(f"{server.url}/v1/kv/?keys", timeout=60).json()
    assert [k for k in keys if not k.startswith("faulty/")] == []
    assert injected["error"] + injected["reset"] > 20  # faults really happened
    print(
        f"\n{tasks} tasks + a 20-part chord; faults injected: {injected}; "
        f"worker store retries logged: {retries}; keys: {len(keys)}, all under faulty/"
    )


def test_server_killed_and_restarted_mid_run(tmp_path):
    """SIGKILL the dev server while a worker runs: nothing acknowledged is lost, and the worker
    and client carry on against the restarted server without restarting themselves."""
    with DevServerProcess("--data-dir", str(tmp_path / "consul")) as server:
        url = f"consulresults://{server.address}/killed"
        with celery_worker(url, tmp_path / "worker", conf=RETRY) as app:
            before = [app.send_task("e2e.add", (i, 1)) for i in range(40)]
            assert [r.get(timeout=120) for r in before] == [i + 1 for i in range(40)]
            retrying = log_lines(app, "Retrying")
            server.kill()
            during = [app.send_task("e2e.add", (i, 2)) for i in range(40)]  # stored on restart
            wait_until(  # the outage really hit the worker's stores
                lambda: log_lines(app, "Retrying") > retrying, 60, "a store retried"
            )
            server.start()
            assert [r.get(timeout=120) for r in during] == [i + 2 for i in range(40)]
            for r in before:
                meta = app.backend.get_task_meta(r.id, cache=False)
                assert (meta["status"], meta["result"]) == (states.SUCCESS, r.result)


def test_latency_spike_longer_than_the_timeout_then_recovery(tmp_path):
    """Every request takes 3 s while the backend's timeout is 1 s: a client read fails with a
    clear timeout error (after its own few read retries; a client with always_retry would keep
    trying instead); the worker's stores retry; once Consul is fast again, all land."""
    with DevServerProcess() as server:
        url = f"consulresults://{server.address}/spiky?timeout=1"
        with celery_worker(url, tmp_path, conf=RETRY) as app:
            before = app.send_task("e2e.add", (1, 1))
            assert before.get(timeout=60) == 2
            retrying = log_lines(app, "Retrying")
            server.faults.add(FaultRule("latency", seconds=3.0))
            during = [app.send_task("e2e.add", (i, 3)) for i in range(10)]
            plain = Celery("plain", set_as_current=False)  # no always_retry: fails fast
            plain.conf.update(result_backend=url, result_expires=3600)
            with pytest.raises(requests.Timeout) as timed_out:
                plain.backend.get_task_meta(before.id, cache=False)
            wait_until(  # the worker's stores time out and retry meanwhile
                lambda: log_lines(app, "Retrying") > retrying, 60, "a store retried"
            )
            server.faults.clear()
            assert [r.get(timeout=120) for r in during] == [i + 3 for i in range(10)]
            assert app.backend.get_task_meta(before.id, cache=False)["result"] == 2
    assert str(timed_out.value) == (
        f"Consul at http://{server.address} did not answer GET /v1/kv/spiky/celery-task-meta-"
        f"{before.id} within 1 s (if it is just slow, raise the backend's timeout option, "
        "e.g. ?timeout=30)"
    )
