"""ACL-filtered listings are never silent (issue 26): Consul filters a list by the token's ACLs
and says so only in ``X-Consul-Results-Filtered-By-ACLs``. With a token that may read only part
of a prefix, every listing command says so in one line on stderr (never the token); ``stats``
and ``purge`` (a dry run too) exit 5 unless ``--partial-ok``; without a token, on an agent that
denies by default, the line says results may be hidden; the backend's ``cleanup()`` logs it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import pytest
from celery import Celery, states
from conftest import CONSUL_RESULTS, Api, run_cli

MANAGEMENT = "root-mgmt-secret"
PARTIAL = "partial-token-5ecret-9f3a"  # may not read app/celery-task-meta-hidden*
FULL = "full-token-5ecret-1b7c"
NO_SESSIONS = "no-sessions-5ecret-c0de"  # reads every result, no session
TOKENS = {
    PARTIAL: {
        "key_prefix": {"app/": "write", "app/celery-task-meta-hidden": "deny"},
        "session_prefix": {"": "write"},
    },
    FULL: {"key_prefix": {"app/": "write"}, "session_prefix": {"": "write"}},
    NO_SESSIONS: {"key_prefix": {"app/": "read"}},
}
VISIBLE, HIDDEN = ["seen-1", "seen-2"], ["hidden-1", "hidden-2"]
HID = "consul-results: warning: the token's ACLs hid some results under app/ from Consul's listing"
EXIT_PARTIAL = 5
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def server(consul_dev_server_factory):
    """A deny-by-default dev server with two results the partial token may read and two it
    may not, all stored (and held by a session) through the management token."""
    from consulresults.devserver import AclConfig

    acl = AclConfig(enabled=True, default_policy="deny", management_token=MANAGEMENT, tokens=TOKENS)
    server = consul_dev_server_factory(acl=acl)
    app = backend_app(server, MANAGEMENT)
    for task_id in VISIBLE + HIDDEN:
        app.backend.store_result(task_id, 42, states.SUCCESS)
    app.close()
    return server


def backend_app(server, token: str | None) -> Celery:
    app = Celery("acl-hidden", set_as_current=False)
    app.conf.update(
        result_backend=f"consulresults://{server.address}/app",
        consulresults_token=token,
        result_expires=3600,
    )
    return app


def cli(server, *args: str, token: str | None = PARTIAL) -> subprocess.CompletedProcess:
    given = ["--token", token] if token else []
    done = run_cli(*args, "--http-addr", server.address, "--prefix", "app", *given)
    assert token is None or token not in done.stdout + done.stderr
    return done


def stored(server) -> set[str]:
    keys = Api(server.url, MANAGEMENT).get("/v1/kv/app/?keys").json()
    return {k.removeprefix("app/celery-task-meta-") for k in keys}


def test_ls_says_in_one_line_that_the_tokens_acls_hid_results(server):
    listed = cli(server, "ls", "-o", "ids")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == VISIBLE
    assert listed.stderr == f"{HID}: this covers only what it may read\n"
    full = cli(server, "ls", "-o", "ids", token=FULL)  # nothing hidden: nothing said
    assert (full.stdout.split(), full.stderr) == (HIDDEN + VISIBLE, "")


def test_stats_exits_5_on_a_partial_view_unless_partial_ok(server):
    partial = cli(server, "stats", "-o", "json")
    assert partial.returncode == EXIT_PARTIAL
    assert json.loads(partial.stdout)["results"] == len(VISIBLE)
    assert partial.stderr == (
        f"{HID}: this covers only what it may read (exit 5; --partial-ok if that is intended)\n"
    )
    accepted = cli(server, "stats", "-o", "prometheus", "--partial-ok")
    assert accepted.returncode == 0, accepted.stderr
    assert 'consul_results_results{prefix="app",state="SUCCESS"} 2' in accepted.stdout
    assert accepted.stderr == f"{HID}: this covers only what it may read\n"
    assert cli(server, "stats", "-o", "json", token=FULL).returncode == 0


def test_purge_and_its_dry_run_exit_5_and_delete_only_what_the_token_reads(server):
    dry = cli(server, "purge", "--dry-run", "--json")
    assert dry.returncode == EXIT_PARTIAL
    assert json.loads(dry.stdout)["matched"] == len(VISIBLE)
    assert dry.stderr.startswith(HID) and len(dry.stderr.splitlines()) == 1
    purged = cli(server, "purge", "--yes", "--json")
    assert purged.returncode == EXIT_PARTIAL
    assert json.loads(purged.stdout)["deleted"] == len(VISIBLE)
    assert stored(server) == set(HIDDEN)
    again = cli(server, "purge", "--yes", "--json", "--partial-ok")
    assert (again.returncode, json.loads(again.stdout)["matched"]) == (0, 0)
    assert again.stderr == f"{HID}: this covers only what it may read\n"


def test_rm_says_it(server):
    removed = cli(server, "rm", VISIBLE[0], "--yes")
    assert removed.returncode == 0, removed.stderr
    assert removed.stderr == f"{HID}: this covers only what it may read\n"
    assert stored(server) == {VISIBLE[1], *HIDDEN}


def test_sessions_gc_keeps_a_session_that_may_hold_hidden_results(server):
    """Celery's built-in backend names a session after its one key; the token cannot see
    that key, so the session looks idle, and destroying it would delete the result."""
    root = Api(server.url, MANAGEMENT)
    session = root.session(Name="celery-task-meta-hidden-builtin", Behavior="delete", TTL="3600s")
    key = "/v1/kv/app/celery-task-meta-hidden-builtin"
    assert root.put(key, b"{}", params={"acquire": session}).json() is True
    gc = cli(server, "sessions", "gc", "--yes")
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout == "destroyed 0 idle session(s)\n"
    assert gc.stderr == f"{HID}: this covers only what it may read\n"
    assert root.entry(key.removeprefix("/v1/kv/")) is not None
    full = cli(server, "sessions", "gc", "--yes", token=FULL)  # it sees the key: not idle
    assert (full.stdout, full.stderr) == ("destroyed 0 idle session(s)\n", "")
    listed = cli(server, "sessions", "ls", "-o", "json")
    assert listed.returncode == 0 and listed.stderr.startswith(HID)


def test_a_session_list_the_tokens_acls_filtered_is_said_too(server):
    listed = cli(server, "sessions", "ls", "--all", "-o", "json", token=NO_SESSIONS)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []  # the results' session is on a node it may not read
    assert listed.stderr == f"{HID}: this covers only what it may read\n"


def test_without_a_token_on_a_deny_agent_results_may_be_hidden(server):
    listed = cli(server, "ls", "-o", "ids", token=None)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == (
        "consul-results: warning: no token was sent and the agent's ACLs deny by default, so "
        "results under app/ may be hidden (Consul tells only a token what it hid): give --token "
        "or --token-file\n"
    )
    assert cli(server, "stats", "-o", "json", token=None).returncode == 0  # said, not failed


def test_retry_state_says_it(server, tmp_path):
    env = dict(
        os.environ,
        E2E_BACKEND_URL=f"consulresults://{server.address}/app",
        E2E_BROKER_DIR=str(tmp_path / "broker"),
        E2E_CONSUL_TOKEN=PARTIAL,
        PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("CELERY_APP", None)
    dry = run_cli("retry", "--state", "FAILURE", "--dry-run", "-A", "e2e_app", env=env, cwd=TESTS)
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr.splitlines()[0] == f"{HID}: this covers only what it may read"
    assert PARTIAL not in dry.stdout + dry.stderr


def test_watch_says_it_once_its_first_round_is_filtered(server):
    command = [*CONSUL_RESULTS, "watch", "--http-addr", server.address, "--prefix", "app"]
    watch = subprocess.Popen(
        [*command, "--token", PARTIAL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    guard = threading.Timer(120, watch.terminate)  # should the line never come: EOF, a failure
    guard.start()
    try:
        line = watch.stderr.readline()
        while line and not line.startswith("consul-results: warning"):
            line = watch.stderr.readline()
        assert line == f"{HID}: this covers only what it may read\n"
    finally:
        guard.cancel()
        watch.terminate()
        watch.wait(timeout=30)


def test_the_backends_cleanup_logs_a_filtered_listing(server, caplog):
    app = backend_app(server, PARTIAL)
    with caplog.at_level(logging.WARNING, logger="consulresults.backend"):
        assert app.backend.cleanup() == 0
    app.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "cleanup: the token's ACLs hid some results under app/ from Consul's listing: "
        "expired results hidden from it were not deleted"
    ]
    full = backend_app(server, FULL)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consulresults.backend"):
        full.backend.cleanup()
    full.close()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
