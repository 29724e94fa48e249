"""What ``consul-results watch`` costs Consul: requests and bytes per stored result, with 10,000
results under the prefix and a writer storing 100 results a second (dev server in its own
process). Consul answers a blocking query on a prefix with the whole prefix, so the cost per
result is the prefix's size divided by the results stored per round: ``--interval`` trades
latency for bytes. Also reports how many written results the watch printed.

    .venv/bin/python bench/watch_cost.py [--results 10000] [--rate 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from celery import Celery
from seed import seed

from consulresults.devserver import DevServerProcess
from consulresults.factory import open_operations
from consulresults.operations import ResultFilter


def write(address: str, prefix: str, rate: float, seconds: float, written: list[str]) -> None:
    app = Celery("writer", set_as_current=False)
    app.conf.update(result_backend=f"consulresults://{address}/{prefix}", result_expires=3600)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        task_id = f"w-{n}"
        app.backend.store_result(task_id, n, "SUCCESS")
        written.append(task_id)
        n += 1
        time.sleep(max(0.0, started + n / rate - time.monotonic()))


def measure(results: int, rate: float, seconds: float, interval: float) -> dict:
    prefix = f"watch-{uuid.uuid4().hex[:6]}"
    with DevServerProcess() as server:
        seed(server.url, prefix, results)
        ops = open_operations(f"consulresults://{server.address}/{prefix}", {})
        traffic = {"requests": 0, "bytes": 0}

        def count(response, *args, **kwargs):
            traffic["requests"] += 1
            traffic["bytes"] += len(response.content)

        ops.store.transport.session.hooks["response"].append(count)
        seen: list[str] = []
        rounds = ops.watch(ResultFilter(), interval)
        next(rounds)  # the first round: what was stored before
        before = dict(traffic)
        written: list[str] = []
        writer = threading.Thread(
            target=write, args=(server.address, prefix, rate, seconds, written)
        )
        writer.start()
        while writer.is_alive() or len(seen) < len(written):
            seen += [r.id for r in next(rounds)]
            if not writer.is_alive() and len(seen) >= len(written):
                break
        writer.join()
    spent = {k: traffic[k] - before[k] for k in traffic}
    return {
        "results_under_prefix": results,
        "written": len(written),
        "printed": len(set(seen)),
        "interval_s": interval,
        "requests": spent["requests"],
        "bytes": spent["bytes"],
        "requests_per_result": spent["requests"] / max(1, len(written)),
        "bytes_per_result": spent["bytes"] / max(1, len(written)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    for interval in (1.0, 0.2):
        figures = measure(args.results, args.rate, args.seconds, interval)
        print(
            f"--interval {interval:g}: {figures['printed']}/{figures['written']} printed, "
            f"{figures['requests_per_result']:.3f} requests and "
            f"{figures['bytes_per_result'] / 1000:.1f} kB per stored result "
            f"({figures['requests']} requests, {figures['bytes'] / 1e6:.1f} MB in all)"
        )


if __name__ == "__main__":
    main()
