"""Read commands on results: ``get``, ``inspect``, ``ls``, ``stats``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from .. import render
from .common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Connection,
    consul_command,
    fail,
    parse_when,
)

if TYPE_CHECKING:
    from ..backend import ResultFilter, StoredResult

OutputOption = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FORMAT",
        help="table (default on a terminal), json, ndjson, tsv (default when piped) or ids.",
    ),
]
DETAIL_FIELDS = ("name", "args", "kwargs", "worker", "retries", "queue")
LS_COLUMNS = ("id", "state", "task", "date_done", "expires", "session", "bytes")
SORT_KEYS = ("key", "date", "state", "task", "size")


def check_format(fmt: str | None) -> str:
    if fmt is not None and fmt not in render.FORMATS:
        raise fail(f"--output: {fmt!r} is not one of {', '.join(render.FORMATS)}", EXIT_USAGE)
    return render.default_format(fmt)


def ids_from(args: list[str]) -> list[str]:
    """Task ids from the arguments; ``-`` reads more, one per line, from standard input."""
    ids = []
    for arg in args:
        if arg == "-":
            ids.extend(line.strip() for line in sys.stdin if line.strip())
        elif not arg.strip():
            raise fail("a task id is empty: give the id, or - to read ids from stdin", EXIT_USAGE)
        else:
            ids.append(arg)
    if not ids:
        raise fail(
            "no task ids given (pass ids, or - to read them from standard input)", EXIT_USAGE
        )
    return ids


def result_row(result: StoredResult) -> dict:
    """One result as the row ``ls`` prints."""
    return {
        "id": result.id,
        "state": result.state,
        "task": result.task_name,
        "date_done": render.iso(result.done_at),
        "expires": render.iso(result.expires_at),
        "session": result.session or None,
        "bytes": result.size,
    }


def result_detail(result: StoredResult, traceback: bool = True) -> dict:
    """What ``get`` shows: the Celery meta, decoded, plus extended fields when stored."""
    meta = result.meta or {}
    detail = {
        "id": result.id,
        "state": result.state,
        "result": _jsonable(meta.get("result")),
        "date_done": meta.get("date_done"),
        "children": _jsonable(meta.get("children")),
    }
    if traceback:
        detail["traceback"] = meta.get("traceback")
    for name in DETAIL_FIELDS:
        if name in meta:
            detail[name] = _jsonable(meta[name])
    if result.error:
        detail["error"] = result.error
    return detail


def _jsonable(value: object) -> object:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


@consul_command
def get(
    conn: Connection,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Task ids; - reads them from standard input."),
    ],
    field: Annotated[
        str | None,
        typer.Option(
            "--field", metavar="NAME", help="Print only this field (state, result, traceback...)."
        ),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored value as it is.")] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait (Consul blocking queries) until each task is ready."),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            min=0,
            help="Give up waiting after this long (exit 75).",
        ),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Show task results: state, result, traceback, children, date done (and with
    result_extended: name, args, kwargs, worker, retries). Exit 3 if one is missing."""
    fmt = check_format(output)
    backend = conn.open_backend()
    rows, missing = [], []
    for task_id in ids_from(task_ids):
        if wait:
            _wait(backend, task_id, timeout)
        found = backend.fetch(task_id)
        if found is None:
            missing.append(task_id)
            continue
        if raw:
            sys.stdout.buffer.write((found.value or b"") + b"\n")
            continue
        rows.append(result_detail(found))
    _print_details(rows, field, fmt)
    for task_id in missing:
        typer.echo(
            f"consul-results: no result for task {task_id} under {backend.prefix or '(root)'}/",
            err=True,
        )
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


def _wait(backend, task_id: str, timeout: float | None) -> None:
    from celery.exceptions import TimeoutError

    try:
        backend.wait_for(task_id, timeout=timeout)
    except TimeoutError:
        raise fail(
            f"timed out after {timeout:g} s waiting for task {task_id}", EXIT_TIMEOUT
        ) from None


def _print_details(rows: list[dict], field: str | None, fmt: str) -> None:
    """How ``get`` and ``inspect`` print: one field, a list for scripts, or a block per id."""
    if field is not None:
        for row in rows:
            if field not in row:
                raise fail(f"--field: no field {field!r} (fields: {', '.join(row)})", EXIT_USAGE)
            value = row[field]
            typer.echo(value if isinstance(value, str) else render.json.dumps(value))
        return
    if fmt in ("json", "ndjson", "ids"):
        render.emit(rows, list(rows[0]) if rows else ["id"], fmt)
        return
    for row in rows:
        render.emit_mapping(row, fmt)


@consul_command
def inspect(
    conn: Connection,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Task ids; - reads them from standard input."),
    ],
    output: OutputOption = None,
) -> None:
    """Show where results live in Consul: key, indexes, flags (expiry), the session and its
    TTL, behaviour and node, and when the result is expected to go."""
    fmt = check_format(output)
    backend = conn.open_backend()
    rows, missing = [], 0
    for task_id in ids_from(task_ids):
        found = backend.fetch(task_id)
        if found is None:
            missing += 1
            typer.echo(f"consul-results: no result for task {task_id}", err=True)
            continue
        rows.append(_inspection(backend, found))
    _print_details(rows, None, fmt)
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


