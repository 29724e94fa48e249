"""Dev server throughput for simple KV GET/PUT over keep-alive HTTP.

The server runs in its own process (``consul-results dev-server``); clients are separate processes,
each with one keep-alive ``http.client`` connection (``requests`` costs ~1.5 ms per call here and
would measure itself), sending a bounded number of requests. Prints requests/s.

    .venv/bin/python bench/devserver_throughput.py [--clients 2] [--requests 5000]
"""

from __future__ import annotations

import argparse
import http.client
import time
from multiprocessing import Pool
from urllib.parse import urlsplit

from consulresults.devserver import DevServerProcess


def client(job: tuple[str, str, int, int]) -> float:
    url, method, worker, count = job
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    body = b"x" * 200 if method == "PUT" else None
    started = time.perf_counter()
    for i in range(count):
        connection.request(method, f"/v1/kv/bench/{worker}/{i % 100}", body=body)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


def measure(url: str, method: str, clients: int, count: int) -> float:
    with Pool(clients) as pool:
        started = time.perf_counter()
        pool.map(client, [(url, method, w, count) for w in range(clients)])
        elapsed = time.perf_counter() - started
    return clients * count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--requests", type=int, default=5000, help="per client")
    args = parser.parse_args()
    with DevServerProcess() as server:
        measure(server.url, "PUT", args.clients, 100)  # warm-up; also creates the keys
        put = measure(server.url, "PUT", args.clients, args.requests)
        get = measure(server.url, "GET", args.clients, args.requests)
        counts = server.counters()
    print(
        f"clients={args.clients} requests/client={args.requests} "
        f"connections={counts['connections']}"
    )
    print(f"KV PUT: {put:,.0f} requests/s")
    print(f"KV GET: {get:,.0f} requests/s")


if __name__ == "__main__":
    main()
