"""Concurrent callers in one process: stores and reads per second, latency and failures, at
C = 1, 4, 64 and 1000 threads and 4 and 1000 gevent greenlets, on this backend next to
Celery's Redis backend, side by side in one run.

Per caller kind (``threads``, ``gevent``), C, operation and backend (a "row"), C callers do
``--operations`` (N, 3,000) operations in all, each its share (N/C, the remainder to the
first ones) one after another:

- ``store``: ``backend.store_result(task_id, i, "SUCCESS")``, every id distinct;
- ``read``: ``backend.get_task_meta(task_id)`` of ids the bench stored beforehand (one at a
  time from the main thread, not measured); a read that returns but not that id's SUCCESS and
  value counts as failed ("WrongResult", not an exception).

Each caller takes its ``app.backend`` (Celery makes one per thread, and so per greenlet once
gevent patched ``threading``), then waits on one barrier; the main thread resets the dev
server's counters and connection figures once all C wait, and releases them. Throughput is
the operations that succeeded over the wall time from the release to the last caller's
finish. Nothing is retried by the bench (and ``result_backend_always_retry`` stays off,
Celery's default): an exception counts as one failed operation, by type, with the first
message seen. Every wait is bounded: a caller still running ``--timeout`` (120 s) after the
release is given up on; the operations it had not finished count as failed ("stuck past
--timeout"), and the wall time is then the timeout. Latency per operation (p50/p99/max,
nearest rank) is over the operations that succeeded.

For this backend also, per row: the requests the dev server received per operation; Raft
writes (the dev server's ``raft.writes``) per stored result; peak connections, the server's
peak for 127.0.0.1 (less the bench's control connection) and the process's pool
(``app.backend.transport.pool.stats()["peak"]``, reset to what is open at the release), and
the pool's ``max_connections`` (``pool.limit``), and the mean members of a batched txn (group
commit: ``consulresults.batching.stats()`` over the row). For Redis, "conns" is the clients
Redis holds at the end of the row beyond those it held before (it keeps no peak).

One dev server (in its own process, ``--http-max-conns-per-client 0``: no limit per client,
healthy, no faults) and one ``redis-server`` of the bench's own (a free loopback port, no
persistence) serve every row. Every app is ``Celery(broker="memory://", backend=url)`` with
Celery's defaults, a new one per row with a fresh prefix (fresh task ids on Redis), and one
store from the main thread before the row (our backend's first write makes the process's
session). The gevent rows run in a subprocess of this script, monkey-patched before anything
else is imported, which passes its rows back as JSON on stdout; it starts once this
process's pooled connections closed (idle for the pool's ``idle_timeout``), so that the dev
server's peak counts the subprocess's only.

The table gives, per row, ours/Redis (throughput and p99), and, per caller kind and
operation, each backend's throughput at C=1000 over C=4. Every figure depends on the
machine's load: the load average before and after is printed (and per row in ``--json``).

    .venv/bin/python bench/concurrency.py [--operations 3000] [--threads 1 4 64 1000]
        [--greenlets 4 1000] [--ops store read] [--timeout 120] [--skip-redis] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import states
from wait_latency import (
    IP,
    OURS,
    RAFT_COUNTERS,
    REDIS,
    Servers,
    load,
    make_app,
    ms,
    progress,
    raise_open_files_limit,
    redis_server,
    request_count,
    spread,
    stop_dev_server,
    wait_until,
)
from wait_scale import Control

from consulresults import batching
from consulresults.devserver import DevServerProcess

THREADS, GEVENT = "threads", "gevent"
STORE, READ = "store", "read"
READY_TIMEOUT = 120.0  # for C callers to make their backends and reach the barrier
STUCK = "stuck past --timeout"
WRONG = "WrongResult"
IDLE_TIMEOUT = 30.0  # for this process's pooled connections to close before the gevent rows
CHILD_SLACK = 300.0  # past the gevent rows' own bounds, for the subprocess as a whole


# ---------------------------------------------------------------------------------- callers


@dataclass
class Caller:
    """One caller's share of the row's ids, and what it did with them (filled as it goes, so a
    caller given up on leaves what it did)."""

    ids: list[tuple[int, str]]
    done: int = 0  # operations finished, failed or not
    latencies: list[float] = field(default_factory=list)  # of those that succeeded
    failures: list[tuple[str, str]] = field(default_factory=list)  # (type, message)
    finished: float | None = None  # perf_counter at its last operation's end
    backend_id: int | None = None


class Handle:
    """A started caller: a thread, or a greenlet (``spawn=gevent.spawn``), joined with a
    timeout either way."""

    def __init__(self, target: Callable[[], None], spawn: Callable[..., Any] | None) -> None:
        if spawn is None:
            self._thread: Any = threading.Thread(target=target, name="caller", daemon=True)
            self._thread.start()
        else:
            self._thread = spawn(target)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        thread = self._thread
        return bool(thread.is_alive()) if hasattr(thread, "is_alive") else not thread.dead


def operate(op: str, backend: Any, index: int, task_id: str) -> None:
    """One operation; raises what the backend raised (a read of the wrong thing: WrongResult)."""
    if op == STORE:
        backend.store_result(task_id, index, states.SUCCESS)
        return
    meta = backend.get_task_meta(task_id)
    if meta.get("status") != states.SUCCESS or meta.get("result") != index:
        raise WrongResultError(f"{task_id}: {meta.get('status')} {meta.get('result')!r}")


class WrongResultError(Exception):
    """A read returned, but not the id's stored SUCCESS and value."""


