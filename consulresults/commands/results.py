"""Read commands on results: ``get``, ``inspect``, ``ls``, ``stats``, ``watch``, ``doctor``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import render
from .errors import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, fail
from .options import (
    AllPrefixesOption,
    Connection,
    DetailedExitcodeOption,
    ExpiredOption,
    IdsArgument,
    MinAgeOption,
    NewerOption,
    NoSessionOption,
    OlderOption,
    OrphanedOption,
    OutputOption,
    PartialOkOption,
    PingTimeoutOption,
    RetriedOption,
    StateOption,
    TaskOption,
    check_format,
    consul_command,
    ids_from,
    notice_hidden,
    open_guarded,
    orphan_check,
    orphans_among,
    output_option,
    partial_status,
    selection,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..operations import ResultOperations, StoredResult

SORT_KEYS = ("key", "date", "state", "task", "size")


@consul_command
def get(
    conn: Connection,
    task_ids: IdsArgument,
    field: Annotated[
        str | None,
        typer.Option(
            "--field", metavar="NAME", help="Print only this field (state, result, traceback...)."
        ),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored value as it is.")] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until each task is ready (results are pushed)."),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            min=0,
            help="Give up waiting after this long (exit 75); 0: one read.",
        ),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Show task results: state, result, traceback, children, date done (and with
    result_extended: name, args, kwargs, worker, retries). Exit 3 if one is missing."""
    fmt = check_format(output)
    ops = conn.open()
    rows, missing = [], []
    for task_id in ids_from(task_ids):
        found = _wait(ops, task_id, timeout) if wait else ops.fetch(task_id)
        if found is None:
            missing.append(task_id)
        elif raw:
            sys.stdout.buffer.write((found.value or b"") + b"\n")
        else:
            rows.append(render.result_detail(found))
    _print_details(rows, field, fmt)
    for task_id in missing:
        typer.echo(
            f"consul-results: no result for task {task_id} under {ops.prefix or '(root)'}/",
            err=True,
        )
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


def _wait(ops: ResultOperations, task_id: str, timeout: float | None) -> StoredResult:
    from ..operations import WaitTimeout

    try:
        return ops.wait(task_id, timeout=timeout)
    except WaitTimeout:
        raise fail(
            f"timed out after {timeout:g} s waiting for task {task_id}", EXIT_TIMEOUT
        ) from None


def _print_details(rows: list[dict[str, Any]], field: str | None, fmt: str) -> None:
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
def inspect(conn: Connection, task_ids: IdsArgument, output: OutputOption = None) -> None:
    """Show where results live in Consul: key, indexes, flags (expiry), the session and its
    TTL, behaviour and node, and when the result is expected to go."""
    fmt = check_format(output)
    ops = conn.open()
    rows, missing = [], 0
    for task_id in ids_from(task_ids):
        found = ops.fetch(task_id)
        if found is None:
            missing += 1
            typer.echo(f"consul-results: no result for task {task_id}", err=True)
            continue
        session = ops.session_info(found.session) if found.session else None
        rows.append(render.inspection(found, session))
    _print_details(rows, None, fmt)
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


@consul_command
def ls(
    conn: Connection,
    state: StateOption = None,
    task: TaskOption = None,
    older_than: OlderOption = None,
    newer_than: NewerOption = None,
    expired: ExpiredOption = False,
    no_session: NoSessionOption = False,
    retried: RetriedOption = None,
    orphaned: OrphanedOption = False,
    min_age: MinAgeOption = "10m",
    ping_timeout: PingTimeoutOption = 2.0,
    sort: Annotated[
        str, typer.Option("--sort", metavar="KEY", help="key, date, state, task or size.")
    ] = "key",
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=1, help="Show at most N results.")
    ] = None,
    count: Annotated[bool, typer.Option("--count", help="Print only how many match.")] = False,
    detailed_exitcode: DetailedExitcodeOption = False,
    all_prefixes: AllPrefixesOption = False,
    output: OutputOption = None,
) -> None:
    """List results under the prefix, filtered and sorted (at the root prefix, every key in
    this Consul, only with --all-prefixes)."""
    fmt = check_format(output)
    if sort not in SORT_KEYS:
        raise fail(f"--sort: {sort!r} is not one of {', '.join(SORT_KEYS)}", EXIT_USAGE)
    chosen = selection(state, task, older_than, newer_than, expired, no_session, True, retried)
    check = orphan_check(conn, orphaned, min_age, ping_timeout)
    ops = open_guarded(conn, all_prefixes)
    picked: Iterable[StoredResult] = ops.matching(chosen)
    if check is not None:
        picked = orphans_among(check, ops, picked)
    if count:
        matched = sum(1 for _ in picked)
        typer.echo(matched)
    else:
        # keep only the small printed rows, not the stored values: memory stays bounded
        order = _sort_key(sort)
        keyed = sorted((order(r), render.result_row(r)) for r in picked)
        matched = len(keyed)
        render.emit([row for _, row in keyed[:limit]], render.LS_COLUMNS, fmt)
    raise typer.Exit(EXIT_NOT_FOUND if detailed_exitcode and not matched else EXIT_OK)


def _sort_key(name: str) -> Callable[[StoredResult], tuple[Any, ...]]:
    """A comparable key per result; the Consul key breaks ties so rows never compare."""
    return {
        "key": lambda r: (r.key,),
        "date": lambda r: (r.done_at or 0.0, r.key),
        "state": lambda r: (r.state, r.key),
        "task": lambda r: (r.task_name or "", r.key),
        "size": lambda r: (-r.size, r.key),
    }[name]


