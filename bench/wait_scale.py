"""Waiting at scale: what a thousand waiters in one process, and hundreds of processes, cost the
agent, and how soon each waiter returns after its result is stored.

Each scenario runs against its own dev server in its own process (``DevServerProcess``), whose
``connection_stats()`` and ``counters()`` give the connections from 127.0.0.1 and the requests
received; the client side reports its pool (``backend.transport.pool``) and the waiting service
(``consulresults.waiting.WAITING``). Figures per scenario:

- connections while waiting: the server's peak for 127.0.0.1 (less the bench's own control
  connection, a keep-alive one: see :class:`Control`) and the pool's peak;
- requests/s at the agent while nothing changes (counters reset, ``--idle-window`` seconds);
- latency from each result's store (``store_result`` returned) to its waiter's return,
  p50/p99/max;
- where asked, storing with waiters next to storing with nobody waiting.

Scenarios (``--scenario NAME``, repeatable; all by default): ``threads`` (1,000 threads, each
``AsyncResult(id).get()``), ``chain`` (each waits on a two-task chain whose first task then
fails), ``limited`` (``threads`` against ``--http-max-conns-per-client 200``), ``aio`` (1,000
``consulresults.aio.get`` tasks in one event loop, with the loop's longest stall), ``gevent``
(1,000 greenlets in a monkey-patched subprocess), ``idle`` (60 processes store once and idle:
sockets still open 12 s later), ``storm`` (300 processes storing every 10 ms against a server
limited to 200 connections, then against no limit), ``single`` (50 sequential single waits).

Apps use Celery's defaults (``result_cache_max`` -1: no result cache) unless
``--result-cache-max N`` says otherwise. Every figure depends on the machine's load: the
scenario's load average before and after is printed with its figures.

    .venv/bin/python bench/wait_scale.py [--scenario threads] [--waiters 1000]
        [--idle-window 5] [--idle-processes 60] [--idle-after 12] [--storm-processes 300]
        [--storm-seconds 20] [--single-waits 50] [--result-cache-max N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery, states

from consulresults import aio
from consulresults.devserver import DevServerProcess
from consulresults.waiting import WAITING

IP = "127.0.0.1"
WAIT_TIMEOUT = 60.0  # each waiter's get(timeout=...)
JOIN_GRACE = 30.0  # after the stores, how long the waiters have to return


# ---------------------------------------------------------------------------------- helpers


class Control:
    """The dev server's ``/_dev/`` control API over one keep-alive connection of its own, so
    that the connections counted for 127.0.0.1 are the clients' plus exactly this one
    (``DevServerProcess``'s own calls open a new connection each, which may linger)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.address = url.split("://", 1)[1]
        host, port = self.address.rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str) -> Any:
        """One control request; tried again on a new connection while it fails (the server
        closes idle keep-alive connections, and refuses new ones past its per-client limit)."""
        for attempt in range(50):
            try:
                connection = self._connection or self._connect()
                connection.request(method, path)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise ConnectionError(f"{response.status} {body[:80]!r}")
                return json.loads(body)
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 49:
                    raise
                time.sleep(0.1)
        return None

    def _connect(self) -> http.client.HTTPConnection:
        self._connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def counters(self) -> dict[str, int]:
        return self.request("GET", "/_dev/counters")  # type: ignore[no-any-return]

    def reset_counters(self) -> None:
        self.request("DELETE", "/_dev/counters")

    def connection_stats(self) -> dict[str, Any]:
        return self.request("GET", "/_dev/connections")  # type: ignore[no-any-return]

    def reset_connection_stats(self) -> None:
        self.request("DELETE", "/_dev/connections")

    def local(self, kind: str) -> int:
        """Open, peak or refused connections from 127.0.0.1 (open and peak without this one)."""
        count = self.connection_stats()[kind].get(IP, 0)
        return count if kind == "refused" else count - 1


@contextlib.contextmanager
def dev_server(limit: int) -> Iterator[Control]:
    """A dev server in its own process refusing more than ``limit`` connections per client IP
    (0: none), and its control connection."""
    with DevServerProcess("--http-max-conns-per-client", str(limit)) as server:
        handle = Control(server.url)
        try:
            yield handle
        finally:
            handle.close()


CELERY_CONF: dict[str, Any] = {}  # --result-cache-max (else Celery's defaults)


