"""Destructive commands on results: ``rm``, ``expire``, ``purge`` (``sessions expire|gc`` live
with the other session commands).

Safe by default: ``purge`` at an empty prefix (every key in Consul) is refused unless
``--all-prefixes`` (``rm`` and ``expire`` name their ids, so the root is fine for them); on a
terminal they say what they will do and ask; without a terminal they refuse unless ``--yes``;
``--dry-run`` shows what would go and deletes nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from .. import render
from .errors import EXIT_NOT_FOUND, EXIT_OK, fail
from .options import (
    AllPrefixesOption,
    Connection,
    DetailedExitcodeOption,
    DryRunOption,
    ExpiredOption,
    IdsArgument,
    JsonOption,
    MinAgeOption,
    NewerOption,
    NoSessionOption,
    OlderOption,
    OrphanedOption,
    PartialOkOption,
    PingTimeoutOption,
    StateOption,
    TaskOption,
    YesOption,
    confirm,
    consul_command,
    ids_from,
    notice_hidden,
    open_guarded,
    orphan_check,
    orphans_among,
    partial_status,
    selection,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from rich.progress import Progress

    from ..operations import PurgeReport, StoredResult


@consul_command
def rm(
    conn: Connection,
    task_ids: IdsArgument,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    orphaned: OrphanedOption = False,
    min_age: MinAgeOption = "10m",
    ping_timeout: PingTimeoutOption = 2.0,
) -> None:
    """Delete results by id, and each session that then holds nothing else (exit 3 if some
    were not there). Named ids need no --all-prefixes at the root prefix. With --orphaned,
    only those of them that are orphaned; a result that changed since it was read is left."""
    check = orphan_check(conn, orphaned, min_age, ping_timeout)
    ops = conn.open()
    ids = ids_from(task_ids)
    found = [r for r in (ops.fetch(i) for i in ids) if r is not None]
    missing = len(ids) - len(found)
    if check is not None:
        orphans = orphans_among(check, ops, found)
        if len(orphans) < len(found):
            kept = len(found) - len(orphans)
            typer.echo(f"consul-results: {kept} result(s) not orphaned: left alone", err=True)
        found = orphans
    if found and not dry_run:
        confirm(f"delete {len(found)} result(s) under {ops.prefix or '(root)'}/", yes)
    typer.echo(render.purge_summary(ops.delete_results(found, dry_run=dry_run), as_json))
    sessions = {r.session for r in found if r.session}
    if sessions and not dry_run:
        for session in ops.idle_sessions(among=sessions):
            ops.destroy_session(session["ID"])
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


@consul_command
def expire(
    conn: Connection,
    task_ids: IdsArgument,
    yes: YesOption = False,
) -> None:
    """Force-expire results now: each is removed as its expiry would remove it. Named ids
    need no --all-prefixes at the root prefix."""
    ops = conn.open()
    ids = ids_from(task_ids)
    confirm(f"expire {len(ids)} result(s) now", yes)
    gone = sum(ops.expire_now(i) for i in ids)
    typer.echo(f"expired {gone} of {len(ids)}")
    raise typer.Exit(EXIT_OK if gone == len(ids) else EXIT_NOT_FOUND)


@consul_command
def purge(
    conn: Connection,
    state: StateOption = None,
    task: TaskOption = None,
    older_than: OlderOption = None,
    newer_than: NewerOption = None,
    expired: ExpiredOption = False,
    no_session: NoSessionOption = False,
    max_delete: Annotated[
        int | None,
        typer.Option("--max-delete", metavar="N", min=1, help="Stop after deleting N results."),
    ] = None,
    include_unreadable: Annotated[
        bool,
        typer.Option(
            "--include-unreadable",
            help="Also delete result keys whose value cannot be decoded (kept by default: "
            "they may not be results).",
        ),
    ] = False,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    all_prefixes: AllPrefixesOption = False,
    as_json: JsonOption = False,
    detailed_exitcode: DetailedExitcodeOption = False,
    orphaned: OrphanedOption = False,
    min_age: MinAgeOption = "10m",
    ping_timeout: PingTimeoutOption = 2.0,
    partial_ok: PartialOkOption = False,
) -> None:
    """Delete every result under the prefix that the filters match, in /v1/txn batches with
    delete-cas: a result rewritten meanwhile is skipped, never deleted. Stopped early (Ctrl-C,
    SIGTERM, Consul gone), it says what it did; run it again to finish. With --orphaned, the
    workers are asked first: if none answers, nothing is deleted (exit 4). When the token's
    ACLs hid results from the listing, what it may read is purged and the exit status is 5
    (a dry run too), unless --partial-ok."""
    chosen = selection(state, task, older_than, newer_than, expired, no_session, include_unreadable)
    check = orphan_check(conn, orphaned, min_age, ping_timeout)
    ops = open_guarded(conn, all_prefixes)
    notice_hidden(ops, exits=not partial_ok)
    # the workers are asked before the question: a refusal comes first
    orphans = None if check is None else orphans_among(check, ops, ops.matching(chosen))
    if not dry_run:
        confirm(f"purge matching results under {ops.prefix or '(root)'}/", yes)
    from ..operations import PurgeReport

    report = PurgeReport()
    try:
        with _stop_signals() as stop, _progress(dry_run) as show:

            def on_batch(so_far: PurgeReport) -> None:
                if show:
                    show(so_far)
                if stop.signal:
                    raise _Stopped(stop.signal)

            picked: Iterable[StoredResult] = ops.matching(chosen) if orphans is None else orphans
            ops.delete_results(picked, dry_run, max_delete, on_batch, report)
    except _Stopped as stopped:
        typer.echo(render.purge_summary(report, as_json, complete=False))
        name = signal.Signals(stopped.signum).name
        raise fail(f"stopped by {name}", 128 + stopped.signum) from None
    except Exception:
        typer.echo(render.purge_summary(report, as_json, complete=False))
        raise  # its own error line, from consul_command
    typer.echo(render.purge_summary(report, as_json))
    status = EXIT_NOT_FOUND if detailed_exitcode and not report.matched else EXIT_OK
    raise typer.Exit(partial_status(ops, partial_ok, status))


class _Stopped(Exception):
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _stop_signals:
    """The first SIGINT (Ctrl-C) or SIGTERM (``timeout``, a stopping cron job) lets the batch in
    flight finish, so the summary is exact; a second SIGINT stops at once (what was in flight
    is then reported as in doubt)."""

    signal: int | None = None

    def __enter__(self) -> _stop_signals:
        stops = (signal.SIGINT, signal.SIGTERM)
        in_main_thread = threading.current_thread() is threading.main_thread()  # else: no signals
        self._previous = {
            signum: signal.signal(signum, self._handle) for signum in stops if in_main_thread
        }
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise _Stopped(signum)
        self.signal = signum
        typer.echo("consul-results: stopping after the batch in flight", err=True)

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class _progress:
    """A rich progress line on a terminal (transient: it leaves nothing behind)."""

    def __init__(self, dry_run: bool) -> None:
        self.enabled = sys.stderr.isatty() and not dry_run
        self._progress: Progress | None = None

    def __enter__(self) -> Callable[[PurgeReport], None] | None:
        if not self.enabled:
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            console=render.stderr_console(),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("purging…")

        def on_batch(report: PurgeReport) -> None:
            assert self._progress is not None  # set above, never unset
            self._progress.update(
                task, description=f"deleted {report.deleted}, skipped {report.skipped}"
            )

        return on_batch

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
