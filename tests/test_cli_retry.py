"""``consul-results retry``: failed tasks re-sent from their stored call, on a real worker and
broker; at most once with ``--mark`` (a compare-and-swap claim), however many runs race; and
every refusal one line with its exit status, nothing sent."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from celery import states
from celery.app.task import Context
from celery.result import AsyncResult
from conftest import (
    CONSUL_RESULTS,
    _queued,
    backend_url,
    celery_worker,
    run_cli,
    worker_idle,
)
from e2e_app import make_app

from consulresults.codec import COMPRESSED_MAGIC

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def worker(consul_server, consul_prefix, tmp_path):
    """A real worker on tests/e2e_app.py, results compressed (a mark must keep that)."""
    url = backend_url(consul_server, consul_prefix)
    with celery_worker(
        url, tmp_path, consul_server.token, conf={"result_compression": "zlib"}
    ) as app:
        yield app


@pytest.fixture
def client(consul_server, consul_prefix, tmp_path):
    """The e2e app with its filesystem broker and no worker: what is sent stays queued."""
    app = make_app(backend_url(consul_server, consul_prefix), str(tmp_path / "broker"))
    app.conf.consulresults_token = consul_server.token
    app.workdir, app.mark_dir = tmp_path, tmp_path / "marks"
    yield app
    app.close()


def env_for(app, **extra: str) -> dict[str, str]:
    """The environment under which ``-A e2e_app`` is the test's app (see e2e_app.py)."""
    conf = (
        {"result_compression": app.conf.result_compression} if app.conf.result_compression else {}
    )
    env = dict(
        os.environ,
        E2E_BACKEND_URL=app.conf.result_backend,
        E2E_BROKER_DIR=str(app.workdir / "broker"),
        E2E_MARK_DIR=str(app.mark_dir),
        E2E_CONF=json.dumps(conf),
        PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    )
    env.pop("CELERY_APP", None)
    if app.conf.consulresults_token:
        env["E2E_CONSUL_TOKEN"] = app.conf.consulresults_token
    return env


