"""``stats -o prometheus``: the figures of ``consul-results stats`` in Prometheus' text format,
for node_exporter's textfile collector (written from cron, then renamed into place).

Every figure is a gauge, runtimes included: each describes the results stored now, and those
shrink as results expire or are purged. A counter (or a histogram, whose buckets are counters)
would read as reset every time they do, and ``rate()`` over it would be nonsense.
"""

from __future__ import annotations

import time
from typing import Any

from .runtimes import QUANTILES

# stats fields exported as one unlabelled (but for the prefix) gauge each, with their help
GAUGES = {
    "bytes": "Bytes of the stored task results.",
    "sessions": "Sessions holding keys under the prefix.",
    "idle_sessions": "Result sessions holding nothing (what sessions gc removes).",
    "expired_not_removed": "Results held by no session whose expiry has passed: only a "
    "cleanup (celery beat, purge --expired) removes them.",
    "without_expiry": "Results with neither a session nor a recorded expiry.",
}

Sample = tuple[dict[str, str], float]


def exposition(stats: dict[str, Any], prefix: str, now: float | None = None) -> str:
    """Every figure of ``stats`` as a gauge named ``consul_results_*``, labelled with the
    prefix (and the state or task it counts)."""
    base = {"prefix": prefix}
    by_state = [({**base, "state": s}, n) for s, n in sorted(stats["by_state"].items())]
    by_task = [({**base, "task": t}, n) for t, n in sorted(stats["by_task"].items())]
    lines = _family("results", "Stored task results, by state.", by_state)
    lines += _family("task_results", "Stored task results, by task name.", by_task)
    lines += _runtimes(stats["runtimes"], base)
    for field, text in GAUGES.items():
        lines += _family(field, text, [(base, stats[field])])
    if "orphaned" in stats:  # only with --orphaned, which asks the workers
        text = "STARTED results whose worker is gone (stats --orphaned)."
        lines += _family("orphaned_results", text, [(base, stats["orphaned"])])
    if stats["oldest"] is not None:
        age = max(0.0, (time.time() if now is None else now) - stats["oldest"])
        lines += _family("oldest_result_age_seconds", "Age of the oldest result.", [(base, age)])
    return "\n".join(lines) + "\n"


def _runtimes(runtimes: dict[str, dict[str, Any]], base: dict[str, str]) -> list[str]:
    """Finished results per task name, those without ``date_started`` (no runtime), and the
    runtime quantiles of the others (none for a task none of whose results has one)."""
    tasks = [({**base, "task": task}, figures) for task, figures in runtimes.items()]
    quantiles = [
        ({**labels, "quantile": f"{quantile:g}"}, figures[field])
        for labels, figures in tasks
        for field, quantile in QUANTILES.items()
        if figures[field] is not None
    ]
    return [
        *_family(
            "finished_results",
            "Stored results of finished tasks (SUCCESS, FAILURE, REVOKED), by task name.",
            [(labels, figures["finished"]) for labels, figures in tasks],
        ),
        *_family(
            "finished_without_start",
            "Finished results stored without date_started (Celery's built-in backend, a lost "
            "worker child, a revoke): no runtime, left out of the quantiles.",
            [(labels, figures["without_start"]) for labels, figures in tasks],
        ),
        *_family(
            "runtime_seconds",
            "Runtime (date_done - date_started) of the finished results stored, by task name: "
            "quantile 0.5, 0.95 and 1 (the maximum), nearest rank.",
            quantiles,
        ),
    ]


def _family(name: str, text: str, samples: list[Sample]) -> list[str]:
    metric = f"consul_results_{name}"
    lines = [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
    for labels, value in samples:
        pairs = ",".join(f'{k}="{_escaped(v)}"' for k, v in labels.items())
        number = str(value) if isinstance(value, int) else f"{value:.3f}"
        lines.append(f"{metric}{{{pairs}}} {number}")
    return lines


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
