"""``ls`` and ``purge`` of many results: time, requests and peak memory, next to the naive
``consul kv``-style approach (list the keys, then one request per key).

    .venv/bin/python bench/cli_scale.py [--count 100000]

The dev server runs in its own process; each CLI run is a separate process whose own peak RSS
is read from ``wait4``. The naive client uses one keep-alive connection, as ``consul kv`` does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from urllib.parse import quote, urlsplit

from seed import seed

from consulresults.devserver import DevServerProcess


def cli(server: DevServerProcess, *args: str) -> dict:
    """Run the CLI once; its own peak RSS comes from wait4 (not the running max of children)."""
    server.reset_counters()
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "consulresults",
        *args,
        "--http-addr",
        server.address,
        "--prefix",
        "bench",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    assert process.returncode == 0, command
    return {
        "seconds": elapsed,
        "requests": server.counters()["requests"],
        "peak_mb": usage.ru_maxrss / 1024,
    }


def naive(server: DevServerProcess, method: str) -> dict:
    """List the keys, then GET (ls) or DELETE (purge) each key with its own request."""
    server.reset_counters()
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    started = time.perf_counter()
    connection.request("GET", "/v1/kv/bench/?keys")
    keys = json.loads(connection.getresponse().read())
    for key in keys:
        connection.request(method, "/v1/kv/" + quote(key))
        connection.getresponse().read()
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "requests": server.counters()["requests"],
        "peak_mb": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    with DevServerProcess() as server:
        seed(server.url, "bench", args.count)
        rows.append(("consul-results ls --count", cli(server, "ls", "--count")))
        rows.append(("consul-results ls -o ndjson", cli(server, "ls", "-o", "ndjson")))
        rows.append(("naive ls (GET per key)", naive(server, "GET")))
        rows.append(("consul-results purge --yes", cli(server, "purge", "--yes")))
        seed(server.url, "bench", args.count)
        rows.append(("naive purge (DELETE per key)", naive(server, "DELETE")))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "consulresults", "--help"], capture_output=True, check=True
    )
    help_seconds = time.perf_counter() - started
    print(f"{args.count} results")
    print(f"{'operation':<32} {'seconds':>8} {'requests':>9} {'peak MB':>8}")
    for name, row in rows:
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] else "-"
        print(f"{name:<32} {row['seconds']:>8.1f} {row['requests']:>9} {peak:>8}")
    print(f"consul-results --help: {help_seconds:.2f} s")


if __name__ == "__main__":
    main()
