"""Read commands over the dev server: through Typer's runner and as a real subprocess."""

from __future__ import annotations

import json

import pytest
from celery import states
from conftest import backend_url, run_cli
from typer.testing import CliRunner

from consulresults.cli import app


@pytest.fixture
def stored(make_app):
    backend = make_app(result_extended=True).backend
    backend.store_result("ok-1", {"n": 1}, states.SUCCESS)
    backend.store_result(
        "bad-1",
        KeyError("boom"),
        states.FAILURE,
        traceback="Traceback (most recent call last):\nKeyError: 'boom'",
    )
    return backend


def test_get_json_and_not_found_exit_code(cli, stored):
    result = cli("get", "ok-1", "bad-1", "-o", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["id"], r["state"]) for r in rows] == [("ok-1", "SUCCESS"), ("bad-1", "FAILURE")]
    assert rows[0]["result"] == {"n": 1}
    assert "KeyError" in rows[1]["traceback"]
    missing = cli("get", "ok-1", "nope", "-o", "json")
    assert missing.exit_code == 3
    assert json.loads(missing.stdout)[0]["id"] == "ok-1"
    assert "no result for task nope" in missing.stderr


def test_get_field_raw_and_ids_from_stdin(cli, stored):
    field = cli("get", "bad-1", "--field", "state")
    assert field.stdout == "FAILURE\n"
    raw = cli("get", "ok-1", "--raw")
    assert json.loads(raw.stdout)["status"] == "SUCCESS"
    piped = cli("get", "-", "-o", "ids", input="ok-1\nbad-1\n")
    assert piped.stdout.split() == ["ok-1", "bad-1"]
    bad_field = cli("get", "ok-1", "--field", "colour")
    assert bad_field.exit_code == 2
    assert "no field 'colour'" in bad_field.stderr


def test_get_wait_times_out_with_exit_75(cli):
    result = cli("get", "never-done", "--wait", "--timeout", "0.3")
    assert result.exit_code == 75
    assert "timed out after 0.3 s waiting for task never-done" in result.stderr


def test_get_wait_returns_when_the_result_lands(cli, make_app):
    import threading

    backend = make_app().backend
    threading.Timer(0.5, lambda: backend.store_result("later", 7, states.SUCCESS)).start()
    result = cli("get", "later", "--wait", "--timeout", "20", "--field", "result")
    assert (result.exit_code, result.stdout) == (0, "7\n")


def test_inspect_shows_consul_metadata(cli, stored):
    result = cli("inspect", "ok-1", "-o", "json")
    row = json.loads(result.stdout)[0]
    assert row["key"].endswith("/celery-task-meta-ok-1")
    assert row["session_behavior"] == "delete"
    assert row["session_ttl"] == "3900s"
    assert row["session_checks"] == []
    assert row["modify_index"] >= row["create_index"]
    assert "TTL" in row["expected_expiry"]


def test_ls_filters_sort_limit_count_and_formats(cli, stored):
    listed = cli("ls", "-o", "json")
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == ["bad-1", "ok-1"]
    failures = cli("ls", "--state", "failure", "-o", "ids")
    assert failures.stdout == "bad-1\n"
    assert cli("ls", "--count").stdout == "2\n"
    assert cli("ls", "--limit", "1", "-o", "ids").stdout == "bad-1\n"
    tsv = cli("ls", "-o", "tsv").stdout.splitlines()
    assert tsv[0].split("\t") == [
        *("id", "state", "task", "date_done", "expires", "session", "bytes", "retried_as")
    ]
    assert len(tsv) == 3
    none = cli("ls", "--state", "REVOKED", "-o", "json")
    assert (none.exit_code, json.loads(none.stdout)) == (0, [])
    assert cli("ls", "--state", "REVOKED", "--detailed-exitcode").exit_code == 3
    assert cli("ls", "--older-than", "1d", "--count").stdout == "0\n"
    assert cli("ls", "--newer-than", "1h", "--count").stdout == "2\n"


