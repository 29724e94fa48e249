"""Security (issue 5, first part): a token limited to one prefix on a deny-by-default server."""

from __future__ import annotations

import json
import subprocess

import pytest
from celery import states
from conftest import celery_worker, run_cli

from consulresults.devserver import DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

pytestmark = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)
SECRET = "s3cr3t-0f-the-app-7d21"
RULES = {
    "key_prefix": {"app/": "write"},
    "session_prefix": {"": "write"},
    "agent_prefix": {"": "read"},
}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("acl") / "tokens.json"
    tokens.write_text(json.dumps({SECRET: RULES}))
    with DevServerProcess(
        "--acl-default-policy",
        "deny",
        "--acl-management-token",
        "root-mgmt",
        "--acl-tokens-file",
        str(tokens),
    ) as server:
        yield server


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, "--http-addr", server.address, "--token", SECRET)


@pytest.mark.e2e
def test_worker_at_debug_works_inside_the_prefix_and_never_logs_the_token(acl_server, tmp_path):
    url = f"consulresults://:{SECRET}@{acl_server.address}/app"
    with celery_worker(url, tmp_path, loglevel="DEBUG") as app:
        assert app.send_task("e2e.add", (20, 22)).get(timeout=60) == 42
        with pytest.raises(ValueError, match="no secrets here"):
            app.send_task("e2e.fail", ("no secrets here",)).get(timeout=60)
        log = app.log.read_text()
        assert "DEBUG" in log  # the worker really logged at DEBUG
        assert SECRET not in log
        assert SECRET not in app.backend.as_uri()


def test_cli_inside_works_outside_is_denied_without_showing_the_token(acl_server):
    inside = cli(acl_server, "ls", "--prefix", "app", "-o", "json")
    assert inside.returncode == 0, inside.stderr
    denied = cli(acl_server, "ls", "--prefix", "other", "-o", "json")
    assert denied.returncode == 0  # lists are filtered, not refused (Consul semantics)
    assert json.loads(denied.stdout) == []
    write = cli(acl_server, "purge", "--prefix", "other", "--yes")
    assert write.returncode == 0  # nothing readable there, so nothing to delete
    get = cli(acl_server, "get", "x", "--prefix", "other")
    assert get.returncode == 77
    assert "permission denied" in get.stderr
    doctor = cli(acl_server, "doctor", "--prefix", "other")
    assert doctor.returncode == 77
    for result in (inside, denied, write, get, doctor):
        assert SECRET not in result.stdout + result.stderr


def test_backend_outside_its_prefix_is_denied_and_touches_nothing(acl_server):
    import consul.base
    from celery import Celery

    app = Celery("outside", set_as_current=False)
    app.conf.update(
        result_backend=f"consulresults://{acl_server.address}/other",
        consulresults_token=SECRET,
        result_expires=3600,
    )
    with pytest.raises(consul.base.ACLPermissionDenied) as denied:
        app.backend.store_result("t", 1, states.SUCCESS)
    assert SECRET not in str(denied.value)
    keys = subprocess.run(
        ["curl", "-s", "-H", "X-Consul-Token: root-mgmt", f"{acl_server.url}/v1/kv/?keys"],
        capture_output=True,
        text=True,
    )
    assert not any(k.startswith("other/") for k in json.loads(keys.stdout or "[]"))
