"""Chords end to end on a real prefork worker, with concurrency 1 and 2: nested canvases give the
right answer with the body run once, a failed header task fails the chord with its own error,
errbacks run once, and no pool process ever waits on a chord."""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path

import pytest
from celery import chain, chord, group, states
from celery.backends.base import BaseKeyValueStoreBackend
from celery.exceptions import ChordError
from conftest import (
    backend_url,
    celery_worker,
    gated,
    log_lines,
    open_gate,
    wait_gated,
    wait_until,
    worker_idle,
)

pytestmark = pytest.mark.e2e  # real workers: the full suite's, not the matrix's

TIMEOUT = 60


@pytest.fixture(scope="module", params=[1, 2], ids=["concurrency-1", "concurrency-2"])
def worker(request, _consul_server_session, tmp_path_factory):
    server = _consul_server_session
    prefix = f"chords-{uuid.uuid4().hex[:8]}"
    with celery_worker(
        backend_url(server, prefix),
        tmp_path_factory.mktemp("chords"),
        server.token,
        concurrency=request.param,
        conf={"result_backend_always_retry": True},  # stores ride out an outage (see below)
    ) as app:
        app.prefix = prefix
        yield app


@pytest.fixture
def app(worker):
    """The client app, with the marks of earlier tests cleared; gates left shut by a failed
    test are opened after it, so that it wedges no pool process for the next."""
    for path in Path(worker.mark_dir).iterdir():
        path.unlink()
    yield worker
    for path in Path(worker.mark_dir).glob("gated-*"):
        open_gate(worker, path.name.removeprefix("gated-"))


def marks(app, kind: str) -> list[str]:
    """What the tasks marked: bodies run (``body``) or errbacks called (``errback``), once the
    worker is idle: a second run, if something sent one, has landed."""
    worker_idle(app)
    return sorted(p.read_text() for p in Path(app.mark_dir).glob(f"{kind}-*"))


def gated_last(app, value):
    """A header part that returns ``value`` once its gate opens (see conftest.gated), and that
    the worker takes only after every other part: a chain, whose gate is sent once its first
    step has run, after the other parts were sent (the e2e broker hands messages out in the
    order they came). On one pool process the gate would otherwise wedge it before the others
    ran."""
    gate, name = gated(app, value)
    return chain(si(app, "identity", None), gate), name


def sig(app, name: str, *args, immutable: bool = False):
    return app.signature(f"e2e.{name}", args, immutable=immutable)


def si(app, name: str, *args):
    return sig(app, name, *args, immutable=True)


# ---------------------------------------------------------------- nested canvases


def test_header_chain_ending_in_a_group(app):
    """The canvas that used to wedge a pool process in a join without a timeout."""
    canvas = chain(
        si(app, "add", 1, 0),
        group(
            si(app, "add", 1, 100),
            chain(si(app, "add", 1, 200), group(si(app, "add", 1, 1000), si(app, "add", 1, 2000))),
        ),
        si(app, "add", 1, 10),
    )
    assert canvas().get(timeout=TIMEOUT) == 11


def test_nested_header_reaches_the_body_shaped_like_the_header(app):
    header = group(
        si(app, "add", 1, 100),
        chain(si(app, "add", 1, 200), group(si(app, "add", 1, 1000), si(app, "add", 1, 2000))),
    )
    result = chord(header)(sig(app, "identity"))
    assert result.get(timeout=TIMEOUT) == [101, [1001, 2001]]


def test_group_of_chains_as_header(app):
    header = [chain(si(app, "add", i, 0), sig(app, "add", 1)) for i in range(4)]
    assert chord(header)(sig(app, "tsum")).get(timeout=TIMEOUT) == 1 + 2 + 3 + 4
    assert marks(app, "body") == ["10"]


def test_nine_chords_in_a_row(app):
    """Each chord's header tasks get the previous body's result."""
    first = chord([si(app, "add", 1, 1), si(app, "add", 1, 1)], sig(app, "tsum"))
    rest = [chord([sig(app, "add", 1), sig(app, "add", 2)], sig(app, "tsum")) for _ in range(8)]
    expected = 4
    for _ in range(8):
        expected = (expected + 1) + (expected + 2)
    assert chain(first, *rest)().get(timeout=TIMEOUT) == expected
    assert len(marks(app, "body")) == 9


def test_chord_inside_a_group_inside_a_chain(app):
    inner = chord([sig(app, "add", 1), sig(app, "add", 2)], sig(app, "tsum"))
    canvas = chain(si(app, "add", 1, 1), group(inner, sig(app, "add", 10)))
    assert canvas().get(timeout=TIMEOUT) == [3 + 4, 12]


