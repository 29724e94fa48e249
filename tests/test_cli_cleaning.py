"""Destructive commands: safe by default, exact in what they delete, honest in what they say."""

from __future__ import annotations

import json
import time

import pytest
from celery import states
from conftest import backend_url, run_cli, wait_until
from typer.testing import CliRunner

from consulresults.cli import app
from consulresults.expiry import in_use


@pytest.fixture
def backend(make_app):
    backend = make_app().backend
    for i in range(5):
        backend.store_result(f"ok-{i}", i, states.SUCCESS)
    backend.store_result("bad-0", KeyError("x"), states.FAILURE)
    return backend


def ids(backend) -> set[str]:
    return {r.id for r in backend.operations().iter_results()}


def test_without_a_terminal_yes_is_required(cli, backend):
    for args in (["rm", "ok-0"], ["purge"], ["expire", "ok-0"]):
        result = cli(*args)
        assert result.exit_code == 2, args
        assert "not on a terminal: refusing to" in result.stderr
        assert "without --yes" in result.stderr
    assert len(ids(backend)) == 6


def test_empty_prefix_is_refused(consul_server):
    result = CliRunner().invoke(app, ["purge", "--yes", "--http-addr", consul_server.address])
    assert result.exit_code == 2
    assert "refusing to work on an empty prefix" in result.stderr
    root = CliRunner().invoke(
        app, ["purge", "--yes", "--backend-url", f"consulresults://{consul_server.address}/"]
    )
    assert root.exit_code == 2


def test_rm_deletes_exactly_what_it_is_given(cli, backend):
    result = cli("rm", "ok-0", "ok-1", "--yes")
    assert result.exit_code == 0
    assert result.stdout == "matched 2, deleted 2, skipped 0 (changed meanwhile), failed 0\n"
    assert ids(backend) == {"ok-2", "ok-3", "ok-4", "bad-0"}
    missing = cli("rm", "ok-2", "nope", "--yes", "--json")
    assert missing.exit_code == 3
    assert json.loads(missing.stdout)["deleted"] == 1
    piped = cli("rm", "-", "--yes", input="ok-3\nok-4\n")
    assert piped.exit_code == 0
    assert ids(backend) == {"bad-0"}


