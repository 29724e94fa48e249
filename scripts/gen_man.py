#!/usr/bin/env python3
"""Generate man/consul-results.1 from the Typer app and the hand-written man/consul-results.1.in.

The template holds the prose (DESCRIPTION, EXIT STATUS, ENVIRONMENT, EXAMPLES...); this script
fills ``@COMMANDS@`` and ``@GLOBAL_OPTIONS@`` from the commands' own ``--help`` data, so the page
cannot drift from the CLI. tests/test_manpage.py fails when the committed page is out of date.

    python scripts/gen_man.py          # rewrite man/consul-results.1
    python scripts/gen_man.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "man" / "consul-results.1.in"
PAGE = ROOT / "man" / "consul-results.1"


def roff(text: str) -> str:
    """Escape text for roff: backslashes, and lines that would start with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.splitlines())


def option_lines(param, ctx) -> list[str]:
    """One tagged paragraph per option, from the same record ``--help`` prints.

    Typer vendors its own click, so parameters are recognised by duck typing.
    """
    if getattr(param, "param_type_name", "") != "option" or param.hidden:
        return []
    record = param.get_help_record(ctx)
    if record is None:
        return []
    flags, text = record
    return [".TP", f"\\fB{roff(flags)}\\fR", roff(" ".join(text.split()))]


def command_section(name: str, command) -> list[str]:
    ctx = command.context_class(command)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [
        ".SS " + roff(name),
        f"\\fBconsul\\-results {roff(name)}\\fR {roff(usage)}",
        ".PP",
        roff(command.help or ""),
    ]
    for param in command.params:
        lines += option_lines(param, ctx)
    return lines


def walk(group, prefix: str = "") -> list[tuple[str, object]]:
    commands = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if hasattr(command, "commands"):
            commands += walk(command, f"{prefix}{name} ")
        else:
            commands.append((prefix + name, command))
    return commands


def render() -> str:
    from consulresults.cli import app

    root = typer.main.get_command(app)
    commands: list[str] = []
    for name, command in walk(root):
        commands += command_section(name, command)
    global_options: list[str] = []
    for param in root.params:
        global_options += option_lines(param, root.context_class(root))
    global_options += [".TP", "\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "Show help and exit."]
    page = TEMPLATE.read_text()
    page = page.replace("@COMMANDS@", "\n".join(commands))
    return page.replace("@GLOBAL_OPTIONS@", "\n".join(global_options))


def main() -> int:
    page = render()
    if "--check" in sys.argv:
        if PAGE.read_text() != page:
            print(
                "man/consul-results.1 is out of date: run python scripts/gen_man.py",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
