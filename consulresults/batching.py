"""Group commit: while every sender of the process is busy, concurrent txns queue, and the next
sender takes what queued as one ``/v1/txn``.

Nothing waits to form a batch (as PostgreSQL's group commit, Kafka's ``linger.ms=0``): a caller
that finds a sender free sends its own operation at once, alone and as it always was (a read is
its plain GET). Only callers beyond the senders (the budget's connections) queue, and when a
sender's answer comes back it takes the queue's head as one batch, in caller order. A thousand
callers so cost a few requests and Raft writes each round, not a thousand.

What Consul makes of a batch (``agent/consul/state/txn.go``, ``agent/txn_endpoint.go``):

- Every write of a txn gets the same index, so a batch holds at most one member per key, and per
  chord directory (a chord's "highest CreateIndex of a complete set" must never tie); a member
  skipped for that keeps its place, and later members on its keys wait behind it.
- A txn that fails reports every failing operation; some refusals (ACLs, lock delay, a missing
  key) come before the checks run. A member with errors gets its own refusal back, exactly as if
  it had sent alone; members without errors go back to the head of the queue and are sent again.
- Answers are split per member by key: checks and deletes return nothing, ``get-tree`` many,
  and Consul drops the entries the token may not read.
- A lost answer (time-out, reset, a killed sender) is a lost answer for every member.
- The operations per txn (128; 64 before Consul 1.14) and the body (``txn_max_req_len``) are
  limits: learned from a 413, after which the batch is split again.
- Reads never share a write txn (a write txn goes through Raft and ignores ``?consistent``), and
  a read batch carries its members' consistency: one batcher per mode.
- Each member keeps its own deadline, queued or in flight; a sender whose own operation is done
  hands the sending over to the first member still queued.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import forks, layout
from .answers import TxnAnswer, compatible
from .deadline import after, until
from .exceptions import ConsulError, ConsulTimeout, ConsulUnreachable

TXN_OPS = 128
LEGACY_TXN_OPS = 64
TXN_MAX_BODY = 524_288  # the agent's default txn_max_req_len
_MAX_SIZE = re.compile(r"max size: (\d+) bytes")
_VALUE_KEY = re.compile(r'Value for key "((?:[^"\\]|\\.)*)" is too large')

Send = Callable[[list[dict[str, Any]]], TxnAnswer]


@dataclass(eq=False)
class Member:
    """One caller's operations, and what it gets back: ``solo()``'s value when it was alone in
    its batch, else its share of the batch's :class:`TxnAnswer`."""

    ops: list[dict[str, Any]]
    keys: frozenset[str]
    solo: Callable[[], Any]
    send: Send  # the txn of a batch, on this member's transport
    prefixes: tuple[str, ...] = ()  # get-tree prefixes whose entries are this member's
    deadline: float | None = field(default_factory=lambda: after(None))
    size: int = 0
    chords: frozenset[str] = frozenset()
    done: bool = False
    queued: bool = False
    in_flight: bool = False
    turn: bool = False  # holds a sending turn (handed one, or sending)
    gone: bool = False  # its caller gave up: never queued or handed a turn again
    value: Any = None
    error: BaseException | None = None
    event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.size = len(json.dumps(self.ops))  # its ops, and the ", " before them
        self.chords = frozenset(c for c in map(chord_of, self.keys) if c)

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.done, self.in_flight = value, error, True, False
        self.event.set()


def chord_of(key: str) -> str | None:
    """The chord directory (``…/chord-unlock-<id>/``) ``key`` is in, if any."""
    found = re.search(rf"(^|/){layout.CHORD_PREFIX}[^/]*/", key)
    return key[: found.end()] if found else None


