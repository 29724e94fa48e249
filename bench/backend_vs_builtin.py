"""Our backend next to Celery's built-in Consul backend, in one run, on one dev server.

The dev server runs in its own process; its counters give requests and TCP connections per
operation. Both backends use the same prefix layout and the same data.

"wait" is how soon ``AsyncResult.get()`` returns after its result is stored (a waiter already
waiting for 0.1 s; ``--waits`` of them, one after another): its rate is 1 / the mean latency.

    .venv/bin/python bench/backend_vs_builtin.py [--stores 500] [--ids 1000] [--waits 50]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from celery import Celery, states

from consulresults.devserver import DevServerProcess


def backend(kind: str, server: DevServerProcess, prefix: str):
    app = Celery(kind, set_as_current=False)
    scheme = "consulresults" if kind == "ours" else "consul"
    app.conf.update(result_backend=f"{scheme}://{server.address}/{prefix}", result_expires=3600)
    return app.backend


def measure(server: DevServerProcess, label: str, count: int, work) -> dict:
    server.reset_counters()
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    counts = server.counters()
    return {
        "op": label,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "requests": counts.get("requests", 0) / count,
        "connections": counts.get("connections", 0) / count,
    }


def measure_wait(server: DevServerProcess, store, waits: int) -> dict:
    """Store → ``get()`` returned, for ``waits`` results, each with its waiter already waiting."""
    server.reset_counters()
    latencies = []
    for i in range(waits):
        task_id = f"w-{uuid.uuid4().hex}"
        returned: list[float] = []

        def wait(task_id: str = task_id, returned: list[float] = returned) -> None:
            store.app.AsyncResult(task_id).get(timeout=30)
            returned.append(time.perf_counter())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.1)  # a benchmark, not a test: let the waiter start waiting
        stored = time.perf_counter()
        store.store_result(task_id, i, states.SUCCESS)
        waiter.join()
        latencies.append(returned[0] - stored)
    counts = server.counters()
    mean = sum(latencies) / waits
    return {
        "op": "wait (store → get returns)",
        "seconds": mean,
        "per_second": 1 / mean,
        "requests": counts.get("requests", 0) / waits,
        "connections": counts.get("connections", 0) / waits,
    }


def run(kind: str, server: DevServerProcess, stores: int, ids: int, waits: int) -> list[dict]:
    prefix = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    store = backend(kind, server, prefix)
    store.store_result("warm-up", 0, states.SUCCESS)  # our first write in a process makes a session
    task_ids = [f"t-{i}" for i in range(stores)]
    rows = [
        measure(
            server,
            "store (first write)",
            stores,
            lambda: [store.store_result(t, {"n": 1}, states.SUCCESS) for t in task_ids],
        )
    ]
    rows.append(
        measure(
            server, "fetch", stores, lambda: [store.get_task_meta(t, cache=False) for t in task_ids]
        )
    )
    started = [f"s-{i}" for i in range(stores)]
    for t in started:
        store.store_result(t, None, states.STARTED)
    rows.append(
        measure(
            server,
            "rewrite STARTED→SUCCESS",
            stores,
            lambda: [store.store_result(t, 1, states.SUCCESS) for t in started],
        )
    )
    landed = sum(store.get_task_meta(t, cache=False)["status"] == states.SUCCESS for t in started)
    rows[-1]["landed"] = landed
    many = [f"m-{i}" for i in range(ids)]
    for t in many:
        store.store_result(t, 1, states.SUCCESS)
    reader = backend(kind, server, prefix)  # a new client: nothing in Celery's result cache
    read_all = lambda: list(reader.get_many(many, timeout=30))  # noqa: E731
    rows.append(measure(server, f"get_many of {ids} ids", 1, read_all))
    rows.append(measure_wait(server, store, waits))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=500)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--waits", type=int, default=50)
    args = parser.parse_args()
    with DevServerProcess() as server:
        ours = run("ours", server, args.stores, args.ids, args.waits)
        builtin = run("builtin", server, args.stores, args.ids, args.waits)
    print(
        f"{'operation':<26} {'ours req/op':>11} {'built-in req/op':>15} "
        f"{'ours conn/op':>12} {'built-in conn/op':>16} {'ours/s':>9} {'built-in/s':>10} "
        f"{'ratio':>6}"
    )
    for a, b in zip(ours, builtin, strict=True):
        print(
            f"{a['op']:<26} {a['requests']:>11.2f} {b['requests']:>15.2f} "
            f"{a['connections']:>12.3f} {b['connections']:>16.3f} {a['per_second']:>9.1f} "
            f"{b['per_second']:>10.1f} {a['per_second'] / b['per_second']:>5.1f}x"
        )
    print(
        f"rewrites that landed: ours {ours[2]['landed']}/{args.stores}, "
        f"built-in {builtin[2]['landed']}/{args.stores}"
    )


if __name__ == "__main__":
    main()