def test_chord_whose_body_is_a_group(app):
    body = group(sig(app, "tsum"), sig(app, "tsum"))
    result = chord([si(app, "add", 1, 1), si(app, "add", 2, 2)], body)()
    assert result.get(timeout=TIMEOUT) == [6, 6]


def test_single_task_and_empty_headers(app):
    assert chord([si(app, "add", 2, 3)])(sig(app, "tsum")).get(timeout=TIMEOUT) == 5
    assert chord([])(sig(app, "tsum")).get(timeout=TIMEOUT) == 0


def test_header_tasks_that_replace_themselves(app):
    header = [si(app, "replace_with", kind, 5) for kind in ("task", "chain", "group")]
    result = chord(header)(sig(app, "flatsum"))
    assert result.get(timeout=TIMEOUT) == 5 + 6 + (5 + 6)
    assert marks(app, "body") == ["22"]


def test_large_header_after_a_chain_step(app):
    canvas = (
        si(app, "identity", 1) | group(sig(app, "identity") for _ in range(300)) | sig(app, "tsum")
    )
    assert canvas().get(timeout=TIMEOUT) == 300


# ---------------------------------------------------------------- errors


def failing_chord(app, message: str = "header"):
    return chord([sig(app, "add", 1, 1), si(app, "fail", message)], sig(app, "tsum"))


def test_failed_header_task_raises_its_own_error_and_the_body_never_runs(app):
    result = failing_chord(app).apply_async(link_error=sig(app, "errback"))
    with pytest.raises(ValueError, match="header"):
        result.get(timeout=TIMEOUT)
    # get() may raise as soon as the header task's failure is pushed to it, a moment before
    # the worker marks the body failed (Celery's Redis backend does the same)
    wait_until(lambda: result.state == states.FAILURE, TIMEOUT, "the body marked failed")
    assert isinstance(result.result, ChordError)
    assert marks(app, "body") == []
    assert len(marks(app, "errback")) == 1


def test_failing_body_raises_its_error(app):
    result = chord([si(app, "identity", 42)])(si(app, "fail", "body"))
    with pytest.raises(ValueError, match="body"):
        result.get(timeout=TIMEOUT)


@pytest.mark.parametrize("where", ["before-its-end", "at-its-tail"])
def test_header_chain_failing(app, where):
    failing = (
        chain(si(app, "fail", where), sig(app, "add", 1))
        if where == "before-its-end"
        else chain(si(app, "add", 1, 1), si(app, "fail", where))
    )
    result = chord([si(app, "add", 1, 1), failing])(sig(app, "tsum"))
    with pytest.raises(ValueError, match=where):
        result.get(timeout=TIMEOUT)
    assert marks(app, "body") == []


@pytest.mark.parametrize("body", ["task", "chain", "group", "chord"])
def test_group_then_body_with_a_failed_task(app, body):
    bodies = {
        "task": lambda: sig(app, "tsum"),
        "chain": lambda: chain(sig(app, "tsum"), sig(app, "add", 1)),
        "group": lambda: group(sig(app, "tsum"), sig(app, "tsum")),
        "chord": lambda: chord([sig(app, "tsum"), sig(app, "tsum")], sig(app, "tsum")),
    }
    canvas = chain(group(si(app, "add", 15, 7), si(app, "fail", "in group")), bodies[body]())
    result = canvas.apply_async(link_error=sig(app, "errback"))
    with pytest.raises(ValueError, match="in group"):
        result.get(timeout=TIMEOUT)
    assert marks(app, "body") == []
    failed = [line.split()[0] for line in marks(app, "errback")]
    assert len(failed) == len(set(failed)) == (2 if body == "group" else 1)  # once per result


@pytest.mark.parametrize("shape", ["one-failure", "two-failures", "group-body"])
def test_failed_chord_in_a_chain_in_a_group(app, shape):
    header = [sig(app, "add", 1, 1), si(app, "fail", "first")]
    if shape == "two-failures":
        header.append(si(app, "fail", "second"))
    first_body = (
        group(sig(app, "add", 1), sig(app, "add", 2)) if shape == "group-body" else sig(app, "tsum")
    )
    second = chord([sig(app, "add", 1), sig(app, "add", 2)], sig(app, "tsum"))
    result = group(chain(chord(header, first_body), second), si(app, "add", 1, 1))()
    with pytest.raises((ValueError, ChordError), match="first"):
        result.get(timeout=TIMEOUT)
    assert result.results[0].state == states.FAILURE


