"""``consul-results``: the ops command line. This module is the Typer app and ``main()``; the
commands are in :mod:`consulresults.commands`, the work in :mod:`consulresults.operations`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .commands import acting, cleaning, devserver, results, sessions
from .commands.typer_app import App

MANUAL = Path(sys.prefix, "share", "man", "man1", "consul-results.1")

app = App(
    name="consul-results",
    help="Inspect, fetch, wait for and clean Celery task results stored in HashiCorp Consul.",
    epilog=f"Manual: man consul-results (installed with the package as {MANUAL}).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,  # locals would show tokens in a traceback
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"consul-results {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Inspect, fetch, wait for and clean Celery task results stored in HashiCorp Consul."""


app.command("get")(results.get)
app.command("inspect")(results.inspect)
app.command("ls")(results.ls)
app.command("stats")(results.stats)
app.command("watch")(results.watch)
app.command("doctor")(results.doctor)
app.command("rm")(cleaning.rm)
app.command("expire")(cleaning.expire)
app.command("purge")(cleaning.purge)
app.command("retry")(acting.retry)
app.add_typer(sessions.app, name="sessions")
app.command("dev-server")(devserver.dev_server)


def main() -> None:
    """Console-script entry point. Usage errors are one line on stderr, like every other error
    (Click would draw a box around them), with the same exit status 2."""
    try:
        code = app(prog_name="consul-results", standalone_mode=False)
    except typer.TyperException as exc:  # Click's errors: usage (2), bad files...
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "consul-results"
        hint = f" (see {where} -h)" if ctx else ""
        typer.echo(f"{where}: {exc.format_message()}{hint}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("consul-results: aborted", err=True)
        code = 1
    sys.exit(code)
