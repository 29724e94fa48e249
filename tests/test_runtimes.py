"""Runtimes: the worker's backend stores ``date_started`` beside ``date_done``; ``get``,
``inspect``, ``ls -o json`` show the runtime; ``stats`` (and ``-o prometheus``) give per task
name the finished results and their runtime p50 / p95 / max, results without a start (Celery's
built-in backend writes none) counted apart. Real workers of every pool run tasks of known
duration; the percentile arithmetic is checked on hand-stored metas."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import states
from celery.app.task import Context
from celery.result import AsyncResult
from conftest import backend_url, celery_worker, gated, open_gate, wait_gated, worker_idle
from prometheus_client.parser import text_string_to_metric_families

# a runtime may exceed the time slept by Celery's own work around the task, by this much
TOLERANCE = 0.10


def _within(runtime: float, slept: float) -> bool:
    """At least the time slept (less the millisecond runtimes are rounded to), at most 10% more."""
    return slept - 0.001 <= runtime <= slept * (1 + TOLERANCE)


def _stats(cli) -> dict:
    result = cli("stats", "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _prometheus(cli) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``stats -o prometheus`` through prometheus_client's parser: (name, labels but the
    prefix) → value; the parser refuses text Prometheus would refuse."""
    result = cli("stats", "-o", "prometheus")
    assert result.exit_code == 0, result.output
    families = list(text_string_to_metric_families(result.stdout))
    assert {f.type for f in families} == {"gauge"}
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "prefix"))): s.value
        for family in families
        for s in family.samples
    }


def _rows(cli, *args: str) -> list[dict]:
    result = cli(*args, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def worker(request, consul_server, consul_prefix, tmp_path):
    """A real worker on the test's prefix; ``request.param``: (pool, task_track_started)."""
    pool, track_started = getattr(request, "param", ("prefork", True))
    url = backend_url(consul_server, consul_prefix)
    conf = {"task_track_started": track_started}
    with celery_worker(url, tmp_path, consul_server.token, conf=conf, pool=pool) as app:
        yield app


@pytest.mark.e2e
def test_runtimes_of_tasks_of_known_duration(worker, builtin_backend, cli):
    """Four sleeps of 1, 2, 2 and 3 s on a prefork worker, and one e2e.sleep result Celery's
    built-in backend wrote: five finished, one without a start, and the quantiles of the
    four (nearest rank: p50 the 2nd of 4, p95 and max the 4th) within 10%."""
    slept = {worker.send_task("e2e.sleep", (s,)).id: s for s in (1.0, 2.0, 2.0, 3.0)}
    for task_id in slept:
        AsyncResult(task_id, app=worker).get(timeout=60)
    builtin_backend.app.conf.result_extended = True
    untimed = str(uuid.uuid4())
    request = Context(id=untimed, task="e2e.sleep", args=(1.0,), kwargs={}, retries=0)
    builtin_backend.store_result(untimed, None, states.SUCCESS, request=request)

    listed = {row["id"]: row["runtime"] for row in _rows(cli, "ls", "--task", "e2e.sleep")}
    assert listed.pop(untimed) is None
    assert {t: _within(r, slept[t]) for t, r in listed.items()} == dict.fromkeys(slept, True)
    some = next(iter(slept))
    (detail,) = _rows(cli, "get", some)
    assert detail["runtime"] == listed[some]
    assert datetime.fromisoformat(detail["date_started"]) < datetime.fromisoformat(
        detail["date_done"]
    )
    assert _rows(cli, "inspect", some)[0]["runtime"] == listed[some]

    figures = _stats(cli)["runtimes"]["e2e.sleep"]
    assert (figures["finished"], figures["without_start"]) == (5, 1)
    assert _within(figures["p50"], 2.0)
    assert _within(figures["p95"], 3.0)
    assert _within(figures["max"], 3.0)

    samples = _prometheus(cli)
    task = (("task", "e2e.sleep"),)
    assert samples[("consul_results_finished_results", task)] == 5
    assert samples[("consul_results_finished_without_start", task)] == 1
    quantiles = {
        q: samples[("consul_results_runtime_seconds", (("quantile", q), *task))]
        for q in ("0.5", "0.95", "1")
    }
    assert _within(quantiles["0.5"], 2.0)
    assert _within(quantiles["0.95"], 3.0)
    assert _within(quantiles["1"], 3.0)
    print("runtimes (s):", sorted(listed.values()), "stats:", figures)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "worker",
    [("prefork", True), ("threads", False), ("solo", False)],
    ids=["prefork", "threads-untracked", "solo-untracked"],
    indirect=True,
)
def test_every_pool_records_the_last_attempts_start(worker, cli):
    """Prefork, threads and solo pools, with task_track_started on or off: a task that sleeps
    1 s in each of its two attempts ran 1 s (its last attempt), not 2; date_started has
    date_done's format (the same timezone); a running task's STARTED result carries it."""
    result = worker.send_task("e2e.slow_flaky", (1.0, 1))
    assert result.get(timeout=60) == 1
    (detail,) = _rows(cli, "get", result.id)
    assert _within(detail["runtime"], 1.0), detail
    started = datetime.fromisoformat(detail["date_started"])
    assert started.utcoffset() == datetime.fromisoformat(detail["date_done"]).utcoffset()
    if worker.conf.task_track_started:
        task, gate = gated(worker, "held")
        running = task.delay()
        try:
            wait_gated(worker, gate)
            (held,) = _rows(cli, "get", running.id)
        finally:
            open_gate(worker, gate)
        assert held["state"] == states.STARTED
        assert held["date_started"] is not None
        assert held["runtime"] is None
        running.get(timeout=60)
    worker_idle(worker)
    print(worker.conf.task_track_started, "last attempt ran", detail["runtime"], "s")


