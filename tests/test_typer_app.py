"""The CLI's Typer app answers plain values without pydantic, and gives exactly what Typer's own
coercion gives: the same values, and the same errors for values it hands back to Typer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from consulresults.commands.typer_app import App


def _show(
    ids: Annotated[list[str], typer.Argument()],
    name: Annotated[str | None, typer.Option()] = None,
    count: Annotated[int | None, typer.Option()] = None,
    ratio: Annotated[float, typer.Option()] = 30,
    wait: Annotated[float | None, typer.Option(min=0)] = None,
    state: Annotated[list[str] | None, typer.Option()] = None,
    flag: Annotated[bool, typer.Option()] = False,
    where: Annotated[Path | None, typer.Option()] = None,
) -> None:
    typer.echo(repr((ids, name, count, ratio, wait, state, flag, where)))


def _run(app: typer.Typer, argv: list[str]) -> tuple[int, str]:
    app.command("show")(_show)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["show", *argv])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["a", "b"],
        ["a", "--name", "n", "--count", "5", "--ratio", "2.5", "--wait", "0"],
        ["a", "--count", "+3", "--ratio", "1e3", "--state", "x", "--state", "y", "--flag"],
        ["a", "--count", "-7", "--ratio", ".5"],
        ["a", "--where", "some/path", "--ratio", "inf"],
        ["a", "--count", "abc"],
        ["a", "--count", "1.5"],
        ["a", "--count", " 7"],
        ["a", "--count", "1_000"],
        ["a", "--ratio", "many"],
        ["a", "--wait", "-1"],
        ["a", "--count", "\uff11\uff12"],  # fullwidth digits
        ["a", "--ratio", "\u0661.\u0665"],  # Arabic-Indic digits
        ["a", "--count", "9" * 5000],  # longer than int() takes
        ["a", "--count", "0" * 150 + "7"],
        [],
    ],
)
def test_same_values_and_errors_as_typers_own(argv):
    ours = _run(App(), argv)
    typers = _run(typer.Typer(rich_markup_mode=None), argv)
    assert ours == typers


def test_plain_values_do_not_import_pydantic():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import test_typer_app as t\n"
        "from consulresults.commands.typer_app import App\n"
        "print(t._run(App(), ['a', '--count', '5', '--ratio', '2.5', '--state', 'x', '--flag']))\n"
        "print('pydantic' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
    )
    assert run.returncode == 0, run.stderr
    assert "(['a'], None, 5, 2.5, None, ['x'], True, None)" in run.stdout
    assert run.stdout.splitlines()[-1] == "False"