def test_purge_dry_run_filters_and_max_delete(cli, backend):
    dry = cli("purge", "--state", "SUCCESS", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {
        "matched": 5,
        "deleted": 0,
        "skipped": 0,
        "failed": 0,
        "dry_run": True,
        "complete": True,
        "in_doubt": 0,
    }
    assert len(ids(backend)) == 6
    limited = cli("purge", "--state", "SUCCESS", "--max-delete", "2", "--yes", "--json")
    assert json.loads(limited.stdout)["deleted"] == 2
    rest = cli("purge", "--state", "SUCCESS", "--yes")
    assert rest.stdout.startswith("matched 3, deleted 3")
    assert ids(backend) == {"bad-0"}


def test_purge_never_touches_other_prefixes_or_foreign_keys(cli, backend, api, consul_prefix):
    other = consul_prefix.rstrip("/") + "-other/celery-task-meta-keep"
    api.put(f"/v1/kv/{other}", b'{"status": "SUCCESS"}')
    api.put(f"/v1/kv/{consul_prefix}config/app", b"foreign")
    api.put(f"/v1/kv/{consul_prefix}celery-task-meta-garbage", b"\x00\x01")
    result = cli("purge", "--yes", "--json")
    assert json.loads(result.stdout)["deleted"] == 6
    assert api.entry(other) is not None
    assert api.entry(consul_prefix + "config/app") is not None
    assert api.entry(consul_prefix + "celery-task-meta-garbage") is not None  # unidentifiable
    api.delete(f"/v1/kv/{other}")


def test_expire_and_sessions_expire_and_gc(cli, backend, api):
    assert cli("expire", "ok-0", "--yes").stdout == "expired 1 of 1\n"
    assert "ok-0" not in ids(backend)
    session = backend.operations().fetch("ok-1").session
    result = cli("sessions", "expire", session, "--yes")
    assert result.exit_code == 0
    assert result.stdout == "expired 1 session(s) holding 5 key(s)\n"
    assert ids(backend) == set()
    from consulresults.expiry import made_for, session_name

    name = session_name(backend.prefix)
    assert made_for(name, backend.prefix)
    idle = api.session(Name=name, Checks=[], TTL="60s")
    foreign = api.session(Name="someone-elses-lock", Checks=[], TTL="60s")
    # empty, but a writer may still put a result in it: its name says until when
    handed_out = api.session(
        Name=session_name(backend.prefix, until=time.time() + 600), Checks=[], TTL="60s"
    )
    dry = cli("sessions", "gc", "--dry-run")
    assert "would destroy" in dry.stdout
    assert cli("sessions", "gc", "--yes").exit_code == 0
    assert api.get(f"/v1/session/info/{idle}").json() == []
    assert api.get(f"/v1/session/info/{foreign}").json() != []
    assert api.get(f"/v1/session/info/{handed_out}").json() != []
    for kept in (foreign, handed_out):
        api.put(f"/v1/session/destroy/{kept}")


def test_purge_as_a_subprocess_from_cron(consul_server, consul_prefix, backend):
    cmd = [
        "purge",
        "--backend-url",
        backend_url(consul_server, consul_prefix),
        "--state",
        "FAILURE",
    ]
    if consul_server.token:
        cmd += ["--token", consul_server.token]
    refused = run_cli(*cmd)
    assert refused.returncode == 2
    done = run_cli(*cmd, "--yes")
    assert done.returncode == 0
    assert done.stdout.startswith("matched 1, deleted 1")
    assert done.stderr == ""  # no progress bar when not on a terminal


def test_include_unreadable_deletes_garbage_only_when_asked(cli, backend, api, consul_prefix):
    api.put(f"/v1/kv/{consul_prefix}celery-task-meta-garbage", b"\x00\x01")
    listed = cli("ls", "-o", "json")
    assert "UNREADABLE" in [r["state"] for r in json.loads(listed.stdout)]
    assert json.loads(cli("purge", "--yes", "--json").stdout)["deleted"] == 6
    forced = cli("purge", "--yes", "--json", "--include-unreadable")
    assert json.loads(forced.stdout)["deleted"] == 1
    assert api.entry(consul_prefix + "celery-task-meta-garbage") is None


def window_over(api, session: str):
    """Whether the session's name says it is handed to writers no more (a predicate)."""
    name = api.get(f"/v1/session/info/{session}").json()[0]["Name"]
    return lambda: not in_use(name, time.time())


def test_rm_removes_a_session_left_holding_nothing(cli, make_app, api):
    """Once its window is over (no writer will put a result in it), not before."""
    for window, removed in ((30, False), (0.1, True)):
        lone = make_app(  # its own TTL, so its own session
            result_expires=120 + window,
            consulresults_session_window=window,
            consulresults_timeout=1,
        ).backend
        lone.store_result("alone", 1, states.SUCCESS)
        session = lone.operations().fetch("alone").session
        if removed:  # until its name says no writer gets it (window + 2 x timeout, rounded up)
            wait_until(window_over(api, session), 30, "the session's window to close")
        assert cli("rm", "alone", "--yes").exit_code == 0
        assert (api.get(f"/v1/session/info/{session}").json() == []) == removed


def test_rm_keeps_a_session_that_still_holds_results(cli, backend, api):
    session = backend.operations().fetch("ok-0").session
    assert cli("rm", "ok-0", "--yes").exit_code == 0
    assert api.get(f"/v1/session/info/{session}").json() != []
    assert backend.operations().fetch("ok-1") is not None


def test_gc_never_destroys_sessions_of_another_prefix(
    cli, make_app, consul_server, consul_prefix, api
):
    from celery import Celery

    other = Celery("other", set_as_current=False)
    other.conf.update(
        result_backend=backend_url(consul_server, consul_prefix + "elsewhere"),
        consulresults_token=consul_server.token,
        result_expires=3600,
    )
    other.backend.store_result("far", 1, states.SUCCESS)
    far_session = other.backend.operations().fetch("far").session
    assert cli("sessions", "gc", "--yes").exit_code == 0
    assert api.get(f"/v1/session/info/{far_session}").json() != []
    assert other.backend.operations().fetch("far") is not None
    other.backend.forget("far")
