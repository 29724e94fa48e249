"""Every command as a real process, piped (no terminal): its exit status, and no colour codes."""

from __future__ import annotations

import subprocess

import pytest
from celery import states
from conftest import backend_url, run_cli


@pytest.fixture
def run(consul_server, consul_prefix, make_app):
    backend = make_app().backend
    backend.store_result("sp-ok", 1, states.SUCCESS)
    backend.store_result("sp-gone", 2, states.SUCCESS)
    session = backend.operations().fetch("sp-ok").session

    def run(*args: str) -> subprocess.CompletedProcess:
        args = [a.replace("SESSION", session) for a in args]
        cmd = [*args, "--backend-url", backend_url(consul_server, consul_prefix)]
        if consul_server.token:
            cmd += ["--token", consul_server.token]
        return run_cli(*cmd)

    return run


@pytest.mark.parametrize(
    "args,code",
    [
        (("get", "sp-ok"), 0),
        (("get", "nope"), 3),
        (("inspect", "sp-ok"), 0),
        (("inspect", "nope"), 3),
        (("ls",), 0),
        (("ls", "--state", "REVOKED", "--detailed-exitcode"), 3),
        (("stats",), 0),
        (("sessions", "ls"), 0),
        (("sessions", "show", "SESSION"), 0),
        (("doctor",), 0),
        (("rm", "sp-gone"), 2),
        (("rm", "sp-gone", "--yes"), 0),
        (("rm", "nope", "--yes"), 3),
        (("expire", "sp-gone"), 2),
        (("expire", "sp-gone", "--yes"), 0),
        (("purge", "--dry-run"), 0),
        (("purge", "--state", "REVOKED", "--yes", "--detailed-exitcode"), 3),
        (("sessions", "expire", "SESSION"), 2),
        (("sessions", "expire", "SESSION", "--yes"), 0),
        (("sessions", "gc", "--dry-run"), 0),
        (("ls", "--older-than", "whenever"), 2),
    ],
)
def test_command_exit_status_when_piped(run, args, code):
    result = run(*args)
    assert result.returncode == code, result.stderr
    assert "\x1b[" not in result.stdout + result.stderr
    if code not in (0, 3):
        assert len(result.stderr.strip().splitlines()) == 1


def test_an_unexpected_crash_shows_no_token(consul_server, consul_prefix, tmp_path):
    """A bug's traceback must not carry the token either (Typer shows locals by default)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import consulresults.operations as b\n"
        "def boom(self, *a, **k):\n"
        "    raise RuntimeError('simulated bug')\n"
        "b.ResultOperations.iter_results = boom\n"
    )
    import os

    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = run_cli(
        "ls",
        "--backend-url",
        backend_url(consul_server, consul_prefix),
        "--token",
        "leaky-token-4b1d",
        env=env,
    )
    assert result.returncode == 1
    assert "simulated bug" in result.stderr
    assert "leaky-token-4b1d" not in result.stdout + result.stderr
