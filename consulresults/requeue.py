"""Re-sending tasks from their stored call (``consul-results retry``), without Celery: which
results may be re-sent and why the others are skipped, the claim that makes a run at most once
(``--mark``), and the run itself.

What only the Celery app knows (the tasks it registers, their ``acks_late``, its broker, its
serializer) comes through :class:`App`, which :mod:`consulresults.celery_requeue` implements;
so the rules here can be read, and tested, without a broker.

With ``result_extended``, Celery stores a task's ``name``, ``args``, ``kwargs`` and ``queue``
(the routing key it was delivered with), and ``group_id``/``parent_id`` for a member of a group,
chord or chain. It stores no callbacks (``link``, a chain's next steps, a chord's body), so a
re-sent member runs alone: members are skipped unless named by id with ``--force``. The first
step of a chain carries no such mark and cannot be told apart.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from .codec import COMPRESSED_MAGIC
from .exceptions import BrokerUnavailable
from .kv import ValueTooLarge
from .operations import RETRIED_AS, RETRIED_AT, ResultOperations, StoredResult

RETRYABLE = frozenset({"FAILURE"})
RESENDABLE = frozenset({"FAILURE", "REVOKED"})  # what --state may ask for (STARTED: --orphaned)
CANVAS_TASKS = frozenset(
    {
        "celery.accumulate",
        "celery.chain",
        "celery.chord",
        "celery.chord_unlock",
        "celery.chunks",
        "celery.group",
        "celery.map",
        "celery.starmap",
    }
)


@dataclass(frozen=True)
class Call:
    """What a task was called with, as ``result_extended`` stored it."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None  # the routing key it was delivered with


class App(Protocol):
    """The Celery app's side of a retry."""

    def registered(self, name: str) -> bool:
        """The app has a task of this name (only those are ever sent)."""

    def acks_late(self, name: str) -> bool:
        """The task acknowledges its message only once it has run."""

    def send(self, call: Call, task_id: str) -> None:
        """Send the call under ``task_id``; :class:`BrokerUnavailable` if the broker fails,
        :class:`CannotSend` if this call cannot be sent (its arguments do not serialize)."""

    def remark(self, payload: bytes, fields: dict[str, str]) -> bytes:
        """``payload`` (a serialized meta, uncompressed) with ``fields`` added, serialized
        as it was."""


class CannotSend(Exception):
    """This call cannot be sent, whatever the broker does (e.g. arguments stored with pickle,
    tasks sent as json): the result is skipped, the others still go."""


@dataclass(frozen=True)
class Rules:
    """What a run may re-send. ``states``: the states it re-sends (``--state REVOKED`` adds
    REVOKED; an ``--orphaned`` selection adds STARTED); ``force``: the results were named by id
    and state, ``acks_late`` and canvas membership are no reason to skip; ``again``: results
    already marked are sent once more."""

    states: frozenset[str] = RETRYABLE
    force: bool = False
    again: bool = False


@dataclass(frozen=True)
class Skip:
    """A result left alone: ``reason`` is counted in the summary, ``detail`` is its line."""

    id: str
    reason: str
    detail: str


@dataclass
class Plan:
    """The results a run will re-send, those it skips, and how many ``--limit`` left over."""

    send: list[StoredResult] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    left: int = 0


@dataclass(frozen=True)
class Sent:
    """One re-sent result: its id, task name, and the new task's id (None in a dry run)."""

    id: str
    task: str
    new_id: str | None


def call_of(result: StoredResult) -> Call | None:
    """The stored call, or None when the result has none (``result_extended`` was off)."""
    meta = result.meta or {}
    name, args, kwargs = meta.get("name"), meta.get("args"), meta.get("kwargs")
    if not isinstance(name, str) or not isinstance(args, (list, tuple)):
        return None
    if not isinstance(kwargs, dict):
        return None
    queue = meta.get("queue")
    return Call(name, list(args), kwargs, queue if isinstance(queue, str) and queue else None)


def canvas_membership(result: StoredResult) -> str | None:
    """Why the result belongs to a chain, group or chord, or None."""
    meta = result.meta or {}
    if meta.get("group_id"):
        return f"a member of group or chord {meta['group_id']}"
    if meta.get("parent_id"):
        return f"sent by task {meta['parent_id']} (a step of a chain, or a subtask)"
    return None


def skip_reason(result: StoredResult, rules: Rules, app: App) -> Skip | None:
    """Why ``result`` must not be re-sent, or None. No stored call, an unregistered name,
    Celery's own canvas tasks and a mark are never overridden by ``--force``."""
    if result.meta is None:
        return Skip(result.id, "unreadable", f"cannot read it: {result.error}")
    call = call_of(result)
    if call is None:
        return Skip(
            result.id,
            "no stored call",
            "no stored task name, args and kwargs (result_extended was off when it ran)",
        )
    if not app.registered(call.name):
        return Skip(
            result.id,
            "not registered",
            f"task {call.name!r} is not registered by the app (only its own tasks are sent)",
        )
    if call.name in CANVAS_TASKS:
        return Skip(
            result.id,
            "canvas",
            f"{call.name} is Celery's own canvas task: what it runs is not stored, so it is "
            "never re-sent",
        )
    if result.retried_as and not rules.again:
        at = (result.meta or {}).get(RETRIED_AT)
        return Skip(
            result.id,
            "already retried",
            f"already retried as {result.retried_as} at {at} (--again sends it once more)",
        )
    return None if rules.force else _unsafe(result, call, rules, app)


