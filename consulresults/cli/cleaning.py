"""Destructive commands: ``rm``, ``expire``, ``purge``, ``sessions expire``, ``sessions gc``.

Safe by default: an empty prefix (every key in Consul) is refused unless ``--all-prefixes``;
on a terminal they say what they will do and ask; without a terminal they refuse unless
``--yes``; ``--dry-run`` shows what would go and deletes nothing.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from .. import render
from .common import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, Connection, consul_command, fail
from .results import (
    ExpiredOption,
    NewerOption,
    NoSessionOption,
    OlderOption,
    StateOption,
    TaskOption,
    ids_from,
    selection,
)

if TYPE_CHECKING:
    from ..backend import ConsulBackend, PurgeReport

YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Do it without asking (needed when not on a terminal, e.g. in cron)."
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
]
AllPrefixesOption = Annotated[
    bool,
    typer.Option("--all-prefixes", help="Allow an empty prefix, i.e. every key in this Consul."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def guarded_backend(conn: Connection, all_prefixes: bool) -> ConsulBackend:
    backend = conn.open_backend()
    if not backend.prefix and not all_prefixes:
        raise fail(
            "refusing to work on an empty prefix (every key in this Consul): give "
            "--prefix, or --all-prefixes if you really mean it",
            EXIT_USAGE,
        )
    return backend


def confirm(action: str, yes: bool) -> None:
    """Ask on a terminal; without one, ``--yes`` is required (exit 2 saying so)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"not on a terminal: refusing to {action} without --yes", EXIT_USAGE)
    if not typer.confirm(f"{action[0].upper()}{action[1:]}?", default=False, err=True):
        raise fail("nothing done", EXIT_USAGE)


def summary(report: PurgeReport, as_json: bool, complete: bool = True) -> None:
    """What was done. A run that stopped early says so, and how many deletions were sent
    without an answer (``in_doubt``: each may or may not have happened)."""
    data = {
        "matched": report.matched,
        "deleted": report.deleted,
        "skipped": report.skipped,
        "failed": report.failed,
        "dry_run": report.dry_run,
        "complete": complete,
        "in_doubt": report.in_flight,
    }
    if as_json:
        typer.echo(json.dumps(data))
        return
    verb = "would delete" if report.dry_run else "deleted"
    count = report.matched if report.dry_run else report.deleted
    line = (
        f"matched {report.matched}, {verb} {count}, skipped {report.skipped} "
        f"(changed meanwhile), failed {report.failed}"
    )
    if not complete:
        doubt = f", {report.in_flight} more sent without an answer" if report.in_flight else ""
        line += f"; stopped early{doubt}: run the same command again to finish"
    typer.echo(line)


@consul_command
def rm(
    conn: Connection,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Task ids; - reads them from standard input."),
    ],
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    all_prefixes: AllPrefixesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete results by id, and each session that then holds nothing else (exit 3 if some
    were not there)."""
    backend = guarded_backend(conn, all_prefixes)
    ids = ids_from(task_ids)
    found = [r for r in (backend.fetch(i) for i in ids) if r is not None]
    missing = len(ids) - len(found)
    if found and not dry_run:
        confirm(f"delete {len(found)} result(s) under {backend.prefix or '(root)'}/", yes)
    summary(backend.delete_results(found, dry_run=dry_run), as_json)
    sessions = {r.session for r in found if r.session}
    if sessions and not dry_run:
        for session in backend.idle_sessions(among=sessions):
            backend.destroy_session(session["ID"])
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


@consul_command
def expire(
    conn: Connection,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Task ids; - reads them from standard input."),
    ],
    yes: YesOption = False,
    all_prefixes: AllPrefixesOption = False,
) -> None:
    """Force-expire results now: each is removed as its expiry would remove it."""
    backend = guarded_backend(conn, all_prefixes)
    ids = ids_from(task_ids)
    confirm(f"expire {len(ids)} result(s) now", yes)
    gone = sum(backend.expire_now(i) for i in ids)
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
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 3 when nothing matches.")
    ] = False,
) -> None:
    """Delete every result under the prefix that the filters match, in /v1/txn batches with
    delete-cas: a result rewritten meanwhile is skipped, never deleted. Stopped early (Ctrl-C,
    SIGTERM, Consul gone), it says what it did; run it again to finish."""
    chosen = selection(state, task, older_than, newer_than, expired, no_session, include_unreadable)
    backend = guarded_backend(conn, all_prefixes)
    if not dry_run:
        confirm(f"purge matching results under {backend.prefix or '(root)'}/", yes)
    from ..backend import PurgeReport

    report = PurgeReport()
    try:
        with _stop_signals() as stop, _progress(dry_run) as show:

            def on_batch(so_far: PurgeReport) -> None:
                if show:
                    show(so_far)
                if stop.signal:
                    raise _Stopped(stop.signal)

            backend.purge(chosen, dry_run, max_delete, on_batch, report)
    except _Stopped as stopped:
        summary(report, as_json, complete=False)
        name = signal.Signals(stopped.signum).name
        raise fail(f"stopped by {name}", 128 + stopped.signum) from None
    except Exception:
        summary(report, as_json, complete=False)
        raise  # its own error line, from consul_command
    summary(report, as_json)
    raise typer.Exit(EXIT_NOT_FOUND if detailed_exitcode and not report.matched else EXIT_OK)


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
        self._progress = None

    def __enter__(self):
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
            self._progress.update(
                task, description=f"deleted {report.deleted}, skipped {report.skipped}"
            )

        return on_batch

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


@consul_command
def expire_sessions(
    conn: Connection,
    session_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Session ids.")],
    yes: YesOption = False,
    all_prefixes: AllPrefixesOption = False,
) -> None:
    """Invalidate sessions now: Consul applies each one's behaviour (ours: delete every key it
    holds). Says how many keys under the prefix they hold before doing it."""
    backend = guarded_backend(conn, all_prefixes)
    known = {s["ID"]: s for s in backend.sessions()}
    unknown = [i for i in session_ids if i not in known]
    for session_id in unknown:
        typer.echo(f"consul-results: no session {session_id}", err=True)
    chosen = [known[i] for i in session_ids if i in known]
    held = sum(s["Held"] for s in chosen)
    behaviours = sorted({s["Behavior"] for s in chosen})
    if chosen:
        plan = (
            f"expire {len(chosen)} session(s) holding {held} key(s) under "
            f"{backend.prefix or '(root)'}/ (behaviour: {', '.join(behaviours)})"
        )
        if yes:  # no prompt to say it, so say it before doing it
            typer.echo(f"consul-results: about to {plan}", err=True)
        confirm(plan, yes)
    for session in chosen:
        backend.destroy_session(session["ID"])
    typer.echo(f"expired {len(chosen)} session(s) holding {held} key(s)")
    raise typer.Exit(EXIT_NOT_FOUND if unknown else EXIT_OK)


@consul_command
def gc_sessions(
    conn: Connection,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    all_prefixes: AllPrefixesOption = False,
) -> None:
    """Destroy sessions made for results (ours, and Celery's built-in ones) that hold no keys."""
    backend = guarded_backend(conn, all_prefixes)
    idle = backend.idle_sessions()
    if idle and not dry_run:
        confirm(f"destroy {len(idle)} idle result session(s)", yes)
    for session in [] if dry_run else idle:
        backend.destroy_session(session["ID"])
    verb = "would destroy" if dry_run else "destroyed"
    typer.echo(f"{verb} {len(idle)} idle session(s)")