@dataclass
class Stats:
    """What batching did in this process (``doctor``, the benchmarks)."""

    batches: int = 0  # txns of two members or more
    members: int = 0  # members sent in those
    alone: int = 0  # members sent alone
    resent: int = 0  # members sent again after another member's refusal
    split: int = 0  # batches split again after a 413
    largest: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Batcher:
    """The queue and senders of one kind of txn (writes, or reads of one consistency) for one
    agent and token. At most ``senders`` send at once; the rest queue (see the module)."""

    def __init__(self, senders: int, patience: float) -> None:
        self.senders = senders
        self.patience = patience
        self.max_ops = TXN_OPS
        self.max_body = TXN_MAX_BODY  # a batch's, lowered by each 413
        self.body_limit: int | None = None  # the agent's txn_max_req_len, once it named it
        self.stats = Stats()
        self.reset()
        forks.reset_in_forked_child(self)  # a parent's sender does not exist in the child

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Member] = deque()
        self._sending = 0

    def queued(self) -> int:
        """Members waiting for a batch (tests, benchmarks)."""
        with self._lock:
            return len(self._queue)

    def sending(self) -> int:
        """Sending turns held (at most ``senders``)."""
        with self._lock:
            return self._sending

    def run(self, member: Member) -> Any:
        """Send ``member`` (at once, or with the next batch) and give back what it got."""
        with self._lock:
            self._queue.append(member)
            member.queued = True
            if self._sending < self.senders:
                self._sending += 1
                member.turn = True
        while not member.done:
            if member.turn:
                self._send_turns(member)
            if not member.done:
                self._wait(member)
        with self._lock:
            if member.turn:  # handed one as another sender answered it
                self._pass_turn(member)
        if member.error is not None:
            raise member.error
        return member.value

    # ------------------------------------------------------------------ waiting

    def _wait(self, me: Member) -> None:
        """Sleep until done or handed the sending turn. Queued past its patience or deadline, a
        member leaves the queue; in flight past its deadline, it may have been applied. Either
        way it raises :class:`ConsulTimeout`."""
        patience = time.monotonic() + self.patience
        try:
            while True:
                queued = min(patience, me.deadline or math.inf)
                limit = queued if me.queued else me.deadline
                me.event.wait(None if limit is None else max(0.0, limit - time.monotonic()))
                with self._lock:
                    me.event.clear()
                    if me.turn and me.done:  # answered by another sender's batch meanwhile
                        self._pass_turn(me)
                    if me.turn or me.done:
                        return
                    if me.queued and time.monotonic() >= queued:
                        self._withdraw(me)
                        raise _timeout("was not sent: every sender of this process stayed busy")
                    if me.in_flight and me.deadline and time.monotonic() >= me.deadline:
                        raise _timeout("may have been applied: its batch was still in flight")
        except BaseException:
            with self._lock:
                me.gone = True
                self._withdraw(me)
                if me.turn:  # a turn handed to a member that gives up goes on
                    self._pass_turn(me)
            raise

    def _withdraw(self, me: Member) -> None:
        """(Under the lock.) ``me`` leaves the queue, if it is in it."""
        if me.queued:
            me.queued = False
            self._queue.remove(me)

    def _pass_turn(self, me: Member) -> None:
        """(Under the lock.) ``me``'s sending turn goes to the first member queued that holds
        none, or ends."""
        me.turn = False
        head = next((m for m in self._queue if not m.turn), None)
        if head is None:
            self._sending -= 1
        else:
            head.turn = True
            head.event.set()

    # ------------------------------------------------------------------ sending

    def _send_turns(self, me: Member) -> None:
        """Send batches from the queue's head while ``me`` is queued, then hand the turn over:
        a sender never works for others once its own operation is answered, or in another
        sender's batch."""
        while True:
            with self._lock:
                if not me.queued:
                    self._pass_turn(me)
                    return
                if me.deadline is not None and time.monotonic() >= me.deadline:
                    self._withdraw(me)
                    self._pass_turn(me)
                    raise _timeout("was not sent: its deadline passed in the queue")
                batch = self._take()
            try:
                self._send(batch)
            except BaseException:  # killed while sending: the turn goes on
                with self._lock:
                    self._withdraw(me)
                    self._pass_turn(me)
                raise

    def _take(self) -> list[Member]:
        """(Under the lock.) The batch at the queue's head: in caller order, within the limits,
        one member per key and per chord; a member passed over holds its keys for later ones."""
        batch: list[Member] = []
        taken: set[str] = set()
        held: set[str] = set()
        ops, size = 0, 2
        for member in self._queue:
            claims = member.keys | member.chords
            fits = ops + len(member.ops) <= self.max_ops and size + member.size <= self.max_body
            if claims & (taken | held) or (batch and not fits):
                held |= claims
                if not fits and ops >= self.max_ops:
                    break
                continue
            batch.append(member)
            taken |= claims
            ops += len(member.ops)
            size += member.size
        for member in batch:
            member.queued, member.in_flight = False, True
        self._queue = deque(m for m in self._queue if m.queued)
        return batch

    def _send(self, batch: list[Member]) -> None:
        """One request for ``batch``; every member is finished or queued again, whatever
        happens to the request. Only Consul's and the network's failures are the members';
        anything else (a gevent kill, ``SoftTimeLimitExceeded``) is the sender's own: its
        members get a lost answer and the sender raises it."""
        unsettled = list(batch)
        try:
            self._count(batch)
            if len(batch) == 1:
                with until(_latest(batch)):  # the member's time, not the sender's own
                    batch[0].finish(batch[0].solo())
            else:
                self._settle(batch, self._send_batch(batch))
            unsettled = []
        except (ConsulError, ConsulUnreachable, ConsulTimeout, OSError) as exc:
            if not (len(batch) > 1 and isinstance(exc, ConsulError) and exc.status == 413):
                for i, member in enumerate(batch):  # the first keeps it as raised
                    member.finish(error=exc if i == 0 else _copied(exc))
            else:
                self._split(batch, exc)
            unsettled = []
        finally:
            for member in unsettled:
                member.finish(error=_lost())

    def _split(self, batch: list[Member], exc: ConsulError) -> None:
        """A batch's 413: a value over the agent's limit is its member's alone; a txn over the
        agent's limits teaches them, and the batch goes out again, split."""
        named = _VALUE_KEY.search(exc.text)
        owner = next((m for m in batch if named and named.group(1) in m.keys), None)
        if owner is not None:
            owner.finish(error=exc)
            self._requeue([m for m in batch if m is not owner])
            return
        with self._lock:
            self.stats.split += 1
        self.learn(exc.text, sum(len(m.ops) for m in batch), sum(m.size for m in batch) + 2)
        self._requeue(batch)

    def _send_batch(self, batch: list[Member]) -> TxnAnswer:
        ops = [op for member in batch for op in member.ops]
        with until(_latest(batch)):  # the members' time, not the sender's own
            return batch[0].send(ops)

    def _count(self, batch: list[Member]) -> None:
        with self._lock:
            if len(batch) == 1:
                self.stats.alone += 1
                return
            self.stats.batches += 1
            self.stats.members += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))

    def _settle(self, batch: list[Member], answer: TxnAnswer) -> None:
        """Each member's share of the answer; members refused only for another's sake go back
        to the head of the queue."""
        if answer.applied:
            for member, results in zip(
                batch, split_results(batch, answer.results or []), strict=True
            ):
                member.finish(TxnAnswer(results, []))
            return
        again = []
        for member, errors in zip(batch, split_errors(batch, answer.errors), strict=True):
            if errors:
                member.finish(TxnAnswer(None, errors))
            else:
                again.append(member)
        self._requeue(again)

    def _requeue(self, members: list[Member]) -> None:
        """Members to send again, at the head of the queue, woken to wait as queued ones (with
        their patience); those whose caller gave up meanwhile are dropped."""
        with self._lock:
            members = [m for m in members if not m.gone]
            self.stats.resent += len(members)
            for member in reversed(members):
                member.in_flight, member.queued = False, True
                self._queue.appendleft(member)
                member.event.set()

    def learn(self, text: str, ops: int, size: int) -> None:
        """The agent's limits from its 413 for a txn of ``ops`` operations and ``size`` bytes:
        the number it names (``body_limit``, what a store alone may reach), and batches kept
        below what was refused, so that the next ones are smaller whatever it named."""
        if "too many operations" in text.lower():
            self.max_ops = min(LEGACY_TXN_OPS, ops // 2) if ops > LEGACY_TXN_OPS else ops // 2
            return
        found = _MAX_SIZE.search(text)
        if found:
            self.body_limit = min(self.body_limit or TXN_MAX_BODY, int(found.group(1)))
        self.max_body = min(self.max_body, self.body_limit or TXN_MAX_BODY, size - 1)


def split_results(batch: list[Member], results: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """Each member's results, in order: an entry is its key's member's, or (get-tree) the
    member of the longest prefix it falls under."""
    shares: list[list[Any]] = [[] for _ in batch]
    exact = {key: i for i, member in enumerate(batch) for key in member.keys}
    prefixes = sorted(
        ((p, i) for i, m in enumerate(batch) for p in m.prefixes), key=lambda pi: -len(pi[0])
    )
    for result in results:
        key = result.get("KV", {}).get("Key", "")
        owner = exact.get(key)
        if owner is None:
            owner = next((i for p, i in prefixes if key.startswith(p)), None)
        if owner is not None:
            shares[owner].append(result)
    return shares


def split_errors(batch: list[Member], errors: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """Each member's errors, their ``OpIndex`` counted from its own first operation."""
    shares: list[list[Any]] = [[] for _ in batch]
    starts, start = [], 0
    for member in batch:
        starts.append(start)
        start += len(member.ops)
    for error in errors:
        index = int(error.get("OpIndex", 0))
        owner = max(i for i, s in enumerate(starts) if s <= index)
        shares[owner].append({**error, "OpIndex": index - starts[owner]})
    return shares


def _latest(batch: list[Member]) -> float:
    """The latest deadline of the members (none: never)."""
    deadlines = [m.deadline for m in batch]
    return math.inf if None in deadlines else max(d for d in deadlines if d is not None)


def _timeout(what: str) -> ConsulTimeout:
    return compatible(ConsulTimeout)(f"a Consul transaction {what}")


def _lost() -> ConsulUnreachable:
    reason = "the request's sender was interrupted: its answer is lost"
    return compatible(ConsulUnreachable)(f"no answer from Consul ({reason})", "", reason)


def _copied(exc: Exception) -> Exception:
    """The same failure for each member (each raises its own, with its own traceback)."""
    try:
        copied = copy.copy(exc)
    except Exception:  # an exception copy cannot rebuild: share the one
        return exc
    copied.__cause__ = exc.__cause__
    return copied


_BATCHERS: dict[tuple[Any, ...], Batcher] = {}
_BATCHERS_LOCK = forks.Lock()


def batcher_for(identity: tuple[Any, ...], senders: int, patience: float) -> Batcher:
    """The process's batcher for ``identity`` (a transport's, plus the kind of txn)."""
    with _BATCHERS_LOCK:
        found = _BATCHERS.get(identity)
        if found is None:
            found = _BATCHERS[identity] = Batcher(senders, patience)
        return found


def stats() -> dict[str, int]:
    """The process's batching, summed over its batchers."""
    total: dict[str, int] = {}
    with _BATCHERS_LOCK:
        batchers = list(_BATCHERS.values())
    for batcher in batchers:
        for name, value in batcher.stats.snapshot().items():
            total[name] = (
                max(total.get(name, 0), value)
                if name == "largest"
                else (total.get(name, 0) + value)
            )
    return total
