"""Commands that act on what the results show: ``retry`` re-sends tasks from their stored call.

Like ``rm``, it says what it will do and asks on a terminal, needs ``--yes`` otherwise, and
``--dry-run`` sends nothing; a result it will not re-send is one line on stderr with why, and
the summary counts the reasons. The rules are in :mod:`consulresults.requeue`, the app's side
(registered tasks, broker) in :mod:`consulresults.celery_requeue`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from .. import render
from .errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, fail
from .options import (
    AllPrefixesOption,
    Connection,
    MinAgeOption,
    NewerOption,
    OlderOption,
    PingTimeoutOption,
    RetryAgainOption,
    RetryDryRunOption,
    RetryForceOption,
    RetryIdsArgument,
    RetryLimitOption,
    RetryMarkOption,
    RetryMaxOption,
    RetryOrphanedOption,
    RetryOutputOption,
    StateOption,
    TaskOption,
    YesOption,
    check_format,
    confirm,
    consul_command,
    ids_from,
    open_guarded,
    orphan_check,
    orphans_among,
    selection,
)

if TYPE_CHECKING:
    from ..operations import ResultFilter, ResultOperations, StoredResult
    from ..orphans import OrphanCheck
    from ..requeue import App, Plan, Rules, Sent, Skip

SENT_COLUMNS = ("id", "task", "new_id")


@consul_command
def retry(
    conn: Connection,
    task_ids: RetryIdsArgument = None,
    state: StateOption = None,
    task: TaskOption = None,
    newer_than: NewerOption = None,
    older_than: OlderOption = None,
    limit: RetryLimitOption = None,
    max_sent: RetryMaxOption = None,
    mark: RetryMarkOption = False,
    again: RetryAgainOption = False,
    force: RetryForceOption = False,
    orphaned: RetryOrphanedOption = False,
    min_age: MinAgeOption = "10m",
    ping_timeout: PingTimeoutOption = 2.0,
    all_prefixes: AllPrefixesOption = False,
    yes: YesOption = False,
    dry_run: RetryDryRunOption = False,
    output: RetryOutputOption = None,
) -> None:
    """Re-send failed tasks with their stored name, args, kwargs and queue (result_extended)
    through the Celery app's broker (-A), under new task ids. Only tasks the app registers are
    sent. Skipped, one line each: results without a stored call, results marked by --mark
    (unless --again), and, unless named by id with --force: results not FAILURE (or REVOKED
    with --state REVOKED), acks_late tasks (the broker may redeliver them) and members of
    chains, groups and chords (their callbacks are not stored: a member would run alone).
    A selection at the root prefix needs --all-prefixes, as for ls and purge. Exit 69 if the
    broker fails, 3 if a named id has no result, 4 if --orphaned finds no worker answering."""
    fmt = check_format(output)
    ids = ids_from(task_ids) if task_ids else None
    rules = _rules(ids is not None, state, force, again, orphaned)
    if ids is not None and (task or newer_than or older_than or limit or orphaned):
        raise fail(
            "name ids, or select with --state/--orphaned/--task/--newer-than/--older-than/"
            "--limit: not both",
            EXIT_USAGE,
        )
    mark = mark or orphaned  # the claim's compare-and-swap is on the index read before asking
    app = conn.require_app("retry sends tasks through the Celery app's broker")
    from ..requeue import oldest_first, plan, plan_ids

    check = orphan_check(conn, orphaned, min_age, ping_timeout)
    target = _target(app)
    if ids is not None:  # named ids need no --all-prefixes, as for rm
        ops = conn.open()
        chosen = plan_ids(ops, ids, rules, target)
    else:
        ops = open_guarded(conn, all_prefixes)
        wanted = selection(sorted(rules.states), task, older_than, newer_than, False, False, False)
        chosen = plan(oldest_first(_selected(ops, wanted, check)), rules, target, limit)
    if max_sent is not None and len(chosen.send) > max_sent:
        raise fail(
            f"{len(chosen.send)} results would be re-sent, over --max {max_sent}: nothing sent "
            "(narrow the selection, or raise --max)",
            EXIT_USAGE,
        )
    _carry_out(ops, chosen, target, app.main, mark, yes, dry_run, fmt)


def _carry_out(
    ops: ResultOperations,
    chosen: Plan,
    target: App,
    app_name: str,
    mark: bool,
    yes: bool,
    dry_run: bool,
    fmt: str,
) -> None:
    """Ask, send and say what was sent and skipped; the exit status says whether a named id had
    no result."""
    from ..requeue import Sent

    skipped = list(chosen.skipped)
    sent: list[Sent] = []
    if dry_run:
        sent = [Sent(r.id, r.task_name or "", None) for r in chosen.send]
    elif chosen.send:
        claiming = ", claiming each first" if mark else ""
        confirm(
            f"re-send {len(chosen.send)} task(s) through the broker of app {app_name!r}{claiming}",
            yes,
        )
    for skip in skipped:  # after the refusals, so that a refusal is its one line
        _say(skip)
    try:
        if not dry_run:
            _send(ops, chosen, target, mark, sent, skipped)
    finally:  # also when the broker fails midway: what was sent is said
        _report(sent, skipped, chosen, fmt, dry_run)
    missing = any(s.reason == "no result" for s in skipped)
    raise typer.Exit(EXIT_NOT_FOUND if missing else EXIT_OK)


def _target(app: Any) -> App:
    """The app's side of a re-send; its task modules are imported here, so that one failing to
    import is one line with its reason."""
    from ..celery_requeue import AppRequeue

    try:
        return AppRequeue(app)
    except Exception as exc:  # the user's code: any exception, said as it is
        raise fail(f"cannot load the Celery app's task modules: {exc}", EXIT_USAGE) from None


def _rules(
    named: bool, states: list[str] | None, force: bool, again: bool, orphaned: bool
) -> Rules:
    """What the run may re-send, from the options; a combination that makes no sense is a
    usage error before anything is read."""
    from ..requeue import RESENDABLE, RETRYABLE, Rules

    wanted = frozenset(s.upper() for s in states or ())
    if orphaned:  # a selection of STARTED results: ids, if given too, are refused later
        if wanted or force:
            raise fail(
                "--orphaned selects STARTED results itself: drop --state, --force", EXIT_USAGE
            )
        return Rules(frozenset({"STARTED"}), False, again)
    if not named and not wanted:
        raise fail(
            "give task ids (- reads them from standard input), or select with --state FAILURE "
            "(or REVOKED)",
            EXIT_USAGE,
        )
    if wanted - RESENDABLE:
        raise fail(
            f"--state: retry re-sends FAILURE or REVOKED results, not "
            f"{', '.join(sorted(wanted - RESENDABLE))}",
            EXIT_USAGE,
        )
    if force and not named:
        raise fail("--force applies only to results named by id: name them", EXIT_USAGE)
    return Rules(wanted or RETRYABLE, force, again)


def _selected(
    ops: ResultOperations, wanted: ResultFilter, check: OrphanCheck | None
) -> list[StoredResult]:
    """The results a selection names; with ``--orphaned``, only the orphans among them."""
    picked = ops.matching(wanted)
    return list(picked) if check is None else orphans_among(check, ops, picked)


def _send(
    ops: ResultOperations,
    chosen: Plan,
    target: App,
    mark: bool,
    sent: list[Sent],
    skipped: list[Skip],
) -> None:
    """Claim (with ``mark``) and send; what is skipped meanwhile is said and counted."""
    from ..requeue import run

    def on_skip(skip: Skip) -> None:
        skipped.append(skip)
        _say(skip)

    run(ops, chosen, target, mark, sent.append, on_skip)


def _say(skip: Skip) -> None:
    typer.echo(f"consul-results: skipped {skip.id}: {skip.detail}", err=True)


def _report(sent: list[Sent], skipped: list[Skip], chosen: Plan, fmt: str, dry_run: bool) -> None:
    """Old id → new id on stdout, the summary on stderr."""
    rows = [{"id": s.id, "task": s.task, "new_id": s.new_id} for s in sent]
    render.emit(rows, SENT_COLUMNS, fmt, id_column="id" if dry_run else "new_id")
    from ..requeue import reasons

    summary = render.retry_summary(len(sent), reasons(skipped), chosen.left, dry_run)
    typer.echo(f"consul-results: {summary}", err=True)
