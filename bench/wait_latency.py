"""Waiting web requests: how soon each ``AsyncResult(id).get()`` returns after its store.

What a web app whose requests wait on Celery tasks sees, with K requests waiting at once in one
process (K = 1, 2, 8, 32, 128, 1000), on this backend next to Celery's built-in Consul backend
and Celery's Redis backend, side by side in one run.

Per K and backend, K threads each wait in ``get(timeout=--timeout)`` on a task id of its own.
Once all K are waiting, a writer thread of the same process (with its own ``app.backend``:
Celery's are per thread) stores the K results one at a time, 20-30 ms apart (uniform, from
``--seed``; the same gaps for every backend), with ``store_result(id, value, "SUCCESS")``,
the first after a seeded pause of 0-0.5 s (PHASE_SECONDS: so that a 0.5 s poller is not always
caught at the same point of its period).
A waiter's latency runs from just before its result's store call to its ``get()`` returning;
p50/p99/max are nearest-rank, over every ``--repeat``.

"All K waiting" is known from state, not guessed from time: each thread sets an event just
before calling ``get()``; on this backend the bench then waits until the process's waiting
service watches the K keys (``consulresults.waiting.WAITING.watched_keys()``). The other two
show no such state, so they get SETTLE (1 s) after the last event: two of the built-in's 0.5 s
polls, and ample for Redis's subscribe. Every wait is bounded (READY_TIMEOUT, ``--timeout``); a
waiter that fails or never returns is counted and reported, never waited on for ever.

For this backend also, per K:

- requests/s at the dev server while the K wait and nothing changes (counters reset,
  ``--idle-window`` seconds), next to its allowance max(1, ceil(K/128)/5);
- Raft writes while storing: the dev server's ``raft.*`` counters, reset just before the stores
  and read once the last waiter returned ("n/a" where the server has none); "extra writes per
  result" is (raft.writes - stored) / stored, each store being one write itself (the built-in
  gets the same figures, from the same server);
- "start" (once, after the K sweep): ``--start-waiters`` (1000) threads released into ``get()``
  by one barrier, their ``AsyncResult`` and thread's backend made beforehand: the requests the
  dev server saw from the release until every waiter is watched, plus 1 s, and the time until
  every one was.

Connections while waiting ("conns"): the dev server's peak for 127.0.0.1 less the bench's own
control connection (as in wait_scale.py) for both Consul backends; Redis's ``connected_clients``
less the bench's own client. "before" is what was open already as the waiters started (this
backend's pool is the process's, shared by every prefix; the built-in's sockets close when
they are collected), counted in "conns" too.

One dev server (in its own process, Consul's default of 200 connections per client) serves
both Consul backends; the bench starts a ``redis-server`` of its own on a free loopback port
without persistence, and stops it at the end. Every app is
``Celery(broker="memory://", backend=url)`` with Celery's defaults, a new one per backend and
K with a fresh prefix (fresh task ids on Redis, whose keys have no prefix). The built-in is
skipped above ``--builtin-max-k`` (128): it holds a connection per waiting thread.

Every figure depends on the machine's load: the load average before and after is printed.
With ``--repeat``, a row's connections, idle rate and extra writes are the worst repeat's.

    .venv/bin/python bench/wait_latency.py [--waiters 1 2 8 32 128 1000] [--idle-window 10]
        [--repeat 1] [--timeout 60] [--seed 0] [--builtin-max-k 128] [--start-waiters 1000]
        [--skip-redis] [--skip-builtin] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, states
from wait_scale import Control, wait_until  # the dev server's control API; a bounded wait

from consulresults.devserver import DevServerProcess
from consulresults.waiting import LINGER, WAITING

IP = "127.0.0.1"
OURS, BUILTIN, REDIS = "consulresults", "builtin", "redis"
SETTLE = 1.0  # built-in and Redis: after the last waiter's event, before the stores
READY_TIMEOUT = 60.0  # for K waiters to be waiting (or, at the start, watched)
WARM_UP_TIMEOUT = 30.0  # the writer's first store
JOIN_GRACE = 15.0  # past --timeout, for a waiter to return after the last store
REDIS_START_TIMEOUT = 10.0
GAP_SECONDS = (0.020, 0.030)  # between one store call and the next
# Before the first store: a poller's period (the built-in's 0.5 s, and this backend's rounds
# while it polls) started when its waiters did; after a whole-second settle or idle window,
# every store would land just after a poll, its worst case, each time.
PHASE_SECONDS = (0.0, 0.5)
RAFT_COUNTERS = ("raft.txn.applied", "raft.txn.failed", "raft.kv", "raft.session", "raft.writes")


# ---------------------------------------------------------------------------------- helpers


def spread(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max (nearest rank), in seconds; None when there is nothing."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1]}


def request_count(counts: dict[str, int]) -> int:
    """The requests in a ``counters()`` snapshot. Its ``requests`` sums every key but
    ``connections``, so Raft counters added to the same table would be summed in: they are
    taken out again when they were."""
    raft = sum(v for k, v in counts.items() if k.startswith("raft."))
    summed = sum(v for k, v in counts.items() if k not in ("requests", "connections"))
    total = counts.get("requests", 0)
    return total - raft if raft and total == summed else total


def endpoints(counts: dict[str, int]) -> dict[str, int]:
    """The requests of a snapshot by endpoint (no totals, connections or Raft counters)."""
    skip = ("requests", "connections")
    return {k: v for k, v in counts.items() if v and k not in skip and not k.startswith("raft.")}


def allowance(waiters: int) -> float:
    """Requests/s this backend may cost the agent while ``waiters`` wait and nothing changes."""
    return max(1.0, math.ceil(waiters / 128) / 5)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    """A loopback port free now (the kernel's pick; another process could take it meanwhile)."""
    with socket.socket() as probe:
        probe.bind((IP, 0))
        return int(probe.getsockname()[1])


def raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one: 1,000 waiters on Redis hold two sockets
    each (a connection and a subscription), past the common default of 1,024. The servers
    started after this inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def our_threads() -> int:
    """The bench's own threads still running (waiters and writers): none, after a clean run."""
    return sum(t.name.startswith(("waiter-", "writer")) for t in threading.enumerate())


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- servers


@dataclass
class Servers:
    """What the rounds run against: the dev server's control connection, and Redis's port
    with the bench's own client (None with ``--skip-redis``)."""

    consul: Control
    redis_port: int | None = None
    redis: redis.Redis | None = None

    def url(self, kind: str, prefix: str) -> str:
        if kind == OURS:
            return f"consulresults://{self.consul.address}/{prefix}"
        if kind == BUILTIN:
            return f"consul://{self.consul.address}/{prefix}"
        return f"redis://{IP}:{self.redis_port}/0"

    def open_connections(self, kind: str) -> int:
        """Clients' connections open now, without the bench's own."""
        if kind == REDIS:
            assert self.redis is not None
            return int(self.redis.info("clients")["connected_clients"]) - 1
        return self.consul.local("open")

    def start_peak(self, kind: str) -> None:
        if kind != REDIS:
            self.consul.reset_connection_stats()

    def peak_connections(self, kind: str) -> int:
        """The dev server's peak since :meth:`start_peak`; Redis keeps no peak: open now."""
        return self.open_connections(kind) if kind == REDIS else self.consul.local("peak")


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[int, redis.Redis]]:
    """A ``redis-server`` of the bench's own on a free loopback port, no persistence; its
    port and a client (one connection), until the block ends."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives with the process
    no_persistence = ["--save", "", "--appendonly", "no"]
    command = ["redis-server", "--port", str(port), "--bind", IP, *no_persistence]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    client = redis.Redis(host=IP, port=port, socket_timeout=10, socket_connect_timeout=2)
    try:
        answered = lambda: process.poll() is not None or _pings(client)  # noqa: E731
        if not wait_until(answered, REDIS_START_TIMEOUT):
            raise RuntimeError(f"redis-server did not answer on port {port} within 10 s")
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"redis-server exited ({process.returncode}): {log.read()[-500:]}")
        yield port, client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def stop_dev_server(server: DevServerProcess) -> None:
    """Stop the dev server; killed if it is not gone within its 10 s (the figures are kept)."""
    try:
        server.stop()
    except subprocess.TimeoutExpired:
        progress("the dev server did not stop within 10 s of SIGTERM: killed")
        server.kill()


def make_app(kind: str, servers: Servers, prefix: str) -> Celery:
    """A new app on ``kind``, Celery's defaults but the backend (and a broker it never uses)."""
    url = servers.url(kind, prefix)
    return Celery(f"wait-latency-{prefix}", broker="memory://", backend=url, set_as_current=False)