def make_app(address: str, prefix: str) -> Celery:
    app = Celery("wait-scale", set_as_current=False)
    app.conf.update(
        result_backend=f"consulresults://{address}/{prefix}", result_expires=3600, **CELERY_CONF
    )
    return app


def requests_since_reset(server: Control) -> dict[str, int]:
    """The requests the agent received since its counters were reset, by kind."""
    return {k: v for k, v in server.counters().items() if v}


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def spread(values: list[float]) -> dict[str, float]:
    """p50, p99 and max (nearest rank), in seconds; NaN when there is nothing."""
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1], "n": len(ordered)}


def idle_rate(server: Control, seconds: float) -> dict[str, Any]:
    """Requests per second at the agent while nothing changes, and what they were."""
    rounds = WAITING.rounds
    server.reset_counters()
    time.sleep(seconds)
    counts = server.counters()
    kinds = {k: v for k, v in counts.items() if v and k not in ("requests", "connections")}
    return {
        "per_second": counts.get("requests", 0) / seconds,
        "kinds": kinds,
        "new_connections": counts.get("connections", 0),
        "rounds_per_second": (WAITING.rounds - rounds) / seconds,
    }


def reset_peaks(server: Control, pool: Any) -> None:
    server.reset_connection_stats()
    pool.peak = pool.stats()["open"]


def peaks(server: Control, pool: Any) -> dict[str, int]:
    stats = server.connection_stats()
    return {
        "server_peak": stats["peak"].get(IP, 0) - 1,  # not our control connection
        "pool_peak": pool.stats()["peak"],
        "refused": stats["refused"].get(IP, 0),
    }


def ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.1f}"


def show(name: str, figures: dict[str, Any]) -> None:
    print(f"[{name}] " + json.dumps(figures, default=str), flush=True)


# ---------------------------------------------------------------------------------- waiters


def start_thread(fn: Callable[[], None]) -> Any:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def many_waiters(
    server: Control,
    waiters: int,
    window: float,
    start: Callable[[Callable[[], None]], Any] = start_thread,
    chain: bool = False,
) -> dict[str, Any]:
    """``waiters`` waiters (threads, or greenlets with gevent's ``start``) each on its own
    result (``chain``: on step 2 of a chain whose step 1 then fails); stores from this thread."""
    prefix = f"scale-{uuid.uuid4().hex[:6]}"
    app = make_app(server.address, prefix)
    backend = app.backend
    pool = backend.transport.pool
    backend.store_result("warm-up", 0, states.SUCCESS)  # the first write makes a session
    figures: dict[str, Any] = {"waiters": waiters}
    if not chain:
        started = time.perf_counter()
        for i in range(waiters):
            backend.store_result(f"free-{i}", i, states.SUCCESS)
        figures["store_without_s"] = time.perf_counter() - started

    ids = [f"w-{i}" for i in range(waiters)]
    parents = [f"p-{i}" for i in range(waiters)]
    returned: dict[str, float] = {}
    errors: Counter[str] = Counter()

    def wait(i: int) -> None:
        task_id = ids[i]
        try:
            if chain:
                result = app.AsyncResult(task_id, parent=app.AsyncResult(parents[i]))
                try:
                    result.get(timeout=WAIT_TIMEOUT)
                    errors["returned instead of raising"] += 1
                except KeyError:
                    returned[task_id] = time.perf_counter()
            else:
                app.AsyncResult(task_id).get(timeout=WAIT_TIMEOUT)
                returned[task_id] = time.perf_counter()
        except Exception as exc:
            errors[type(exc).__name__] += 1

    reset_peaks(server, pool)
    began = time.perf_counter()
    handles = [start(lambda i=i: wait(i)) for i in range(waiters)]
    keys = 2 * waiters if chain else waiters
    settled = wait_until(lambda: WAITING.watched_keys() + sum(errors.values()) >= keys, 60)
    figures["all_watching_s"] = time.perf_counter() - began
    figures["watched_keys"] = WAITING.watched_keys()
    if not settled:
        figures["note"] = "not every waiter was watched within 60 s"
    figures["idle"] = idle_rate(server, window)
    figures.update(peaks(server, pool))

    stored: dict[str, float] = {}
    server.reset_counters()
    started = time.perf_counter()
    for i, task_id in enumerate(ids):
        if chain:
            backend.mark_as_failure(parents[i], KeyError(f"step 1 of chain {i}"))
        else:
            backend.store_result(task_id, i, states.SUCCESS)
        stored[task_id] = time.perf_counter()
    figures["store_with_s"] = time.perf_counter() - started
    deadline = time.monotonic() + JOIN_GRACE
    for handle in handles:
        handle.join(max(0.0, deadline - time.monotonic()))
    figures["requests_storing"] = requests_since_reset(server)
    figures["still_waiting"] = waiters - len(returned) - sum(errors.values())
    figures["errors"] = dict(errors)
    figures["latency"] = spread([returned[t] - stored[t] for t in ids if t in returned])
    after = peaks(server, pool)
    figures["server_peak_incl_stores"] = after["server_peak"]
    figures["pool_peak_incl_stores"] = after["pool_peak"]
    figures["refused"] = after["refused"]
    if "store_without_s" in figures:
        figures["store_ratio"] = figures["store_with_s"] / figures["store_without_s"]
    return figures


