"""``consul-results sessions``: the sessions behind results (ours and Celery's built-in ones)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import render
from .common import EXIT_NOT_FOUND, EXIT_OK, Connection, consul_command
from .results import OutputOption, check_format

app = typer.Typer(help="Sessions behind results: list, show, expire, gc.", no_args_is_help=True)
COLUMNS = ("id", "name", "ttl", "behavior", "node", "checks", "held")


def session_row(session: dict) -> dict:
    return {
        "id": session["ID"],
        "name": session.get("Name") or None,
        "ttl": session.get("TTL") or None,
        "behavior": session.get("Behavior"),
        "node": session.get("Node"),
        "checks": session.get("NodeChecks") or [],
        "held": session.get("Held", 0),
    }


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
    sessions = conn.open_backend().sessions()
    rows = [session_row(s) for s in sessions if all_sessions or s["Held"]]
    render.emit(rows, COLUMNS, fmt)


@app.command("show")
@consul_command
def show(
    conn: Connection,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id.")],
    output: OutputOption = None,
) -> None:
    """Show one session and how many keys it holds under the prefix (exit 3 if unknown)."""
    fmt = check_format(output)
    found = [s for s in conn.open_backend().sessions() if s["ID"] == session_id]
    if not found:
        typer.echo(f"consul-results: no session {session_id}", err=True)
        raise typer.Exit(EXIT_NOT_FOUND)
    render.emit_mapping(session_row(found[0]), fmt)
    raise typer.Exit(EXIT_OK)
