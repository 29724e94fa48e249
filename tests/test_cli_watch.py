"""``consul-results watch`` as a real process: results as they are stored, one line each, from
Consul blocking queries (not polling), filtered, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading

import pytest
from celery import states
from conftest import CONSUL_RESULTS, backend_url


class Watcher:
    """A running ``watch`` whose stdout lines arrive on a queue."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*CONSUL_RESULTS, "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            # Ctrl-C as at a terminal, even when these tests run in the background (a shell
            # starts background jobs with SIGINT ignored, and Python keeps it ignored)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []  # all of stderr, read as it comes (a full pipe would block)
        begun = self.process.stderr.readline()  # written once the first round is in
        assert "watching" in begun, begun
        threading.Thread(target=self._pump, daemon=True).start()
        self._errors_read = threading.Thread(target=self._pump_errors, daemon=True)
        self._errors_read.start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def _pump_errors(self) -> None:
        for line in self.process.stderr:
            self.errors.append(line)

    def next(self, timeout: float = 15.0) -> str:
        return self.lines.get(timeout=timeout)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stderr = "".join(self.errors)
            raise AssertionError(f"watch did not stop; its stderr: {stderr}") from None
        self._errors_read.join(15)  # its stderr read to the end
        return status


@pytest.fixture
def watch(consul_server, consul_prefix):
    started = []

    def start(*args: str) -> Watcher:
        extra = ["--backend-url", backend_url(consul_server, consul_prefix), "--interval", "0.2"]
        if consul_server.token:
            extra += ["--token", consul_server.token]
        watcher = Watcher(*args, *extra)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        if watcher.process.poll() is None:
            watcher.process.kill()


def test_results_as_they_are_stored_and_ctrl_c(make_app, watch):
    backend = make_app().backend
    backend.store_result("before", 0, states.SUCCESS)  # stored before: not printed
    watcher = watch("-o", "ndjson")
    backend.store_result("w1", None, states.STARTED)
    first = json.loads(watcher.next())
    assert (first["id"], first["state"]) == ("w1", "STARTED")
    backend.store_result("w1", 42, states.SUCCESS)  # a state change is a line too
    changed = json.loads(watcher.next())
    assert (changed["id"], changed["state"], changed["result"]) == ("w1", "SUCCESS", 42)
    backend.store_result("w2", ZeroDivisionError("division by zero"), states.FAILURE)
    failed = json.loads(watcher.next())
    assert failed["state"] == "FAILURE"
    assert failed["result"] == "ZeroDivisionError: division by zero"
    assert watcher.stop() == 130
    assert "Traceback" not in "".join(watcher.errors)
    assert watcher.lines.empty()


def test_filters_and_tab_separated_lines(make_app, watch):
    backend = make_app().backend
    watcher = watch("--state", "FAILURE")
    assert watcher.next().split("\t") == ["date_done", "state", "task", "id", "result\n"]
    backend.store_result("ok", 1, states.SUCCESS)
    backend.store_result("bad", KeyError("k"), states.FAILURE)
    row = watcher.next().rstrip("\n").split("\t")
    assert row[1:4] == ["FAILURE", "-", "bad"]
    assert watcher.stop() == 130
    assert watcher.lines.empty()  # the SUCCESS was filtered out


def test_json_cannot_stream(consul_server, consul_prefix):
    from conftest import run_cli

    result = run_cli(
        "watch", "-o", "json", "--backend-url", backend_url(consul_server, consul_prefix)
    )
    assert result.returncode == 2
    assert "use ndjson" in result.stderr


def test_a_prefix_over_max_keys_is_refused_in_one_line(make_app, consul_server, consul_prefix):
    """Every round moves the whole prefix from the leader: past --max-keys, watch stops."""
    from conftest import run_cli

    backend = make_app().backend
    for i in range(3):
        backend.store_result(f"many-{i}", i, states.SUCCESS)
    args = ["watch", "--max-keys", "2", "--backend-url", backend_url(consul_server, consul_prefix)]
    result = run_cli(*args, *(["--token", consul_server.token] if consul_server.token else []))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "consul-results: the prefix holds 3 keys, over --max-keys 2: every round of watch would "
        "move them all from the Consul leader (narrow the prefix, raise --max-keys, or run ls "
        "--newer-than from cron)"
    ]