def retry(app, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``consul-results retry ARGS -A e2e_app`` as cron runs it: a process, no terminal."""
    stdin = {"stdin": None, "input": input} if input is not None else {}
    return run_cli("retry", *args, "-A", "e2e_app", env=env_for(app, **env), cwd=TESTS, **stdin)


def sent(result: subprocess.CompletedProcess) -> dict[str, str]:
    """Old id → new id, from ``-o json``."""
    assert result.returncode == 0, result.stderr
    return {row["id"]: row["new_id"] for row in json.loads(result.stdout)}


def failed(app, name: str = "e2e.fail_once", *args) -> str:
    """A task run to FAILURE on the worker; its id."""
    found = app.send_task(name, args or (uuid.uuid4().hex, 42))
    found.get(timeout=60, propagate=False)
    assert found.state == states.FAILURE
    return found.id


def store(app, task_id: str, state: str = states.FAILURE, task: str = "e2e.fail", **request):
    """A result as a worker with result_extended stores it, with the request given."""
    context = Context(
        task=task,
        args=["x"],
        kwargs={},
        delivery_info={"routing_key": "celery"},
        hostname="w@h",
        retries=0,
        **request,
    )
    result = 3 if state == states.SUCCESS else ValueError("boom")
    app.backend.store_result(task_id, result, state, request=context)


def meta(app, task_id: str) -> dict:
    return app.backend.operations().fetch(task_id).meta


# ---------------------------------------------------------------------- on a real worker


@pytest.mark.e2e  # a real worker: the full suite's, not the matrix's
def test_a_failed_task_is_re_sent_and_succeeds_under_its_new_id(worker):
    old = failed(worker, "e2e.fail_once", "first", 42)
    result = retry(worker, old, "--yes", "-o", "json")
    new = sent(result)[old]
    assert new != old
    assert result.stderr == "consul-results: sent 1, skipped 0\n"
    assert AsyncResult(new, app=worker).get(timeout=60) == 42
    again = meta(worker, new)
    assert (again["name"], again["args"], again["queue"]) == (
        "e2e.fail_once",
        ["first", 42],
        "celery",
    )
    assert meta(worker, old)["status"] == states.FAILURE
    assert "retried_as" not in meta(worker, old)  # no --mark: no mark


@pytest.mark.e2e  # a real worker: the full suite's, not the matrix's
def test_mark_claims_the_result_so_a_second_run_sends_nothing(worker, cli, api):
    old = failed(worker)
    key = worker.backend.operations().fetch(old).key
    before = api.entry(key)
    selected = ("--state", "FAILURE", "--task", "e2e.fail_once", "--mark", "--yes", "-o", "json")
    new = sent(retry(worker, *selected))[old]
    assert AsyncResult(new, app=worker).get(timeout=60) == 42
    after = api.entry(key)
    # one compare-and-swap of the value: state, Flags, session and compression kept
    assert (after["Session"], after["Flags"]) == (before["Session"], before["Flags"])
    assert after["Session"]
    assert base64.b64decode(after["Value"]).startswith(COMPRESSED_MAGIC)
    marked = meta(worker, old)
    assert (marked["status"], marked["retried_as"]) == (states.FAILURE, new)
    assert datetime.fromisoformat(marked["retried_at"]).tzinfo is not None
    got = json.loads(cli("get", old, "-o", "json").stdout)[0]
    assert (got["retried_as"], got["state"]) == (new, "FAILURE")
    assert json.loads(cli("inspect", old, "-o", "json").stdout)[0]["retried_as"] == new
    assert cli("ls", "--retried", "-o", "ids").stdout == f"{old}\n"
    assert old not in cli("ls", "--not-retried", "-o", "ids").stdout.split()

    second = retry(worker, *selected)
    assert sent(second) == {}
    assert second.stderr == (
        f"consul-results: skipped {old}: already retried as {new} at {marked['retried_at']} "
        "(--again sends it once more)\n"
        "consul-results: sent 0, skipped 1 (already retried 1)\n"
    )
    third = retry(worker, old, "--again", "--dry-run", "-o", "json")
    assert sent(third) == {old: None}
    worker_idle(worker)
    assert len(list(worker.mark_dir.glob("ran-*"))) == 1  # the one retry, never a second


@pytest.mark.e2e  # a real worker: the full suite's, not the matrix's
def test_concurrent_marked_runs_send_each_result_once(worker):
    olds = {failed(worker) for _ in range(3)}
    args = ("--state", "FAILURE", "--mark", "--yes", "-o", "json", "-A", "e2e_app")
    runs = [
        subprocess.Popen(
            [*CONSUL_RESULTS, "retry", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(worker),
            cwd=TESTS,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    rows = [row for out, _ in outputs for row in json.loads(out)]
    assert sorted(row["id"] for row in rows) == sorted(olds)
    for row in rows:
        assert AsyncResult(row["new_id"], app=worker).get(timeout=60) == 42
    worker_idle(worker)
    assert len(list(worker.mark_dir.glob("ran-*"))) == 3


@pytest.mark.e2e  # a real worker: the full suite's, not the matrix's
def test_a_claim_on_a_result_changed_since_read_is_skipped(worker):
    """Two runs that read the result at once: the second claim's compare-and-swap fails."""
    from consulresults.celery_requeue import AppRequeue
    from consulresults.requeue import Plan, run

    old = failed(worker)
    ops = worker.backend.operations()
    stale = ops.fetch(old)
    sent(retry(worker, old, "--mark", "--yes", "-o", "json"))  # the other run claims it
    done, skipped = [], []
    run(ops, Plan(send=[stale]), AppRequeue(worker), True, done.append, skipped.append)
    assert done == []
    assert [(s.id, s.reason) for s in skipped] == [(old, "changed")]
    worker_idle(worker)
    assert len(list(worker.mark_dir.glob("ran-*"))) == 1


@pytest.mark.e2e  # a real worker: the full suite's, not the matrix's
def test_ids_piped_on_standard_input(worker):
    olds = [failed(worker) for _ in range(2)]
    result = retry(worker, "-", "--yes", "-o", "tsv", input="".join(f"{i}\n" for i in olds))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "id\ttask\tnew_id"
    news = dict(line.split("\t")[::2] for line in lines[1:])
    assert list(news) == olds
    for new in news.values():
        assert AsyncResult(new, app=worker).get(timeout=60) == 42


# ---------------------------------------------------------------------- what is skipped, why


def test_skip_reasons_each_one_line_and_counted(client, make_app):
    store(client, "plain")
    make_app(result_extended=False).backend.store_result("nocall", ValueError(), "FAILURE")
    store(client, "unknown", task="evil.rm_rf")
    store(client, "done", states.SUCCESS, task="e2e.add")
    store(client, "late", task="e2e.late_fail")
    store(client, "member", group="g-1")
    store(client, "child", parent_id="p-1")
    dry = retry(client, "--state", "FAILURE", "--dry-run", "-o", "json")
    assert sent(dry) == {"plain": None}
    lines = dry.stderr.splitlines()
    assert sorted(line.split(":")[1].split()[-1] for line in lines[:-1]) == [
        "child",
        "late",
        "member",
        "nocall",
        "unknown",
    ]
    assert "child: sent by task p-1 (a step of a chain, or a subtask)" in dry.stderr
    assert "member: a member of group or chord g-1: its callbacks are not stored" in dry.stderr
    assert "late: task e2e.late_fail is acks_late" in dry.stderr
    assert "unknown: task 'evil.rm_rf' is not registered by the app" in dry.stderr
    assert "nocall: no stored task name, args and kwargs (result_extended" in dry.stderr
    assert lines[-1] == (
        "consul-results: would send 1, skipped 5 "
        "(acks_late 1, canvas 2, no stored call 1, not registered 1)"
    )
    forced = retry(client, "done", "late", "member", "unknown", "nocall", "--force", "--dry-run")
    assert forced.stdout.splitlines()[1:] == [
        "done\te2e.add\t-",
        "late\te2e.late_fail\t-",
        "member\te2e.fail\t-",
    ]
    assert forced.stderr.splitlines()[-1].endswith("(no stored call 1, not registered 1)")
    nothing = retry(client, "unknown", "nocall", "--force", "--yes")
    assert (nothing.returncode, nothing.stdout) == (0, "id\ttask\tnew_id\n")
    assert _queued(client.workdir) == []  # an unregistered name is never sent
    missing = retry(client, "plain", "nope", "--dry-run")
    assert missing.returncode == 3
    assert "skipped nope: no result stored under" in missing.stderr


def test_revoked_only_when_asked_and_limit_takes_the_oldest(client):
    for n in (2, 1, 0):  # stored in reverse key order: the oldest are not the first keys
        store(client, f"fail-{n}")
    store(client, "revoked", states.REVOKED)
    dry = retry(client, "--state", "FAILURE", "--limit", "2", "--dry-run", "-o", "ids")
    assert dry.stdout.splitlines() == ["fail-2", "fail-1"]
    assert dry.stderr.endswith("would send 2, skipped 0, 1 more left by --limit\n")
    revoked = retry(client, "--state", "REVOKED", "--dry-run", "-o", "ids")
    assert revoked.stdout == "revoked\n"
    by_id = retry(client, "revoked", "--dry-run", "-o", "ids")
    assert "skipped revoked: state REVOKED, not FAILURE (--force with its id)" in by_id.stderr


def test_limit_takes_the_oldest_started_results_by_when_they_began(client):
    """Orphaned STARTED results have no date_done: ``--orphaned --limit`` orders them by their
    date_started, not by key."""
    from consulresults.requeue import oldest_first

    for task_id in ("b-began-first", "a-began-later"):
        request = Context(id=task_id, task="e2e.fail", args=["x"], kwargs={}, retries=0)
        started = {"pid": 1, "hostname": "gone@nowhere"}  # date_started: the STARTED write
        client.backend.store_result(task_id, started, states.STARTED, request=request)
    ops = client.backend.operations()
    found = [ops.fetch("a-began-later"), ops.fetch("b-began-first")]
    assert all(r.started_at is not None and r.done_at is None for r in found)
    assert [r.id for r in oldest_first(found)] == ["b-began-first", "a-began-later"]


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("plain",), 2, "not on a terminal: refusing to re-send 1 task(s)"),
        (("--state", "FAILURE"), 2, "not on a terminal: refusing to re-send 1 task(s)"),
        (("--state", "FAILURE", "--prefix", "", "--yes"), 2, "refusing to work on an empty"),
        (("--state", "FAILURE", "--max", "0", "--yes"), 2, "1 results would be re-sent, over"),
        (("--state", "SUCCESS", "--yes"), 2, "--state: retry re-sends FAILURE or REVOKED"),
        (("--state", "FAILURE", "--force", "--yes"), 2, "--force applies only to results named"),
        (("plain", "--task", "e2e.fail", "--yes"), 2, "name ids, or select with --state"),
        (("--yes",), 2, "give task ids (- reads them from standard input), or select"),
        (("plain", "-o", "xml", "--yes"), 2, "--output: 'xml' is not one of"),
    ],
)
def test_refusals_are_one_line_and_send_nothing(client, args, code, message):
    """One line each, even when a selection also holds results that would be skipped (their
    lines come only once nothing refuses)."""
    store(client, "plain")
    store(client, "unknown", task="evil.rm_rf")
    result = retry(client, *args)
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"consul-results: {message}")
    assert result.stdout == ""
    assert _queued(client.workdir) == []
    assert "retried_as" not in meta(client, "plain")


