"""``consul-results sessions``: the sessions behind results (ours and Celery's built-in ones):
list and show them, expire them now, and collect the ones that hold nothing."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import render
from .errors import EXIT_NOT_FOUND, EXIT_OK
from .options import (
    AllPrefixesOption,
    Connection,
    DryRunOption,
    OutputOption,
    YesOption,
    check_format,
    confirm,
    consul_command,
    open_guarded,
)
from .typer_app import App

app = App(help="Sessions behind results: list, show, expire, gc.", no_args_is_help=True)


@app.command("ls")
@consul_command
def list_sessions(
    conn: Connection,
    all_sessions: Annotated[
        bool, typer.Option("--all", help="Also sessions that hold no key under the prefix.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """List sessions holding results under the prefix, with how many keys each holds."""
    fmt = check_format(output)
    sessions = conn.open().sessions()
    rows = [render.session_row(s) for s in sessions if all_sessions or s["Held"]]
    render.emit(rows, render.SESSION_COLUMNS, fmt)


@app.command("show")
@consul_command
def show(
    conn: Connection,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id.")],
    output: OutputOption = None,
) -> None:
    """Show one session and how many keys it holds under the prefix (exit 3 if unknown)."""
    fmt = check_format(output)
    found = [s for s in conn.open().sessions() if s["ID"] == session_id]
    if not found:
        typer.echo(f"consul-results: no session {session_id}", err=True)
        raise typer.Exit(EXIT_NOT_FOUND)
    render.emit_mapping(render.session_row(found[0]), fmt)
    raise typer.Exit(EXIT_OK)


@app.command("expire")
@consul_command
def expire_sessions(
    conn: Connection,
    session_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Session ids.")],
    yes: YesOption = False,
    all_prefixes: AllPrefixesOption = False,
) -> None:
    """Invalidate sessions now: Consul applies each one's behaviour (ours: delete every key it
    holds). Says how many keys under the prefix they hold before doing it."""
    ops = open_guarded(conn, all_prefixes)
    known = {s["ID"]: s for s in ops.sessions()}
    unknown = [i for i in session_ids if i not in known]
    for session_id in unknown:
        typer.echo(f"consul-results: no session {session_id}", err=True)
    chosen = [known[i] for i in session_ids if i in known]
    held = sum(s["Held"] for s in chosen)
    behaviours = sorted({s["Behavior"] for s in chosen})
    if chosen:
        plan = (
            f"expire {len(chosen)} session(s) holding {held} key(s) under "
            f"{ops.prefix or '(root)'}/ (behaviour: {', '.join(behaviours)})"
        )
        if yes:  # no prompt to say it, so say it before doing it
            typer.echo(f"consul-results: about to {plan}", err=True)
        confirm(plan, yes)
    for session in chosen:
        ops.destroy_session(session["ID"])
    typer.echo(f"expired {len(chosen)} session(s) holding {held} key(s)")
    raise typer.Exit(EXIT_NOT_FOUND if unknown else EXIT_OK)


@app.command("gc")
@consul_command
def gc_sessions(
    conn: Connection,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    all_prefixes: AllPrefixesOption = False,
) -> None:
    """Destroy sessions made for results (ours, and Celery's built-in ones) that hold no keys."""
    ops = open_guarded(conn, all_prefixes)
    idle = ops.idle_sessions()
    if idle and not dry_run:
        confirm(f"destroy {len(idle)} idle result session(s)", yes)
    for session in [] if dry_run else idle:
        ops.destroy_session(session["ID"])
    verb = "would destroy" if dry_run else "destroyed"
    typer.echo(f"{verb} {len(idle)} idle session(s)")