def test_celery_and_its_builtin_backend_read_a_result_with_date_started(make_app, builtin_backend):
    """An eager run stores through the same signal as a worker: Celery's built-in backend and
    AsyncResult read the result as ever, the extra field ignored but kept in the meta."""
    app = make_app(result_extended=True, task_store_eager_result=True)

    @app.task(name="tests.double", shared=False)
    def double(x):
        return 2 * x

    assert app.backend  # loaded before the task runs, as a worker's start-up banner loads it
    ran = double.apply((21,))
    meta = builtin_backend.get_task_meta(ran.id)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 42)
    assert meta["date_started"] <= meta["date_done"]  # same clock and format
    read = AsyncResult(ran.id, backend=builtin_backend, app=builtin_backend.app)
    assert read.get(timeout=10) == 42
    assert read.date_done is not None
    ours = AsyncResult(ran.id, app=app)
    assert (ours.get(timeout=10), ours.state) == (42, states.SUCCESS)


def test_a_started_write_records_the_start_the_signal_could_not(make_app):
    """A worker started with --quiet loads its backend with its first task, after that task's
    task_prerun: its STARTED write (task_track_started) records the start, and the outcome,
    written with the same request, keeps it; another task's request lends it nothing."""
    backend = make_app(result_extended=True).backend
    request = Context(id="quiet-1", task="t.quiet", args=(), kwargs={}, retries=0)
    backend.store_result("quiet-1", {"pid": 1}, states.STARTED, request=request)
    started = backend.get_task_meta("quiet-1", cache=False)["date_started"]
    backend.store_result("quiet-1", 7, states.SUCCESS, request=request)
    meta = backend.get_task_meta("quiet-1", cache=False)
    assert (meta["date_started"], meta["status"]) == (started, states.SUCCESS)
    assert started <= meta["date_done"]
    backend.store_result("other-1", 8, states.SUCCESS, request=request)
    assert "date_started" not in backend.get_task_meta("other-1", cache=False)


def _meta(name: str, state: str, done: datetime | None, runtime: float | None) -> str:
    meta = {"status": state, "result": None, "name": name, "date_done": None}
    if done is not None:
        meta["date_done"] = done.isoformat()
        if runtime is not None:
            meta["date_started"] = (done - timedelta(seconds=runtime)).isoformat()
    return json.dumps(meta)


def test_percentiles_of_hand_stored_results(cli, api, consul_prefix):
    """Nearest rank over ten runtimes 0.1..1.0 s: p50 the 5th, p95 the 10th. Failures count;
    a result still running does not; one without date_started counts apart; naive dates
    (Celery 5.3 wrote naive UTC) are UTC."""
    done = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    metas = [
        _meta("t.ten", states.FAILURE if n % 3 else states.SUCCESS, done, n / 10)
        for n in range(1, 11)
    ]
    metas += [
        _meta("t.ten", states.SUCCESS, done, None),
        _meta("t.ten", states.STARTED, None, None),
        _meta("t.naive", states.SUCCESS, done.replace(tzinfo=None), 2.5),
        _meta("t.untimed", states.SUCCESS, done, None),
    ]
    for meta in metas:
        assert api.put(f"/v1/kv/{consul_prefix}celery-task-meta-{uuid.uuid4()}", meta).ok
    runtimes = _stats(cli)["runtimes"]
    assert runtimes == {
        "t.naive": {"finished": 1, "without_start": 0, "p50": 2.5, "p95": 2.5, "max": 2.5},
        "t.ten": {"finished": 11, "without_start": 1, "p50": 0.5, "p95": 1.0, "max": 1.0},
        "t.untimed": {"finished": 1, "without_start": 1, "p50": None, "p95": None, "max": None},
    }
    samples = _prometheus(cli)
    ten = (("task", "t.ten"),)
    assert samples[("consul_results_runtime_seconds", (("quantile", "0.5"), *ten))] == 0.5
    assert samples[("consul_results_runtime_seconds", (("quantile", "0.95"), *ten))] == 1.0
    assert samples[("consul_results_finished_results", ten)] == 11
    untimed = (("task", "t.untimed"),)
    assert samples[("consul_results_finished_without_start", untimed)] == 1
    assert not any(
        k[0] == "consul_results_runtime_seconds" and ("task", "t.untimed") in k[1] for k in samples
    )
    table = cli("stats", "-o", "table")
    assert table.exit_code == 0, table.output
    assert "runtimes of finished tasks" in table.stdout
    assert "t.untimed" in table.stdout