# ---------------------------------------------------------------------------------- threads


class Waiters:
    """K threads, each in ``AsyncResult(id).get(timeout)`` on its own task id (the result's
    value is its index); when each returned, and what failed. With a barrier, each makes its
    ``AsyncResult`` first (and so its thread's backend), then waits on it before ``get()``."""

    def __init__(
        self,
        app: Celery,
        ids: list[str],
        timeout: float,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.app, self.ids, self.timeout, self.barrier = app, ids, timeout, barrier
        self.calling = [threading.Event() for _ in ids]  # set just before get()
        self.returned: dict[str, float] = {}
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._wait, args=(i,), name=f"waiter-{i}", daemon=True)
            for i in range(len(ids))
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _wait(self, index: int) -> None:
        task_id = self.ids[index]
        try:
            result = self.app.AsyncResult(task_id)
            if self.barrier is not None:
                self.barrier.wait(READY_TIMEOUT)
            self.calling[index].set()
            value = result.get(timeout=self.timeout)
            returned = time.perf_counter()
        except Exception as exc:  # a timeout included: a failed waiter, reported
            self._fail(type(exc).__name__)
            return
        finally:
            self.calling[index].set()  # also for one that failed before get(): none is waited on
        if value != index:
            self._fail("wrong value")
            return
        with self._lock:
            self.returned[task_id] = returned

    def _fail(self, what: str) -> None:
        with self._lock:
            self.errors[what] += 1

    def failed(self) -> int:
        with self._lock:
            return sum(self.errors.values())

    def all_calling(self, deadline: float) -> bool:
        """Whether every thread reached its ``get()`` (or failed) before ``deadline``."""
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self.calling)

    def join(self, deadline: float) -> int:
        """Join every thread until ``deadline``; how many are still running then."""
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self.threads)


