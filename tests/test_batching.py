"""Group commit over real HTTP: while every sender of the process is busy, concurrent stores
and reads queue and go out as one txn (consulresults.batching).

To fill the queue deterministically, a gate holds every request of the callers under test just
before it is sent (the server made slow on purpose, without timing): the first callers take the
senders' turns and stop at the gate, the next ones queue; the gate opens once the queue holds
them all.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

import pytest
from celery import states
from celery.exceptions import BackendStoreError
from conftest import backend_url, wait_until

from consulresults import batching, deadline
from consulresults.connection import ConsulTimeout, ConsulUnreachable, PermissionDenied, Transport
from consulresults.devserver import AclConfig

CALLERS = threading.local()  # ``gated`` in the threads of the callers under test


class Gate:
    """Holds every request of the callers under test (:func:`in_threads`) until opened (the
    background thread's and other tests' lingering requests pass); records each of their txns'
    operations and query, and raises ``Killed`` inside the sender of the first batch if
    ``kill_a_batch``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open_ = threading.Event()
        self.open_.set()
        self.lock = threading.Lock()
        self.held = 0
        self.sent: list[tuple[list[dict[str, Any]], list[tuple[str, str]]]] = []
        self.kill_a_batch = False
        real = Transport.send

        def send(transport, method, path, params=None, data=None, **options):
            if not getattr(CALLERS, "gated", False):  # the background's, another test's
                return real(transport, method, path, params, data, **options)
            with self.lock:
                self.held += 1
            self.open_.wait(60)
            with self.lock:
                self.held -= 1
                ops = json.loads(data) if path == "/v1/txn" else []
                self.sent.append((ops, list(params or [])))
                kill = self.kill_a_batch and members(ops) > 1
                self.kill_a_batch = self.kill_a_batch and not kill
            if kill:
                raise Killed()
            return real(transport, method, path, params, data, **options)

        monkeypatch.setattr(Transport, "send", send)

    def batches(self) -> list[list[str]]:
        """The keys written (or read) by each txn sent with more than one member."""
        return [keys(ops) for ops, _ in self.sent if members(ops) > 1]


WRITTEN_OR_READ = ("lock", "set", "get-or-empty")


def keys(ops: list[dict[str, Any]]) -> list[str]:
    return [op["KV"]["Key"] for op in ops if op["KV"]["Verb"] in WRITTEN_OR_READ]


def members(ops: list[dict[str, Any]]) -> int:
    return len(keys(ops))


class Killed(BaseException):
    """What gevent's kill or Celery's SoftTimeLimitExceeded raise inside a sender."""


@pytest.fixture
def gate(monkeypatch):
    gate = Gate(monkeypatch)
    yield gate
    gate.open_.set()


def in_threads(calls) -> tuple[list[threading.Thread], dict[int, object]]:
    outcomes: dict[int, object] = {}

    def run(i, call):
        CALLERS.gated = True
        try:
            outcomes[i] = call()
        except BaseException as exc:  # the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def queue_behind_busy_senders(gate: Gate, batcher, first: list, rest: list):
    """``first`` take every sending turn and wait at the gate; ``rest`` queue; then the gate
    opens. Returns the outcomes of ``first + rest`` once all finished."""
    assert len(first) == batcher.senders
    gate.open_.clear()
    with gate.lock:
        gate.sent.clear()
    threads, outcomes = [], {}
    for n, call in enumerate(first):  # one by one: two arriving together may share a batch
        started, done = in_threads([call])
        threads += started
        outcomes[n] = done
        wait_until(lambda n=n: gate.held == n + 1, 30, "the senders at the gate")
    more, later = in_threads(rest)
    wait_until(lambda: batcher.queued() == len(rest), 30, "the rest queued")
    gate.open_.set()
    for thread in threads + more:
        thread.join(60)
    return [outcomes[i][0] for i in range(len(first))] + [later[i] for i in range(len(rest))]


def store(backend, task_id: str, value: object = None):
    return lambda: backend.store_result(task_id, value or task_id, states.SUCCESS)


def stored(app, task_id: str) -> object:
    return app.backend.get_task_meta(task_id, cache=False)["result"]


