"""What a chord does when Consul fails it at each step of the part that completes the header:
the body is failed with a ChordError that says why, never left waiting, and never sent twice."""

from __future__ import annotations

import uuid

import pytest
from celery import states
from celery.app.task import Context
from celery.exceptions import ChordError

from consulresults.devserver import FaultRule

DENIED = "Permission denied"


@pytest.fixture
def backend(make_app):
    return make_app().backend


def one_part_chord(backend):
    """A chord with a one-task header, applied; returns (the part's request, the body's id)."""
    app = backend.app
    group_id, part_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = app.signature("tests.body")
    body_id = body.freeze().id
    backend.apply_chord((group_id, [app.AsyncResult(part_id)]), body)
    request = Context(id=part_id, group=group_id, chord=dict(body), errbacks=None)
    return request, body_id


def test_a_part_consul_refuses_fails_the_body_naming_the_part(backend, consul_server):
    request, body_id = one_part_chord(backend)
    refused = FaultRule("error", count=1, status=403, body=DENIED, path_prefix="/v1/txn")
    consul_server.faults.add(refused)
    backend.on_chord_part_return(request, states.SUCCESS, 1)
    body = backend.app.AsyncResult(body_id)
    assert body.state == states.FAILURE
    assert isinstance(body.result, ChordError)
    assert f"Part {request.id} not recorded" in str(body.result)


def test_a_failed_gather_fails_the_body_once(backend, consul_server):
    """The part's txn and its bucket's completion mark land; reading the header back fails."""
    request, body_id = one_part_chord(backend)
    gather = FaultRule("error", count=1, after=2, status=403, body=DENIED, path_prefix="/v1/txn")
    consul_server.faults.add(gather)
    backend.on_chord_part_return(request, states.SUCCESS, 1)
    body = backend.app.AsyncResult(body_id)
    assert body.state == states.FAILURE
    assert "Join error" in str(body.result)
    backend.forget(body_id)
    backend.on_chord_part_return(request, states.SUCCESS, 1)  # a redelivered copy
    assert backend.app.AsyncResult(body_id).state == states.PENDING  # the tombstone stopped it


def test_what_a_failing_chord_logs_can_cross_a_process_boundary(backend, caplog):
    """Celery's test worker (``celery.contrib.testing.worker``, prefork) ships its children's
    log records to the parent through a billiard queue, pickled as they are: a record carrying
    a live traceback (``logger.exception``, as Celery's own chord code logs) fails there with
    "TypeError: cannot pickle 'traceback' object" in the queue thread. Ours carry none."""
    import pickle

    request, _ = one_part_chord(backend)
    error = ValueError("header failed")
    with caplog.at_level("DEBUG"):
        backend.on_chord_part_return(request, states.FAILURE, error)
    logged = [r for r in caplog.records if r.name.startswith("consulresults")]
    assert logged, "the failed chord was logged"
    for record in logged:
        pickle.dumps(record)


def test_a_task_is_added_to_a_chord_another_process_applied(make_app):
    """``Task.add_to_chord`` runs in a worker, whose session is not the one that holds the
    chord's record (the applying process's): the holder lets go in the same txn."""
    import json

    from consulresults.chords import bucket_of

    backend = make_app().backend
    plan = backend._plan(backend.chord_expires)
    backend.chords.start("added-elsewhere", ["first", "second"], plan)
    applier = backend.store.sessions.get(plan)
    backend.store.sessions.reset()  # what another process has: a session of its own
    backend.chords.add("added-elsewhere", "third", plan)
    base = backend.chords.base("added-elsewhere")
    bucket = backend.store.entry(f"{base}/b{bucket_of('third')}")
    assert bucket is not None and "third" in json.loads(bucket["Value"])
    assert bucket["Session"] not in ("", applier)
