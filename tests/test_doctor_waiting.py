"""``consul-results doctor`` on pushed waiting, over real HTTP: whether this token's waiters can
be pushed results (a waiting session, a registration and a doorbell under
``<prefix>/consulresults-waiting/``) and whether its writers can push them (read the
registrations, ring the doorbells); each failure says what it costs and what to grant, warns
without failing the run, and the probe leaves nothing behind.

The ACL cases need dedicated dev servers (skipped when CONSUL_HTTP_ADDR names a real agent);
the first test runs on a real agent as well."""

from __future__ import annotations

import pytest
from conftest import Api
from typer.testing import CliRunner

from consulresults.cli import app
from consulresults.devserver import AclConfig

WAITER, WRITER = "pushed waiting (waiter)", "pushed waiting (writer)"
MANAGEMENT = "root-mgmt"
WAITING = "myapp/consulresults-waiting/"
RESULTS = {"myapp/": "write"}
SESSIONS = {"": "write"}
TOKENS = {
    "full": {"key_prefix": RESULTS, "session_prefix": SESSIONS},
    "results-only": {"key_prefix": {**RESULTS, WAITING: "deny"}, "session_prefix": SESSIONS},
    "no-read-registrations": {
        "key_prefix": {**RESULTS, f"{WAITING}r/": "deny"},
        "session_prefix": SESSIONS,
    },
    "worker": {"key_prefix": {**RESULTS, f"{WAITING}r/": "read"}, "session_prefix": SESSIONS},
}


def checks(result) -> dict[str, str]:
    """The pushed-waiting lines of doctor's output, by check name: ``ok   ...``/``warn ...``."""
    found = {}
    for line in result.stdout.splitlines():
        for name in (WAITER, WRITER):
            if line[5:].startswith(f"{name}:"):
                found[name] = line
    assert set(found) == {WAITER, WRITER}, result.stdout
    return found


def leftovers(api: Api, prefix: str) -> tuple[list[str], list[str]]:
    """Keys under the prefix's waiting directory, and the sessions doctor's probes create."""
    keys = api.get(f"/v1/kv/{prefix}/consulresults-waiting/", params={"keys": "1"})
    assert keys.status_code in (200, 404), keys.text
    sessions = api.get("/v1/session/list")
    assert sessions.status_code == 200, sessions.text
    probes = ("consul-results-waiting:doctor", "consul-results:doctor")
    return (
        keys.json() if keys.status_code == 200 else [],
        [s["ID"] for s in sessions.json() if s["Name"] in probes],
    )


@pytest.fixture
def acl_server(consul_dev_server_factory):
    acl = AclConfig(enabled=True, default_policy="deny", management_token=MANAGEMENT, tokens=TOKENS)
    return consul_dev_server_factory(acl=acl)


def doctor(server, token: str):
    args = ["doctor", "--http-addr", server.address, "--prefix", "myapp", "--token", token]
    return CliRunner().invoke(app, args)


def test_a_working_setup_is_pushed_both_ways_and_keeps_nothing(cli, consul_server, consul_prefix):
    result = cli("doctor")
    assert result.exit_code == 0, result.output
    found = checks(result)
    assert found[WAITER].startswith(f"ok   {WAITER}: created a waiting session"), found
    assert "waiters with this token are pushed results" in found[WAITER]
    assert found[WRITER].startswith(f"ok   {WRITER}: a writing txn's get-tree"), found
    assert "pushed to waiters" in found[WRITER]
    api = Api(consul_server.url, consul_server.token)
    assert leftovers(api, consul_prefix.rstrip("/")) == ([], [])


def test_a_full_rights_token_passes_both_checks(acl_server):
    result = doctor(acl_server, "full")
    assert result.exit_code == 0, result.output
    found = checks(result)
    assert found[WAITER].startswith("ok   ") and found[WRITER].startswith("ok   "), found
    assert "FAIL" not in result.stdout and "warn" not in result.stdout


def test_a_token_without_the_waiting_directory_polls_and_is_told_what_to_grant(acl_server):
    result = doctor(acl_server, "results-only")
    assert result.exit_code == 0, result.output  # results work: the checks warn, not fail
    assert "FAIL" not in result.stdout
    waiter = checks(result)[WAITER]
    assert waiter.startswith(f"warn {WAITER}: the token may not lock a registration"), waiter
    assert "poll every 0.5 s (0.5 s latency)" in waiter
    assert f'grant key:write on {WAITING} (key_prefix "{WAITING}" {{ policy = "write" }})' in (
        waiter
    )
    writer = checks(result)[WRITER]
    assert writer.startswith(f"warn {WRITER}:"), writer
    assert "only through their 5 s safety net" in writer
    assert f'key_prefix "{WAITING}r/" {{ policy = "read" }}' in writer
    assert f'key_prefix "{WAITING}d/" {{ policy = "write" }}' in writer
    assert "results-only" not in result.stdout  # never the token


def test_a_token_that_may_not_read_registrations_fails_the_writer_check(acl_server):
    """Consul filters a get-tree's answer silently: the writer would ring nobody."""
    writer = checks(doctor(acl_server, "no-read-registrations"))[WRITER]
    assert writer.startswith(f"warn {WRITER}: a get-tree of {WAITING}r/ returns nothing"), writer
    assert "reach other processes' waiters only through their 5 s safety net" in writer
    assert f'grant key:read on {WAITING}r/ (key_prefix "{WAITING}r/" {{ policy = "read" }})' in (
        writer
    )
    assert "ring doorbells" not in writer  # it may: the doorbells are not the problem


def test_a_worker_token_that_reads_registrations_passes_the_writer_check(acl_server):
    """Reading registrations and ringing is all a writer needs, even if it may not register."""
    found = checks(doctor(acl_server, "worker"))
    assert found[WRITER].startswith(f"ok   {WRITER}:"), found
    assert found[WAITER].startswith(f"warn {WAITER}:"), found


def test_the_probe_leaves_nothing_behind_whatever_the_token(acl_server):
    api = Api(acl_server.url, MANAGEMENT)
    for token in TOKENS:
        doctor(acl_server, token)
        assert leftovers(api, "myapp") == ([], []), token
    assert api.get("/v1/kv/myapp/", params={"keys": "1"}).status_code == 404


def test_the_probe_leaves_nothing_behind_when_a_step_fails(consul_dev_server_factory):
    """The ring's txn fails after the registration landed: the session still goes, and the keys
    it held with it."""
    from consulresults.devserver.faults import FaultRule

    server = consul_dev_server_factory()
    # txns: write the prefix, register, read the registrations, ring
    server.faults.add(FaultRule("error", count=1, after=3, path_prefix="/v1/txn"))
    result = CliRunner().invoke(app, ["doctor", "--http-addr", server.address, "--prefix", "myapp"])
    assert result.exit_code == 0, result.output
    found = checks(result)
    assert found[WAITER].startswith("ok   "), found
    assert found[WRITER].startswith(f"warn {WRITER}: Consul answered"), found
    assert leftovers(Api(server.url), "myapp") == ([], [])


def test_a_consul_without_get_or_empty_polls(consul_dev_server_factory):
    server = consul_dev_server_factory(consul_version="1.13.9")
    result = CliRunner().invoke(app, ["doctor", "--http-addr", server.address, "--prefix", "myapp"])
    waiter = checks(result)[WAITER]
    assert waiter.startswith(f"warn {WAITER}: this Consul has no get-or-empty (older than 1.14)")
    assert "upgrade Consul to 1.14 or later" in waiter
    assert leftovers(Api(server.url), "myapp") == ([], [])