def _unsafe(result: StoredResult, call: Call, rules: Rules, app: App) -> Skip | None:
    """The reasons ``--force`` overrides for results named by id."""
    if result.state not in rules.states:
        wanted = " or ".join(sorted(rules.states))
        return Skip(result.id, "state", f"state {result.state}, not {wanted} (--force with its id)")
    if app.acks_late(call.name):
        return Skip(
            result.id,
            "acks_late",
            f"task {call.name} is acks_late: the broker redelivers it if its worker was lost, "
            "so a retry could run it twice (--force with its id)",
        )
    canvas = canvas_membership(result)
    if canvas:
        return Skip(
            result.id,
            "canvas",
            f"{canvas}: its callbacks are not stored, so it would run alone (--force with its id)",
        )
    return None


def plan_ids(ops: ResultOperations, ids: Iterable[str], rules: Rules, app: App) -> Plan:
    """The plan for results named by id, in the order given (a missing one is skipped)."""
    found: list[StoredResult] = []
    missing: list[Skip] = []
    for task_id in dict.fromkeys(ids):  # once each, however often named
        result = ops.fetch(task_id)
        if result is None:
            where = f"{ops.prefix or '(root)'}/"
            missing.append(Skip(task_id, "no result", f"no result stored under {where}"))
        else:
            found.append(result)
    chosen = plan(found, rules, app)
    chosen.skipped[:0] = missing
    return chosen


def plan(results: Iterable[StoredResult], rules: Rules, app: App, limit: int | None = None) -> Plan:
    """Split ``results`` into those to re-send and those skipped; past ``limit`` to re-send,
    the rest are counted as left for another run."""
    chosen = Plan()
    for result in results:
        skip = skip_reason(result, rules, app)
        if skip is not None:
            chosen.skipped.append(skip)
        elif limit is not None and len(chosen.send) >= limit:
            chosen.left += 1
        else:
            chosen.send.append(result)
    return chosen


def oldest_first(results: Iterable[StoredResult]) -> list[StoredResult]:
    """A selection's results by when they were done (orphaned STARTED ones, never done, by
    when they began), so ``--limit`` takes the oldest."""
    return sorted(results, key=lambda r: (r.done_at or r.started_at or 0.0, r.key))


def reasons(skipped: Iterable[Skip]) -> Counter[str]:
    return Counter(s.reason for s in skipped)


def run(
    ops: ResultOperations,
    chosen: Plan,
    app: App,
    mark: bool,
    on_sent: Callable[[Sent], None],
    on_skip: Callable[[Skip], None],
) -> None:
    """Re-send each planned result under a new id. With ``mark``, each is first claimed (see
    :func:`claim`) and sent only if the claim held. A broker failure stops the run
    (:class:`BrokerUnavailable`) after undoing the claim of the call it could not send; a call
    that cannot be sent (:class:`CannotSend`) has its claim undone and is skipped."""
    for result in chosen.send:
        call = call_of(result)
        assert call is not None  # planned: it has one
        new_id = str(uuid.uuid4())
        claimed = None
        if mark:
            try:
                claimed = claim(ops, result, new_id, app)
            except ValueTooLarge:
                on_skip(Skip(result.id, "too large", "marked, it would exceed Consul's limit"))
                continue
            if claimed is None:
                on_skip(Skip(result.id, "changed", "changed since read (claimed by another run?)"))
                continue
        try:
            app.send(call, new_id)
        except CannotSend as exc:
            kept = claimed is not None and not unclaim(ops, result, claimed)
            stays = f"; its mark stays (retry --again {result.id} sends it)" if kept else ""
            on_skip(Skip(result.id, "cannot send", f"{exc}{stays}"))
            continue
        except BrokerUnavailable as exc:
            if claimed is not None and not unclaim(ops, result, claimed):
                raise BrokerUnavailable(
                    f"{exc}; the mark on {result.id} stays (retry --again {result.id} sends it)"
                ) from exc
            raise
        except BaseException:  # anything else (Ctrl-C, a broker's own error): not sent either
            if claimed is not None:
                unclaim(ops, result, claimed)
            raise
        on_sent(Sent(result.id, call.name, new_id))


def claim(ops: ResultOperations, result: StoredResult, new_id: str, app: App) -> int | None:
    """Record "retried as ``new_id``, now" in the result with one compare-and-swap on the
    ModifyIndex it was read at: state, value, Flags, session and compression stay. The new
    ModifyIndex, or None if the result changed meanwhile (another run claimed it first)."""
    now = datetime.now(timezone.utc).isoformat()
    value = remarked(result.value or b"", {RETRIED_AS: new_id, RETRIED_AT: now}, app.remark)
    return ops.store.replace_unchanged(result.key, value, result.flags, result.modify_index)


def unclaim(ops: ResultOperations, result: StoredResult, claimed_at: int) -> bool:
    """Put back the value as it was before the claim, if nothing changed it since."""
    restored = ops.store.replace_unchanged(
        result.key, result.value or b"", result.flags, claimed_at
    )
    return restored is not None


def remarked(
    value: bytes,
    fields: dict[str, str],
    remark: Callable[[bytes, dict[str, str]], bytes],
) -> bytes:
    """``value`` with ``fields`` added to its meta, compressed again as it was stored (Celery
    puts the compression's content type in front of a compressed payload)."""
    if not value.startswith(COMPRESSED_MAGIC):
        return remark(value, fields)
    from kombu.compression import compress, decompress

    content_type, _, body = value[len(COMPRESSED_MAGIC) :].partition(b"\x00")
    method = content_type.decode("utf-8")
    packed: bytes = compress(remark(decompress(body, method), fields), method)[0]
    return COMPRESSED_MAGIC + content_type + b"\x00" + packed
