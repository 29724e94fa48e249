"""Orphaned results: tasks stored as STARTED whose worker is gone, so nothing will ever finish
them (the whole worker killed, a lost node, a solo, threads or gevent pool killed).

Consul cannot tell a running task from a dead one, the workers can: one broadcast
``query_task`` on the Celery app's broker asks every worker that is alive which of the
suspected ids it holds (active or reserved, an ``acks_late`` redelivery included),
and every worker that answers is alive, so the broadcast is the ping too. A STARTED result is
orphaned only if no answering worker holds it; if no worker answers at all, nothing can be
told (:class:`CannotTell`). Only results recorded by a worker's ``task_track_started`` (they
name their worker) and at least ``started_before`` old are suspected; the others are left
undecided, never guessed. Results that moved while the workers were asked are dropped, and the
ones returned keep the ModifyIndex read *before* the broadcast, so a delete-cas on them leaves
alone a result that changed since.

Celery is used only through the app given (``-A``); nothing here imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .exceptions import BrokerUnavailable, CannotTell
from .operations import ResultOperations, StoredResult

STARTED = "STARTED"
NO_WORKER = "no worker recorded (not stored by a worker's task_track_started)"
NO_TIME = "no start time recorded (no date_started, and result_expires is off: Flags are 0)"


@dataclass
class Judgement:
    """What the workers said: the orphaned results, and the STARTED results that could not be
    judged with why (reason → results)."""

    orphaned: list[StoredResult] = field(default_factory=list)
    undecided: dict[str, list[StoredResult]] = field(default_factory=dict)


@dataclass(frozen=True)
class OrphanCheck:
    """How to find orphans: the Celery ``app`` whose broker reaches the workers, the time a
    result must have been written before (``--min-age`` ago), and how long to wait for the
    workers' answers (``--ping-timeout``)."""

    app: Any
    started_before: float
    ping_timeout: float = 2.0

    def judge(self, ops: ResultOperations, results: Iterable[StoredResult]) -> Judgement:
        """The orphans among ``results`` (a results listing, any states: only STARTED ones
        are judged). The broadcast is skipped when no result is old enough to suspect."""
        judgement, suspects = Judgement(), []
        for result in results:
            if result.state != STARTED:
                continue
            when = started_at(result, ops.expiry.expires)
            if worker_of(result) is None:
                judgement.undecided.setdefault(NO_WORKER, []).append(result)
            elif when is None:
                judgement.undecided.setdefault(NO_TIME, []).append(result)
            elif when <= self.started_before:
                suspects.append(result)
        if suspects:
            held = self._held([r.id for r in suspects])
            judgement.orphaned = _unchanged(ops, [r for r in suspects if r.id not in held])
        return judgement

    def _held(self, ids: list[str]) -> set[str]:
        """The ids among ``ids`` that some worker holds, asked in one broadcast."""
        from kombu.exceptions import OperationalError

        with self.app.connection_for_write() as conn:
            try:
                conn.ensure_connection(max_retries=1)  # a broker that is down: fail, not hang
                inspect = self.app.control.inspect(timeout=self.ping_timeout, connection=conn)
                replies = inspect.query_task(ids)
            except (OSError, OperationalError) as exc:
                raise BrokerUnavailable(
                    f"cannot reach the Celery broker at {conn.as_uri()}: {exc}"
                ) from None
        if not replies:
            raise CannotTell(
                f"no worker answered on the broker within {self.ping_timeout:g} s: cannot "
                "tell orphaned results from running ones (are workers running, with remote "
                "control on? raise --ping-timeout on a slow broker)"
            )
        return {task_id for held in replies.values() if isinstance(held, dict) for task_id in held}


def started_at(result: StoredResult, expires: float | None) -> float | None:
    """When the task began (Unix time): ``date_started`` as this package's backend stores it
    with STARTED; else (a worker of an older release) the time of the last write, at most 1 s
    late: every write records in the key's Flags when it expires, the write time plus the app's
    ``result_expires``. None when neither is known: Celery stores no time with STARTED."""
    if result.started_at is not None:
        return result.started_at
    return result.flags - expires if result.flags and expires else None


def worker_of(result: StoredResult) -> str | None:
    """The worker's node name that ``task_track_started`` stores with STARTED (the name
    ``celery inspect`` and ``ping`` answer with)."""
    started = (result.meta or {}).get("result")
    name = started.get("hostname") if isinstance(started, dict) else None
    return name if isinstance(name, str) and name else None


def _unchanged(ops: ResultOperations, results: list[StoredResult]) -> list[StoredResult]:
    """The results still stored at the ModifyIndex they were read at (one batched read): a
    task that finished, or was re-run, while the workers were asked is not an orphan."""
    entries = ops.store.entries([r.key for r in results]) if results else {}
    return [
        r
        for r in results
        if (entry := entries[r.key]) is not None and entry["ModifyIndex"] == r.modify_index
    ]