@consul_command
def stats(
    conn: Connection,
    all_prefixes: AllPrefixesOption = False,
    orphaned: Annotated[
        bool,
        typer.Option(
            "--orphaned",
            help="Also count the orphaned STARTED results (see ls --orphaned; needs -A; exit 4 "
            "if no worker answers at all).",
        ),
    ] = False,
    min_age: MinAgeOption = "10m",
    ping_timeout: PingTimeoutOption = 2.0,
    partial_ok: PartialOkOption = False,
    output: output_option(  # type: ignore[valid-type]  # a call: Typer evaluates it
        "table (default on a terminal), json, ndjson, tsv (default when piped), or "
        "prometheus (text format, for node_exporter's textfile collector)."
    ) = None,
) -> None:
    """Counts by state and task, bytes, oldest and newest, expired results still stored,
    sessions holding results or nothing, results without expiry, and per task name the
    finished results with their runtime p50, p95 and max in seconds (date_done minus the
    date_started the worker stored; results without it, such as Celery's built-in backend
    writes, are counted as without_start) (at the root prefix only with --all-prefixes). Exit 5
    when the token's ACLs hid results from the listing (the figures are partial), unless
    --partial-ok."""
    fmt = "prometheus" if output == "prometheus" else check_format(output)
    check = orphan_check(conn, orphaned, min_age, ping_timeout)
    ops = open_guarded(conn, all_prefixes)
    notice_hidden(ops, exits=not partial_ok)
    data = ops.stats()
    if check is not None:  # a second read of the STARTED ones: the broadcast needs their ids
        started = selection(["STARTED"], None, None, None, False, False, False)
        data["orphaned"] = len(orphans_among(check, ops, ops.matching(started)))
    if fmt == "prometheus":
        from ..prometheus import exposition

        sys.stdout.write(exposition(data, ops.prefix))
    else:
        render.emit_stats(data, fmt)
    raise typer.Exit(partial_status(ops, partial_ok, EXIT_OK))


@consul_command
def watch(
    conn: Connection,
    state: StateOption = None,
    task: TaskOption = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            metavar="SECONDS",
            min=0.0,
            help="Start Consul rounds at least this far apart: each returns the whole prefix.",
        ),
    ] = 1.0,
    max_keys: Annotated[
        int,
        typer.Option(
            "--max-keys",
            metavar="N",
            min=1,
            help="Stop (exit 2) when the prefix holds more keys: each round moves them all.",
        ),
    ] = 10_000,
    all_prefixes: AllPrefixesOption = False,
    output: output_option(  # type: ignore[valid-type]  # a call: Typer evaluates it
        "table (a live view, default on a terminal), tsv (default when piped), ndjson or ids."
    ) = None,
) -> None:
    """Print results as they are stored, one line each (state changes too; a failure with its
    exception), through Consul blocking queries on the prefix, not polling. Ctrl-C stops
    (exit 130). Consul answers a blocking query on a prefix with the whole prefix, so a round
    costs the leader every key under it (measured: 64 kB per stored result with 10,000 results
    under the prefix at --interval 1): watch stops past --max-keys; on bigger prefixes, narrow
    the prefix or run ls --newer-than from cron."""
    from ..operations import WatchTooLarge

    fmt = check_format(output)
    if fmt == "json":
        raise fail("--output: json cannot stream: use ndjson (one object a line)", EXIT_USAGE)
    chosen = selection(state, task, None, None, False, False, True)
    ops = open_guarded(conn, all_prefixes)
    try:
        with render.WatchOutput(fmt, ops.prefix) as out:
            for batch in ops.watch(chosen, interval, max_keys):
                out.show(batch)
    except WatchTooLarge as exc:
        raise fail(
            f"the prefix holds {exc.keys:,} keys, over --max-keys {max_keys:,}: every round of "
            "watch would move them all from the Consul leader (narrow the prefix, raise "
            "--max-keys, or run ls --newer-than from cron)",
            EXIT_USAGE,
        ) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@consul_command
def doctor(conn: Connection) -> None:
    """Check that results can live here: the agent answers, there is a leader, the token can
    read and write the prefix and create sessions; how many connections one process of this
    configuration may hold (max_connections) against the agent's limit per client IP
    (http_max_conns_per_client, read with agent:read, else Consul's default of 200), so how
    many such processes a host can run; then which expiry mode result_expires gets (the app's
    with -A, else Celery's default of one day) and what removes results: Consul itself, or only
    celery beat / purge --expired. One line per check; the exit status is the first failure's
    (69 unavailable, 77 denied...)."""
    from ..doctor import diagnose
    from .errors import describe_error

    ops = conn.open()
    first_failure = EXIT_OK
    for check in diagnose(ops):
        detail, code = check.detail, EXIT_ERROR
        where = ops.store.transport.base_uri
        described = describe_error(check.error, where) if check.error else None
        if described:
            detail, code = described
        # a check results do not need (pushed waiting) warns: waiting works, slower
        mark = "ok  " if check.ok else "FAIL" if check.required else "warn"
        typer.echo(f"{mark} {check.name}: {detail}")
        if not check.ok and check.required and first_failure == EXIT_OK:
            first_failure = code
    raise typer.Exit(first_failure)