def scenario_threads(args: argparse.Namespace) -> dict[str, Any]:
    """1,000 threads each waiting on its own result (no per-client limit at the server)."""
    with dev_server(0) as server:
        return many_waiters(server, args.waiters, args.idle_window)


def scenario_chain(args: argparse.Namespace) -> dict[str, Any]:
    """1,000 threads each waiting on step 2 of a chain; step 1 fails with KeyError."""
    with dev_server(0) as server:
        return many_waiters(server, args.waiters, args.idle_window, chain=True)


def scenario_limited(args: argparse.Namespace) -> dict[str, Any]:
    """``threads`` against a server refusing more than 200 connections from one IP."""
    with dev_server(200) as server:
        return many_waiters(server, args.waiters, args.idle_window)


def scenario_gevent(args: argparse.Namespace) -> dict[str, Any]:
    """``threads`` with greenlets, in a subprocess monkey-patched before anything is imported."""
    with dev_server(0) as server:
        code = (
            "from gevent import monkey; monkey.patch_all()\n"
            "import runpy, sys\n"
            "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        )
        cmd = [sys.executable, "-c", code, os.path.abspath(__file__), "--gevent-child"]
        cmd += [server.url, "--waiters", str(args.waiters), "--idle-window", str(args.idle_window)]
        if args.result_cache_max is not None:
            cmd += ["--result-cache-max", str(args.result_cache_max)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            raise RuntimeError(f"gevent child failed ({done.returncode}): {done.stderr[-2000:]}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]


def gevent_child(url: str, waiters: int, window: float) -> None:
    import gevent

    figures = many_waiters(Control(url), waiters, window, start=gevent.spawn)
    print(json.dumps(figures), flush=True)


# ---------------------------------------------------------------------------------- asyncio


def scenario_aio(args: argparse.Namespace) -> dict[str, Any]:
    """1,000 ``await aio.get(...)`` tasks in one loop; results stored from another thread."""
    with dev_server(0) as server:
        return asyncio.run(_aio(server, args.waiters, args.idle_window))


async def _aio(server: Control, waiters: int, window: float) -> dict[str, Any]:
    prefix = f"scale-{uuid.uuid4().hex[:6]}"
    app = make_app(server.address, prefix)
    writer = make_app(server.address, prefix).backend  # this thread's; stores use their own
    pool = writer.transport.pool
    await asyncio.to_thread(writer.store_result, "warm-up", 0, states.SUCCESS)
    ids = [f"a-{i}" for i in range(waiters)]
    returned: dict[str, float] = {}
    errors: Counter[str] = Counter()
    gaps: list[tuple[float, float]] = []  # (when it began, how much over the 5 ms asked)
    ticking = True

    async def ticker() -> None:
        last = time.perf_counter()
        while ticking:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append((last, now - last - 0.005))
            last = now

    async def wait(task_id: str) -> None:
        try:
            await aio.get(app.AsyncResult(task_id), timeout=WAIT_TIMEOUT)
            returned[task_id] = time.perf_counter()
        except Exception as exc:
            errors[type(exc).__name__] += 1

    await asyncio.to_thread(reset_peaks, server, pool)
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker's first gaps, before any waiter (not counted)
    began = time.perf_counter()
    tasks = [asyncio.create_task(wait(t)) for t in ids]
    deadline = time.monotonic() + 60
    while WAITING.watched_keys() + sum(errors.values()) < waiters and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    figures: dict[str, Any] = {"waiters": waiters, "all_watching_s": time.perf_counter() - began}
    figures["watched_keys"] = WAITING.watched_keys()
    figures["idle"] = await asyncio.to_thread(idle_rate, server, window)
    figures.update(await asyncio.to_thread(peaks, server, pool))

    stored: dict[str, float] = {}

    def store_all() -> None:
        backend = app.backend  # the storing thread's own instance (Celery's are per thread)
        for i, task_id in enumerate(ids):
            backend.store_result(task_id, i, states.SUCCESS)
            stored[task_id] = time.perf_counter()

    await asyncio.to_thread(server.reset_counters)
    store_began = time.perf_counter()
    await asyncio.to_thread(store_all)
    figures["store_with_s"] = time.perf_counter() - store_began
    await asyncio.wait(tasks, timeout=JOIN_GRACE)
    ticking = False
    await tick
    figures["requests_storing"] = await asyncio.to_thread(requests_since_reset, server)
    figures["still_waiting"] = waiters - len(returned) - sum(errors.values())
    figures["errors"] = dict(errors)
    figures["latency"] = spread([returned[t] - stored[t] for t in ids if t in returned])
    figures["stall_max_s"] = max((g for w, g in gaps if w >= began), default=0.0)
    figures["stall_starting_s"] = max((g for w, g in gaps if began <= w < began + 1.0), default=0.0)
    figures["stall_waiting_s"] = max(
        (g for w, g in gaps if began + 1.0 <= w < store_began), default=0.0
    )
    figures["stall_storing_s"] = max((g for w, g in gaps if store_began <= w), default=0.0)
    after = await asyncio.to_thread(peaks, server, pool)
    figures["server_peak_incl_stores"] = after["server_peak"]
    figures["pool_peak_incl_stores"] = after["pool_peak"]
    return figures


# ---------------------------------------------------------------------------------- single


def scenario_single(args: argparse.Namespace) -> dict[str, Any]:
    """One waiter at a time: start it, see it watched, store, time its return."""
    with dev_server(0) as server:
        app = make_app(server.address, f"scale-{uuid.uuid4().hex[:6]}")
        backend = app.backend
        pool = backend.transport.pool
        backend.store_result("warm-up", 0, states.SUCCESS)
        reset_peaks(server, pool)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        figures: dict[str, Any] = {"waits": args.single_waits}
        for n in range(args.single_waits):
            task_id = f"s-{n}"
            returned: list[float] = []

            def wait(task_id: str = task_id, returned: list[float] = returned) -> None:
                try:
                    app.AsyncResult(task_id).get(timeout=30)
                    returned.append(time.perf_counter())
                except Exception as exc:
                    errors[type(exc).__name__] += 1

            thread = start_thread(wait)
            if not wait_until(lambda: WAITING.watched_keys() >= 1, 10, step=0.001):
                errors["not watched within 10 s"] += 1
            if n == 0:
                figures["idle"] = idle_rate(server, args.idle_window)
                figures.update(peaks(server, pool))
            backend.store_result(task_id, n, states.SUCCESS)
            stored = time.perf_counter()
            thread.join(30)
            if returned:
                latencies.append(returned[0] - stored)
            wait_until(lambda: WAITING.watched_keys() == 0, 5, step=0.001)
        figures["errors"] = dict(errors)
        figures["latency"] = spread(latencies)
        figures["latencies_ms"] = [round(x * 1000, 1) for x in latencies]
        return figures


# ---------------------------------------------------------------------------------- processes


def _idle_child(index: int, address: str, prefix: str, out: Any, leave: Any, stay: float) -> None:
    backend = make_app(address, prefix).backend
    backend.store_result(f"idle-{index}", index, states.SUCCESS)
    out.put((index, time.monotonic()))
    leave.wait(stay)  # idle: nothing waited on, nothing stored


def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Processes that stored once and stay idle: do they give their sockets back?"""
    ctx = multiprocessing.get_context("fork")
    with dev_server(200) as server:
        prefix = f"idle-{uuid.uuid4().hex[:6]}"
        make_app(server.address, prefix).backend  # noqa: B018 - imported once, before the forks
        out, leave = ctx.Queue(), ctx.Event()
        stay = args.idle_after + 60
        children = [
            ctx.Process(target=_idle_child, args=(i, server.address, prefix, out, leave, stay))
            for i in range(args.idle_processes)
        ]
        for child in children:
            child.start()
        stored: list[float] = []
        deadline = time.monotonic() + 120
        while len(stored) < len(children) and time.monotonic() < deadline:
            try:
                stored.append(out.get(timeout=max(0.1, deadline - time.monotonic()))[1])
            except Exception:
                break
        last = max(stored, default=time.monotonic())
        samples = {}
        for after in sorted({1.0, args.idle_after / 2, args.idle_after}):
            time.sleep(max(0.0, last + after - time.monotonic()))
            samples[f"{after:g}s"] = server.local("open")
        leave.set()
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
        return {
            "processes": len(children),
            "reported_stored": len(stored),
            "open_after_last_store": samples,
            "open_at_idle_after": samples[f"{args.idle_after:g}s"],
            "server_peak": server.local("peak"),
        }


def _storm_child(
    index: int,
    address: str,
    prefix: str,
    seconds: float,
    interval: float,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    backend = make_app(address, prefix).backend
    ready.put(index)
    report: dict[str, Any] = {"index": index, "stored": 0, "failed": [], "errors": {}}
    if not go.wait(300):
        out.put(report)
        return
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    failed: list[int] = []
    began = time.monotonic()
    end = began + seconds
    most = int(seconds / interval) + 1
    n = 0
    while n < most and time.monotonic() < end:
        t0 = time.monotonic()
        try:
            backend.store_result(f"{index}-{n}", n, states.SUCCESS)
            latencies.append(time.monotonic() - t0)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            failed.append(n)
        n += 1
        time.sleep(max(0.0, t0 + interval - time.monotonic()))
    report.update(
        attempted=n,
        stored=n - len(failed),
        failed=failed,
        errors=dict(errors),
        latencies=latencies,
        began=began,
        ended=time.monotonic(),
        pool=backend.transport.pool.stats(),
    )
    out.put(report)


def storm_run(args: argparse.Namespace, processes: int, limit: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    with dev_server(limit) as server:
        prefix = f"storm-{uuid.uuid4().hex[:6]}"
        make_app(server.address, prefix).backend  # noqa: B018 - imported once, before the forks
        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        spawned = time.monotonic()
        children = []
        for i in range(processes):
            child = ctx.Process(
                target=_storm_child,
                args=(i, server.address, prefix, args.storm_seconds, 0.01, ready, go, out),
            )
            child.start()
            children.append(child)
        figures: dict[str, Any] = {"processes": processes, "limit": limit}
        up = 0
        deadline = time.monotonic() + 300
        while up < processes and time.monotonic() < deadline:
            try:
                ready.get(timeout=max(0.1, deadline - time.monotonic()))
                up += 1
            except Exception:
                break
        figures["ready"] = up
        figures["start_up_s"] = time.monotonic() - spawned
        server.reset_connection_stats()
        server.reset_counters()
        go.set()
        reports: list[dict[str, Any]] = []
        open_samples: list[int] = []
        deadline = time.monotonic() + args.storm_seconds + 120
        while len(reports) < up and time.monotonic() < deadline:
            try:
                reports.append(out.get(timeout=0.25))
            except Exception:
                if not reports:  # while every process is still storing
                    open_samples.append(server.local("open"))
        figures["open_mean"] = statistics.mean(open_samples) if open_samples else 0
        killed = 0
        for child in children:
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                killed += 1
                child.kill()
                child.join()
        stats = server.connection_stats()
        counts = server.counters()
        figures["reports"] = len(reports)
        figures["killed"] = killed
        figures["server_peak"] = stats["peak"].get(IP, 0) - 1  # not our control connection
        figures["refused"] = stats["refused"].get(IP, 0)
        figures["server_requests"] = counts.get("requests", 0)
        figures["new_connections"] = counts.get("connections", 0)
        done = [r for r in reports if "began" in r]
        errors: Counter[str] = Counter()
        for r in reports:
            errors.update(r["errors"])
        figures["errors"] = dict(errors)
        per_process = [r["stored"] for r in reports] + [0] * (processes - len(reports))
        median = statistics.median(per_process)
        figures["stores_per_process"] = {
            "min": min(per_process),
            "median": median,
            "max": max(per_process),
            "without_progress": sum(1 for c in per_process if c == 0),
            "under_half_median": sum(1 for c in per_process if c < median / 2),
            "under_tenth_median": sum(1 for c in per_process if c < median / 10),
            "deciles": [sorted(per_process)[len(per_process) * d // 10] for d in range(10)],
            "lowest": sorted(per_process)[:10],
        }
        figures["latency"] = spread([x for r in done for x in r["latencies"]])
        figures["slowest_stores_s"] = sorted(x for r in done for x in r["latencies"])[-5:]
        total = sum(r["stored"] for r in reports)
        span = max((r["ended"] for r in done), default=0.0) - min(
            (r["began"] for r in done), default=0.0
        )
        figures["stored"] = total
        figures["throughput"] = total / span if span > 0 else 0.0
        figures["pool_caps_at_end"] = Counter(r["pool"]["cap"] for r in done)

        reader = make_app(server.address, prefix).backend
        lost = read = 0
        for r in reports:
            failed = set(r["failed"])
            ids = [f"{r['index']}-{n}" for n in range(r.get("attempted", 0)) if n not in failed]
            for pos in range(0, len(ids), 1000):
                batch = ids[pos : pos + 1000]
                values = reader.mget([reader.get_key_for_task(t) for t in batch])
                for value in values:
                    read += 1
                    if not value or reader.decode_result(value)["status"] != states.SUCCESS:
                        lost += 1
        figures["read_back"] = read
        figures["lost"] = lost
        return figures


def scenario_storm(args: argparse.Namespace) -> dict[str, Any]:
    """N processes storing every 10 ms, at a limit of 200 connections and with none."""
    limited = storm_run(args, args.storm_processes, 200)
    show("storm limit=200", limited)
    unlimited = storm_run(args, args.storm_processes, 0)
    show("storm limit=0", unlimited)
    ratio = limited["throughput"] / unlimited["throughput"] if unlimited["throughput"] else 0
    return {"limited": limited, "unlimited": unlimited, "throughput_ratio": ratio}


# ---------------------------------------------------------------------------------- report

SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "threads": scenario_threads,
    "chain": scenario_chain,
    "limited": scenario_limited,
    "aio": scenario_aio,
    "gevent": scenario_gevent,
    "idle": scenario_idle,
    "storm": scenario_storm,
    "single": scenario_single,
}


def table(results: dict[str, dict[str, Any]]) -> None:
    waits = [name for name, f in results.items() if "latency" in f]
    if waits:
        print(
            f"\n{'scenario':<9} {'srv peak':>8} {'pool peak':>9} {'req/s idle':>10} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'store w/ s':>10} {'w/o s':>7} "
            f"{'ratio':>6} {'errors':>7} {'refused':>7}"
        )
    for name in waits:
        f = results[name]
        lat = f["latency"]
        print(
            f"{name:<9} {f.get('server_peak', '-'):>8} {f.get('pool_peak', '-'):>9} "
            f"{f['idle']['per_second']:>10.1f} {ms(lat['p50']):>8} {ms(lat['p99']):>8} "
            f"{ms(lat['max']):>8} {f.get('store_with_s', math.nan):>10.2f} "
            f"{f.get('store_without_s', math.nan):>7.2f} {f.get('store_ratio', math.nan):>6.2f} "
            f"{sum(f.get('errors', {}).values()):>7} {f.get('refused', 0):>7}"
        )
    if "aio" in results:
        a = results["aio"]
        print(
            f"aio loop stall: max {ms(a['stall_max_s'])} ms (starting "
            f"{ms(a['stall_starting_s'])}, waiting {ms(a['stall_waiting_s'])}, storing "
            f"{ms(a['stall_storing_s'])})"
        )
    if "idle" in results:
        i = results["idle"]
        print(
            f"idle: {i['processes']} processes, sockets open after their last store: "
            f"{i['open_after_last_store']}"
        )
    if "storm" in results:
        print(
            f"\n{'storm':<8} {'procs':>5} {'stored':>7} {'/s':>7} {'lost':>5} {'errors':>7} "
            f"{'min/med/max per proc':>21} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} "
            f"{'peak':>5} {'mean open':>9} {'refused':>7} {'new conns':>9}"
        )
        for key in ("limited", "unlimited"):
            s = results["storm"][key]
            p = s["stores_per_process"]
            print(
                f"{'limit ' + str(s['limit']):<8} {s['processes']:>5} {s['stored']:>7} "
                f"{s['throughput']:>7.0f} {s['lost']:>5} {sum(s['errors'].values()):>7} "
                f"{p['min']:>7}/{p['median']:>6g}/{p['max']:>6} {ms(s['latency']['p50']):>7} "
                f"{ms(s['latency']['p99']):>8} {ms(s['latency']['max']):>8} "
                f"{s['server_peak']:>5} {s['open_mean']:>9.0f} {s['refused']:>7} "
                f"{s['new_connections']:>9}"
            )
        print(f"throughput limited/unlimited: {results['storm']['throughput_ratio']:.2f}")
    checks = targets(results)
    if checks:
        print(f"\n{'target':<46} {'figure':>10}  met")
        for what, figure, met in checks:
            print(f"{what:<46} {figure:>10}  {'-' if met is None else 'yes' if met else 'NO'}")


def targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(target, figure, met) for every figure a target was set for."""
    rows: list[tuple[str, str, bool]] = []
    for name, f in results.items():
        if "latency" not in f:
            continue
        idle, slowest = f["idle"]["per_second"], f["latency"]["max"]
        errors = sum(f.get("errors", {}).values()) + f.get("still_waiting", 0)
        server, pool = f["server_peak"], f["pool_peak"]
        rows += [
            (f"{name}: connections while waiting <= 8 (srv)", server, server <= 8),
            (f"{name}: connections while waiting <= 8 (pool)", pool, pool <= 8),
            (f"{name}: requests/s idle <= 50", f"{idle:.1f}", idle <= 50),
            (f"{name}: slowest waiter <= 1 s after its store", f"{ms(slowest)} ms", slowest <= 1),
            (f"{name}: 0 errors", errors, errors == 0),
        ]
        if "store_ratio" in f:
            ratio = f["store_ratio"]
            rows.append((f"{name}: store with waiters <= 2x without", f"{ratio:.2f}x", ratio <= 2))
        if "stall_max_s" in f:
            stall = f["stall_max_s"]
            rows.append((f"{name}: loop stall <= 50 ms", f"{ms(stall)} ms", stall <= 0.05))
    if "idle" in results:
        left = results["idle"]["open_at_idle_after"]
        rows.append(("idle: 0 sockets 12 s after the last store", left, left == 0))
    if "storm" in results:
        s, ratio = results["storm"]["limited"], results["storm"]["throughput_ratio"]
        p, p99, errors = s["stores_per_process"], s["latency"]["p99"], sum(s["errors"].values())
        rows += [
            ("storm: 0 lost", s["lost"], s["lost"] == 0),
            ("storm: 0 errors", errors, errors == 0),
            ("storm: every process made progress (min > 0)", p["min"], p["min"] > 0),
            ("storm: (fairness) processes under 10% of median", p["under_tenth_median"], None),
            ("storm: p99 store <= 1 s", f"{ms(p99)} ms", p99 <= 1),
            ("storm: <= 200 connections", s["server_peak"], s["server_peak"] <= 200),
            ("storm: >= 70% of unlimited throughput", f"{ratio:.2f}", ratio >= 0.7),
        ]
    return [(what, str(figure), met) for what, figure, met in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--idle-processes", type=int, default=60)
    parser.add_argument("--idle-after", type=float, default=12.0)
    parser.add_argument("--storm-processes", type=int, default=300)
    parser.add_argument("--storm-seconds", type=float, default=20.0)
    parser.add_argument("--single-waits", type=int, default=50)
    parser.add_argument(
        "--result-cache-max",
        type=int,
        help="Celery's result_cache_max for every app (default: Celery's, -1: no cache)",
    )
    parser.add_argument("--gevent-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.result_cache_max is not None:
        CELERY_CONF["result_cache_max"] = args.result_cache_max
    if args.gevent_child:
        gevent_child(args.gevent_child, args.waiters, args.idle_window)
        return
    results: dict[str, dict[str, Any]] = {}
    for name in args.scenario or list(SCENARIOS):
        started, load = time.monotonic(), os.getloadavg()[0]
        results[name] = SCENARIOS[name](args)
        results[name]["load_before_after"] = [round(load, 1), round(os.getloadavg()[0], 1)]
        show(f"{name} ({time.monotonic() - started:.0f} s)", results[name])
    table(results)


if __name__ == "__main__":
    main()