def test_chain_failing_before_a_group_raises_the_task_error(app):
    canvas = (
        si(app, "add", 1, 1)
        | si(app, "fail", "mid-chain")
        | group(sig(app, "add", 1), sig(app, "add", 1))
    )
    with pytest.raises(ValueError, match="mid-chain"):
        canvas.delay().get(timeout=TIMEOUT)


# ---------------------------------------------------------------- no waits in workers


def test_header_task_that_never_runs_wedges_no_pool_process(app):
    """The header's other part returns at once; the worker goes on with other work."""
    lost = si(app, "add", 1, 1).set(queue="nobody-consumes-this")
    result = chord([si(app, "add", 2, 2), lost])(sig(app, "tsum"))
    assert app.send_task("e2e.add", (3, 4)).get(timeout=TIMEOUT) == 7
    assert result.parent.results[0].get(timeout=TIMEOUT) == 4
    assert app.send_task("e2e.add", (5, 6)).get(timeout=TIMEOUT) == 11
    assert result.state == states.PENDING
    assert marks(app, "body") == []


def test_consul_down_while_the_last_part_returns(app, _consul_server_session):
    """Consul drops every connection from the moment the last part runs until its result's
    store has failed on that (the worker logs Celery's retry): the store (under
    result_backend_always_retry, as Celery retries stores) is retried, the chord completes once
    Consul is back, and the body runs once."""
    last, gate = gated_last(app, 5)
    result = chord([si(app, "add", 2, 2), last])(sig(app, "tsum"))
    assert result.parent.results[0].get(timeout=TIMEOUT) == 4
    wait_gated(app, gate)
    retries = log_lines(app, "Failed operation _store_result")
    _consul_server_session.faults.reset()  # every request, until cleared
    open_gate(app, gate)
    wait_until(
        lambda: log_lines(app, "Failed operation _store_result") > retries,
        TIMEOUT,
        "the last part's store failing on the outage",
    )
    _consul_server_session.faults.clear()
    assert result.get(timeout=TIMEOUT) == 9
    assert marks(app, "body") == ["9"]
    assert _consul_server_session.faults.injected["reset"] > 0


def test_a_header_result_deleted_meanwhile_still_reaches_the_body(app):
    last, gate = gated_last(app, 5)
    result = chord([si(app, "add", 2, 2), last])(sig(app, "tsum"))
    first = result.parent.results[0]
    assert first.get(timeout=TIMEOUT) == 4
    first.forget()
    open_gate(app, gate)  # the last part returns after the first's result is gone
    assert result.get(timeout=TIMEOUT) == 9


def test_the_header_group_deleted_meanwhile_fails_the_body_naming_it(app):
    first, gate = gated(app, 1)
    result = chord([first, si(app, "add", 1, 1)])(sig(app, "tsum"))
    result.parent.delete()  # the saved GroupResult: the body's shape is gone
    open_gate(app, gate)  # the header completes only now
    with pytest.raises(ChordError, match="no longer exists"):
        result.get(timeout=TIMEOUT)
    assert marks(app, "body") == []


# ---------------------------------------------------------------- size and upgrades


def test_thousand_part_header_completes_with_one_body(app):
    """A bound, not a speed claim (that is bench/chord_contention.py's): on one process the
    filesystem broker's scan of its 1,000-message queue dominates (~40 s here, and more when
    the machine is busy), so the wait is generous."""
    canvas = (
        si(app, "identity", 1) | group(sig(app, "identity") for _ in range(1000)) | sig(app, "tsum")
    )
    started = time.monotonic()
    assert canvas().get(timeout=300) == 1000
    print(f"1000-part header: {time.monotonic() - started:.1f} s")  # the figure for the CHANGELOG
    assert marks(app, "body") == ["1000"]


def test_chord_applied_by_the_previous_release_still_completes(app):
    """The previous release counted parts on one key (``incr``) and joined the header: a chord
    it applied has no record of its parts, and upgraded workers finish it that way."""
    previous = functools.partial(BaseKeyValueStoreBackend._apply_chord_incr, app.backend)
    app.backend.apply_chord = previous
    try:
        result = chord([si(app, "add", i, 0) for i in range(5)])(sig(app, "tsum"))
        assert result.get(timeout=TIMEOUT) == 10
    finally:
        del app.backend.apply_chord
    assert marks(app, "body") == ["10"]
