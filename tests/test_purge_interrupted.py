"""A ``consul-results purge`` stopped midway (SIGINT, SIGTERM, Consul killed), then run again:
the second run finishes the job, nothing outside the filter is ever deleted, and each run's
summary says exactly what it did (and what it cannot know: deletions sent without an answer).

The purge runs as a real process against a dev server in its own process, slowed down (50 ms
per ``/v1/txn``) so that the interruption lands in the middle; or through a proxy that holds a
delete batch for as long as the test needs it in flight.
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from consulresults.devserver import DevServerProcess, FaultRule
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from conftest import CONSUL_RESULTS
from seed import seed

pytestmark = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)
RESULTS = 6000  # 90% SUCCESS (the filter), 10% FAILURE
PREFIX = "big"


def _keys(server) -> list[str]:
    response = requests.get(f"{server.url}/v1/kv/?keys", timeout=30)
    return response.json() if response.status_code == 200 else []


def _seeded(server) -> dict[str, list[str]]:
    """Results, plus what purge must never touch: another prefix, foreign keys, garbage."""
    seed(server.url, PREFIX, RESULTS)
    seed(server.url, "other", 50)
    for key, value in [
        (f"{PREFIX}/config/feature-flags", b'{"on": true}'),
        (f"{PREFIX}/celery-task-meta-garbage", b"\x00\xff not a result"),
        (f"{PREFIX}/celery-task-meta-", b"{}"),
    ]:
        requests.put(f"{server.url}/v1/kv/{key}", data=value, timeout=30).raise_for_status()
    return _by_kind(_keys(server))


def _by_kind(keys: list[str]) -> dict[str, list[str]]:
    success = {f"{PREFIX}/celery-task-meta-{i:08d}" for i in range(RESULTS) if i % 10}
    kinds: dict[str, list[str]] = {"matching": [], "kept": []}
    for key in keys:
        kinds["matching" if key.split("-0000-")[0] in success else "kept"].append(key)
    return kinds


def _purge(server) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CONSUL_RESULTS,
            "purge",
            "--http-addr",
            server.address,
            "--prefix",
            PREFIX,
            "--state",
            "SUCCESS",
            "--yes",
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _when_deleting(server, matching: int) -> None:
    """Return once the purge has deleted something (and long before it is done)."""
    deadline = time.monotonic() + 60
    while len(_by_kind(_keys(server))["matching"]) == matching:
        assert time.monotonic() < deadline, "purge deleted nothing in 60 s"
        time.sleep(0.05)


# not passed on as they are: the proxy reads whole bodies and answers with Content-Length
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "host",
}


class HoldingProxy:
    """Between a purge and the dev server: passes every request on, except the ``hold``-th
    delete batch (a ``/v1/txn`` of delete-cas operations), which it holds, having set
    ``holding``, until ``released`` is set; ``passed_on`` is set once that batch has been
    passed on and answered (whether or not its sender is still there to hear it)."""

    def __init__(self, upstream: str, hold: int) -> None:
        self.holding, self.released, self.passed_on = (threading.Event() for _ in range(3))
        self._deletes = 0
        self._lock = threading.Lock()
        proxy = self

        class Relay(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held = self.path.startswith("/v1/txn") and b"delete-cas" in body
                if held:
                    with proxy._lock:
                        proxy._deletes += 1
                        held = proxy._deletes == hold
                if held:
                    proxy.holding.set()
                    proxy.released.wait(120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                answer = requests.request(
                    self.command, upstream + self.path, data=body, headers=headers, timeout=60
                )
                if held:
                    proxy.passed_on.set()
                try:
                    self.send_response(answer.status_code)
                    for key, value in answer.headers.items():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:  # the client has gone
                    self.close_connection = True

            do_GET = do_PUT = do_DELETE = relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def _stderr_line(process: subprocess.Popen, text: str, timeout: float = 60) -> str:
    """Read the process's stderr up to the line containing ``text`` (and return that line)."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"no {text!r} on stderr in {timeout} s"
            line = process.stderr.readline()
            assert line, f"stderr closed before {text!r}"
            if text in line:
                return line


def _finish(process: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, json.loads(out), err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_batch_and_a_rerun_finishes(signum):
    with DevServerProcess() as server:
        before = _seeded(server)
        server.faults.add(FaultRule("latency", seconds=0.05, path_prefix="/v1/txn"))
        purge = _purge(server)
        _when_deleting(server, len(before["matching"]))
        purge.send_signal(signum)
        status, first, err = _finish(purge)
        assert status == 128 + signum, err
        assert err.splitlines()[-1] == f"consul-results: stopped by {signum.name}"
        after = _by_kind(_keys(server))
        assert first["complete"] is False and first["in_doubt"] == 0  # the batch finished
        assert first["deleted"] == len(before["matching"]) - len(after["matching"]) > 0
        assert after["kept"] == before["kept"]

        server.faults.clear()
        status, second, err = _finish(_purge(server))
        assert (status, err) == (0, "")
        assert second["complete"] is True
        assert second["deleted"] == second["matched"] == len(after["matching"])
        assert _by_kind(_keys(server)) == {"matching": [], "kept": before["kept"]}


def test_a_second_ctrl_c_stops_at_once_and_says_what_is_in_doubt():
    with DevServerProcess() as server:
        before = _seeded(server)
        proxy = HoldingProxy(server.url, hold=2)  # the first delete batch goes through
        try:
            purge = _purge(proxy)
            assert proxy.holding.wait(60), "no second delete batch"  # in flight, held there
            purge.send_signal(signal.SIGINT)
            _stderr_line(purge, "stopping after the batch in flight")  # the first one is in
            purge.send_signal(signal.SIGINT)
            status, first, err = _finish(purge)
            assert status == 130, err
            assert first["complete"] is False and first["in_doubt"] > 0
            proxy.released.set()  # the batch whose answer was abandoned lands (or not) now
            assert proxy.passed_on.wait(60), "the held batch was never passed on"
        finally:
            proxy.close()
        after = _by_kind(_keys(server))
        gone = len(before["matching"]) - len(after["matching"])
        assert first["deleted"] <= gone <= first["deleted"] + first["in_doubt"]
        assert after["kept"] == before["kept"]


def test_consul_killed_midway_then_a_rerun_finishes(tmp_path):
    with DevServerProcess("--data-dir", str(tmp_path)) as server:
        before = _seeded(server)
        server.faults.add(FaultRule("latency", seconds=0.05, path_prefix="/v1/txn"))
        purge = _purge(server)
        _when_deleting(server, len(before["matching"]))
        server.kill()
        status, first, err = _finish(purge)
        assert status == 69
        assert err.startswith("consul-results: cannot reach Consul at ")
        assert len(err.splitlines()) == 1
        assert first["complete"] is False

        server.start()  # same port, same data
        after = _by_kind(_keys(server))
        gone = len(before["matching"]) - len(after["matching"])
        assert first["deleted"] <= gone <= first["deleted"] + first["in_doubt"]
        assert after["kept"] == before["kept"]

        status, second, err = _finish(_purge(server))
        assert (status, err) == (0, "")
        assert second["deleted"] == len(after["matching"])
        assert _by_kind(_keys(server)) == {"matching": [], "kept": before["kept"]}