@pytest.fixture
def small_app(make_app, consul_server, consul_prefix):
    """An app whose budget is two connections: two senders."""
    return make_app(backend=backend_url(consul_server, consul_prefix) + "?max_connections=2")


def test_one_caller_alone_sends_its_own_requests(make_app, consul_server):
    backend = make_app().backend
    backend.store_result("alone-0", 0, states.SUCCESS)  # the session, made once
    before = backend.store.writes.stats.snapshot()
    consul_server.reset_counters()
    backend.store_result("alone-1", 1, states.SUCCESS)
    assert backend.get_task_meta("alone-1", cache=False)["result"] == 1
    counters = consul_server.counters()
    assert (counters.get("txn"), counters.get("kv.get")) == (1, 1)  # a read alone is its GET
    after = backend.store.writes.stats.snapshot()
    assert after["batches"] == before["batches"]


def test_stores_beyond_the_senders_go_out_as_one_txn(small_app, gate, consul_server):
    backend = small_app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    consul_server.reset_counters()
    ids = [f"batched-{i}" for i in range(22)]
    outcomes = queue_behind_busy_senders(
        gate,
        backend.store.writes,
        [store(backend, i) for i in ids[:2]],
        [store(backend, i) for i in ids[2:]],
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    batched = [key for batch in gate.batches() for key in batch]
    assert sorted(batched) == sorted(all_keys(backend, ids[2:]))
    assert [stored(small_app, i) for i in ids] == ids
    raft = consul_server.counters()["raft.writes"]
    assert raft <= 2 + len(gate.batches()) < len(ids) / 4  # the dev server's write counter


def all_keys(backend, ids) -> list[str]:
    return [backend.store.key(str(backend.get_key_for_task(i))) for i in ids]


def test_reads_beyond_the_senders_go_out_as_one_consistent_txn(small_app, gate):
    backend = small_app.backend
    ids = [f"read-{i}" for i in range(12)]
    for task_id in ids:
        backend.store_result(task_id, task_id, states.SUCCESS)
    reads = backend.store.reads
    outcomes = queue_behind_busy_senders(
        gate,
        reads,
        [lambda i=i: stored(small_app, i) for i in ids[:2]],
        [lambda i=i: stored(small_app, i) for i in ids[2:]] + [lambda: stored(small_app, "none")],
    )
    assert outcomes == [*ids, None]
    batched = [(ops, params) for ops, params in gate.sent if members(ops) > 1]
    assert len(batched) == 1
    ops, params = batched[0]
    assert {op["KV"]["Verb"] for op in ops} == {"get-or-empty"}
    assert params == [("consistent", "1")]  # the default consistency, kept in the batch


def test_a_member_whose_check_fails_reads_again_and_the_others_land(
    small_app, make_app, gate, consul_server, consul_prefix
):
    """Another writer (another process's store) wrote one key: that member's check fails, it
    alone reads again and lands; the batch's other members, refused for its sake, are sent
    again and land."""
    backend = small_app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    other = make_app(backend=backend_url(consul_server, consul_prefix) + "?batching=false")
    other.backend.store_result("contended", "theirs", states.STARTED)
    before = backend.store.writes.stats.snapshot()
    ids = [f"member-{i}" for i in range(6)]
    outcomes = queue_behind_busy_senders(
        gate,
        backend.store.writes,
        [store(backend, i) for i in ids[:2]],
        [store(backend, "contended", "ours")] + [store(backend, i) for i in ids[2:]],
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert stored(small_app, "contended") == "ours"
    assert [stored(small_app, i) for i in ids] == ids
    assert backend.store.writes.stats.snapshot()["resent"] - before["resent"] >= 4


def test_two_writes_of_one_key_or_one_chord_never_share_a_batch(small_app, gate):
    backend = small_app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    store_ = backend.store
    chord = [store_.key(f"chord-unlock-g1/b{i}/part") for i in range(3)]
    targets = [store_.key("celery-task-meta-same")] * 3 + chord
    targets.append(store_.key("celery-task-meta-x"))

    def write(key, n):
        return lambda: store_.write(key, f"{n}".encode(), backend.expiry)

    first = [write(store_.key(f"celery-task-meta-first-{i}"), i) for i in range(2)]
    outcomes = queue_behind_busy_senders(
        gate, store_.writes, first, [write(k, n) for n, k in enumerate(targets)]
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for batch in gate.batches():
        assert len(set(batch)) == len(batch), batch
        assert len({batching.chord_of(k) for k in batch if batching.chord_of(k)}) == sum(
            1 for k in batch if batching.chord_of(k)
        ), batch
    # each of the same key's writes was applied in a txn of its own (none merged or dropped)
    same = store_.key("celery-task-meta-same")
    landed = [op["KV"]["Value"] for ops, _ in gate.sent for op in ops if keys([op]) == [same]]
    assert {base64.b64decode(v) for v in landed} == {b"0", b"1", b"2"}
    assert store_.entry(same)["Value"] in {b"0", b"1", b"2"}


def test_a_batch_past_the_operation_limit_is_split(small_app, gate):
    backend = small_app.backend
    writes = backend.store.writes
    backend.store_result("warm", 0, states.SUCCESS)
    limit, writes.max_ops = writes.max_ops, 9  # three stores of three operations
    try:
        ids = [f"limited-{i}" for i in range(12)]
        outcomes = queue_behind_busy_senders(
            gate, writes, [store(backend, i) for i in ids[:2]], [store(backend, i) for i in ids[2:]]
        )
    finally:
        writes.max_ops = limit
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert all(len(ops) <= 9 for ops, _ in gate.sent)
    assert [stored(small_app, i) for i in ids] == ids


def test_a_batch_over_the_agents_body_limit_is_split_and_a_result_too_big_fails_alone(
    consul_dev_server_factory, make_app, gate
):
    """The agent's txn_max_req_len is lower than the default: the first batch's 413 teaches
    it, the batch is split, every member lands; a result too big for it alone fails alone,
    with the clear error, not the agent's bare 413."""
    server = consul_dev_server_factory(kv_max_value_size=300_000)
    server.config.txn_max_req_len = 300_000  # as the agent's txn_max_req_len setting
    app = make_app(backend=backend_url(server, "body-limit") + "?max_connections=2")
    backend = app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    value = "x" * 60_000  # about 80 kB each once base64-encoded: four fit, not ten
    ids = [f"big-{i}" for i in range(12)]
    outcomes = queue_behind_busy_senders(
        gate,
        backend.store.writes,
        [store(backend, i, value) for i in ids[:2]],
        [store(backend, i, value) for i in ids[2:]] + [store(backend, "huge", "y" * 280_000)],
    )
    assert [isinstance(o, BaseException) for o in outcomes] == [False] * 12 + [True]
    assert isinstance(outcomes[-1], BackendStoreError), outcomes[-1]
    assert "txn_max_req_len" in str(outcomes[-1]) and "result_compression" in str(outcomes[-1])
    assert backend.store.writes.max_body <= 300_000
    assert [len(stored(app, i)) for i in ids] == [60_000] * 12
    assert backend.get_task_meta("huge", cache=False)["status"] == states.PENDING


def test_a_result_over_the_txn_body_limit_fails_alone_and_clearly(make_app, consul_server):
    """Between about 393 KB and 512 KiB a result passes the value limit but not the agent's
    default txn body limit once base64-encoded: one txn, refused, and a clear error, not the
    agent's bare 413."""
    backend = make_app().backend
    backend.store_result("warm", 0, states.SUCCESS)
    consul_server.reset_counters()
    with pytest.raises(BackendStoreError, match="refused by Consul") as caught:
        backend.store_result("too-big", "z" * 450_000, states.SUCCESS)
    assert "result_compression" in str(caught.value)
    assert consul_server.counters().get("txn", 0) == 1


def test_a_queued_store_keeps_its_callers_deadline(small_app, gate):
    backend = small_app.backend
    writes = backend.store.writes
    backend.store_result("warm", 0, states.SUCCESS)
    gate.open_.clear()
    threads = []
    for i in range(2):
        threads += in_threads([store(backend, f"slow-{i}")])[0]
        wait_until(lambda i=i: gate.held == i + 1, 30, "the senders at the gate")
    with deadline.within(0.2), pytest.raises(ConsulTimeout, match="was not sent"):
        backend.store.write(backend.store.key("celery-task-meta-late"), b"1", backend.expiry)
    assert writes.queued() == 0
    gate.open_.set()
    for thread in threads:
        thread.join(30)
    assert writes.sending() == 0
    assert backend.store.entry(backend.store.key("celery-task-meta-late")) is None


def test_a_killed_sender_loses_its_batch_answer_and_strands_no_one(small_app, gate):
    """The sender of a batch is killed mid-request: it raises what killed it, each other member
    gets a lost answer (as for any request whose answer never came), nobody waits on, and the
    sending turn goes on."""
    backend = small_app.backend
    writes = backend.store.writes
    backend.store_result("warm", 0, states.SUCCESS)
    gate.kill_a_batch = True
    ids = [f"killed-{i}" for i in range(10)]
    outcomes = queue_behind_busy_senders(
        gate, writes, [store(backend, i) for i in ids[:2]], [store(backend, i) for i in ids[2:]]
    )
    killed = [o for o in outcomes if isinstance(o, Killed)]
    lost = [o for o in outcomes if isinstance(o, ConsulUnreachable)]
    batch = next(b for b in gate.batches())
    assert (len(killed), len(lost)) == (1, len(batch) - 1), outcomes
    assert sum(not isinstance(o, BaseException) for o in outcomes) == len(ids) - len(batch)
    assert writes.sending() == 0 and writes.queued() == 0  # no turn leaked
    backend.store_result("after", 1, states.SUCCESS)
    assert stored(small_app, "after") == 1


def test_a_member_denied_by_the_acls_gets_its_own_refusal(
    consul_dev_server_factory, make_app, gate
):
    management = "root-mgmt"
    tokens = {
        "app": {
            "key_prefix": {"acl/": "write", "acl/celery-task-meta-denied": "read"},
            "session_prefix": {"": "write"},
        }
    }
    server = consul_dev_server_factory(
        acl=AclConfig(
            enabled=True, default_policy="deny", management_token=management, tokens=tokens
        )
    )
    app = make_app(
        backend=backend_url(server, "acl") + "?max_connections=2", consulresults_token="app"
    )
    backend = app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    ids = [f"allowed-{i}" for i in range(6)]
    outcomes = queue_behind_busy_senders(
        gate,
        backend.store.writes,
        [store(backend, i) for i in ids[:2]],
        [store(backend, "denied")] + [store(backend, i) for i in ids[2:]],
    )
    assert isinstance(outcomes[2], PermissionDenied), outcomes
    assert not [o for i, o in enumerate(outcomes) if i != 2 and isinstance(o, BaseException)]
    assert [stored(app, i) for i in ids] == ids


def test_with_batching_off_every_store_is_its_own_txn(make_app, consul_server, consul_prefix, gate):
    app = make_app(
        backend=backend_url(consul_server, consul_prefix) + "?max_connections=2&batching=no"
    )
    backend = app.backend
    backend.store_result("warm", 0, states.SUCCESS)
    gate.sent.clear()
    threads, outcomes = in_threads([store(backend, f"unbatched-{i}") for i in range(10)])
    for thread in threads:
        thread.join(60)
    assert not [o for o in outcomes.values() if isinstance(o, BaseException)], outcomes
    assert gate.batches() == [] and len(gate.sent) == 10


def test_a_thousand_concurrent_stores_and_reads_all_succeed(make_app):
    app = make_app()
    backend = app.backend
    ids = [f"many-{i}" for i in range(1000)]
    threads, outcomes = in_threads([store(backend, i) for i in ids])
    for thread in threads:
        thread.join(120)
    assert not [o for o in outcomes.values() if isinstance(o, BaseException)]
    threads, outcomes = in_threads([lambda i=i: stored(app, i) for i in ids])
    for thread in threads:
        thread.join(120)
    assert [outcomes[i] for i in range(1000)] == ids
    assert backend.store.writes.stats.snapshot()["batches"] > 0


def test_a_forked_child_batches_with_its_own_queue(make_app):
    app = make_app()
    backend = app.backend
    backend.store_result("before-fork", 0, states.SUCCESS)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            threads, outcomes = in_threads([store(backend, f"child-{i}") for i in range(50)])
            for thread in threads:
                thread.join(60)
            failed = [o for o in outcomes.values() if isinstance(o, BaseException)]
            code = 1 if failed or len(outcomes) != 50 else 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert [stored(app, f"child-{i}") for i in range(50)] == [f"child-{i}" for i in range(50)]


def test_a_thousand_chord_parts_from_64_threads_fire_the_body_once(make_app, monkeypatch):
    """Parts' results batched together never tie a chord's decision: the body fires once."""
    import uuid

    from celery.app.task import Context
    from celery.canvas import Signature

    app = make_app()
    backend = app.backend
    fired: list[object] = []
    monkeypatch.setattr(Signature, "delay", lambda self, *args, **kw: fired.append(args))
    group_id = str(uuid.uuid4())
    parts = [str(uuid.uuid4()) for _ in range(1000)]
    body = app.signature("tests.body")
    backend.apply_chord((group_id, [app.AsyncResult(p) for p in parts]), body)

    def finish(share: list[str]) -> None:
        for part in share:
            backend.store_result(part, part, states.SUCCESS)
            request = Context(id=part, group=group_id, chord=dict(body), errbacks=None)
            backend.on_chord_part_return(request, states.SUCCESS, part)

    threads, outcomes = in_threads([lambda n=n: finish(parts[n::64]) for n in range(64)])
    for thread in threads:
        thread.join(120)
    assert not [o for o in outcomes.values() if isinstance(o, BaseException)], outcomes
    assert len(fired) == 1
    assert sorted(fired[0][0]) == sorted(parts)


# Races no server can produce on cue, on a Batcher with sends of the test's own (focused).


def member(key: str, send, solo=lambda: "alone", deadline=None) -> batching.Member:
    op = {"KV": {"Verb": "set", "Key": key}}
    found = batching.Member([op], frozenset([key]), solo, send)
    if deadline is not None:
        found.deadline = deadline
    return found


def test_a_member_that_gave_up_in_flight_is_never_sent_again_nor_handed_a_turn():
    import time

    from consulresults.answers import TxnAnswer

    batcher = batching.Batcher(senders=1, patience=30)
    release_solo, release_batch = threading.Event(), threading.Event()
    sent: list[int] = []

    def send(ops):
        sent.append(len(ops))
        release_batch.wait(30)
        return TxnAnswer(None, [{"OpIndex": 0, "What": "failed index check"}])  # the first's

    lead = member("lead", send, solo=lambda: release_solo.wait(30) and "lead")
    first, late = member("first", send), member("late", send, deadline=time.monotonic() + 0.3)
    threads, _ = in_threads([lambda: batcher.run(lead)])
    wait_until(lambda: batcher.sending() == 1 and lead.in_flight, 30, "the lead sending")
    more, results = in_threads([lambda: batcher.run(first), lambda: batcher.run(late)])
    wait_until(lambda: batcher.queued() == 2, 30, "two queued")
    release_solo.set()
    wait_until(lambda: late.gone, 30, "the late member giving up in flight")
    release_batch.set()
    for thread in threads + more:
        thread.join(30)
    assert isinstance(results[1], ConsulTimeout) and "may have been applied" in str(results[1])
    assert sent == [2]  # the late one was not sent again after the first's refusal
    assert (batcher.queued(), batcher.sending()) == (0, 0)


def test_an_interruption_of_the_sender_is_its_own_and_a_lost_answer_for_the_others():
    """SoftTimeLimitExceeded is an Exception: raised in the sender, it is not the members'."""

    class SoftTimeLimit(Exception):
        pass

    batcher = batching.Batcher(senders=1, patience=30)
    release = threading.Event()

    def send(ops):
        raise SoftTimeLimit()

    lead = member("lead", send, solo=lambda: release.wait(30) and "lead")
    threads, _ = in_threads([lambda: batcher.run(lead)])
    wait_until(lambda: lead.in_flight, 30, "the lead sending")
    queued = [member(f"m{i}", send) for i in range(3)]
    more, results = in_threads([lambda m=m: batcher.run(m) for m in queued])
    wait_until(lambda: batcher.queued() == 3, 30, "queued")
    release.set()
    for thread in threads + more:
        thread.join(30)
    kinds = sorted(type(o).__name__ for o in results.values())
    assert kinds.count("SoftTimeLimit") == 1, results
    assert all(isinstance(o, (SoftTimeLimit, ConsulUnreachable)) for o in results.values())
    assert (batcher.queued(), batcher.sending()) == (0, 0)