def run_caller(app: Any, op: str, caller: Caller, barrier: threading.Barrier) -> None:
    """The caller's body: its thread's backend, the barrier, then its share one at a time."""
    try:
        backend = app.backend
        caller.backend_id = id(backend)
        barrier.wait(READY_TIMEOUT)
    except Exception as exc:  # a broken barrier included: its whole share failed
        kind = type(exc).__name__
        caller.failures.extend((kind, str(exc)) for _ in caller.ids[caller.done :])
        caller.done = len(caller.ids)
        caller.finished = time.perf_counter()
        return
    for index, task_id in caller.ids:
        began = time.perf_counter()
        try:
            operate(op, backend, index, task_id)
        except Exception as exc:
            name = WRONG if isinstance(exc, WrongResultError) else type(exc).__name__
            caller.failures.append((name, str(exc)))
        else:
            caller.latencies.append(time.perf_counter() - began)
        caller.done += 1
    caller.finished = time.perf_counter()


def shares(ids: list[str], callers: int) -> list[list[tuple[int, str]]]:
    """Each caller's (index, id) pairs: N/C each, the first N mod C one more."""
    indexed = list(enumerate(ids))
    size, extra = divmod(len(ids), callers)
    out, start = [], 0
    for c in range(callers):
        end = start + size + (c < extra)
        out.append(indexed[start:end])
        start = end
    return out


# ---------------------------------------------------------------------------------- rows


def redis_clients(servers: Servers) -> int:
    assert servers.redis is not None
    return int(servers.redis.info("clients")["connected_clients"])


def prepare(backend: Any, ids: list[str]) -> Counter[str]:
    """Store every id's result from the main thread before a read row; the failures, by type."""
    failed: Counter[str] = Counter()
    for index, task_id in enumerate(ids):
        try:
            backend.store_result(task_id, index, states.SUCCESS)
        except Exception as exc:
            failed[type(exc).__name__] += 1
    return failed