def _inspection(backend, found: StoredResult) -> dict:
    row = {
        "id": found.id,
        "key": found.key,
        "state": found.state,
        "create_index": found.create_index,
        "modify_index": found.modify_index,
        "lock_index": found.lock_index,
        "flags": found.flags,
        "expires_recorded": render.iso(found.expires_at),
        "session": found.session or None,
        "bytes": found.size,
    }
    session = backend.session_info(found.session) if found.session else None
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
            f"removed by cleanup/purge --expired after {render.iso(found.expires_at)}"
            if found.flags
            else "never (no expiry recorded)"
        )
    return row


def selection(
    states: list[str] | None,
    task: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
    expired: bool,
    no_session: bool,
    include_unreadable: bool,
) -> ResultFilter:
    """The filter ``ls`` and ``purge`` share (``ls`` shows unreadable keys, ``purge`` keeps
    them unless told otherwise)."""
    from ..backend import ResultFilter

    return ResultFilter(
        states=frozenset(s.upper() for s in states or ()),
        task_globs=tuple(task or ()),
        older_than=None if older_than is None else parse_when(older_than, "--older-than"),
        newer_than=None if newer_than is None else parse_when(newer_than, "--newer-than"),
        expired=expired,
        no_session=no_session,
        include_unreadable=include_unreadable,
    )


StateOption = Annotated[
    list[str] | None,
    typer.Option("--state", metavar="STATE", help="Only results in this state (repeatable)."),
]
TaskOption = Annotated[
    list[str] | None,
    typer.Option("--task", metavar="NAME", help="Only tasks with this name or glob (repeatable)."),
]
OlderOption = Annotated[
    str | None,
    typer.Option(
        "--older-than", metavar="AGE", help="Done before this: 7d, 12h, 30m or an ISO date."
    ),
]
NewerOption = Annotated[
    str | None,
    typer.Option(
        "--newer-than", metavar="AGE", help="Done after this: 7d, 12h, 30m or an ISO date."
    ),
]
ExpiredOption = Annotated[
    bool, typer.Option("--expired", help="Only results whose recorded expiry has passed.")
]
NoSessionOption = Annotated[
    bool,
    typer.Option(
        "--no-session", help="Only results held by no session (they never expire by themselves)."
    ),
]


@consul_command
def ls(
    conn: Connection,
    state: StateOption = None,
    task: TaskOption = None,
    older_than: OlderOption = None,
    newer_than: NewerOption = None,
    expired: ExpiredOption = False,
    no_session: NoSessionOption = False,
    sort: Annotated[
        str, typer.Option("--sort", metavar="KEY", help="key, date, state, task or size.")
    ] = "key",
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=1, help="Show at most N results.")
    ] = None,
    count: Annotated[bool, typer.Option("--count", help="Print only how many match.")] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 3 when nothing matches.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """List results under the prefix, filtered and sorted."""
    fmt = check_format(output)
    if sort not in SORT_KEYS:
        raise fail(f"--sort: {sort!r} is not one of {', '.join(SORT_KEYS)}", EXIT_USAGE)
    chosen = selection(state, task, older_than, newer_than, expired, no_session, True)
    backend = conn.open_backend()
    if count:
        matched = sum(1 for _ in _matching(backend, chosen))
        typer.echo(matched)
    else:
        # keep only the small printed rows, not the stored values: memory stays bounded
        order = _sort_key(sort)
        keyed = sorted((order(r), result_row(r)) for r in _matching(backend, chosen))
        matched = len(keyed)
        render.emit([row for _, row in keyed[:limit]], LS_COLUMNS, fmt)
    raise typer.Exit(EXIT_NOT_FOUND if detailed_exitcode and not matched else EXIT_OK)


def _matching(backend, chosen: ResultFilter) -> Iterator[StoredResult]:
    now = time.time()
    return (r for r in backend.iter_results(chosen.kinds) if chosen.matches(r, now))


def _sort_key(name: str):
    """A comparable key per result; the Consul key breaks ties so rows never compare."""
    return {
        "key": lambda r: (r.key,),
        "date": lambda r: (r.done_at or 0.0, r.key),
        "state": lambda r: (r.state, r.key),
        "task": lambda r: (r.task_name or "", r.key),
        "size": lambda r: (-r.size, r.key),
    }[name]


@consul_command
def stats(conn: Connection, output: OutputOption = None) -> None:
    """Counts by state and task, bytes, oldest and newest, sessions, results without expiry."""
    fmt = check_format(output)
    data = conn.open_backend().stats()
    data["oldest"], data["newest"] = render.iso(data["oldest"]), render.iso(data["newest"])
    render.emit_mapping(data, fmt)


@consul_command
def doctor(conn: Connection) -> None:
    """Check that results can live here: the agent answers, there is a leader, the token can
    read and write the prefix and create sessions, result_expires fits Consul's limits. One
    line per check; the exit status is the first failure's (69 unavailable, 77 denied...)."""
    from .common import EXIT_ERROR, describe_error

    backend = conn.open_backend()
    first_failure = EXIT_OK
    for check in backend.diagnose():
        detail, code = check.detail, EXIT_ERROR
        described = describe_error(check.error, backend.settings.base_url) if check.error else None
        if described:
            detail, code = described
        typer.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {detail}")
        if not check.ok and first_failure == EXIT_OK:
            first_failure = code
    raise typer.Exit(first_failure)
