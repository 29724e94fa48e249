"""Shared fixtures: the project's tests run on the dev server, or on a real agent when
CONSUL_HTTP_ADDR is set (see consulresults.pytest_plugin)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

# TTL tests need short sessions; a real agent can be configured the same way
# (session_ttl_min), and CONSUL_SESSION_TTL_MIN tells the tests what it allows.
SESSION_TTL_MIN_S = float(os.environ.get("CONSUL_SESSION_TTL_MIN", "1"))


CONSUL_RESULTS = [sys.executable, "-m", "consulresults"]  # the CLI, as a real process


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``consul-results ARGS`` as a real process: piped (no terminal), empty stdin."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [*CONSUL_RESULTS, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="session")
def consul_dev_server_options() -> dict:
    return {"session_ttl_min": f"{SESSION_TTL_MIN_S:g}s"}


class Api:
    """Plain HTTP to Consul, without client-library conveniences, to see the wire as it is."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        if token:
            self.http.headers["X-Consul-Token"] = token

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, data: bytes | str | None = None, **kwargs) -> requests.Response:
        return self.request("PUT", path, data=data, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def entry(self, key: str) -> dict | None:
        response = self.get(f"/v1/kv/{key}")
        return response.json()[0] if response.status_code == 200 else None

    def session(self, **body) -> str:
        response = self.put("/v1/session/create", json=body)
        assert response.status_code == 200, response.text
        return response.json()["ID"]


@pytest.fixture
def api(consul_server) -> Api:
    return Api(consul_server.url, consul_server.token)


def backend_url(server, prefix: str, scheme: str = "consulresults") -> str:
    url = f"{scheme}://{server.address}/{prefix.rstrip('/')}"
    return url + ("?scheme=https" if server.scheme == "https" and scheme != "consul" else "")


@pytest.fixture
def make_app(consul_server, consul_prefix):
    """``make(**conf)``: a Celery app whose result backend is ours, on the test prefix."""
    from celery import Celery

    apps = []

    def make(backend: str | None = None, **conf):
        app = Celery("tests", set_as_current=False)
        settings = {
            "result_backend": backend or backend_url(consul_server, consul_prefix),
            "consulresults_token": consul_server.token,
            "result_expires": 3600,
        }
        app.conf.update({**settings, **conf})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def builtin_backend(consul_server, consul_prefix):
    """Celery's own ConsulBackend on the same prefix (the reference we replace)."""
    from celery import Celery

    app = Celery("builtin", set_as_current=False)
    app.conf.update(
        result_backend=backend_url(consul_server, consul_prefix, "consul"), result_expires=3600
    )
    yield app.backend
    app.close()


@pytest.fixture
def cli(consul_server, consul_prefix):
    """Run ``consul-results`` in-process (Typer's runner) against the test prefix."""
    from typer.testing import CliRunner

    from consulresults.cli import app

    runner = CliRunner()
    url = backend_url(consul_server, consul_prefix)

    def run(*args: str, input: str | None = None):
        extra = ["--backend-url", url]
        if consul_server.token:
            extra += ["--token", consul_server.token]
        return runner.invoke(app, [*args, *extra], input=input)

    return run


@contextlib.contextmanager
def celery_worker(
    url: str,
    workdir: Path,
    token: str | None = None,
    loglevel: str = "INFO",
    conf: dict | None = None,
    concurrency: int = 2,
):
    """A real ``celery worker`` (prefork, ``concurrency`` processes) for ``tests/e2e_app.py``,
    with a filesystem broker in ``workdir``; yields the client app (``.log``: the worker's log)."""
    from e2e_app import make_app

    here = Path(__file__).resolve().parent
    mark_dir = workdir / "marks"
    mark_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        E2E_BACKEND_URL=url,
        E2E_BROKER_DIR=str(workdir / "broker"),
        E2E_MARK_DIR=str(mark_dir),
        PYTHONPATH=str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if token:
        env["E2E_CONSUL_TOKEN"] = token
    env["E2E_CONF"] = json.dumps(conf or {})
    log = workdir / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "e2e_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                loglevel,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"e2e-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=here,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    app = make_app(url, str(workdir / "broker"), token, conf)
    app.mark_dir, app.log = mark_dir, log
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "worker did not start in 60 s"
            time.sleep(0.1)
        yield app
    finally:
        process.terminate()
        process.wait(timeout=30)
        app.close()