def run_row(
    servers: Servers,
    backend_kind: str,
    kind: str,
    callers: int,
    op: str,
    args: argparse.Namespace,
    spawn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """C callers of ``kind`` doing N ``op`` operations in all on ``backend_kind``: the figures."""
    prefix = f"conc-{backend_kind[:5]}-{kind[0]}{callers}-{op}-{uuid.uuid4().hex[:6]}"
    app = make_app(backend_kind, servers, prefix)
    ids = [f"{prefix}-{i}" for i in range(args.operations)]
    row: dict[str, Any] = {
        "backend": backend_kind,
        "kind": kind,
        "callers": callers,
        "op": op,
        "operations": len(ids),
        "notes": [],
        "load_before": load(),
    }
    main_backend = app.backend
    try:
        main_backend.store_result(f"{prefix}-warm-up", 0, states.SUCCESS)
    except Exception as exc:
        row["notes"].append(f"the warm-up store failed: {type(exc).__name__}: {exc}")
    if op == READ:
        started = time.perf_counter()
        setup_failed = prepare(main_backend, ids)
        row["prepare_s"] = round(time.perf_counter() - started, 3)
        if setup_failed:
            row["notes"].append(f"stores before the reads failed: {dict(setup_failed)}")
    ours = backend_kind == OURS
    pool = main_backend.transport.pool if ours else None

    barrier = threading.Barrier(callers + 1)
    work = [Caller(share) for share in shares(ids, callers)]
    handles = [Handle(lambda c=c: run_caller(app, op, c, barrier), spawn) for c in work]
    at_barrier = lambda: barrier.n_waiting + sum(c.finished is not None for c in work) >= callers  # noqa: E731
    if not wait_until(at_barrier, READY_TIMEOUT):
        row["notes"].append(f"not all {callers} callers at the barrier in {READY_TIMEOUT:g} s")
    if ours:
        servers.consul.reset_counters()
        servers.consul.reset_connection_stats()
        assert pool is not None
        pool.peak = pool.stats()["open"]
    batched_before = batching.stats()
    clients_before = redis_clients(servers) if not ours else 0
    released = time.perf_counter()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(READY_TIMEOUT)
    deadline = released + args.timeout
    for handle in handles:
        handle.join(max(0.0, deadline - time.perf_counter()))
    stuck = [c for c, h in zip(work, handles, strict=True) if h.alive()]
    ended = time.perf_counter()
    if ours:
        counts = servers.consul.counters()
        local = servers.consul.connection_stats()
    else:
        row["redis_clients"] = redis_clients(servers) - clients_before

    failures: Counter[str] = Counter()
    first: dict[str, str] = {}
    latencies: list[float] = []
    for c in work:
        for name, message in list(c.failures):
            failures[name] += 1
            first.setdefault(name, message[:300])
        latencies.extend(list(c.latencies))
    not_done = sum(len(c.ids) - c.done for c in stuck)
    if stuck:
        failures[STUCK] += not_done
        first[STUCK] = f"{len(stuck)} callers still running {args.timeout:g} s after the release"
    finishes = [c.finished for c in work if c.finished is not None]
    wall = (ended if stuck else max(finishes, default=ended)) - released
    succeeded = len(latencies)
    row.update(
        succeeded=succeeded,
        failed=sum(failures.values()),
        failures=dict(failures),
        first_messages=first,
        stuck_callers=len(stuck),
        wall_s=round(wall, 4),
        per_second=succeeded / wall if wall > 0 else None,
        latency=spread(latencies),
        backends=len({c.backend_id for c in work if c.backend_id is not None}),
    )
    if ours:
        assert pool is not None
        stats = pool.stats()
        raft = {name: counts.get(name, 0) for name in RAFT_COUNTERS}
        stores = succeeded if op == STORE else 0
        row.update(
            requests=request_count(counts),
            requests_per_op=request_count(counts) / len(ids),
            endpoints={
                k: v
                for k, v in counts.items()
                if v and k not in ("requests", "connections") and not k.startswith("raft.")
            },
            new_connections=counts.get("connections", 0),
            raft=raft,
            raft_writes_per_store=raft["raft.writes"] / stores if stores else None,
            server_peak=local["peak"].get(IP, 0) - 1,  # not the control connection
            refused=local["refused"].get(IP, 0),
            pool_peak=stats["peak"],
            max_connections=pool.limit,
            pool=stats,
            batching=batching_delta(batched_before, batching.stats()),
        )
    row["load_after"] = load()
    return row


def batching_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """What group commit did during a row: txns of several members, their members, members
    sent again after another's refusal, and the mean batch."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("batches", "members", "resent")}
    mean = delta["members"] / delta["batches"] if delta["batches"] else None
    return {**delta, "mean_batch": mean}


# ---------------------------------------------------------------------------------- sweeps


def sweep(
    servers: Servers,
    backends: list[str],
    kind: str,
    counts: list[int],
    args: argparse.Namespace,
    spawn: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """Every C and operation, each on every backend in turn (the same row side by side)."""
    rows = []
    for callers in counts:
        for op in args.ops:
            for backend_kind in backends:
                started = time.monotonic()
                row = run_row(servers, backend_kind, kind, callers, op, args, spawn)
                lat = row["latency"]
                rate = row["per_second"]
                progress(
                    f"[{kind} C={callers} {op} {backend_kind}] {time.monotonic() - started:.0f} s"
                    f", {rate or 0:.0f}/s, p50 {ms(lat['p50'])} ms, p99 {ms(lat['p99'])} ms, "
                    f"failed {row['failed']} {row['failures'] or ''}"
                )
                rows.append(row)
                gc.collect()  # the row's thread-local backends, and Redis's sockets, go now
    return rows


def gevent_rows(
    servers: Servers, backends: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], str | None]:
    """The gevent rows, from a subprocess of this script monkey-patched before its imports;
    (rows, None), or ([], why) when it failed."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import os, runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    cmd = [sys.executable, "-c", code, os.path.abspath(__file__)]
    cmd += ["--gevent-child", servers.consul.url, "--redis-port", str(servers.redis_port or 0)]
    cmd += ["--operations", str(args.operations), "--timeout", str(args.timeout)]
    cmd += ["--greenlets", *map(str, args.greenlets), "--ops", *args.ops]
    if REDIS not in backends:
        cmd.append("--skip-redis")
    rows = len(args.greenlets) * len(args.ops) * len(backends)
    bound = rows * (args.timeout + READY_TIMEOUT) + CHILD_SLACK
    # the child's connections then are the only ones from 127.0.0.1: this process's idle
    # pooled ones close after the pool's idle_timeout, and its control connection now
    if not wait_until(lambda: servers.consul.local("open") <= 0, IDLE_TIMEOUT, step=0.1):
        progress(f"connections of the thread rows still open after {IDLE_TIMEOUT:g} s")
    servers.consul.close()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=bound)
    except subprocess.TimeoutExpired as exc:
        return [], f"the gevent subprocess did not end within {bound:g} s ({exc.stderr!r:.500})"
    sys.stderr.write(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    if done.returncode or not lines:
        return [], f"the gevent subprocess failed ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1]), None


def gevent_child(args: argparse.Namespace) -> None:
    import gevent

    control = Control(args.gevent_child)
    servers = Servers(control)
    backends = [OURS]
    if not args.skip_redis:
        servers.redis_port = args.redis_port
        servers.redis = redis.Redis(host="127.0.0.1", port=args.redis_port, socket_timeout=10)
        backends.append(REDIS)
    try:
        rows = sweep(servers, backends, GEVENT, args.greenlets, args, spawn=gevent.spawn)
    finally:
        control.close()
        if servers.redis is not None:
            servers.redis.close()
    print(json.dumps(rows), flush=True)
    sys.stdout.flush()
    os._exit(0)  # greenlets given up on are not waited for


# ---------------------------------------------------------------------------------- report


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def find(rows: list[dict], backend: str, kind: str, callers: int, op: str) -> dict | None:
    for row in rows:
        if (row["backend"], row["kind"], row["callers"], row["op"]) == (backend, kind, callers, op):
            return row
    return None


def table(rows: list[dict], loads: tuple[float, float], notes: list[str]) -> None:
    print(f"load average (1 min): {loads[0]:.2f} before, {loads[1]:.2f} after")
    print(
        f"\n{'kind':<7} {'C':>4} {'op':<5} {'backend':<13} {'ok':>9} {'ops/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>8} {'max ms':>8} {'req/op':>6} {'raft/st':>7} {'srv pk':>6} {'pool pk':>7} "
        f"{'max_c':>5} {'x redis':>7} {'p99 x':>6} {'batch':>6}"
    )
    for row in rows:
        lat = row["latency"]
        ours = row["backend"] == OURS
        other = find(rows, REDIS, row["kind"], row["callers"], row["op"]) if ours else None
        conns = row.get("server_peak") if ours else row.get("redis_clients")
        print(
            f"{row['kind']:<7} {row['callers']:>4} {row['op']:<5} {row['backend']:<13} "
            f"{row['succeeded']:>4}/{row['operations']:<4} {number(row['per_second'], 0):>7} "
            f"{ms(lat['p50']):>7} {ms(lat['p99']):>8} {ms(lat['max']):>8} "
            f"{number(row.get('requests_per_op')):>6} "
            f"{number(row.get('raft_writes_per_store')):>7} {'-' if conns is None else conns:>6} "
            f"{row.get('pool_peak', '-'):>7} {row.get('max_connections', '-'):>5} "
            f"{ratio(row['per_second'], other and other['per_second']):>7} "
            f"{ratio(lat['p99'], other and other['latency']['p99']):>6} "
            f"{number((row.get('batching') or {}).get('mean_batch'), 1):>6}"
        )
    print(
        "\nok: operations that succeeded; req/op: requests at the dev server per operation; "
        "raft/st: Raft writes per stored result; srv pk: the dev server's peak connections "
        "from 127.0.0.1 (for Redis: clients it held at the row's end beyond those before); "
        "pool pk / max_c: the pool's peak and its max_connections; x redis: our ops/s over "
        "Redis's; p99 x: our p99 over Redis's; batch: the mean members of a batched txn "
        "(group commit; '-': none formed)"
    )
    head = f"{'C=1000 over C=4':<16} {'op':<5} {'backend':<13} {'C=4 /s':>8} {'C=1000 /s':>9}"
    print(f"\n{head} ratio")
    for kind in (THREADS, GEVENT):
        for op in (STORE, READ):
            for backend in (OURS, REDIS):
                low, high = find(rows, backend, kind, 4, op), find(rows, backend, kind, 1000, op)
                if low is None or high is None:
                    continue
                print(
                    f"{kind:<16} {op:<5} {backend:<13} {number(low['per_second'], 0):>8} "
                    f"{number(high['per_second'], 0):>9} "
                    f"{ratio(high['per_second'], low['per_second'])}"
                )
    for row in rows:
        if row["failed"]:
            print(
                f"failed: {row['kind']} C={row['callers']} {row['op']} {row['backend']}: "
                f"{row['failed']} {row['failures']}; first messages: {row['first_messages']}"
            )
        for note in row["notes"]:
            print(f"note: {row['kind']} C={row['callers']} {row['op']} {row['backend']}: {note}")
    for note in notes:
        print(f"note: {note}")


# ---------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=3000, help="N per row (default 3000)")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 4, 64, 1000])
    parser.add_argument("--greenlets", type=int, nargs="*", default=[4, 1000])
    parser.add_argument("--ops", nargs="+", choices=[STORE, READ], default=[STORE, READ])
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="a caller's bound after the release (s)"
    )
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--gevent-child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    raise_open_files_limit()
    if args.gevent_child:
        gevent_child(args)
        return
    if not args.skip_redis and shutil.which("redis-server") is None:
        print("redis-server is not on PATH: install it, or run with --skip-redis", file=sys.stderr)
        sys.exit(2)
    backends = [OURS] + ([] if args.skip_redis else [REDIS])
    load_before, notes = load(), []
    with contextlib.ExitStack() as stack:
        dev = DevServerProcess("--http-max-conns-per-client", "0").start()
        stack.callback(stop_dev_server, dev)
        servers = Servers(Control(dev.url))
        stack.callback(servers.consul.close)
        if not args.skip_redis:
            servers.redis_port, servers.redis = stack.enter_context(redis_server())
        rows = sweep(servers, backends, THREADS, args.threads, args)
        leftover = sum(t.name == "caller" for t in threading.enumerate())
        if args.greenlets:
            more, why = gevent_rows(servers, backends, args)
            rows += more
            if why:
                notes.append(why)
    if leftover:
        notes.append(f"{leftover} callers' threads still running after the thread rows")
    loads = (load_before, load())
    if args.json:
        print(json.dumps({"load_before_after": loads, "rows": rows, "notes": notes}, indent=2))
    else:
        table(rows, loads, notes)


if __name__ == "__main__":
    main()