@dataclass
class Stores:
    """What the writer did: when each store call began (by task id), how long each took, and
    the stores that failed. Filled as it goes, so a writer cut short leaves what it did."""

    began: dict[str, float] = field(default_factory=dict)
    took: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class Writer:
    """The thread that stores, as a web app's worker would: one thread, so that its warm-up
    store (our backend's first write makes the process's session) and the measured stores
    share its ``app.backend``."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="writer")

    def run(self, work: Callable[[Any], object], timeout: float) -> bool:
        """``work(backend)`` on the writer's thread; False if it did not end within
        ``timeout`` seconds (it goes on in the background, and :meth:`close` leaves it)."""
        future = self._thread.submit(lambda: work(self.app.backend))
        try:
            future.result(timeout)
        except FutureTimeout:
            return False
        return True

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def warm_up(backend: Any) -> None:
    backend.store_result(f"warm-up-{uuid.uuid4().hex[:8]}", 0, states.SUCCESS)


def store_all(backend: Any, ids: list[str], gaps: list[float], into: Stores) -> None:
    """Store result ``i`` for ``ids[i]``, one at a time, each call ``gaps[i - 1]`` seconds
    after the previous one began (at once if that one took longer)."""
    next_at = time.perf_counter()
    for index, (task_id, gap) in enumerate(zip(ids, gaps, strict=True)):
        time.sleep(max(0.0, next_at - time.perf_counter()))
        began = time.perf_counter()
        next_at = began + gap
        try:
            backend.store_result(task_id, index, states.SUCCESS)
        except Exception as exc:
            into.errors[f"store {type(exc).__name__}"] += 1
            continue
        into.took.append(time.perf_counter() - began)
        into.began[task_id] = began


def schedule(seed: int, waiters: int, repeat: int) -> tuple[float, list[float]]:
    """The pause before the first store (see PHASE_SECONDS) and the gaps between stores:
    seeded by K and repeat, so the same for every backend."""
    rng = random.Random(f"{seed}-{waiters}-{repeat}")
    return rng.uniform(*PHASE_SECONDS), [rng.uniform(*GAP_SECONDS) for _ in range(waiters)]


def store_bound(waiters: int) -> float:
    """How long K stores may take before the writer is given up on (a second each, at most)."""
    return 30.0 + waiters * (GAP_SECONDS[1] + 1.0)


# ---------------------------------------------------------------------------------- rounds


def until_waiting(kind: str, waiters: Waiters, baseline: int) -> tuple[bool, float]:
    """Whether all K are waiting (or failed) within READY_TIMEOUT, and how long they took to
    (from their start; for the built-in and Redis, to their last event, SETTLE not counted)."""
    began = time.perf_counter()
    deadline = time.monotonic() + READY_TIMEOUT
    ready = waiters.all_calling(deadline)
    if ready and kind == OURS:
        k = len(waiters.ids)
        watched = lambda: WAITING.watched_keys() - baseline + waiters.failed() >= k  # noqa: E731
        ready = wait_until(watched, max(0.0, deadline - time.monotonic()), step=0.002)
    took = time.perf_counter() - began
    if ready and kind != OURS:
        time.sleep(SETTLE)
    return ready, took


def settled(k: int) -> None:
    """Before the idle window: this round's keys registered (K >= 2), and earlier rounds'
    doorbells, which linger after their last waiter (waiting.LINGER), closed."""
    deadline = time.monotonic() + LINGER + READY_TIMEOUT
    doorbells = 1 if k > 1 else 0
    while time.monotonic() < deadline and (
        WAITING.open_doorbells() > doorbells or (k > 1 and WAITING.registered_keys() < k)
    ):
        time.sleep(0.05)


def idle_rate(server: Control, seconds: float) -> dict[str, Any]:
    """Requests/s at the dev server while the waiters wait and nothing changes, by endpoint."""
    server.reset_counters()
    time.sleep(seconds)
    counts = server.counters()
    return {"per_second": request_count(counts) / seconds, "endpoints": endpoints(counts)}


def raft_writes(counts: dict[str, int], stored: int) -> dict[str, Any]:
    """The Raft counters of a snapshot and the extra writes per stored result; None for a
    server without them. A counter absent next to others is 0 (a reset empties the table)."""
    if not any(name.startswith("raft.") for name in counts):
        return {"counters": None, "extra_per_result": None}
    found = {name: counts.get(name, 0) for name in RAFT_COUNTERS}
    writes = found["raft.writes"]
    extra = (writes - stored) / stored if stored else None
    return {"counters": found, "extra_per_result": extra}


def run_round(kind: str, k: int, servers: Servers, args: argparse.Namespace, repeat: int) -> dict:
    """K waiters on ``kind``, then their K results stored 20-30 ms apart: the figures."""
    prefix = f"lat-{kind[:5]}-{k}-{uuid.uuid4().hex[:6]}"
    app = make_app(kind, servers, prefix)
    ids = [f"{prefix}-{i}" for i in range(k)]
    figures: dict[str, Any] = {"backend": kind, "waiters": k, "repeat": repeat, "notes": []}
    figures["load_before"] = load()
    writer, waiters, stores = Writer(app), Waiters(app, ids, args.timeout), Stores()
    try:
        if not writer.run(warm_up, WARM_UP_TIMEOUT):
            figures["notes"].append(f"warm-up store not done within {WARM_UP_TIMEOUT:g} s")
        baseline = WAITING.watched_keys()
        figures["open_before"] = servers.open_connections(kind)
        servers.start_peak(kind)
        waiters.start()
        ready, figures["to_waiting_s"] = until_waiting(kind, waiters, baseline)
        if not ready:
            figures["notes"].append(f"not all {k} waiting within {READY_TIMEOUT:g} s")
        if kind == OURS:
            settled(k)
            figures["idle"] = idle_rate(servers.consul, args.idle_window)
        figures["connections"] = servers.peak_connections(kind)
        if kind != REDIS:
            figures["refused"] = servers.consul.local("refused")
        phase, gaps = schedule(args.seed, k, repeat)
        time.sleep(phase)
        if kind != REDIS:
            servers.consul.reset_counters()
        work = lambda backend: store_all(backend, ids, gaps, stores)  # noqa: E731
        if not writer.run(work, store_bound(k)):
            figures["notes"].append(f"the writer did not finish within {store_bound(k):g} s")
        still = waiters.join(time.monotonic() + args.timeout + JOIN_GRACE)
        if kind != REDIS:
            counts = servers.consul.counters()
            figures["raft"] = raft_writes(counts, len(stores.began))
            figures["requests_storing"] = endpoints(counts)
    finally:
        writer.close()
    errors = dict(waiters.errors) | ({"still waiting": still} if still else {})
    latencies = [waiters.returned[t] - stores.began[t] for t in ids if t in waiters.returned]
    figures.update(
        latencies=[round(x, 6) for x in latencies],
        latency=spread(latencies),
        failed=sum(errors.values()),
        errors=errors,
        store_errors=dict(stores.errors),
        store_p50_s=spread(stores.took)["p50"],
        load_after=load(),
    )
    return figures


def measure_start(servers: Servers, k: int, timeout: float) -> dict[str, Any]:
    """K waiters released into ``get()`` at once by one barrier: the requests the dev server
    saw from the release until every one is watched, plus 1 s, and the time until then. Their
    results are then stored back to back, so that they return."""
    prefix = f"lat-start-{uuid.uuid4().hex[:6]}"
    app = make_app(OURS, servers, prefix)
    ids = [f"{prefix}-{i}" for i in range(k)]
    barrier = threading.Barrier(k + 1)
    writer, waiters, stores = Writer(app), Waiters(app, ids, timeout, barrier), Stores()
    figures: dict[str, Any] = {"waiters": k, "notes": [], "load_before": load()}
    try:
        writer.run(warm_up, WARM_UP_TIMEOUT)
        baseline = WAITING.watched_keys()
        waiters.start()
        at_barrier = lambda: barrier.n_waiting + waiters.failed() >= k  # noqa: E731
        if not wait_until(at_barrier, READY_TIMEOUT):
            figures["notes"].append(f"not all {k} threads at the barrier in {READY_TIMEOUT:g} s")
        servers.consul.reset_counters()
        released = time.perf_counter()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(READY_TIMEOUT)
        watched = lambda: WAITING.watched_keys() - baseline + waiters.failed() >= k  # noqa: E731
        if not wait_until(watched, READY_TIMEOUT, step=0.002):
            figures["notes"].append(f"not all {k} watched within {READY_TIMEOUT:g} s")
        figures["to_watched_s"] = time.perf_counter() - released
        time.sleep(1.0)
        counts = servers.consul.counters()
        figures["requests"] = request_count(counts)
        figures["endpoints"] = endpoints(counts)
        figures["new_connections"] = counts.get("connections", 0)
        work = lambda backend: store_all(backend, ids, [0.0] * k, stores)  # noqa: E731
        writer.run(work, store_bound(k))
        still = waiters.join(time.monotonic() + timeout + JOIN_GRACE)
    finally:
        writer.close()
    figures["failed"] = waiters.failed() + still
    figures["errors"] = dict(waiters.errors) | ({"still waiting": still} if still else {})
    figures["load_after"] = load()
    return figures


def sweep(servers: Servers, kinds: list[str], args: argparse.Namespace) -> list[dict]:
    """Every K, each on every backend in turn (the same K side by side), ``--repeat`` times."""
    rounds = []
    for repeat in range(args.repeat):
        for k in args.waiters:
            for kind in kinds:
                if kind == BUILTIN and k > args.builtin_max_k:
                    continue
                started = time.monotonic()
                figures = run_round(kind, k, servers, args, repeat)
                lat = figures["latency"]
                progress(
                    f"[K={k} {kind} #{repeat}] {time.monotonic() - started:.0f} s, p50 "
                    f"{ms(lat['p50'])} ms, max {ms(lat['max'])} ms, failed {figures['failed']}"
                )
                rounds.append(figures)
                gc.collect()  # the round's thread-local backends, and their sockets, go now
    return rounds


# ---------------------------------------------------------------------------------- report


def summarise(rounds: list[dict], kinds: list[str], args: argparse.Namespace) -> list[dict]:
    """One row per K and backend: latency over every repeat, the worst repeat's costs."""
    rows = []
    for k in args.waiters:
        for kind in kinds:
            group = [r for r in rounds if r["waiters"] == k and r["backend"] == kind]
            row: dict[str, Any] = {"waiters": k, "backend": kind}
            if not group:
                row["skipped"] = f"K > --builtin-max-k {args.builtin_max_k}"
                rows.append(row)
                continue
            latencies = [x for r in group for x in r["latencies"]]
            extras = [r["raft"]["extra_per_result"] for r in group if "raft" in r]
            row.update(
                returned=len(latencies),
                expected=k * len(group),
                failed=sum(r["failed"] for r in group),
                latency=spread(latencies),
                connections=max(r["connections"] for r in group),
                open_before=max(r["open_before"] for r in group),
                errors=dict(sum((Counter(r["errors"]) for r in group), Counter())),
                idle_per_second=max(
                    (r["idle"]["per_second"] for r in group if "idle" in r), default=None
                ),
                allowance=allowance(k) if kind == OURS else None,
                extra_writes=None if None in extras or not extras else max(extras),
                raft_counted="raft" in group[0] and group[0]["raft"]["counters"] is not None,
            )
            rows.append(row)
    return rows


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict], start: dict[str, Any] | None, loads: tuple[float, float]) -> None:
    print(f"load average (1 min): {loads[0]:.2f} before, {loads[1]:.2f} after")
    print(
        f"\n{'K':>5} {'backend':<13} {'returned':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'conns':>5} {'before':>6} {'idle req/s':>10} {'allowed':>7} {'extra writes/result':>19}"
    )
    for row in rows:
        head = f"{row['waiters']:>5} {row['backend']:<13}"
        if "skipped" in row:
            print(f"{head} skipped ({row['skipped']})")
            continue
        lat, idle = row["latency"], row["idle_per_second"]
        if row["backend"] == REDIS:
            extra = "-"
        elif not row["raft_counted"]:
            extra = "n/a"
        else:
            extra = number(row["extra_writes"])
        print(
            f"{head} {row['returned']:>4}/{row['expected']:<4} {ms(lat['p50']):>8} "
            f"{ms(lat['p99']):>8} {ms(lat['max']):>8} {row['connections']:>5} "
            f"{row['open_before']:>6} {number(idle):>10} {number(row['allowance']):>7} "
            f"{extra:>19}"
        )
    failed = [row for row in rows if row.get("failed")]
    for row in failed:
        print(f"failed: K={row['waiters']} {row['backend']}: {row['failed']} ({row['errors']})")
    if start:
        print(
            f"\nstart: {start['waiters']} waiters released at once, every one watched after "
            f"{start['to_watched_s']:.2f} s; the dev server saw {start['requests']} requests "
            f"until then + 1 s ({', '.join(f'{k} {v}' for k, v in start['endpoints'].items())}); "
            f"failed {start['failed']}"
        )


