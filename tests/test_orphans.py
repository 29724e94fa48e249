"""``--orphaned``: STARTED results whose worker is gone, told apart by asking real workers over
a real broker (kombu's filesystem transport, whose fanout exchange carries Celery's remote
control), the whole worker killed as a lost node would be."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from celery import states
from conftest import (
    backend_url,
    celery_worker,
    gated,
    open_gate,
    run_cli,
    wait_gated,
    wait_until,
)
from e2e_app import make_app
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e  # real workers: the full suite's, not the matrix's

HERE = Path(__file__).resolve().parent


def app_env(server, prefix: str, broker_dir: Path, **extra: str) -> dict[str, str]:
    """The environment in which ``-A e2e_app`` is the workers' app: same results, same broker."""
    env = dict(
        os.environ,
        PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        E2E_BACKEND_URL=backend_url(server, prefix),
        E2E_BROKER_DIR=str(broker_dir),
        **extra,
    )
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_APP", None)
    if server.token:
        env["E2E_CONSUL_TOKEN"] = server.token
    return env


def orphans(env: dict[str, str], *args: str):
    """``consul-results ARGS -A e2e_app`` with answers awaited 1 s."""
    return run_cli(*args, "-A", "e2e_app", "--ping-timeout", "1", env=env)


def listed(env: dict[str, str], min_age: str = "0s") -> list[str]:
    done = orphans(env, "ls", "--orphaned", "--min-age", min_age, "-o", "ids")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def store_started(app, worker: str | None = "gone@nowhere") -> str:
    """A STARTED result as a worker's task_track_started stores it (node name and pid), or
    without them; returned once its recorded time has passed, so --min-age 0s covers it."""
    task_id = str(uuid.uuid4())
    app.backend.store_result(
        task_id, {"pid": 1, "hostname": worker} if worker else {}, states.STARTED
    )
    flags = app.backend.operations().fetch(task_id).flags
    wait_until(lambda: time.time() > flags - app.conf.result_expires, 5, "the write's second")
    return task_id


@pytest.fixture
def results_app(consul_server, consul_prefix, tmp_path):
    """The workers' app in this process, to write results as a worker would."""
    app = make_app(
        backend_url(consul_server, consul_prefix), str(tmp_path / "broker"), consul_server.token
    )
    yield app
    app.close()


def test_a_running_task_is_kept_and_a_killed_workers_tasks_are_orphaned(
    consul_server, consul_prefix, tmp_path
):
    url = backend_url(consul_server, consul_prefix)
    broker = tmp_path / "survivor" / "broker"
    env = app_env(consul_server, consul_prefix, broker)
    on_doomed = {"conf": {"task_default_queue": "doomed"}, "broker_dir": broker}
    with (
        celery_worker(url, tmp_path / "survivor", consul_server.token) as survivor,
        celery_worker(
            url, tmp_path / "doomed", consul_server.token, own_session=True, **on_doomed
        ) as doomed,
    ):
        kept_task, kept_gate = gated(survivor, "kept")
        (removed_task, removed_gate), (resent_task, resent_gate) = [
            gated(doomed, value) for value in ("removed", "resent")
        ]
        kept, removed, resent = kept_task.delay(), removed_task.delay(), resent_task.delay()
        try:
            for app, gate in ((survivor, kept_gate), (doomed, removed_gate), (doomed, resent_gate)):
                wait_gated(app, gate)
            assert listed(env) == []  # all running, on workers that answer

            os.killpg(doomed.worker_pid, signal.SIGKILL)  # the worker and its pool, at once
            assert survivor.backend.get_task_meta(removed.id, cache=False)["status"] == "STARTED"
            assert listed(env, "10m") == []  # too young to be called orphaned
            lost = sorted([removed.id, resent.id])
            wait_until(lambda: sorted(listed(env)) == lost, 60, "the lost tasks orphaned")

            counted = orphans(env, "stats", "--orphaned", "--min-age", "0s", "-o", "json")
            assert counted.returncode == 0, counted.stderr
            assert json.loads(counted.stdout)["orphaned"] == 2
            exported = orphans(env, "stats", "--orphaned", "--min-age", "0s", "-o", "prometheus")
            [family] = [
                f
                for f in text_string_to_metric_families(exported.stdout)
                if f.name == "consul_results_orphaned_results"
            ]
            assert [s.value for s in family.samples] == [2]
            dry = orphans(env, "purge", "--orphaned", "--min-age", "0s", "--dry-run")
            assert dry.stdout.startswith("matched 2, would delete 2"), dry.stderr

            rm = orphans(env, "rm", kept.id, removed.id, "--orphaned", "--min-age", "0s", "-y")
            assert rm.returncode == 0, rm.stderr
            assert rm.stdout.startswith("matched 1, deleted 1"), rm.stdout
            assert "1 result(s) not orphaned: left alone" in rm.stderr
            ops = survivor.backend.operations()
            assert ops.fetch(removed.id) is None
            assert ops.fetch(kept.id).state == "STARTED"

            restart = celery_worker(url, tmp_path / "restarted", consul_server.token, **on_doomed)
            with restart as restarted:
                retry = ["retry", "--orphaned", "--min-age", "0s", "--yes", "-o", "json"]
                sent = orphans(env, *retry)
                assert sent.returncode == 0, sent.stderr
                [row] = json.loads(sent.stdout)
                assert row["id"] == resent.id
                open_gate(restarted, resent_gate)  # its own mark directory
                assert survivor.AsyncResult(row["new_id"]).get(timeout=60) == "resent"
                again = orphans(env, *retry)
                assert json.loads(again.stdout) == [], again.stderr  # claimed: sent once
        finally:
            open_gate(survivor, kept_gate)
        assert kept.get(timeout=30) == "kept"


