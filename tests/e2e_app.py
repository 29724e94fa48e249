"""The Celery app of the end-to-end tests; the worker imports it with ``-A e2e_app``.

Configured from the environment so the worker process and the test agree: E2E_BACKEND_URL,
E2E_BROKER_DIR (kombu's filesystem transport, no server needed) or CELERY_BROKER_URL, and
E2E_MARK_DIR where chord bodies record each run (and ``e2e.gate`` waits for the test).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from celery import Celery, group

from consulresults.demo import filesystem_broker


def make_app(
    backend_url: str, broker_dir: str, token: str | None = None, extra: dict | None = None
) -> Celery:
    app = Celery("e2e", set_as_current=False)
    broker_url = os.environ.get("CELERY_BROKER_URL")
    app.conf.update(
        {"broker_url": broker_url} if broker_url else filesystem_broker(broker_dir),
        result_backend=backend_url,
        consulresults_token=token,
        result_expires=3600,
        result_extended=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    app.conf.update(extra or {})
    register_tasks(app)
    return app


def register_tasks(app: Celery) -> None:
    @app.task(name="e2e.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="e2e.fail", shared=False)
    def fail(message):
        raise ValueError(message)

    @app.task(name="e2e.sleep", shared=False)
    def sleep(seconds, value=None):
        time.sleep(seconds)
        return value

    @app.task(name="e2e.gate", shared=False)
    def gate(name, value=None):
        """Marks ``gated-NAME`` (a test waits for it: the task is running, its STARTED stored),
        then returns ``value`` once the test opens the gate (a file ``open-NAME``)."""
        mark_dir = Path(os.environ["E2E_MARK_DIR"])
        (mark_dir / f"gated-{name}").write_text(str(value))
        deadline = time.monotonic() + 90
        while not (mark_dir / f"open-{name}").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {name} never opened")
            time.sleep(0.01)
        return value

    @app.task(name="e2e.until", shared=False)
    def until(when, value=None):
        time.sleep(max(0.0, when - time.time()))  # parts given one instant finish together
        return value

    @app.task(name="e2e.flaky", shared=False, bind=True, max_retries=5, default_retry_delay=0)
    def flaky(self, failures):
        if self.request.retries < failures:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"), countdown=0)
        return self.request.retries

    @app.task(name="e2e.slow_flaky", shared=False, bind=True, max_retries=5)
    def slow_flaky(self, seconds, failures):
        """Sleeps ``seconds`` in every attempt and retries the first ``failures``: the last
        attempt alone ran ``seconds``, all of them together ``(failures + 1) * seconds``."""
        time.sleep(seconds)
        if self.request.retries < failures:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"), countdown=0)
        return self.request.retries

    @app.task(name="e2e.progress", shared=False, bind=True)
    def progress(self, steps):
        for step in range(steps):
            self.update_state(state="PROGRESS", meta={"step": step})
            time.sleep(0.05)
        return steps

    @app.task(name="e2e.fail_once", shared=False)
    def fail_once(name, value=None):
        """Fails the first time it runs for ``name`` (leaving ``failed-NAME``), then returns
        ``value``: what a retry of a failure that went away looks like."""
        first = Path(os.environ["E2E_MARK_DIR"], f"failed-{name}")
        if not first.exists():
            first.write_text("")
            raise RuntimeError(f"first run of {name}")
        mark("ran", name)
        return value

    @app.task(name="e2e.late_fail", shared=False, acks_late=True)
    def late_fail(message):
        raise ValueError(message)

    @app.task(name="e2e.huge", shared=False)
    def huge(size):
        return "x" * size

    @app.task(name="e2e.identity", shared=False)
    def identity(value):
        return value

    @app.task(name="e2e.flatsum", shared=False)
    def flatsum(values):
        total = _flat_sum(values)
        mark("body", total)
        return total

    @app.task(name="e2e.replace_with", shared=False, bind=True)
    def replace_with(self, kind, value):
        step = app.signature("e2e.add", (value, 0), immutable=True)
        plus = app.signature("e2e.add", (1,))
        replacement = {
            "task": step,
            "chain": step | plus,
            "group": group(step, app.signature("e2e.add", (value, 1), immutable=True)),
        }[kind]
        return self.replace(replacement)

    @app.task(name="e2e.errback", shared=False)
    def errback(request, exc, traceback):
        mark("errback", f"{request.id} {type(exc).__name__}")

    @app.task(name="e2e.tsum", shared=False)
    def tsum(values):
        mark("body", sum(values))
        return sum(values)


def _flat_sum(values: list) -> int:
    return sum(_flat_sum(v) if isinstance(v, list) else v for v in values)


def mark(kind: str, text: object) -> None:
    """Leave a file in E2E_MARK_DIR, so a test can count how often something ran."""
    mark_dir = os.environ.get("E2E_MARK_DIR")
    if mark_dir:
        Path(mark_dir, f"{kind}-{uuid.uuid4().hex}").write_text(str(text))


app = make_app(  # the worker's: E2E_CONF holds extra Celery settings as JSON
    os.environ.get("E2E_BACKEND_URL", "consulresults://"),
    os.environ.get("E2E_BROKER_DIR", "/tmp/consul-results-e2e"),
    os.environ.get("E2E_CONSUL_TOKEN"),
    json.loads(os.environ.get("E2E_CONF", "{}")),
)