# ---------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, nargs="+", default=[1, 2, 8, 32, 128, 1000])
    parser.add_argument("--idle-window", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="each get()'s timeout")
    parser.add_argument("--seed", type=int, default=0, help="of the 20-30 ms gaps")
    parser.add_argument(
        "--builtin-max-k",
        type=int,
        default=128,
        help="the built-in backend only up to this K (it holds a connection per waiter)",
    )
    parser.add_argument(
        "--start-waiters", type=int, default=1000, help="for the start figure (0: none)"
    )
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    raise_open_files_limit()
    if not args.skip_redis and shutil.which("redis-server") is None:
        print("redis-server is not on PATH: install it, or run with --skip-redis", file=sys.stderr)
        sys.exit(2)
    kinds = [OURS] + ([] if args.skip_builtin else [BUILTIN]) + ([] if args.skip_redis else [REDIS])
    load_before = load()
    with contextlib.ExitStack() as stack:
        dev = DevServerProcess().start()
        stack.callback(stop_dev_server, dev)
        servers = Servers(Control(dev.url))
        stack.callback(servers.consul.close)
        if not args.skip_redis:
            servers.redis_port, servers.redis = stack.enter_context(redis_server())
        rounds = sweep(servers, kinds, args)
        start = (
            measure_start(servers, args.start_waiters, args.timeout) if args.start_waiters else None
        )
    loads = (load_before, load())
    rows, leftover = summarise(rounds, kinds, args), our_threads()
    if args.json:
        document = {"load_before_after": loads, "rows": rows, "start": start, "rounds": rounds}
        print(json.dumps(document | {"threads_left": leftover}, indent=2))
    else:
        table(rows, start, loads)
        for r in [*rounds, start or {}]:
            for note in r.get("notes", []):
                print(f"note: K={r['waiters']} {r.get('backend', 'start')}: {note}")
        if leftover:
            print(f"{leftover} of the bench's threads still running at the end (daemons)")


if __name__ == "__main__":
    main()
