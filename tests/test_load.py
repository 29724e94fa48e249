"""Load (issue 5): several processes x threads storing and reading at once lose nothing.

Client processes use the backend exactly as worker processes do (``store_result``, ``incr``,
``get_many``), started together at one barrier so that their writes really collide:

- every thread stores SUCCESS for its own ids while a thread of the next process stores STARTED
  for the same ids (a late STARTED racing the SUCCESS): each must end SUCCESS with its value;
- every thread increments one shared chord counter: the counts handed out are exactly 1..N, each
  once (no lost or doubled increment, so a chord body fires exactly once);
- 200 chord parts finishing at the same instant (4 processes x 50 threads, one increment each);
- and a real 200-part chord on a worker with 8 prefork processes: its body runs exactly once.

The reduced forms run in CI; ``scripts/test -m slow tests/test_load.py`` runs the full ones.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery, chord, states
from conftest import backend_url, celery_worker, worker_idle

pytestmark = pytest.mark.e2e  # real workers: the full suite's, not the matrix's

SPAWN = multiprocessing.get_context("spawn")


def _backend(url: str, token: str | None):
    """The backend of a client process, shared by its threads as a prefork child's is."""
    app = Celery("load", set_as_current=False)
    app.conf.update(result_backend=url, consulresults_token=token, result_expires=3600)
    return app.backend


def _in_threads(work: Callable[[int], None], threads: int) -> list[str]:
    """Run ``work(0..threads-1)`` in as many threads; the tracebacks of those that raised."""
    errors: list[str] = []

    def run(t: int) -> None:
        try:
            work(t)
        except Exception:
            errors.append(traceback.format_exc())

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def _client_process(url, token, proc, procs, threads, per_thread, increments, barrier, out):
    """One client process: ``threads`` threads storing, racing, reading and counting."""
    backend = _backend(url, token)
    counter = backend.get_key_for_chord("load-counter")
    counts, early_reads, lock = [], Counter(), threading.Lock()

    def thread(t: int) -> None:
        mine = [f"load-{proc}-{t}-{i}" for i in range(per_thread)]
        theirs = [f"load-{(proc + 1) % procs}-{t}-{i}" for i in range(per_thread)]
        barrier.wait(timeout=120)
        for i in range(per_thread):
            backend.store_result(mine[i], [proc, t, i], states.SUCCESS)
            backend.store_result(theirs[i], None, states.STARTED)  # races their SUCCESS
            status = backend.get_task_meta(theirs[i], cache=False)["status"]
            count = backend.incr(counter) if i < increments else None
            with lock:
                early_reads[status] += 1
                counts.extend([] if count is None else [count])
        back = dict(backend.get_many(mine, timeout=60))
        wrong = [i for i, tid in enumerate(mine) if back[tid]["result"] != [proc, t, i]]
        assert not wrong, f"{len(wrong)} of my own results read back wrong"

    errors = _in_threads(thread, threads)
    out.put({"errors": errors, "counts": counts, "early_reads": early_reads})


def _chord_parts_process(url, token, key, threads, barrier, out):
    """``threads`` chord parts that all finish at the barrier: one increment each."""
    backend = _backend(url, token)
    counts: list[int] = []

    def part(_: int) -> None:
        barrier.wait(timeout=120)
        counts.append(backend.incr(key))

    errors = _in_threads(part, threads)
    out.put({"errors": errors, "counts": counts})


@contextlib.contextmanager
def _connections_per_client(server, limit: int):
    """Raise the dev server's limit on concurrent connections per client IP (Consul's default is
    200, shared by every process on 127.0.0.1) for the test's duration. A real agent needs its
    limits.http_max_conns_per_client raised the same way."""
    if not server.is_dev_server:
        yield
        return
    before = server.connection_stats()["limit"]
    server.set_http_max_conns_per_client(limit)
    try:
        yield
    finally:
        server.set_http_max_conns_per_client(before)


def _run_processes(target, args_for, procs: int, parties: int) -> list[dict]:
    barrier, out = SPAWN.Barrier(parties), SPAWN.Queue()
    children = [
        SPAWN.Process(target=target, args=(*args_for(p), barrier, out)) for p in range(procs)
    ]
    for child in children:
        child.start()
    reports = [out.get(timeout=900) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    return reports


@pytest.mark.parametrize(
    "per_thread",
    [
        pytest.param(60, id="reduced-1920"),
        pytest.param(625, id="full-20000", marks=pytest.mark.slow),
    ],
)
def test_four_processes_by_eight_threads_lose_no_update(
    consul_server, consul_prefix, make_app, per_thread
):
    procs, threads, increments = 4, 8, 10
    url = backend_url(consul_server, consul_prefix)
    if consul_server.is_dev_server:
        consul_server.reset_counters()
    reports = _run_processes(
        _client_process,
        lambda p: (url, consul_server.token, p, procs, threads, per_thread, increments),
        procs,
        procs * threads,
    )
    errors = [e for r in reports for e in r["errors"]]
    assert not errors, errors[0]

    counts = sorted(c for r in reports for c in r["counts"])
    assert counts == list(range(1, procs * threads * increments + 1))  # none lost, none twice

    backend = make_app().backend
    ids = {
        f"load-{p}-{t}-{i}": [p, t, i]
        for p in range(procs)
        for t in range(threads)
        for i in range(per_thread)
    }
    stored = dict(backend.get_many(list(ids), timeout=60))
    lost = [tid for tid, value in ids.items() if stored.get(tid, {}).get("result") != value]
    not_final = [tid for tid, meta in stored.items() if meta["status"] != states.SUCCESS]
    early = sum((r["early_reads"] for r in reports), Counter())
    print(f"\n{len(ids)} results by {procs}x{threads} threads; reads while racing: {dict(early)}")
    if consul_server.is_dev_server:
        print(f"requests: {consul_server.counters()}")
    assert (len(lost), len(not_final)) == (0, 0)


def test_two_hundred_chord_parts_finishing_at_once_count_exactly_once(
    consul_server, consul_prefix, make_app
):
    procs, threads = 4, 50
    url = backend_url(consul_server, consul_prefix)
    key = make_app().backend.get_key_for_chord(f"at-once-{uuid.uuid4().hex}")
    # 200 threads each on its own connection at the same instant, with this process's own
    # connections besides: more than Consul's default of 200 from 127.0.0.1
    with _connections_per_client(consul_server, 400):
        reports = _run_processes(
            _chord_parts_process,
            lambda p: (url, consul_server.token, key, threads),
            procs,
            procs * threads,
        )
    errors = [e for r in reports for e in r["errors"]]
    assert not errors, errors[0]
    counts = sorted(c for r in reports for c in r["counts"])
    assert counts == list(range(1, 201))  # exactly one part sees 200 and fires the body


def test_two_hundred_part_chord_on_eight_worker_processes_fires_once(
    consul_server, consul_prefix, tmp_path
):
    url = backend_url(consul_server, consul_prefix)
    with celery_worker(url, tmp_path, consul_server.token, concurrency=8) as app:
        at = time.time() + 2  # the first eight parts finish at this instant, the rest right after
        header = [app.signature("e2e.until", (at, i)) for i in range(200)]
        result = chord(header)(app.signature("e2e.tsum"))
        assert result.get(timeout=300) == sum(range(200))
        worker_idle(app)  # a second firing, if any part sent one, has run by now
        bodies = [p.read_text() for p in Path(app.mark_dir).glob("body-*")]
    assert bodies == [str(sum(range(200)))]
