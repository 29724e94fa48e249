"""Configure once: ``CELERY_APP``, ``CONSUL_RESULTS_BACKEND_URL`` and ``CONSUL_RESULTS_PREFIX``
stand in for ``-A``, ``--backend-url`` and ``--prefix``; flags beat them; a prefix given on its own
beats a backend URL's path, wherever each came from. Commands that name task ids work at the root
prefix, where Celery's built-in backend puts results by default. All as real processes."""

from __future__ import annotations

import os
import uuid

import pytest
from celery import states
from conftest import backend_url, run_cli

NAMES = ("CELERY_APP", "CONSUL_RESULTS_BACKEND_URL", "CONSUL_RESULTS_PREFIX", "CONSUL_HTTP_ADDR")


@pytest.fixture
def stored(make_app):
    task_id = f"env-{uuid.uuid4().hex[:8]}"
    make_app().backend.store_result(task_id, "configured", states.SUCCESS)
    return task_id


@pytest.fixture
def environ(consul_server):
    """``environ(**variables)``: this process's environment without the variables under test,
    plus the server's token, plus ``variables``."""

    def make(**variables: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in NAMES}
        if consul_server.token:
            env["CONSUL_HTTP_TOKEN"] = consul_server.token
        return env | variables

    return make


def found(result, task_id: str) -> bool:
    return result.returncode == 0 and task_id in result.stdout and "configured" in result.stdout


def test_backend_url_from_the_environment(consul_server, consul_prefix, stored, environ):
    env = environ(CONSUL_RESULTS_BACKEND_URL=backend_url(consul_server, consul_prefix))
    assert found(run_cli("get", stored, env=env), stored)


def test_prefix_from_the_environment(consul_server, consul_prefix, stored, environ):
    env = environ(CONSUL_HTTP_ADDR=consul_server.address, CONSUL_RESULTS_PREFIX=consul_prefix)
    assert found(run_cli("get", stored, env=env), stored)


def test_flags_beat_the_environment(consul_server, consul_prefix, stored, environ):
    env = environ(CONSUL_HTTP_ADDR=consul_server.address, CONSUL_RESULTS_PREFIX="somewhere-else")
    assert not found(run_cli("get", stored, env=env), stored)
    assert found(run_cli("get", stored, "--prefix", consul_prefix, env=env), stored)


def test_a_prefix_beats_a_backend_urls_path_wherever_each_came_from(
    consul_server, consul_prefix, stored, environ
):
    elsewhere = backend_url(consul_server, "somewhere-else")
    env = environ(CONSUL_RESULTS_BACKEND_URL=elsewhere)
    assert found(run_cli("get", stored, "--prefix", consul_prefix, env=env), stored)
    env = environ(CONSUL_RESULTS_PREFIX=consul_prefix)
    assert found(run_cli("get", stored, "--backend-url", elsewhere, env=env), stored)


def test_celery_app_from_the_environment(consul_server, consul_prefix, stored, environ, tmp_path):
    (tmp_path / "envapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('envapp', backend={backend_url(consul_server, consul_prefix)!r})\n"
    )
    env = environ(CELERY_APP="envapp", PYTHONPATH=str(tmp_path))
    assert found(run_cli("get", stored, env=env, cwd=tmp_path), stored)


def test_the_workers_start_up_warning_stays_out_of_the_cli(
    consul_server, consul_prefix, stored, environ, tmp_path
):
    """An app whose results only a cleanup removes warns its workers at start-up; the CLI
    (run from cron every few minutes) stays quiet: ``doctor`` says it when asked."""
    (tmp_path / "longapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('longapp', backend={backend_url(consul_server, consul_prefix)!r})\n"
        "app.conf.result_expires = 7 * 86400\n"
    )
    env = environ(PYTHONPATH=str(tmp_path))
    result = run_cli("get", stored, "-A", "longapp", env=env, cwd=tmp_path)
    assert found(result, stored)
    assert "only a cleanup removes" not in result.stderr
    doctor = run_cli("doctor", "-A", "longapp", env=env, cwd=tmp_path)
    assert "only a cleanup removes results" in doctor.stdout


def test_an_app_named_by_a_flag_is_never_redirected_by_the_environment(
    consul_server, consul_prefix, stored, environ, tmp_path
):
    """``-A`` beats CONSUL_RESULTS_BACKEND_URL: a variable left exported in a shell must not
    point ``purge -A prod.celery`` at another Consul."""
    (tmp_path / "envapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('envapp', backend={backend_url(consul_server, consul_prefix)!r})\n"
    )
    elsewhere = "consulresults://127.0.0.1:9/elsewhere"  # nothing listens there
    env = environ(CONSUL_RESULTS_BACKEND_URL=elsewhere, PYTHONPATH=str(tmp_path))
    assert found(run_cli("get", stored, "-A", "envapp", env=env, cwd=tmp_path), stored)
    env = environ(
        CONSUL_RESULTS_BACKEND_URL=elsewhere, CELERY_APP="envapp", PYTHONPATH=str(tmp_path)
    )
    assert run_cli("get", stored, env=env, cwd=tmp_path).returncode == 69  # both from the env


def test_id_commands_work_at_the_root_prefix(consul_server, make_app, environ, api):
    root = f"consulresults://{consul_server.host}:{consul_server.port}/"
    backend = make_app(root).backend
    ids = [f"root-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for task_id in ids:
        backend.store_result(task_id, "configured", states.SUCCESS)
    env = environ(CONSUL_HTTP_ADDR=consul_server.address)
    try:
        assert found(run_cli("get", ids[0], env=env), ids[0])
        assert run_cli("inspect", ids[0], env=env).returncode == 0
        assert run_cli("rm", ids[0], "--yes", env=env).returncode == 0
        assert run_cli("expire", ids[1], "--yes", env=env).returncode == 0
        assert [api.entry(f"celery-task-meta-{i}") is None for i in ids] == [True, True, False]
        for broad in (["ls"], ["stats"], ["purge", "--yes"]):
            refused = run_cli(*broad, env=env)
            assert refused.returncode == 2, broad
            assert "refusing to work on an empty prefix" in refused.stderr
        assert api.entry(f"celery-task-meta-{ids[2]}") is not None
    finally:
        for task_id in ids:
            backend.forget(task_id)