def test_age_filters_take_a_running_tasks_start(cli, make_app):
    """A STARTED result has no date_done: --older-than/--newer-than go by when it started."""
    from celery.app.task import Context

    backend = make_app(result_extended=True).backend
    request = Context(id="run-1", task="e2e.sleep", args=[], kwargs={})
    request.consulresults_date_started = "2020-01-01T00:00:00+00:00"  # as task_prerun keeps it
    backend.store_result("run-1", None, states.STARTED, request=request)
    assert cli("ls", "--older-than", "1d", "-o", "ids").stdout == "run-1\n"
    assert cli("ls", "--newer-than", "1d", "--count").stdout == "0\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["ls", "--older-than", "soon"], "is not a duration like 7d"),
        (["ls", "--sort", "colour"], "--sort: 'colour' is not one of"),
        (["ls", "-o", "xml"], "--output: 'xml' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stats_and_sessions(cli, stored):
    stats = json.loads(cli("stats", "-o", "json").stdout)
    assert stats["results"] == 2
    assert stats["by_state"] == {"SUCCESS": 1, "FAILURE": 1}
    assert stats["sessions"] == 1
    sessions = json.loads(cli("sessions", "ls", "-o", "json").stdout)
    assert [s["held"] for s in sessions] == [2]
    session_id = sessions[0]["id"]
    shown = json.loads(cli("sessions", "show", session_id, "-o", "json").stdout)
    assert shown["behavior"] == "delete"
    assert cli("sessions", "show", "00000000-0000-0000-0000-000000000000").exit_code == 3


def test_unreachable_consul_is_exit_69_in_one_line():
    result = run_cli("ls", "--http-addr", "127.0.0.1:9", "--prefix", "x", "--token", "sekrit-token")
    assert result.returncode == 69
    assert result.stderr.strip().splitlines() == [
        "consul-results: cannot reach Consul at http://127.0.0.1:9: connection refused "
        "(set --http-addr or CONSUL_HTTP_ADDR)"
    ]
    assert "sekrit-token" not in result.stdout + result.stderr


def test_a_consul_slower_than_the_timeout_is_exit_69_in_one_line(consul_dev_server_factory):
    server = consul_dev_server_factory()
    server.faults.delay(2.0)
    url = f"consulresults://{server.address}/slow?timeout=0.3"
    result = CliRunner().invoke(app, ["get", "x", "--backend-url", url])
    assert result.exit_code == 69
    assert result.stderr.splitlines() == [
        f"consul-results: Consul at http://{server.address} did not answer GET "
        "/v1/kv/slow/celery-task-meta-x within 0.3 s (if it is just slow, raise the backend's "
        "timeout option, e.g. ?timeout=30)"
    ]


def test_permission_denied_is_exit_77(consul_dev_server_factory):
    from consulresults.devserver import AclConfig

    server = consul_dev_server_factory(
        acl=AclConfig(
            enabled=True,
            default_policy="deny",
            tokens={"t-limited": {"key_prefix": {"a/": "read"}}},
        )
    )
    result = CliRunner().invoke(
        app, ["get", "x", "--http-addr", server.address, "--prefix", "b", "--token", "t-limited"]
    )
    assert result.exit_code == 77
    assert result.stderr.startswith("consul-results: permission denied by Consul:")
    assert "t-limited" not in result.output


def test_app_option_reads_the_apps_backend(
    tmp_path, consul_server, consul_prefix, stored, monkeypatch
):
    (tmp_path / "myproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('myproj')\n"
        f"app.conf.result_backend = {backend_url(consul_server, consul_prefix)!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = ["--token", consul_server.token] if consul_server.token else []
    result = CliRunner().invoke(app, ["ls", "-A", "myproj", "-o", "ids", *extra])
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == ["bad-1", "ok-1"]
    broken = CliRunner().invoke(app, ["ls", "-A", "no_such_module_xyz"])
    assert broken.exit_code == 2
    assert "cannot load the Celery app 'no_such_module_xyz'" in broken.stderr


def test_doctor_passes_on_a_working_setup(cli):
    result = cli("doctor")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok   reach the agent",
        "ok   a cluster leader",
        "ok   read the prefix",
        "ok   write the prefix",
        "ok   create sessions",
        "ok   connection budget",
        "ok   group commit",
        "ok   scope and credentials",
        "ok   pushed waiting (waiter)",
        "ok   pushed waiting (writer)",
        "ok   result_expires",
    ]
    assert "renewed once" in lines[-1] and "no cleanup needed" in lines[-1]  # Celery's 1 day
    assert "beyond 4 concurrent senders" in lines[6]


def test_doctor_says_when_group_commit_is_off(consul_server, consul_prefix):
    from conftest import backend_url
    from typer.testing import CliRunner

    from consulresults.cli import app

    url = backend_url(consul_server, consul_prefix)
    url += ("&" if "?" in url else "?") + "batching=false"
    token = ["--token", consul_server.token] if consul_server.token else []
    result = CliRunner().invoke(app, ["doctor", "--backend-url", url, *token])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "group commit" in line)
    assert (
        line
        == "ok   group commit: off (batching=false): every store and read is a request of its own"
    )