def test_with_no_worker_answering_it_cannot_tell_and_deletes_nothing(
    consul_server, consul_prefix, tmp_path, results_app
):
    task_id = store_started(results_app)
    env = app_env(consul_server, consul_prefix, tmp_path / "silent-broker")
    commands = {
        "ls": ["ls", "--orphaned"],
        "stats": ["stats", "--orphaned"],
        "rm": ["rm", task_id, "--orphaned", "--yes"],
        "purge": ["purge", "--orphaned", "--yes"],
        "retry": ["retry", "--orphaned", "--yes"],
    }
    for name, args in commands.items():
        done = orphans(env, *args, "--min-age", "0s")
        assert done.returncode == 4, (name, done.stderr)
        assert done.stdout == "", name
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "no worker answered on the broker within 1 s" in lines[0]
        kept = results_app.backend.operations().fetch(task_id)
        assert kept is not None, name
        assert "retried_as" not in kept.meta, name  # not claimed
    queued = (tmp_path / "silent-broker").rglob("*")
    assert [p.name for p in queued if p.name.partition(".")[2].startswith("celery.msg")] == []


def test_a_started_result_naming_no_worker_is_not_judged(
    consul_server, consul_prefix, tmp_path, results_app
):
    task_id = store_started(results_app, worker=None)  # e.g. update_state(state="STARTED")
    env = app_env(consul_server, consul_prefix, tmp_path / "broker")
    done = orphans(env, "rm", task_id, "--orphaned", "--min-age", "0s", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("matched 0, deleted 0")
    assert "1 STARTED result(s) not judged, no worker recorded" in done.stderr
    assert results_app.backend.operations().fetch(task_id) is not None


def test_a_broker_that_is_down_is_exit_69_and_names_it_without_secrets(
    consul_server, consul_prefix, tmp_path, results_app
):
    task_id = store_started(results_app)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = app_env(consul_server, consul_prefix, tmp_path / "broker")
    env["CELERY_BROKER_URL"] = f"amqp://ops:s3cret@127.0.0.1:{port}//"
    done = orphans(env, "purge", "--orphaned", "--min-age", "0s", "--yes")
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("consul-results: cannot reach the Celery broker at amqp://ops:")
    assert "s3cret" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert results_app.backend.operations().fetch(task_id) is not None


@pytest.mark.parametrize("command", [["ls"], ["stats"], ["purge", "--yes"], ["rm", "x", "--yes"]])
def test_orphaned_without_an_app_is_a_usage_error(cli, command):
    done = cli(*command, "--orphaned")
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [
        "consul-results: --orphaned asks the workers over the Celery app's broker: give "
        "-A MODULE (or set CELERY_APP)"
    ]


def test_a_bad_min_age_is_a_usage_error(cli):
    done = cli("ls", "--orphaned", "--min-age", "soon")
    assert done.exit_code == 2
    assert "--min-age: 'soon' is not a duration like 7d" in done.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "FAILURE"], "--orphaned selects STARTED results itself: drop --state"),
        (["some-id"], "name ids, or select with --state/--orphaned/--task/"),
    ],
)
def test_retry_orphaned_takes_no_state_and_no_ids(cli, args, message):
    done = cli("retry", "--orphaned", *args, "--yes")
    assert done.exit_code == 2
    [line] = done.output.strip().splitlines()
    assert line.startswith(f"consul-results: {message}")
