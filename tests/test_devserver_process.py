"""The dev server as a process: the command, persistence across SIGKILL, remote control, and a
stop that cuts off blocking reads as an agent's does (docs/consul-api.md §1.6, tagged [§N])."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import requests
from conftest import Api, run_cli, wait_until

from consulresults.devserver import DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

pytestmark = pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)


def test_command_announces_its_address_and_stops_on_sigterm():
    with DevServerProcess() as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert Api(server.url).get("/v1/status/leader").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0


def test_a_stop_cuts_off_blocking_reads_after_a_second():  # [§1.6]
    with DevServerProcess() as server:
        api = Api(server.url)
        api.put("/v1/kv/watched", b"1")
        index = api.get("/v1/kv/watched").headers["X-Consul-Index"]
        cut_off = []

        def blocking_read() -> None:
            try:
                api.get(f"/v1/kv/watched?index={index}&wait=60s")
            except requests.ConnectionError:
                cut_off.append(True)

        reader = threading.Thread(target=blocking_read)
        reader.start()
        wait_until(lambda: server.counters().get("kv.get", 0) == 2, 10, "the blocking read")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        reader.join(timeout=10)
        assert cut_off == [True]


def test_busy_port_is_refused_with_one_clear_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("dev-server", "--port", str(port), timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"consul-results: cannot listen on 127.0.0.1:{port}: address already in "
        "use (choose another --port, or --port 0 for a free one)"
    ]


def test_data_dir_survives_sigkill_with_kv_sessions_and_indexes(tmp_path):
    server = DevServerProcess("--data-dir", str(tmp_path), "--session-ttl-min", "1s").start()
    try:
        api = Api(server.url)
        session_id = api.session(TTL="60s", Checks=[], LockDelay=0)
        api.put(f"/v1/kv/results/held?acquire={session_id}&flags=5", b"held")
        for i in range(50):
            api.put(f"/v1/kv/results/{i}", str(i).encode())
        api.delete("/v1/kv/results/0")
        before = api.get("/v1/kv/results/?recurse")
        server.kill()
        server.start()
        api = Api(server.url)
        after = api.get("/v1/kv/results/?recurse")
        assert after.json() == before.json()
        assert after.headers["X-Consul-Index"] == before.headers["X-Consul-Index"]
        assert api.get(f"/v1/session/info/{session_id}").json()[0]["TTL"] == "60s"
        api.put("/v1/kv/results/new", b"n")
        assert api.entry("results/new")["ModifyIndex"] > int(before.headers["X-Consul-Index"])
        server.restart()  # a clean stop snapshots; the state must be the same again
        assert Api(server.url).entry("results/new") is not None
    finally:
        server.stop()


def test_remote_faults_and_counters():
    with DevServerProcess() as server:
        api = Api(server.url)
        server.faults.fail_next(1, status=503, body="rate limit exceeded")
        assert api.get("/v1/kv/x").status_code == 503
        assert api.get("/v1/kv/x").status_code == 404
        counts = server.counters()
        assert counts["kv.get"] == 2
        assert counts["requests"] == 2
        server.reset_counters()
        assert server.counters()["requests"] == 0
        server.set_node_health(False)
        assert api.put("/v1/session/create").status_code == 500


def test_tls_with_client_certificates(tmp_path):
    from certs import make_ca_and_certs

    certs = make_ca_and_certs(tmp_path)
    with DevServerProcess(
        "--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-ca", certs.ca
    ) as server:
        assert server.url.startswith("https://")
        import requests

        url = server.url + "/v1/status/leader"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=10)  # untrusted CA
        # TLS 1.3 refuses a missing client certificate after the handshake: a dropped connection
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=certs.ca, timeout=10)
        ok = requests.get(
            url, verify=certs.ca, cert=(certs.client_cert, certs.client_key), timeout=10
        )
        assert ok.status_code == 200
    assert os.path.exists(certs.ca)