def test_doctor_does_the_connection_arithmetic(consul_dev_server_factory):
    """The agent's per-client-IP limit (from /v1/agent/self, which needs agent:read) divided by
    what one process of this configuration may hold."""
    from consulresults.devserver import AclConfig

    server = consul_dev_server_factory(http_max_conns_per_client=120)
    args = ["doctor", "--http-addr", server.address, "--prefix", "myapp"]
    budget = CliRunner().invoke(app, args).stdout
    line = next(line for line in budget.splitlines() if "connection budget" in line)
    assert "120 per client IP (the agent's limits): at most 30 such processes" in line
    rules = {"key_prefix": {"myapp/": "write"}, "session_prefix": {"": "write"}}
    denied = consul_dev_server_factory(
        acl=AclConfig(enabled=True, default_policy="deny", tokens={"no-agent-read": rules})
    )
    args = [
        "doctor",
        "--http-addr",
        denied.address,
        "--prefix",
        "myapp",
        "--token",
        "no-agent-read",
    ]
    line = next(
        line
        for line in CliRunner().invoke(app, args).stdout.splitlines()
        if "connection budget" in line
    )
    assert "200 per client IP (Consul's default, assumed (reading it needs agent:read))" in line


def test_doctor_says_what_removes_results(make_app):
    from consulresults.doctor import diagnose

    with pytest.warns(UserWarning, match="celery beat"):
        backend = make_app(result_expires=7 * 86_400).backend
    expiry = diagnose(backend.operations())[-1]
    assert expiry.name == "result_expires"
    assert "only a cleanup removes results: run celery beat" in expiry.detail
    expiry = diagnose(make_app(result_expires=3600).backend.operations())[-1]
    assert "sessions with TTL 3900 s" in expiry.detail and "no cleanup needed" in expiry.detail


def test_doctor_reports_each_failure_with_its_exit_code(consul_dev_server_factory):
    from consulresults.devserver import AclConfig

    rules = {"key_prefix": {"myapp/": "read"}, "agent_prefix": {"": "read"}}
    server = consul_dev_server_factory(
        acl=AclConfig(enabled=True, default_policy="deny", tokens={"read-only": rules})
    )
    args = ["doctor", "--http-addr", server.address, "--prefix", "myapp", "--token", "read-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 77
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failed] == [
        "FAIL write the prefix",
        "FAIL create sessions",
    ]
    assert "read-only" not in result.stdout
    unreachable = CliRunner().invoke(app, ["doctor", "--http-addr", "127.0.0.1:9"])
    assert unreachable.exit_code == 69
    assert "cannot reach Consul at http://127.0.0.1:9" in unreachable.stdout


def test_a_denied_write_fails_at_once(consul_dev_server_factory):
    from celery import Celery

    from consulresults.devserver import AclConfig

    rules = {"key_prefix": {"ro/": "read"}, "session_prefix": {"": "write"}}
    server = consul_dev_server_factory(
        acl=AclConfig(enabled=True, default_policy="deny", tokens={"read-only": rules})
    )
    celery_app = Celery("denied", set_as_current=False)
    celery_app.conf.update(
        result_backend=f"consulresults://:read-only@{server.address}/ro", result_expires=3600
    )
    server.reset_counters()
    import consul.base

    with pytest.raises(consul.base.ACLPermissionDenied, match="lacks permission 'key:write'"):
        celery_app.backend.store_result("t", 1, states.SUCCESS)
    assert server.counters()["txn"] == 1  # not retried as if it were a conflict


