"""End to end with a real Celery worker: a separate process, prefork pool, concurrency 2."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from celery import chain, chord, group, states
from celery.exceptions import TimeoutError
from conftest import backend_url, celery_worker, gated, open_gate, wait_until, worker_idle

pytestmark = pytest.mark.e2e  # real workers: the full suite's, not the matrix's


@pytest.fixture(scope="module")
def worker(_consul_server_session, tmp_path_factory):
    """A worker on a prefix of its own; yields the client app configured the same way."""
    server = _consul_server_session
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    with celery_worker(
        backend_url(server, prefix), tmp_path_factory.mktemp("e2e"), server.token
    ) as app:
        app.prefix = prefix
        try:
            yield app
        finally:
            import consul

            consul.Consul(
                host=server.host, port=server.port, scheme=server.scheme, token=server.token
            ).kv.delete(prefix + "/", recurse=True)


def test_task_result_is_stored_with_extended_metadata(worker):
    result = worker.send_task("e2e.add", (2, 3))
    assert result.get(timeout=30) == 5
    meta = worker.backend.get_task_meta(result.id, cache=False)
    assert meta["status"] == states.SUCCESS
    assert meta["name"] == "e2e.add"
    assert meta["args"] == [2, 3]
    assert meta["worker"].startswith("e2e-")


def test_failure_carries_the_traceback(worker):
    result = worker.send_task("e2e.fail", ("broken on purpose",))
    with pytest.raises(ValueError, match="broken on purpose"):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert "ValueError: broken on purpose" in result.traceback


def test_started_then_success_lands(worker):
    task, gate = gated(worker, "slept")
    result = task.delay()
    try:
        wait_until(lambda: result.state == states.STARTED, 30, "STARTED")  # held by the gate
    finally:
        open_gate(worker, gate)
    assert result.get(timeout=30) == "slept"
    assert worker.backend.get_task_meta(result.id, cache=False)["status"] == states.SUCCESS


def test_retries_end_in_success(worker):
    result = worker.send_task("e2e.flaky", (2,))
    assert result.get(timeout=30) == 2
    assert worker.backend.get_task_meta(result.id, cache=False)["retries"] == 2


def test_progress_updates_then_final_state(worker):
    result = worker.send_task("e2e.progress", (10,))
    seen = set()
    deadline = time.monotonic() + 30
    while not result.ready():
        assert time.monotonic() < deadline
        seen.add(result.state)
        time.sleep(0.02)
    assert "PROGRESS" in seen
    assert result.get(timeout=5) == 10


def test_group_and_chain(worker):
    signature = worker.signature
    grouped = group(signature("e2e.add", (i, i)) for i in range(10)).apply_async()
    assert grouped.get(timeout=60) == [2 * i for i in range(10)]
    chained = chain(signature("e2e.add", (1, 2)), signature("e2e.add", (10,))).apply_async()
    assert chained.get(timeout=60) == 13


def test_hundred_part_chord_runs_its_body_exactly_once(worker):
    header = [worker.signature("e2e.add", (i, 0)) for i in range(100)]
    result = chord(header)(worker.signature("e2e.tsum"))
    assert result.get(timeout=180) == sum(range(100))
    worker_idle(worker)  # a second body, if any part sent one, has run by now
    bodies = list(Path(worker.mark_dir).glob("body-*"))
    assert [p.read_text() for p in bodies] == [str(sum(range(100)))]


def test_get_times_out_cleanly_then_succeeds(worker):
    task, gate = gated(worker, "late")
    result = task.delay()
    try:
        with pytest.raises(TimeoutError):
            result.get(timeout=0.3)  # the task cannot finish before the gate opens
    finally:
        open_gate(worker, gate)
    assert result.get(timeout=30) == "late"


def test_forget_removes_the_stored_result(worker):
    result = worker.send_task("e2e.add", (1, 1))
    assert result.get(timeout=30) == 2
    result.forget()
    assert worker.backend.get_task_meta(result.id, cache=False)["status"] == states.PENDING


@pytest.mark.parametrize("size", [524_289, 50 * 1024 * 1024])
def test_oversized_result_fails_clearly_and_the_worker_survives(worker, size):
    result = worker.send_task("e2e.huge", (size,))
    with pytest.raises(Exception, match="over Consul's 524288-byte value limit"):
        result.get(timeout=120)
    meta = worker.backend.get_task_meta(result.id, cache=False)
    assert meta["status"] == states.FAILURE
    assert (
        worker.backend.operations().fetch(result.id).size < 10_000
    )  # the error, not a partial result
    assert worker.send_task("e2e.add", (1, 1)).get(timeout=30) == 2
