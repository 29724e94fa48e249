"""What every ``consul-results`` command shares: the connection flags (read off the settings
table, so they match the URL options and the Celery settings), how the results are found
(``-A/--app`` or ``--backend-url``), and the options several commands take, declared once.

Connection flags are added to each command by :func:`consul_command`, so they are written after
the command as with the Consul CLI (``consul-results ls --prefix myapp --http-addr ...``).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import render
from ..settings import OPTIONS
from .errors import EXIT_PARTIAL, EXIT_USAGE, consul_errors, fail

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..answers import Hiding
    from ..operations import ResultFilter, ResultOperations, StoredResult
    from ..orphans import OrphanCheck

ENV_APP = "CELERY_APP"
ENV_BACKEND_URL = "CONSUL_RESULTS_BACKEND_URL"


@dataclass
class Connection:
    """Where the results are: an app or a backend URL, and the flags that override them."""

    app: str | None = None
    backend_url: str | None = None
    stale: bool = False
    consistent: bool = False
    overrides: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        return self.overrides.get("address") or "the configured address"

    def open(self) -> ResultOperations:
        """The operations on the results named; Celery is imported only for an app."""
        from ..factory import open_operations

        if self.stale and self.consistent:
            raise fail("--stale and --consistent exclude each other: choose one", EXIT_USAGE)
        overrides = dict(self.overrides)
        if self.stale or self.consistent:
            overrides["consistency"] = "stale" if self.stale else "consistent"
        ops = open_operations(self._url(), overrides, self.celery_app())
        notice_hidden(ops)
        return ops

    def _url(self) -> str | None:
        """``--backend-url``, else ``CONSUL_RESULTS_BACKEND_URL`` unless ``-A`` was given: a
        flag beats the environment, so the environment never redirects an app named on the
        command line to another Consul."""
        if self.backend_url or self.app:
            return self.backend_url
        return os.environ.get(ENV_BACKEND_URL) or None

    def celery_app(self) -> Any:
        """The Celery app named by ``-A`` or ``CELERY_APP``; None when neither is given."""
        name = self.app or os.environ.get(ENV_APP)
        if not name:
            return None
        from celery.app.utils import find_app

        try:
            return find_app(name)
        except Exception as exc:  # import errors of the user's module, with their reason
            raise fail(f"cannot load the Celery app {name!r}: {exc}", EXIT_USAGE) from None

    def require_app(self, needed_for: str) -> Any:
        """The Celery app, for what only it can do (``needed_for`` says what: its broker, its
        tasks); without ``-A`` or ``CELERY_APP``, one usage line naming both, exit 2."""
        app = self.celery_app()
        if app is None:
            raise fail(f"{needed_for}: give -A MODULE (or set {ENV_APP})", EXIT_USAGE)
        return app


def _flag(*names: str, metavar: str | None = None, help: str, envvar: str | None = None) -> Any:
    return typer.Option(*names, metavar=metavar, envvar=envvar, help=help)


_CONNECTION: dict[str, Any] = {
    "app": Annotated[
        str | None,
        _flag(
            "-A",
            "--app",
            metavar="MODULE",
            help="Celery app whose result_backend, prefix and serializer to use "
            f"(env var {ENV_APP}, as Celery's own command reads it).",
        ),
    ],
    "backend_url": Annotated[
        str | None,
        _flag(
            "--backend-url",
            metavar="URL",
            help="Result backend URL, e.g. consulresults://127.0.0.1:8500/myapp "
            f"(env var {ENV_BACKEND_URL}, unless -A is given).",
        ),
    ],
    **{
        name: Annotated[str | None, _flag(o.flag, metavar=o.metavar, help=o.help, envvar=o.cli_env)]
        for name, o in OPTIONS.items()
        if o.flag
    },
    "stale": Annotated[
        bool, _flag("--stale", help="Allow stale reads (any server answers, even leaderless).")
    ],
    "consistent": Annotated[
        bool,
        _flag("--consistent", help="Consistent reads (the default: the leader checks quorum)."),
    ],
}
_OWN = ("app", "backend_url", "stale", "consistent")


def consul_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection flags to a command taking ``conn: Connection``, and turn Consul,
    network and configuration failures into one line and a documented exit code."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "conn"]
    extra = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False if name in ("stale", "consistent") else None,
            annotation=annotation,
        )
        for name, annotation in _CONNECTION.items()
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _CONNECTION}
        conn = Connection(
            **{name: given.pop(name) for name in _OWN},
            overrides={k: v for k, v in given.items() if v is not None},
        )
        with consul_errors(conn.address):
            return fn(conn=conn, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}
    return wrapper


# ---------------------------------------------------------------------- options shared by commands

IdsArgument = Annotated[
    list[str],
    typer.Argument(metavar="ID...", help="Task ids; - reads them from standard input."),
]


def output_option(help: str) -> Any:
    """``-o/--output FORMAT``, with the formats one command takes in its help."""
    return Annotated[str | None, typer.Option("--output", "-o", metavar="FORMAT", help=help)]


OutputOption = output_option(
    "table (default on a terminal), json, ndjson, tsv (default when piped) or ids."
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
        "--older-than",
        metavar="AGE",
        help="Done before this (a running task: started): 7d, 12h, 30m or an ISO date.",
    ),
]
NewerOption = Annotated[
    str | None,
    typer.Option(
        "--newer-than",
        metavar="AGE",
        help="Done after this (a running task: started): 7d, 12h, 30m or an ISO date.",
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
DetailedExitcodeOption = Annotated[
    bool, typer.Option("--detailed-exitcode", help="Exit 3 when nothing matches.")
]
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
RetriedOption = Annotated[
    bool | None,
    typer.Option(
        "--retried/--not-retried",
        help="Only results marked by retry --mark as re-sent, or only those not marked.",
    ),
]
OrphanedOption = Annotated[
    bool,
    typer.Option(
        "--orphaned",
        help="Only STARTED results whose worker is gone: no worker answering on the app's "
        "broker holds the task (needs -A; exit 4 if no worker answers at all).",
    ),
]
MinAgeOption = Annotated[
    str,
    typer.Option(
        "--min-age",
        metavar="AGE",
        help="With --orphaned: only tasks started at least this long ago (10m, 1h, 30s...).",
    ),
]
PingTimeoutOption = Annotated[
    float,
    typer.Option(
        "--ping-timeout",
        metavar="SECONDS",
        min=0.1,
        help="With --orphaned: how long to wait for the workers' answers.",
    ),
]

PartialOkOption = Annotated[
    bool,
    typer.Option(
        "--partial-ok",
        help=f"A partial view is intended: no exit {EXIT_PARTIAL} when the token's ACLs hid "
        "results from the listing (the warning line stays).",
    ),
]

# ------------------------------------------------------------------------------- options of retry

RetryIdsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID",
        help="Task ids to re-send; - reads them from standard input. Without ids, --state selects.",
    ),
]
RetryLimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        metavar="N",
        min=1,
        help="Re-send at most N of the selection, oldest first; the rest wait for the next run.",
    ),
]
RetryMaxOption = Annotated[
    int | None,
    typer.Option(
        "--max",
        metavar="N",
        min=0,
        help="Refuse (exit 2, nothing sent) if more than N would be re-sent.",
    ),
]
RetryMarkOption = Annotated[
    bool,
    typer.Option(
        "--mark",
        help="First claim each result with one compare-and-swap write recording the new id and "
        "when; only a claimed result is sent, so concurrent runs send it once and later runs "
        "skip it (safe in cron).",
    ),
]
RetryAgainOption = Annotated[
    bool, typer.Option("--again", help="Also re-send results already marked as retried.")
]
RetryForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Results named by id: re-send whatever their state, acks_late or chain, group or "
        "chord membership.",
    ),
]
RetryOrphanedOption = Annotated[
    bool,
    typer.Option(
        "--orphaned",
        help="Select the orphaned STARTED results instead of --state (see ls --orphaned); each "
        "is claimed as with --mark, so one that moved since it was read is left.",
    ),
]
RetryDryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be re-sent; send and mark nothing.")
]
RetryOutputOption = output_option(
    "table (default on a terminal), json, ndjson, tsv (default when piped): old id, task, new id; "
    "or ids: the new ids (with --dry-run, the old ones)."
)


def notice_hidden(ops: ResultOperations, exits: bool = False) -> None:
    """Say on stderr, in one line, when a listing comes back filtered by the token's ACLs (or
    may be, without a token): :meth:`Connection.open` sets it for every command; ``exits``
    (``stats``, ``purge`` without ``--partial-ok``) adds that the command exits for it."""
    from ..operations import hiding_text

    def say(hiding: Hiding) -> None:
        if hiding == "maybe":
            consequence = "give --token or --token-file"
        else:
            consequence = "this covers only what it may read"
            if exits:
                consequence += f" (exit {EXIT_PARTIAL}; --partial-ok if that is intended)"
        typer.echo(
            f"consul-results: warning: {hiding_text(hiding, ops.prefix)}: {consequence}", err=True
        )

    ops.on_hidden = say


def partial_status(ops: ResultOperations, partial_ok: bool, status: int) -> int:
    """``status``, or :data:`EXIT_PARTIAL` when the token's ACLs hid results from a listing and
    ``--partial-ok`` did not say that a partial view is intended."""
    return EXIT_PARTIAL if ops.hidden == "hidden" and not partial_ok else status


def check_format(fmt: str | None) -> str:
    if fmt is not None and fmt not in render.FORMATS:
        raise fail(f"--output: {fmt!r} is not one of {', '.join(render.FORMATS)}", EXIT_USAGE)
    return render.default_format(fmt)


def ids_from(args: list[str]) -> list[str]:
    """Task ids from the arguments; ``-`` reads more, one per line, from standard input."""
    ids: list[str] = []
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


def selection(
    states: list[str] | None,
    task: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
    expired: bool,
    no_session: bool,
    include_unreadable: bool,
    retried: bool | None = None,
) -> ResultFilter:
    """The filter ``ls``, ``purge`` and ``retry`` share (``ls`` shows unreadable keys,
    ``purge`` keeps them unless told otherwise)."""
    from ..operations import ResultFilter

    return ResultFilter(
        states=frozenset(s.upper() for s in states or ()),
        task_globs=tuple(task or ()),
        older_than=None if older_than is None else parse_when(older_than, "--older-than"),
        newer_than=None if newer_than is None else parse_when(newer_than, "--newer-than"),
        expired=expired,
        no_session=no_session,
        include_unreadable=include_unreadable,
        retried=retried,
    )


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, option: str) -> float:
    """``7d``/``12h``/``30m``/``45s``/``2w`` ago, or an ISO 8601 date/time (UTC if no zone)."""
    match = _AGE.match(text.strip())
    if match:
        return time.time() - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(
            f"{option}: {text!r} is not a duration like 7d, 12h, 30m or an ISO date "
            "like 2026-11-01",
            EXIT_USAGE,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def orphan_check(
    conn: Connection, orphaned: bool, min_age: str, ping_timeout: float
) -> OrphanCheck | None:
    """How ``--orphaned`` asks the workers (None without it): only with an app, whose broker
    reaches them."""
    if not orphaned:
        return None
    from ..orphans import OrphanCheck

    started_before = parse_when(min_age, "--min-age")
    app = conn.require_app("--orphaned asks the workers over the Celery app's broker")
    return OrphanCheck(app, started_before, ping_timeout)


def orphans_among(
    check: OrphanCheck, ops: ResultOperations, results: Iterable[StoredResult]
) -> list[StoredResult]:
    """The orphaned results among ``results``; the STARTED ones that could not be judged are
    said on stderr (they are kept, never guessed to be orphans)."""
    judgement = check.judge(ops, results)
    for why, undecided in judgement.undecided.items():
        typer.echo(
            f"consul-results: {len(undecided)} STARTED result(s) not judged, {why}: "
            f"{', '.join(r.id for r in undecided[:3])}{', ...' if len(undecided) > 3 else ''}",
            err=True,
        )
    return judgement.orphaned


def open_guarded(conn: Connection, all_prefixes: bool) -> ResultOperations:
    """The operations for a destructive command: an empty prefix (every key in this Consul) is
    refused unless ``--all-prefixes``."""
    ops = conn.open()
    if not ops.prefix and not all_prefixes:
        raise fail(
            "refusing to work on an empty prefix (every key in this Consul): give "
            "--prefix, or --all-prefixes if you really mean it",
            EXIT_USAGE,
        )
    return ops


def confirm(action: str, yes: bool) -> None:
    """Ask on a terminal; without one, ``--yes`` is required (exit 2 saying so)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"not on a terminal: refusing to {action} without --yes", EXIT_USAGE)
    if not typer.confirm(f"{action[0].upper()}{action[1:]}?", default=False, err=True):
        raise fail("nothing done", EXIT_USAGE)