def test_pickle_results_decode_only_through_an_app_that_accepts_pickle(
    tmp_path, consul_server, consul_prefix, make_app, monkeypatch
):
    url = backend_url(consul_server, consul_prefix)
    pickled = make_app(result_serializer="pickle", result_accept_content=["pickle"]).backend
    pickled.store_result("pickled", {1, 2, 3}, states.SUCCESS)  # a set: json cannot carry it
    (tmp_path / "pickleproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('pickleproj')\n"
        f"app.conf.update(result_backend={url!r}, result_serializer='pickle',\n"
        "                result_accept_content=['pickle', 'json'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = ["--token", consul_server.token] if consul_server.token else []
    through_app = CliRunner().invoke(
        app, ["get", "pickled", "-A", "pickleproj", "--field", "result", *extra]
    )
    assert through_app.exit_code == 0, through_app.output
    assert through_app.stdout.strip() == "{1, 2, 3}"  # the set, decoded, shown by its repr
    plain = CliRunner().invoke(
        app, ["get", "pickled", "--backend-url", url, "--field", "state", *extra]
    )
    assert plain.stdout.strip() == "UNREADABLE"  # never unpickled unless the app opts in


def test_version_and_not_found_as_subprocesses(consul_server, consul_prefix):
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("consul-results ")
    cmd = [
        "get",
        "absent-id",
        "--backend-url",
        backend_url(consul_server, consul_prefix),
    ]
    if consul_server.token:
        cmd += ["--token", consul_server.token]
    missing = run_cli(*cmd)
    assert missing.returncode == 3
    assert missing.stdout == ""
    assert "no result for task absent-id" in missing.stderr


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_every_serializer_decodes_without_an_app(cli, make_app, serializer, compression):
    """Without -A the CLI reads json, msgpack and yaml (compressed or not) by itself, and shows
    a stored exception as Celery would: its type's name and its message."""
    backend = make_app(
        result_serializer=serializer,
        result_accept_content=[serializer],
        result_compression=compression,
    ).backend
    backend.store_result("value", {"n": [1, 2]}, states.SUCCESS)
    backend.store_result("error", ValueError("bad input"), states.FAILURE)
    rows = {r["id"]: r for r in json.loads(cli("get", "value", "error", "-o", "json").stdout)}
    assert rows["value"]["result"] == {"n": [1, 2]}
    assert rows["error"]["state"] == "FAILURE"
    assert rows["error"]["result"] == "ValueError: bad input"


def test_a_command_without_an_app_never_imports_celery(consul_server, consul_prefix, make_app):
    """Celery is imported only for -A, and python-consul2, requests and pydantic not at all:
    together they would be most of a command's start-up time."""
    make_app().backend.store_result("quick", 42, states.SUCCESS)
    heavy = ("celery", "consul", "requests", "pydantic")
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('imported:', [m for m in {heavy} if m in sys.modules], "
        "file=sys.stderr))\n"
        "from consulresults.cli import main\n"
        "main()\n"
    )
    args = ["get", "quick", "--backend-url", backend_url(consul_server, consul_prefix)]
    if consul_server.token:
        args += ["--token", consul_server.token]
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "42" in run.stdout
    assert "imported: []" in run.stderr


def test_stats_for_prometheus_textfile_collector(consul_server, consul_prefix, make_app, api):
    from prometheus_client.parser import text_string_to_metric_families

    from consulresults.expiry import session_name

    backend = make_app(result_extended=True).backend
    backend.store_result("p-ok", 1, states.SUCCESS, request=_request("tasks.add", "p-ok"))
    backend.store_result(
        "p-bad", KeyError("x"), states.FAILURE, request=_request("tasks.div", "p-bad")
    )
    stale = '{"status": "SUCCESS", "result": 3, "task_id": "p-old"}'
    api.put(f"/v1/kv/{consul_prefix}celery-task-meta-p-old?flags=1000", stale)
    idle_before = len(backend.operations().idle_sessions())
    api.session(Name=session_name(consul_prefix.rstrip("/")), TTL="60s")  # holds nothing
    held = api.session(Name="held", TTL="60s", Behavior="delete")  # Consul's to remove: not late
    api.put(f"/v1/kv/{consul_prefix}celery-task-meta-p-held?flags=1000&acquire={held}", stale)
    args = ["stats", "-o", "prometheus", "--backend-url", backend_url(consul_server, consul_prefix)]
    result = run_cli(*args, *(["--token", consul_server.token] if consul_server.token else []))
    assert result.returncode == 0, result.stderr
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "prefix"))): s.value
        for family in text_string_to_metric_families(result.stdout)
        for s in family.samples
    }
    assert samples[("consul_results_results", (("state", "SUCCESS"),))] == 3
    assert samples[("consul_results_results", (("state", "FAILURE"),))] == 1
    assert samples[("consul_results_task_results", (("task", "tasks.add"),))] == 1
    assert samples[("consul_results_expired_not_removed", ())] == 1
    # + sessions Celery's built-in backend left (earlier tests): named after a key, no prefix
    assert samples[("consul_results_idle_sessions", ())] == 1 + idle_before
    assert samples[("consul_results_sessions", ())] == 2
    assert samples[("consul_results_bytes", ())] > 0
    assert samples[("consul_results_oldest_result_age_seconds", ())] >= 0


def _request(name: str, task_id: str):
    from celery.app.task import Context

    return Context(id=task_id, task=name, args=(), kwargs={}, hostname="w1", retries=0)
