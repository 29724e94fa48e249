"""How the CLI shows things: data on stdout (a table on a terminal, or json/ndjson/tsv/ids for
scripts), everything else on stderr, colour only when wanted (``NO_COLOR`` is respected); and the
rows each command prints, shaped from what the operations return."""

from __future__ import annotations

import json as json  # `as`: re-exported, the commands use render.json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from .operations import PurgeReport, StoredResult

FORMATS = ("table", "json", "ndjson", "tsv", "ids")
LS_COLUMNS = ("id", "state", "task", "date_done", "expires", "session", "bytes", "retried_as")
SESSION_COLUMNS = ("id", "name", "ttl", "behavior", "node", "checks", "held")
RUNTIME_COLUMNS = ("task", "finished", "p50", "p95", "max", "without_start")
DETAIL_FIELDS = ("name", "args", "kwargs", "worker", "retries", "queue", "retried_as", "retried_at")


def stdout_console() -> Console:
    from rich.console import Console  # only for tables: scripts' formats need no rich

    return Console(no_color="NO_COLOR" in os.environ, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def iso(timestamp: float | None) -> str | None:
    """Unix time as ISO 8601 UTC (seconds), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _tsv_cell(value: object) -> str:
    return _cell(value).replace("\t", " ").replace("\n", " ")


def emit(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    fmt: str,
    id_column: str = "id",
    title: str | None = None,
) -> None:
    """Write ``rows`` in ``fmt``: json prints ``[]`` for nothing; ids prints one id a line."""
    out = sys.stdout
    if fmt == "json":
        out.write(json.dumps(list(rows), indent=2, default=str) + "\n")
    elif fmt == "ndjson":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
    elif fmt == "ids":
        for row in rows:
            out.write(f"{row[id_column]}\n")
    elif fmt == "tsv":
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(_tsv_cell(row.get(c)) for c in columns) + "\n")
    else:
        from rich.table import Table

        table = Table(*columns, title=title, show_lines=False)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        stdout_console().print(table)


def emit_mapping(data: dict[str, Any], fmt: str) -> None:
    """A single object: pretty JSON for json/ndjson, ``key<TAB>value`` lines otherwise."""
    if fmt in ("json", "ndjson"):
        indent = 2 if fmt == "json" else None
        sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")
        return
    if fmt == "table":
        from rich.table import Table

        table = Table("field", "value", show_header=False)
        for key, value in data.items():
            table.add_row(key, _cell(value))
        stdout_console().print(table)
        return
    for key, value in data.items():
        sys.stdout.write(f"{key}\t{_cell(value)}\n")


def default_format(requested: str | None) -> str:
    """A table on a terminal, tab-separated values when piped, unless asked otherwise."""
    if requested:
        return requested
    return "table" if sys.stdout.isatty() else "tsv"


# ---------------------------------------------------------------------- rows


def result_row(result: StoredResult) -> dict[str, Any]:
    """One result as the row ``ls`` prints."""
    return {
        "id": result.id,
        "state": result.state,
        "task": result.task_name,
        "date_done": iso(result.done_at),
        "expires": iso(result.expires_at),
        "session": result.session or None,
        "bytes": result.size,
        "retried_as": result.retried_as,  # the mark of `retry --mark`
        "runtime": seconds(result.runtime),  # json/ndjson only: the columns stay as they were
    }


def seconds(value: float | None) -> float | None:
    """A runtime in seconds to the millisecond (the clocks behind it are no finer), or None."""
    return None if value is None else round(value, 3)


def result_detail(result: StoredResult) -> dict[str, Any]:
    """What ``get`` shows: the Celery meta, decoded, plus extended fields when stored."""
    meta = result.meta or {}
    detail = {
        "id": result.id,
        "state": result.state,
        "result": jsonable(meta.get("result")),
        "date_done": meta.get("date_done"),
        "date_started": meta.get("date_started"),
        "runtime": seconds(result.runtime),
        "children": jsonable(meta.get("children")),
        "traceback": meta.get("traceback"),
    }
    for name in DETAIL_FIELDS:
        if name in meta:
            detail[name] = jsonable(meta[name])
    if result.error:
        detail["error"] = result.error
    return detail


def jsonable(value: object) -> object:
    """A decoded value as JSON can carry it; an exception as ``Type: message``."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def inspection(found: StoredResult, session: dict[str, Any] | None) -> dict[str, Any]:
    """What ``inspect`` shows: where a result lives in Consul and when it should go."""
    row: dict[str, Any] = {
        "id": found.id,
        "key": found.key,
        "state": found.state,
        "runtime": seconds(found.runtime),
        "create_index": found.create_index,
        "modify_index": found.modify_index,
        "lock_index": found.lock_index,
        "flags": found.flags,
        "expires_recorded": iso(found.expires_at),
        "session": found.session or None,
        "bytes": found.size,
    }
    if found.retried_as:
        row["retried_as"] = found.retried_as
    if session:
        ttl = session.get("TTL") or ""
        row.update(
            session_ttl=ttl or None,
            session_behavior=session.get("Behavior"),
            session_node=session.get("Node"),
            session_checks=session.get("NodeChecks") or [],
        )
        row["expected_expiry"] = (
            f"between TTL and 2xTTL after the session's last renewal (TTL {ttl})"
            if ttl
            else "never (no TTL)"
        )
    elif found.session:
        row["expected_expiry"] = "its session is gone: the result should be gone too"
    else:
        row["expected_expiry"] = (
            f"removed by cleanup/purge --expired after {iso(found.expires_at)}"
            if found.flags
            else "never (no expiry recorded)"
        )
    return row


def session_row(session: dict[str, Any]) -> dict[str, Any]:
    """One session as ``sessions ls``/``show`` print it."""
    return {
        "id": session["ID"],
        "name": session.get("Name") or None,
        "ttl": session.get("TTL") or None,
        "behavior": session.get("Behavior"),
        "node": session.get("Node"),
        "checks": session.get("NodeChecks") or [],
        "held": session.get("Held", 0),
    }


def stats_mapping(data: dict[str, Any]) -> dict[str, Any]:
    """``stats`` with its times as ISO 8601."""
    return {**data, "oldest": iso(data["oldest"]), "newest": iso(data["newest"])}


def emit_stats(data: dict[str, Any], fmt: str) -> None:
    """``stats`` as one mapping; on a terminal the runtimes, a nested mapping per task name,
    get a table of their own, a row per task, where a cell of JSON would be unreadable."""
    mapping = stats_mapping(data)
    if fmt != "table":
        emit_mapping(mapping, fmt)
        return
    runtimes = mapping.pop("runtimes")
    emit_mapping(mapping, fmt)
    if runtimes:
        rows = [{"task": task, **figures} for task, figures in runtimes.items()]
        emit(rows, RUNTIME_COLUMNS, fmt, title="runtimes of finished tasks (seconds)")


def purge_summary(report: PurgeReport, as_json: bool, complete: bool = True) -> str:
    """What a deletion did, as one line (or JSON). A run that stopped early says so, and how
    many deletions were sent without an answer (``in_doubt``: each may or may not have
    happened)."""
    if as_json:
        return json.dumps(
            {
                "matched": report.matched,
                "deleted": report.deleted,
                "skipped": report.skipped,
                "failed": report.failed,
                "dry_run": report.dry_run,
                "complete": complete,
                "in_doubt": report.in_flight,
            }
        )
    verb = "would delete" if report.dry_run else "deleted"
    count = report.matched if report.dry_run else report.deleted
    line = (
        f"matched {report.matched}, {verb} {count}, skipped {report.skipped} "
        f"(changed meanwhile), failed {report.failed}"
    )
    if not complete:
        doubt = f", {report.in_flight} more sent without an answer" if report.in_flight else ""
        line += f"; stopped early{doubt}: run the same command again to finish"
    return line


def retry_summary(sent: int, skipped: Mapping[str, int], left: int, dry_run: bool) -> str:
    """What ``retry`` did, as one line: sent (or would send), skipped by reason, and how many
    ``--limit`` left for the next run."""
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
    line = f"{'would send' if dry_run else 'sent'} {sent}, skipped {sum(skipped.values())}"
    line += f" ({why})" if why else ""
    return line + (f", {left} more left by --limit" if left else "")


# ---------------------------------------------------------------------- watch

WATCH_COLUMNS = ("date_done", "state", "task", "id", "result")
STATE_STYLES = {"SUCCESS": "green", "FAILURE": "bold red", "RETRY": "yellow", "REVOKED": "red"}


def watch_row(result: StoredResult) -> dict[str, Any]:
    """One stored result as ``watch`` prints it: a failure's result is its exception."""
    meta = result.meta or {}
    return {
        "date_done": meta.get("date_done"),
        "state": result.state,
        "task": result.task_name,
        "id": result.id,
        "result": result.error or jsonable(meta.get("result")),
    }


class WatchOutput:
    """Where ``watch`` sends results: on a terminal, coloured lines scrolling above a live
    status line (counts so far); otherwise tab-separated or ndjson lines, flushed after every
    round so that a pipe sees them at once."""

    def __init__(self, fmt: str, prefix: str) -> None:
        self.fmt, self.prefix = fmt, prefix
        self.counts: dict[str, int] = {}
        self._live: Any = None
        self._begun = False

    def __enter__(self) -> WatchOutput:
        if self.fmt == "table":
            from rich.live import Live

            self._live = Live(self._status(), console=stdout_console(), transient=True)
            self._live.start()
        elif self.fmt == "tsv":
            sys.stdout.write("\t".join(WATCH_COLUMNS) + "\n")
            sys.stdout.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, results: list[StoredResult]) -> None:
        """One round's results; the first round (what was stored before) is empty, and when
        it is in, a pipe's reader is told on stderr that the watch has begun."""
        if not self._begun and self._live is None:
            sys.stderr.write(f"consul-results: {self._status()}\n")
            sys.stderr.flush()
        self._begun = True
        for result in results:
            self.counts[result.state] = self.counts.get(result.state, 0) + 1
            row = watch_row(result)
            if self._live is not None:
                self._live.console.print(self._line(row), highlight=False)
            elif self.fmt == "ndjson":
                sys.stdout.write(json.dumps(row, default=str) + "\n")
            elif self.fmt == "ids":
                sys.stdout.write(f"{row['id']}\n")
            else:
                sys.stdout.write("\t".join(_tsv_cell(row[c]) for c in WATCH_COLUMNS) + "\n")
        if self._live is not None:
            self._live.update(self._status())
        else:
            sys.stdout.flush()

    @staticmethod
    def _line(row: dict[str, Any]) -> Any:
        from rich.text import Text  # text, not markup: a result may contain [brackets]

        cells = [Text(_cell(row[c])) for c in WATCH_COLUMNS]
        cells[1].stylize(STATE_STYLES.get(row["state"], ""))
        return Text(" ").join(cells)

    def _status(self) -> str:
        seen = ", ".join(f"{state} {n}" for state, n in sorted(self.counts.items())) or "none yet"
        return f"watching {self.prefix or '(root)'}/ ({seen}); Ctrl-C stops"
