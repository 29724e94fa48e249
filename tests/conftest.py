"""Shared fixtures: the project's tests run on the dev server, or on a real agent when
CONSUL_HTTP_ADDR is set (see consulresults.pytest_plugin)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
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
    api = Api(consul_server.url, consul_server.token)
    api.server = consul_server  # the dev server's counters, for tests that wait on them
    return api


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
    pool: str = "prefork",
    broker_dir: Path | None = None,
    own_session: bool = False,
):
    """A real ``celery worker`` (``pool``: prefork, threads or solo; ``concurrency`` processes
    or threads) for ``tests/e2e_app.py``,
    with a filesystem broker in ``workdir``; yields the client app (``.log``: the worker's log;
    ``.workdir``; ``.mark_dir``; :func:`worker_idle` waits on them). ``broker_dir``: another
    worker's broker, to share it (default: ``workdir/broker``; :func:`worker_idle` then sees
    no queued messages); ``own_session``: the worker and
    its pool in a process group of their own, ``.worker_pid`` its id, for ``os.killpg``."""
    from e2e_app import make_app

    here = Path(__file__).resolve().parent
    mark_dir = workdir / "marks"
    mark_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        E2E_BACKEND_URL=url,
        E2E_BROKER_DIR=str(broker_dir or workdir / "broker"),
        E2E_MARK_DIR=str(mark_dir),
        PYTHONPATH=str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if token:
        env["E2E_CONSUL_TOKEN"] = token
    env["E2E_CONF"] = json.dumps(conf or {})
    # kombu's filesystem transport moves a message it takes into the temporary directory before
    # reading it: one of the worker's own keeps that step in view of worker_idle
    env["TMPDIR"] = str(workdir / "taken")
    (workdir / "taken").mkdir(exist_ok=True)
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
                pool,
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
            start_new_session=own_session,
        )
    app = make_app(url, env["E2E_BROKER_DIR"], token, conf)
    app.mark_dir, app.log, app.workdir = mark_dir, log, workdir
    app.worker_pid = process.pid
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


# the worker's log lines that start or end a task: "Task NAME[ID] received", then one of
# "... succeeded in", "... raised unexpected", "... ignored", "... retry", ... or "Discarding
# revoked task: NAME[ID]"
_TASK_LINE = re.compile(
    r"^\[[^\]]*\] (?:Task [\w.]+\[(?P<id>[0-9a-f-]{36})\] (?P<what>\S+)"
    r"|Discarding revoked task: [\w.]+\[(?P<discarded>[0-9a-f-]{36})\])"
)


def _unfinished(log: str) -> list[str]:
    """Ids of the tasks the worker has received and not yet finished, per its log."""
    open_: Counter[str] = Counter()
    for line in log.splitlines():
        match = _TASK_LINE.match(line)
        if match is None:
            continue
        if match["discarded"]:
            open_[match["discarded"]] -= 1
        elif match["what"] == "received":
            open_[match["id"]] += 1
        else:
            open_[match["id"]] -= 1
    return sorted(+open_)


def _queued(workdir: Path) -> list[str]:
    """Messages for the worker's queue (``celery``) still in the broker, being written into
    it, or taken from it and not yet read (celery_worker's TMPDIR)."""
    return sorted(
        path.name
        for folder in (workdir / "broker" / "queue", workdir / "taken")
        if folder.is_dir()
        for path in folder.iterdir()
        if path.name.partition(".")[2].startswith("celery.msg")
    )


def worker_idle(app, timeout: float = 60) -> None:
    """Return once a :func:`celery_worker` is idle: every task it received has ended (its log
    says so) and no message for it waits in the broker. Whatever the ended tasks set off (a
    second chord body, an errback) has then run too, or will never run: a test asserting that
    something did not happen waits for this, not for a while. A message leaves the broker a
    moment before the worker logs it as received, so idleness counts once seen on two polls in
    a row with nothing logged in between."""
    deadline = time.monotonic() + timeout
    seen_idle_at = None
    while True:
        text = app.log.read_text()
        log = text[: text.rfind("\n") + 1]  # whole lines only
        unfinished, queued = _unfinished(log), _queued(app.workdir)
        if unfinished or queued:
            seen_idle_at = None
        elif seen_idle_at == len(log):
            return
        else:
            seen_idle_at = len(log)
        assert time.monotonic() < deadline, (
            f"worker not idle after {timeout} s: running {unfinished}, queued {queued}"
        )
        time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true (which is returned); fail, saying
    ``what`` was awaited, if it has not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)
    return value


def log_lines(app, text: str) -> int:
    """How many lines of a :func:`celery_worker`'s log contain ``text``."""
    return sum(text in line for line in app.log.read_text().splitlines())


def gated(app, value=None):
    """An ``e2e.gate`` signature for a :func:`celery_worker`: the task returns ``value`` once
    :func:`open_gate` opens it; and the gate's name."""
    name = uuid.uuid4().hex
    return app.signature("e2e.gate", (name, value), immutable=True), name


def wait_gated(app, name: str, timeout: float = 60) -> None:
    """Until the gated task runs (its STARTED state is stored by then)."""
    wait_until(lambda: Path(app.mark_dir, f"gated-{name}").exists(), timeout, f"gate {name}")


def open_gate(app, name: str) -> None:
    Path(app.mark_dir, f"open-{name}").write_text("")


@pytest.fixture
def requests_from(monkeypatch):
    """``requests_from(predicate)``: a list that gets (method, path) of every request sent to
    Consul from then on by a thread for which ``predicate(thread)`` is true (the requests go
    out as ever; this only watches which thread sends them)."""
    import threading

    from consulresults.connection import Transport

    real = Transport.send

    def watch(predicate):
        seen: list[tuple[str, str]] = []

        def send(transport, method, path, *args, **kwargs):
            if predicate(threading.current_thread()):
                seen.append((method, path))
            return real(transport, method, path, *args, **kwargs)

        monkeypatch.setattr(Transport, "send", send)
        return seen

    return watch
