"""How Celery's chords run on the Consul backend: the Celery side of :mod:`consulresults.chords`.

A header part is one request; the part that completes the header has every part's result, so it
sends the body (or fails it with the first failed part's own error) without joining anything,
and no pool process ever waits on a chord. Chords applied by the previous release (one counter
key, then a join) still finish, Celery's way, with every wait of the join bounded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, cast

from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.canvas import Signature, maybe_signature
from celery.exceptions import ChordError
from celery.result import GroupResult, ResultBase, result_from_tuple
from celery.utils.log import get_logger
from kombu.utils.encoding import str_to_bytes

from .celery_waiting import waits_bounded
from .chords import ChordUnknown
from .connection import ConsulError

logger = get_logger(__name__)
JOIN_BOUND = 3.0  # Celery's default result_chord_join_timeout


class ChordMixin(KeyValueStoreBackend):
    """Chords for :class:`consulresults.backend.ConsulBackend` (which provides ``chords``,
    ``_plan``, ``_write``, ``_update``, ``_key`` and ``_retrying``)."""

    @property
    def chord_expires(self) -> float | None:
        """How long a chord's own keys live: ``result_chord_expires``, else ``result_expires``
        (Celery 5.7's rule, here so that earlier Celery, which has no such setting, gets it)."""
        chord = self.app.conf.get("result_chord_expires")
        return cast(
            "float | None",
            self.expires if chord is None else self.prepare_expires(chord, type=float),
        )

    def _apply_chord_incr(
        self, header_result_args: tuple[Any, ...], body: Signature, **kwargs: Any
    ) -> None:
        """Celery calls this as ``apply_chord`` (its key/value base binds it when
        ``implements_incr``), before the header is sent: save the header's GroupResult, as
        Celery does, and record which task ids make up the header. The GroupResult is a store
        like a task's: under ``result_backend_always_retry`` a transient failure is retried
        (Celery itself wraps only ``store_result``)."""
        self.ensure_chords_allowed()
        header = self.app.GroupResult(*header_result_args)
        self._retrying(
            self._write,
            self._key(self.get_key_for_group(header.id)),
            self.encode({"result": header.as_tuple()}),
            self._plan(self._kept_while_chord_runs()),
        )
        self.chords.start(header.id, _reporting_ids(header), self._plan(self.chord_expires))

    def mark_as_failure(
        self,
        task_id: str,
        exc: BaseException,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery fails what is chained after a failed task, but not a group ending the
        chain (it has no id of its own), so waiting on its GroupResult never ends (Celery
        issue #6437): its tasks fail too, with the same error."""
        info = super().mark_as_failure(task_id, exc, traceback, request, **kwargs)
        if request is not None and kwargs.get("store_result", True):
            for chained in getattr(request, "chain", None) or ():
                for member in _group_members(chained):
                    self.store_result(member, exc, states.FAILURE, traceback=traceback)
        return info

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        """Nothing to do: the size is counted from the header's task ids at apply time, which
        Celery's own count (``chord_size``) always equals for a header it applied."""

    def add_to_chord(self, group_id: str, result: ResultBase) -> None:
        """``Task.add_to_chord``: one more task the chord's body waits for."""
        self.chords.add(group_id, result.id, self._plan(self.chord_expires))

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        """Record this header part (one request). The part that completes the header sends
        the body with every part's result, or fails it with the first failed part's error:
        it never waits for anything."""
        group_id, task_id = request.group, request.id
        if not group_id or not task_id:
            return
        data = str_to_bytes(self.encode([task_id, state, self.encode_result(result, state)]))
        callback = maybe_signature(request.chord, app=self.app)
        try:
            fire = self.chords.record_part(group_id, task_id, data, self._plan(self.chord_expires))
        except ChordUnknown:
            self._legacy_part_return(request, state, result, **kwargs)
            return
        except ConsulError as exc:
            if exc.transient:
                # unreachable past chords.PATIENCE: the part may have landed, and another part
                # may yet complete the header, so raise (as Celery's Redis backend does)
                raise
            # refused: the header can never complete, so the body fails now, not never
            self._fail_body(group_id, callback, ChordError(f"Part {task_id} not recorded: {exc!r}"))
            return
        if fire:
            self._fire_body(group_id, callback)

    def _fire_body(self, group_id: str, callback: Signature) -> None:
        """Send the body, or fail it with a ChordError naming why (a failed part, the header's
        GroupResult gone, Consul unreachable), as Celery's Redis backend does; then leave the
        tombstone, so no copy of a part sends it again."""
        try:
            values = self._gathered(group_id)
        except Exception as exc:
            error = exc if isinstance(exc, ChordError) else ChordError(f"Join error: {exc!r}")
            self._fail_body(group_id, callback, error)
        else:
            try:
                callback.delay(values)
            except Exception as exc:
                self._fail_body(group_id, callback, ChordError(f"Callback error: {exc!r}"))
        finally:
            self._finish(group_id)

    def _gathered(self, group_id: str) -> list[Any]:
        parts, saved = self.chords.gather(group_id, self._key(self.get_key_for_group(group_id)))
        reported = {tid: (state, value) for tid, state, value in map(self.decode, parts)}
        return self._header_values(group_id, reported, saved)

    def _fail_body(self, group_id: str, callback: Signature, error: ChordError) -> None:
        logger.error("Chord %r raised: %r", group_id, error)
        self.chord_error_from_stack(callback, error)

    def _finish(self, group_id: str) -> None:
        """The body has been sent or failed whatever happens here, so a failure to clean up is
        logged, not raised: the chord's keys still go with their sessions."""
        try:
            self.chords.finish(group_id, self._plan(self.chord_expires))
        except Exception as exc:
            logger.error("Chord %r: could not leave its tombstone: %r", group_id, exc)

    def _header_values(
        self, group_id: str, parts: dict[str, tuple[str, Any]], saved: dict[str, Any] | None
    ) -> list[Any]:
        """The body's argument, shaped like the header (a nested group gives a nested list)."""
        if saved is None:
            raise ChordError(f"GroupResult {group_id} no longer exists")
        header = result_from_tuple(self.decode(saved["Value"])["result"], self.app)
        return self._values_of(header.results, parts)

    def _values_of(self, results: list[ResultBase], parts: dict[str, tuple[str, Any]]) -> list[Any]:
        values: list[Any] = []
        for result in results:
            if isinstance(result, GroupResult):
                values.append(self._values_of(result.results, parts))
                continue
            state, value = parts.get(result.id, (states.PENDING, None))
            if state in states.EXCEPTION_STATES:
                value = self.exception_to_python(value)
            if state in states.PROPAGATE_STATES:
                error = ChordError(f"Dependency {result.id} raised {value!r}")
                error.__cause__ = value if isinstance(value, BaseException) else None
                raise error
            if state != states.SUCCESS:
                raise ChordError(f"Dependency {result.id} never reported (state {state})")
            values.append(value)
        return values

    def _kept_while_chord_runs(self) -> float | None:
        """The header's GroupResult lives as long as the chord's state, or the results (what
        Celery 5.7 calls ``_chord_result_expires``; earlier Celery has no such property)."""
        if not self.chord_expires or not self.expires:
            return None
        return cast(float, max(self.chord_expires, self.expires))

    def _legacy_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        """A chord applied by an earlier release (one counter key): finish it as that release
        did, Celery's way, but with every wait of the join bounded."""
        with waits_bounded(self.app.conf.result_chord_join_timeout or JOIN_BOUND):
            super().on_chord_part_return(request, state, result, **kwargs)

    # ---------------------------------------------------------- the previous release's counter

    def incr(self, key: str | bytes) -> int:
        """Atomically add one and return the new count; safe to repeat after a lost answer.

        The counter remembers the last writers' nonces: if the answer to our write was lost, the
        next read shows whether it landed, so a chord part is never counted twice.
        """
        nonce = uuid.uuid4().hex[:16]
        outcome: dict[str, int] = {}

        def add_one(value: bytes | None) -> bytes | None:
            count, recent = _parse_counter(value)
            if nonce in recent:  # our earlier attempt landed
                outcome["count"] = count - (len(recent) - 1 - recent.index(nonce))
                return None
            outcome["count"] = count + 1
            return json.dumps({"count": count + 1, "recent": [*recent, nonce][-1000:]}).encode()

        self._update(self._key(key), add_one, self._plan(self.chord_expires), create=True)
        return outcome["count"]

    def expire(self, key: str | bytes, value: float | int | None) -> None:
        """Make ``key`` live ``value`` more seconds from now (0/None: no expiry)."""
        self._update(self._key(key), lambda current: current or b"", self._plan(value or None))


def _reporting_ids(result: ResultBase) -> list[str]:
    """The ids of the tasks that report to a chord with this header: a nested group's tasks
    report for it."""
    if isinstance(result, GroupResult):
        return [i for child in result.results for i in _reporting_ids(child)]
    return [result.id]


def _group_members(signature: object) -> list[str]:
    """The frozen task ids of a group signature (as a request carries it in its chain)."""
    if not isinstance(signature, Mapping) or signature.get("subtask_type") != "group":
        return []
    tasks = (signature.get("kwargs") or {}).get("tasks") or ()
    ids = [(t.get("options") or {}).get("task_id") for t in tasks if isinstance(t, Mapping)]
    return [i for i in ids if i]


def _parse_counter(value: bytes | None) -> tuple[int, list[str]]:
    if not value:
        return 0, []
    try:
        data = json.loads(value)
        return int(data["count"]), list(data.get("recent", []))
    except (ValueError, TypeError, KeyError):
        return int(value), []  # a plain counter
