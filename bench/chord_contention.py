"""Chord parts finishing at the same instant: requests per part, the slowest part, and whether
the body fires exactly once. The same parts are counted two ways, side by side on one dev
server (its own process): our chord protocol (a key per part, see consulresults/chords.py) and
the counter key the previous release used (``incr``: read, then a compare-and-swap txn).

    .venv/bin/python bench/chord_contention.py [--processes 4] [--threads 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
import uuid

from celery import Celery

from consulresults.devserver import DevServerProcess
from consulresults.expiry import ExpiryPlan


def make_backend(address: str, prefix: str):
    app = Celery("bench", set_as_current=False)
    app.conf.update(result_backend=f"consulresults://{address}/{prefix}", result_expires=3600)
    return app.backend


def run_parts(address, prefix, kind, group_id, task_ids, total, start_at, out) -> None:
    """One process: a thread per part, all released at ``start_at``."""
    backend = make_backend(address, prefix)
    plan = ExpiryPlan.for_expires(backend.chord_expires)
    backend.store.sessions.get(plan)  # the session exists before the clock starts, as in a worker
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def part(task_id: str) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        if kind == "per-part keys":
            fired = backend.chords.record_part(group_id, task_id, b'["x"]', plan)
        else:
            fired = backend.incr(backend.get_key_for_chord(group_id)) == total
        with lock:
            results.append((time.perf_counter() - began, fired))

    threads = [threading.Thread(target=part, args=(t,)) for t in task_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(results)


def measure(server, kind: str, processes: int, threads: int) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    group_id = str(uuid.uuid4())
    task_ids = [str(uuid.uuid4()) for _ in range(processes * threads)]
    backend = make_backend(server.address, prefix)
    if kind == "per-part keys":
        backend.chords.start(group_id, task_ids, ExpiryPlan.for_expires(backend.chord_expires))
    out: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 2.0
    workers = [
        multiprocessing.Process(
            target=run_parts,
            args=(
                server.address,
                prefix,
                kind,
                group_id,
                task_ids[i::processes],
                len(task_ids),
                start_at,
                out,
            ),
        )
        for i in range(processes)
    ]
    for process in workers:
        process.start()
    time.sleep(1.5)  # sessions made, threads waiting: count from here
    server.reset_counters()
    results = [r for _ in workers for r in out.get()]
    for process in workers:
        process.join()
    requests = server.counters().get("requests", 0)
    return {
        "kind": kind,
        "parts": len(results),
        "requests_per_part": requests / len(results),
        "slowest_s": max(latency for latency, _ in results),
        "bodies_fired": sum(fired for _, fired in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with DevServerProcess() as server:
        print(f"{args.processes} processes x {args.threads} threads, parts finishing together")
        print(f"{'protocol':<16}{'run':>4}{'req/part':>10}{'slowest':>10}{'bodies':>8}")
        for run in range(1, args.repeat + 1):
            for kind in ("per-part keys", "counter (incr)"):
                row = measure(server, kind, args.processes, args.threads)
                print(
                    f"{kind:<16}{run:>4}{row['requests_per_part']:>10.2f}"
                    f"{row['slowest_s']:>9.2f}s{row['bodies_fired']:>8}"
                )


if __name__ == "__main__":
    main()
