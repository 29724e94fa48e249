"""How long finished tasks ran, per task name, for ``stats``: counts and nearest-rank
percentiles of the runtimes the stored results carry (``date_done - date_started``).

A result without ``date_started`` (written by Celery's built-in backend or an earlier version of
this one, or stored by a worker's parent process for a task its child never finished: a lost
child, a hard time limit, a revoke) is counted apart: its runtime is unknown, and guessing one
would skew the percentiles. Runtimes are kept as 8-byte floats (``array``), so a million
finished results cost about 8 MB while ``stats`` reads them.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

# the figures ``stats`` gives per task name, and the quantile each is
QUANTILES = {"p50": 0.5, "p95": 0.95, "max": 1.0}


def nearest_rank(ordered: Sequence[float], quantile: float) -> float:
    """The smallest runtime that at least ``quantile`` of ``ordered`` (sorted, not empty) do
    not exceed: a runtime that was observed, never an interpolation between two."""
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


class Runtimes:
    """Runtimes gathered per task name while ``stats`` reads every result."""

    def __init__(self) -> None:
        self._timed: dict[str, array[float]] = {}
        self._without_start: Counter[str] = Counter()

    def add(self, task: str, runtime: float | None) -> None:
        """One finished result of ``task``; ``runtime`` None when it has no ``date_started``."""
        if runtime is None:
            self._without_start[task] += 1
        else:
            self._timed.setdefault(task, array("d")).append(runtime)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per task name: ``finished`` (all), ``without_start`` (of those, not timed), and
        ``p50``/``p95``/``max`` in seconds over the timed ones (None when none is)."""
        summary = {}
        for task in sorted(self._timed.keys() | self._without_start.keys()):
            ordered = sorted(self._timed.get(task, ()))
            without = self._without_start[task]
            summary[task] = {
                "finished": len(ordered) + without,
                "without_start": without,
                **{
                    name: round(nearest_rank(ordered, q), 3) if ordered else None
                    for name, q in QUANTILES.items()
                },
            }
        return summary