def test_without_an_app_it_is_a_usage_error(client):
    store(client, "plain")
    url = client.conf.result_backend
    result = run_cli("retry", "plain", "--yes", "--backend-url", url, env=env_for(client))
    assert result.returncode == 2
    assert result.stderr == (
        "consul-results: retry sends tasks through the Celery app's broker: give -A MODULE "
        "(or set CELERY_APP)\n"
    )
    assert _queued(client.workdir) == []


def test_a_broker_failure_is_exit_69_and_the_claim_is_undone(client):
    store(client, "plain")
    down = {"CELERY_BROKER_URL": "amqp://guest:secret@127.0.0.1:1//"}
    result = retry(client, "plain", "--mark", "--yes", "-o", "json", **down)
    assert result.returncode == 69, result.stderr
    summary, error = result.stderr.splitlines()
    assert error.startswith("consul-results: the broker at amqp://guest:**@127.0.0.1:1// failed")
    assert "secret" not in result.stderr
    assert summary == "consul-results: sent 0, skipped 0"
    assert json.loads(result.stdout) == []
    assert "retried_as" not in meta(client, "plain")  # the claim was put back


def test_a_call_that_cannot_be_sent_is_skipped_and_its_claim_undone(client, make_app):
    """Arguments stored with pickle that json (the app's task serializer) cannot carry: that
    result is skipped with its reason, its claim put back; the others still go."""
    conf = {"result_serializer": "pickle", "result_accept_content": ["pickle", "json"]}
    pickled = make_app(result_extended=True, **conf)
    context = Context(task="e2e.fail", args=[{1, 2}], kwargs={}, retries=0)
    pickled.backend.store_result("odd", ValueError("boom"), states.FAILURE, request=context)
    context = Context(task="e2e.fail", args=["x"], kwargs={}, retries=0)
    pickled.backend.store_result("plain", ValueError("boom"), states.FAILURE, request=context)
    env = env_for(client)
    env["E2E_CONF"] = json.dumps(conf)
    result = run_cli(
        "retry", "odd", "plain", "--mark", "--yes", "-A", "e2e_app", env=env, cwd=TESTS
    )
    assert result.returncode == 0, result.stderr
    skipped, summary = result.stderr.splitlines()
    assert skipped.startswith("consul-results: skipped odd: its arguments cannot be sent: ")
    assert summary == "consul-results: sent 1, skipped 1 (cannot send 1)"
    assert "retried_as" not in pickled.backend.operations().fetch("odd").meta
    assert "retried_as" in pickled.backend.operations().fetch("plain").meta
    assert len(_queued(client.workdir)) == 1


def test_celerys_own_canvas_tasks_are_never_re_sent(client):
    store(client, "unlock", task="celery.chord_unlock")
    result = retry(client, "unlock", "--force", "--yes")
    assert result.returncode == 0, result.stderr
    assert "skipped unlock: celery.chord_unlock is Celery's own canvas task" in result.stderr
    assert _queued(client.workdir) == []


def test_task_modules_failing_to_import_are_one_line(client):
    store(client, "plain")
    env = env_for(client)
    env["E2E_CONF"] = json.dumps({"imports": ["no_such_tasks_module"]})
    result = run_cli("retry", "plain", "--yes", "-A", "e2e_app", env=env, cwd=TESTS)
    assert result.returncode == 2
    assert result.stderr == (
        "consul-results: cannot load the Celery app's task modules: "
        "No module named 'no_such_tasks_module'\n"
    )
    assert _queued(client.workdir) == []
